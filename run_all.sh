#!/usr/bin/env bash
# The paper's reproduction in one script: the runs of grid.py trained by runner.py, then landscape.py and report.py.
#
#   ./run_all.sh --quick        CPU demo (2 cores, offline, minutes): Fashion-MNIST, ResNet-20, LTH vs AT+TRT
#   ./run_all.sh --study        the CPU study (2 cores, offline, hours): every tweak vs LTH on the same tickets, 5 seeds
#   ./run_all.sh --test         the test suite
#   ./run_all.sh                the full reproduction on GPUs (ResNet-18, CIFAR-100, §4.1 recipe, 3 seeds)
#   ./run_all.sh --parts headline   the abstract's claim alone: Table A3's LTH, AT, TRT, AT+TRT at 91.4% and 97.2%
#   ./run_all.sh --dry-run      a summary per part (with --study: per rung) and in all: jobs, draws, epochs, GPU-hours
#   ./run_all.sh --list         the job list alone, one train.py command line per line (for a cluster)
#   ./run_all.sh --gpu-check    a few minutes on one GPU: environment, speed, runs per GPU, memory, an end-to-end run
#   ./run_all.sh --jobs-from F  run the train.py argument lines of file F (your own grid) as the reproduction does
#   ./run_all.sh --help         this text
# Options (in any order): --jobs N (concurrent runs in all; default: GPUs x --per-gpu), --per-gpu K (runs at once
#          on each GPU, default 1), --seeds "42 1099 5469" (--quick: 42; --study: 1 to 5), --parts "fig2 a4" (which
#          tables/figures, default all: the parts below), --arch A --dataset D (Fig. 5 cells to run), --epochs E
#          (default 180), --budget "15 5" (--study: the rungs of its ladder, default 30 15 5 epochs). Re-running skips
#          every finished run and analysis output, so a killed reproduction resumes; Ctrl-C stops every run, saved.
# Each run's train.py output goes to train.log in its run folder (appended when it resumes); the runner prints a
# line when a run starts and one when it ends: the jobs left, and the time they take at this runner's pace so far.
# It exits 1 if a run failed (naming its log), 143 or 130 when stopped by SIGTERM or Ctrl-C.
# --dry-run prices each run by its FLOPs (bill.py): at what --gpu-check measured (runs/gpu_check/: cells, a timed
# run per arch and image size; seconds_per_epoch, ResNet-18's; packing, the best runs at once), else EPOCH_SECONDS
# (GPU-seconds per epoch of ResNet-18 on CIFAR, if set), else an assumed 10 s, scaled by FLOPs; each line names it.
# The first call sets up the environment: a .venv beside this file with requirements.txt (or PYTHON=python3 to
# use an interpreter that has torch already), and Debian's dataset-fashion-mnist package where apt-get can.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-.venv/bin/python}  # train.py, landscape.py, report.py; grid.py and runner.py need only python3
MEASURED=runs/gpu_check/seconds_per_epoch  # by --gpu-check: ResNet-18 + AT + TRT, 45,000 CIFAR-shaped images, alone
PACKED=runs/gpu_check/packing  # by --gpu-check's sweep: "K S mps|plain", the best K runs at once per GPU
CELLS=runs/gpu_check/cells  # by --gpu-check: "ARCH DATASET SECONDS" per image, a timed run of each Fig. 5 cell

