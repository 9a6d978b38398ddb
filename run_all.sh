#!/usr/bin/env bash
# The paper's reproduction, and this project's two entry points for a new machine:
#   ./run_all.sh --quick    a short CPU demo of the whole loop on Fashion-MNIST (no internet needed)
#   ./run_all.sh --test     the test suite
# Either sets up its environment the first time: a .venv beside this file with requirements.txt, and
# Debian's dataset-fashion-mnist package when apt-get can install it.
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import torch, torchvision, matplotlib, pytest" 2>/dev/null; then
    echo "setting up .venv (first run only)..."
    python3 -m venv .venv
    .venv/bin/pip install -q -r requirements.txt
  fi
  if [ ! -e /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || echo "note: dataset-fashion-mnist not installed"
  fi
}

case "${1:-}" in
  --test)
    setup
    exec .venv/bin/python -m pytest -q ;;
  --quick)
    setup
    common=(--dataset fashionmnist --arch resnet20 --epochs 2 --subset 5000 --sparsity 0.91 --runs runs/quick)
    .venv/bin/python train.py "${common[@]}"
    .venv/bin/python train.py "${common[@]}" --at --trt ;;
  *)
    echo "usage: ./run_all.sh --quick | --test" >&2
    exit 2 ;;
esac
