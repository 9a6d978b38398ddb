#!/usr/bin/env bash
# A refactor changes no result: train small deterministic CPU runs with the code of BASE (a commit; default HEAD,
# the last commit, against the uncommitted change) and with the working tree, on this machine, and compare every file
# they write exactly: weights and masks tensor by tensor, results.json and metrics.csv value by value, timing aside.
# Exit 0 when all match, 1 otherwise.
#
#   .ci/identical.sh [BASE]        (about 30 s on 2 idle cores)
#
# The runs: a draw to IMP level 2 and its vanilla spend (2 and 3 epochs); --at --trt on it; an OMP ticket with
# --swish --ls 0.1; LTH-Rewind (--rewind-epoch 1); --kd; a GraSP ticket with --mish, --hessian-every, --keep-epochs.
# Then landscape.py on them: a contour plane, the loss along the top eigenvector and the top eigenvalue of 3 batches
# (their .npz and .json compared; the PNGs are drawn from those numbers).
# Reference files do not carry across machines (CPUs round differently): both sides train here, in temporary folders.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-HEAD}
PY=${PYTHON:-$PWD/.venv/bin/python}
TMP=$(mktemp -d)
git worktree add -q --detach "$TMP/base" "$BASE"
trap 'git worktree remove --force "$TMP/base"; rm -rf "$TMP"' EXIT
RECIPE="--dataset synthetic --arch resnet20 --epochs 2 --subset 600 --batch-size 64 --device cpu --deterministic"
RUNS=(
  "--sparsity 0.36 --epochs 3"
  "--sparsity 0.36"
  "--sparsity 0.36 --at --trt --scale-init-iters 5"
  "--sparsity 0.9 --prune omp --swish --ls 0.1"
  "--sparsity 0.36 --rewind-epoch 1"
  "--sparsity 0.36 --kd"
  "--sparsity 0.5 --prune grasp --mish --hessian-every 2 --keep-epochs 1"
)
ANALYSIS=(
  "contour run2 run3 --grid 3 --images 64 --out contour.png"
  "eigen run2 run4 --images 96 --points 3 --iters 5 --out eigen.png"
  "eigenvalue run3 --batches 3 --batch-size 32 --iters 5 --out run3/eigenvalue.json"
)
train() {  # train CODE_DIR OUT_ROOT: every run of RUNS with the code in CODE_DIR, into OUT_ROOT, then ANALYSIS
  local i=0 a
  for r in "${RUNS[@]}"; do
    i=$((i + 1))
    (cd "$1" && OMP_NUM_THREADS=1 $PY train.py $RECIPE $r --runs "$2" --out "$2/run$i" >"$2.log$i" 2>&1) || {
      echo "FAILED: train.py $r with the code in $1 (log: $2.log$i)"; tail -5 "$2.log$i"; return 1; }
  done
  for a in "${ANALYSIS[@]}"; do  # the folders are relative to OUT_ROOT
    (cd "$2" && OMP_NUM_THREADS=1 $PY "$1/landscape.py" $a --device cpu >>"$2.analysis" 2>&1) || {
      echo "FAILED: landscape.py $a with the code in $1 (log: $2.analysis)"; tail -5 "$2.analysis"; return 1; }
  done
}
mkdir -p "$TMP/old" "$TMP/new"
train "$TMP/base" "$TMP/old" &
train "$PWD" "$TMP/new"
wait $!
$PY - "$TMP/old" "$TMP/new" <<'EOF'
import csv, json, os, sys
import numpy as np
import torch

old, new = sys.argv[1:]
TIMING = {"seconds", "scale_init_seconds", "train_seconds"}
def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a if k not in TIMING)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b
def read(path):
    if path.endswith(".pt"):
        return torch.load(path, weights_only=True)
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    if path.endswith(".npz"):
        return {k: torch.from_numpy(v) if v.dtype.kind in "biuf" else v.tolist() for k, v in np.load(path).items()}
    if path.endswith(".png"):  # drawn from the .npz beside it
        return None
    if path.endswith(".csv"):
        with open(path) as f:
            return list(csv.DictReader(f))
    with open(path, "rb") as f:
        return f.read()
bad = []
a, b = files(old), files(new)
if a != b:
    bad.append(f"file sets differ: only old {sorted(set(a) - set(b))}, only new {sorted(set(b) - set(a))}")
for rel in sorted(set(a) & set(b)):
    if rel.endswith(".lock") or os.path.basename(rel).startswith(".runner"):
        continue
    if not same(read(os.path.join(old, rel)), read(os.path.join(new, rel))):
        bad.append(f"differs: {rel}")
print(f"compared {len(set(a) & set(b))} files of {len(a)} (old) and {len(b)} (new)")
print("\n".join(bad) or "identical: every weight, mask, result and metric matches (timing aside)")
sys.exit(1 if bad else 0)
EOF