MODE=run SET=full  # the rest of the options is grid.py's to read and check
for arg in "$@"; do
  case $arg in
    -h|--help) MODE=help ;;
    --list|--dry-run|--test|--gpu-check|--jobs-from) MODE=${arg#--} ;;
    --quick|--study) SET=${arg#--} ;;
  esac
done

setup() {
  if [ -n "${PYTHON:-}" ]; then return; fi  # the caller's interpreter: nothing to install
  if [ ! -x $PY ] || ! $PY -c "import torch, torchvision, matplotlib, scipy, pytest, xdist, ruff" 2>/dev/null; then
    echo "setting up .venv (first run only)..."
    python3 -m venv .venv
    .venv/bin/pip install -q -r requirements.txt
  fi
  if [ ! -e /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || echo "note: dataset-fashion-mnist not installed"
  fi
}

# The analysis of a part, after the trainings it reads (grid.py --analysis); an output that exists is skipped.
analysis() {
  local line
  python3 grid.py --analysis "$@" | while read -r line; do  # the folders have no spaces: runs/<set>/...
    [ -e "${line##* --out }" ] || $PY landscape.py $line || echo "FAILED: landscape.py $line" >&2
  done
}

# --gpu-check: each part under its own time limit; a failed part is named and the next one runs. Prints plain
# lines for the README. Without a GPU it says so, runs the parts a CPU can (smaller), and exits 0.
gpu_check() {
  local dir=runs/gpu_check/work failed="" t0 device=cuda arch=resnet18
  pack() {  # pack K NAME: K runs of $setting at once on GPU 0 through the runner, in $dir/packing/NAME/run<i>
    local i
    for ((i = 1; i <= $1; i++)); do echo "$setting --runs $dir/packing/runs --out $dir/packing/$2/run$i"; done > $dir/$2
    part "packing-$2" 300 env CUDA_VISIBLE_DEVICES=0 ./run_all.sh --jobs-from $dir/$2 --jobs "$1"
  }
  part() {  # part NAME SECONDS COMMAND...
    echo "== $1"; t0=$(date +%s)
    if timeout "$2" "${@:3}"; then echo "-- $1: ok, $(( $(date +%s) - t0 )) s"
    else echo "-- $1: FAILED (exit $?, limit $2 s)"; failed="$failed $1"; fi
  }
  rm -rf $dir; mkdir -p $dir  # the last check's runs; a measured $MEASURED stays until a GPU measures again
  part environment 120 $PY -c "import platform, torch; c = torch.cuda.is_available()
print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '| python', platform.python_version())
print('GPU:', torch.cuda.get_device_name() if c else 'none found (torch.cuda.is_available() is False)')"
  if $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    local bench="bench.py --arch resnet18 --dataset synthetic-cifar100 --subset 5000 --batch-size 128 --device cuda"
    part bench 180 $PY $bench
    part bench-compiled 240 $PY $bench --compile
    part epoch-seconds 180 $PY train.py --dataset synthetic-cifar100 --arch resnet18 --epochs 2 --prune random \
      --sparsity 0.91 --at --trt --runs $dir/runs --out $dir/epoch
    if [ -s $dir/epoch/metrics.csv ]; then  # epoch 2: cuDNN's autotuning is done
      tail -1 $dir/epoch/metrics.csv | cut -d, -f7 | tr -d '\r' > $MEASURED
      echo "seconds per epoch, ResNet-18 + AT + TRT at 91% on 45,000 CIFAR-shaped images, batch 128: $(cat $MEASURED)"
    fi
    part cells 300 $PY bill.py --time-cells $CELLS  # each Fig. 5 cell's seconds per image, for --dry-run
    part evaluation-bf16 5 grep -E '"test_acc(_float32)?"' $dir/epoch/results.json  # its test accuracy in bf16, float32
    # the packing sweep: K runs of that setting at once on one GPU through the runner, as --per-gpu K trains
    local setting="--dataset synthetic-cifar100 --arch resnet18 --epochs 2 --prune random --sparsity 0.91 --at --trt" k
    for k in 1 2 4 8; do pack "$k" "K$k"; done
    if command -v nvidia-cuda-mps-control >/dev/null; then  # again under CUDA MPS, with a daemon of the check's own
      export CUDA_MPS_PIPE_DIRECTORY=$dir/mps CUDA_MPS_LOG_DIRECTORY=$dir/mps
      mkdir -p $dir/mps
      if nvidia-cuda-mps-control -d; then
        echo "CUDA MPS: used for K2-mps, K4-mps, K8-mps"
        for k in 2 4 8; do pack "$k" "K$k-mps"; done
        echo quit | nvidia-cuda-mps-control
      else echo "CUDA MPS: not used (nvidia-cuda-mps-control -d failed)"; fi
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    else echo "CUDA MPS: not used (no nvidia-cuda-mps-control)"; fi
    part packing 60 $PY bench.py --packing $dir/packing $PACKED
  else
    device="cpu --subset 300" arch=resnet20
    echo "no GPU found: skipping the GPU benchmarks; the end-to-end parts run on the CPU (ResNet-20, 270 images)"
  fi
  local small="--dataset synthetic --arch $arch --device $device --runs $dir/runs"
  part signature 240 $PY train.py $small --epochs 1 --sparsity 0.91 --skip --swish --ls 0.1 --out $dir/signature
  part signature-zeros 5 grep '"pruned_nonzero": 0,' $dir/signature/results.json  # pruned weights exactly zero
  local same="--epochs 2 --prune random --sparsity 0.5 --at --deterministic"
  export CUBLAS_WORKSPACE_CONFIG=:4096:8  # what --deterministic needs of cuBLAS
  part plain 240 $PY train.py $small $same --out $dir/plain
  echo "gpu-check done;${failed:+ FAILED:$failed}${failed:- every part passed}"
}

case $MODE in
  help)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"  # the header
    echo "The parts (--parts P --list: their runs): $(python3 -c 'import grid; print(*grid.PARTS)')" ;;
  list) exec python3 grid.py "$@" ;;
  dry-run) [ -x "$PY" ] || setup >&2; exec $PY bill.py "$@" ;;
  gpu-check) setup; gpu_check ;;
  test)
    setup
    $PY -m ruff format --check . && $PY -m ruff check . || exit 1  # formatted and lint-clean (ruff.toml), then tests
    # one test per core, each with one thread (as the tests' own runs); the Slurm tests share a worker (conftest.py)
    OMP_NUM_THREADS=1 exec $PY -m pytest -q -n auto --dist loadgroup ;;
  jobs-from)
    python3 runner.py --check "$@"; setup  # the input checked before anything is installed or created
    exec python3 runner.py --python "$PY" "$@" ;;
  run)
    python3 runner.py --check "$@"; setup
    start=$(date +%s)
    python3 runner.py --python "$PY" "$@"  # the trainings of the parts; a failed or stopped one ends the script here
    analysis "$@"
    $PY report.py runs/$SET --out runs/$SET/report
    echo "$SET: $(( $(date +%s) - start )) s; the report is in runs/$SET/report" ;;
esac
