#!/usr/bin/env bash
# The paper's reproduction in one script, built from train.py, landscape.py and report.py.
#
#   ./run_all.sh --quick        CPU demo (2 cores, offline, minutes): Fashion-MNIST, ResNet-20, LTH vs AT+TRT
#   ./run_all.sh --study        the CPU study (2 cores, offline, hours): every tweak vs LTH on the same tickets, 5 seeds
#   ./run_all.sh --test         the test suite
#   ./run_all.sh                the full reproduction on GPUs (ResNet-18, CIFAR-100, §4.1 recipe, 3 seeds)
#   ./run_all.sh --dry-run      a summary per part (with --study: per rung) and in all: jobs, draws, epochs, GPU-hours
#   ./run_all.sh --list         the job list alone, one train.py command line per line (for a cluster)
#   ./run_all.sh --gpu-check    a few minutes on one GPU: environment, speed, runs per GPU, memory, an end-to-end run
#   ./run_all.sh --jobs-from F  run the train.py argument lines of file F (your own grid) as the reproduction does
#   ./run_all.sh --help         this text
# Options (in any order): --jobs N (concurrent runs in all; default: GPUs x --per-gpu), --per-gpu K (runs at once
#          on each GPU, default 1), --seeds "42 1099 5469" (--quick: 42; --study: 1 to 5), --parts "fig2 a4" (which
#          tables/figures, default all: see PARTS), --arch A --dataset D (Fig. 5 cells to run), --epochs E (default
#          180), --budget "15 5" (--study: the rungs of its ladder, default 30 15 5 epochs). Re-running skips every
#          finished run and analysis output, so a killed reproduction resumes.
# Each run's train.py output goes to train.log in its run folder (appended when it resumes); the runner prints a
# line when a run starts and one when it ends: the jobs left, and the time they take at this runner's pace so far.
# --dry-run's GPU-hours use EPOCH_SECONDS (GPU-seconds per epoch of a run) if set, else what --gpu-check measured
# (runs/gpu_check/: seconds_per_epoch, one run at a time; packing, the best number of runs at once), else 10 s.
# The first call sets up the environment: a .venv beside this file with requirements.txt (or PYTHON=python3 to
# use an interpreter that has torch already), and Debian's dataset-fashion-mnist package where apt-get can.
set -euo pipefail
cd "$(dirname "$0")"

# The paper's tables and figures, one part each (README, "Reproduction": figure -> part -> command -> output file)
ALL_PARTS="a2 a3 a4 fig1 fig2 fig4 fig5 fig6 fig7 fig8 fig9 fig10 figA11 figA12 figA13 tableA1 skipproj"
MODE=run SET=full SEEDS="" FULL_ONLY="" PARTS=$ALL_PARTS EPOCHS=180 JOBS="" PER_GPU=1 CELL_ARCH="" CELL_DATASET=""
BUDGETS="30 15 5"  # the study's ladder: epochs per rung, longest first (RESULTS.md: why 30, not 45)
MEASURED=runs/gpu_check/seconds_per_epoch  # by --gpu-check: ResNet-18 + AT + TRT, 45,000 CIFAR-shaped images, alone
PACKED=runs/gpu_check/packing  # by --gpu-check's sweep (bench.py --concurrent): "K S mps|plain", the best K runs at
                               # once per GPU and S GPU-seconds per epoch of a run there (with CUDA MPS or without)
SELF=$(basename "$0")

# is_seconds VALUE: whether VALUE is a number of seconds > 0 (3, 3.36, .5)
is_seconds() { [[ $1 =~ ^[0-9]*[.]?[0-9]+$ && ! $1 =~ ^[0.]+$ ]]; }
if [ -n "${EPOCH_SECONDS:-}" ] && ! is_seconds "$EPOCH_SECONDS"; then
  echo "error: EPOCH_SECONDS=$EPOCH_SECONDS: give GPU-seconds per epoch of a run, a number > 0 (e.g. 3.4)" >&2; exit 2
fi
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$SELF"; exit 0 ;;  # the header
    --quick|--study) SET=${1#--} ;;  # which job list; --list and --dry-run print it
    --test|--dry-run|--list|--gpu-check) MODE=${1#--} ;;
    --jobs) JOBS=$2; shift ;;
    --jobs-from) MODE=jobs-from JOBS_FROM=$2; shift ;;
    --per-gpu) PER_GPU=$2; shift ;;
    --seeds) SEEDS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --parts) PARTS=$2 FULL_ONLY+=" $1"; shift ;;
    --epochs) EPOCHS=$2 FULL_ONLY+=" $1"; shift ;;
    --arch) CELL_ARCH=$2 FULL_ONLY+=" $1"; shift ;;
    --dataset) CELL_DATASET=$2 FULL_ONLY+=" $1"; shift ;;
    *) echo "error: unknown option $1 (see the top of run_all.sh)" >&2; exit 2 ;;
  esac
  shift
done
if [ $SET != full ] && [ -n "$FULL_ONLY" ]; then
  echo "error:$FULL_ONLY: the full reproduction's options; --$SET is a fixed job list (see ${SET}_jobs)" >&2; exit 2
fi
if [ -n "${BUDGET:-}" ]; then
  [ $SET = study ] || { echo "error: --budget chooses rungs of the study's ladder: use it with --study" >&2; exit 2; }
  for e in $BUDGET; do
    case " $BUDGETS " in *" $e "*) ;; *) echo "error: --budget $e: the study's rungs are $BUDGETS epochs" >&2; exit 2 ;; esac
  done
  BUDGETS=$BUDGET
fi
for p in $PARTS; do
  case " $ALL_PARTS " in *" $p "*) ;; *) echo "error: unknown part $p; the parts: $ALL_PARTS" >&2; exit 2 ;; esac
done
[ -n "$SEEDS" ] || SEEDS=$(case $SET in quick) echo 42 ;; study) echo 1 2 3 4 5 ;; *) echo 42 1099 5469 ;; esac)
[[ "$PER_GPU" =~ ^[1-9][0-9]*$ ]] || { echo "error: --per-gpu must be a whole number >= 1, got $PER_GPU" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}

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

# The IMP levels of the paper: 0.8^L for L = 0..16 (0%, 20%, 36%, ... 97%).
LEVELS="0 0.2 0.36 0.488 0.59 0.672 0.738 0.79 0.832 0.866 0.893 0.914 0.931 0.945 0.956 0.965 0.972"

# job SEED SPARSITY "DATASET ARCH RECIPE FLAGS" [TWEAK FLAGS...]: one train.py command line whose --out
# is runs/<set>/<dataset>_<arch>/<prune>_s<sparsity>_<tweaks, or lth>/seed<seed>.
job() {
  local root=runs/$SET seed=$1 s=$2 base=$3; shift 3
  if [ $SET = full ] && [ "$s" = $FIG ]; then base+=" --keep-epochs 5"; fi  # Fig. 4 reads the epoch-5 weights
  local flags="$*" name="$*" prune=imp
  if [[ "$base $name" =~ --prune\ ([a-z]+) ]]; then prune=${BASH_REMATCH[1]} name=${name/"${BASH_REMATCH[0]}"/}; fi
  if [[ $name =~ --rewind-epoch\ [0-9]+ ]]; then name=${name/"${BASH_REMATCH[0]}"/rewind}; fi
  name=${name//[ -]/}  # no subprocess per job: the full list has thousands
  set -- $base
  echo "$base${flags:+ }$flags --seed $seed --sparsity $s --runs ${DRAWS:-$root} --out $root/${RUNG:-}$2_$4/${prune}_s${s}_${name:-lth}/seed$seed"
}

FIG=0.914  # §3.3, §4.6, A1.2: the analysis at 91% sparsity (IMP level 11); every full run there keeps epoch 5 (Fig. 4)
FIG2_LEVELS="0.2 0.59 0.832 0.914 0.965"  # Fig. 2's sparsities (not stated in the paper)
A1_LEVELS="0.2 0.36 0.672 0.738 0.965 0.972"  # Table A1's rows

# part_jobs PART SEED: the train.py lines of one part. Parts share runs (fig1 draws on a2's); full_jobs lists each once.
part_jobs() {
  local seed=$2 r="--dataset cifar100 --arch resnet18 --epochs $EPOCHS" rewind=$((EPOCHS * 33 / 180)) s v d a  # §4.1
  case $1 in
    a2|fig1) for s in $LEVELS; do for v in "" --skip --swish --scale-init "--ls 0.1"; do job "$seed" "$s" "$r" $v; done; done ;;
    a3|fig6|fig7) for s in $LEVELS; do
        for v in "" --at --trt "--at --trt"; do job "$seed" "$s" "$r" $v; done
        for v in "" " --at" " --trt" " --at --trt"; do job "$seed" "$s" "$r" --rewind-epoch $rewind $v; done
      done ;;
    fig2) for s in $FIG2_LEVELS; do for v in "" --swish --mish; do job "$seed" "$s" "$r" $v; done; done ;;
    fig4) for v in "" --skip "--ls 0.1" --scale-init; do job "$seed" $FIG "$r" $v; done ;;
    fig8) for v in "" --at --trt "--at --trt"; do job "$seed" $FIG "$r" $v; done ;;
    fig10) for v in "" "--at --trt"; do job "$seed" $FIG "$r" $v; done ;;
    figA13) for v in "" --skip --swish --mish --scale-init "--ls 0.1" --at --trt "--at --trt"; do
        job "$seed" $FIG "$r" $v; done ;;
    fig9) for s in $LEVELS; do for v in "--at --trt" "--at --scale-init --kd"; do job "$seed" "$s" "$r" $v; done; done ;;
    figA11) for v in "" "--at --trt"; do job "$seed" $FIG "$r" $v --hessian-every 1; done ;;
    figA12) for s in $LEVELS; do for v in "" --at --trt "--at --trt"; do job "$seed" "$s" "$r" --prune omp $v; done; done ;;
    tableA1) for s in $A1_LEVELS; do for v in "" --swish; do job "$seed" "$s" "$r" $v; done; done ;;
    skipproj) for s in $LEVELS; do for v in --at "--skip-proj --swish"; do job "$seed" "$s" "$r" $v; done; done ;;
    fig5) for d in ${CELL_DATASET:-cifar10 cifar100 tinyimagenet}; do
        for a in ${CELL_ARCH:-vgg16 resnet18 resnet34 resnet50 mobilenet}; do
          for s in $LEVELS; do for v in "" "--at --trt"; do
            job "$seed" "$s" "--dataset $d --arch $a --epochs $EPOCHS" $v; done; done
        done
      done ;;
    a4) for d in cifar10 cifar100; do  # Table A4: ResNet-32, pruning at init vs LTH + AT + TRT
        local r32="--dataset $d --arch resnet32 --epochs $EPOCHS"
        job "$seed" 0 "$r32"
        for s in 0.9 0.95 0.98; do
          for v in random grasp synflow; do job "$seed" "$s" "$r32" --prune $v; done
          # 0.95 and 0.98 are not IMP levels: the tweaked LTH row uses one-shot magnitude masks there
          job "$seed" "$s" "$r32" --prune omp --at --trt
        done
      done ;;
  esac
}

full_jobs() {
  local seed p
  for seed in $SEEDS; do for p in $PARTS; do part_jobs $p "$seed"; done; done | awk '!seen[$0]++'
}

quick_jobs() {  # the study's kind of ticket (one-shot, 91.4%), smaller: LTH vs AT+TRT in minutes
  for seed in $SEEDS; do
    for v in "" "--at --trt"; do
      job "$seed" 0.914 "--dataset fashionmnist --arch resnet20 --epochs 4 --subset 3000 --prune omp --scale-init-iters 10" $v
    done
  done
}

# The CPU study (RESULTS.md, "The CPU study"): every tweak against LTH on the same OMP tickets per seed, Fashion-MNIST,
# ResNet-20, on a ladder of budgets (--budget E: the dense network, its tickets and every spend trained E epochs).
# Tickets one-shot from the same dense network: 91.4% (IMP level 11) at every rung, 97.2% (level 16) at 15 epochs.
STUDY_914=("--at --trt" "--trt" "--scale-init" "" "--skip-proj" "--at" "--skip" "--swish" "--ls 0.1")  # longest first
STUDY_972=("--at --trt" "--trt" "" "--at" "--ls 0.1")
STUDY_914_AT_30=("--at --trt" "--trt" "" "--skip-proj" "--at" "--skip" "--ls 0.1")  # what the 30-epoch rung affords
# A ticket well below its dense network (15 epochs; RESULTS.md, "Three sparsities"): a scan of one-shot tickets on seed
# 1 finds the lowest sparsity whose LTH falls >= 4 pp below the dense network; then every seed spends it as STUDY_GAP.
# The study's dense weights are not kept in the repository: these tickets come from dense networks trained again,
# in their own draw cache (runs/study/gap/draws), so each spend is paired with the dense network it was drawn from.
STUDY_SCAN="0.982 0.986 0.989 0.991"
STUDY_GAP=("--at --trt" "--trt" "" "--at" "--ls 0.1")
GAP_SPARSITY=""  # the scan's choice
gap_jobs() {
  local base=$1 seed s v DRAWS=runs/$SET/gap
  for seed in $SEEDS; do job "$seed" 0 "$base"; done  # the dense networks; seed 1's first: the scan draws from it
  if [[ " $SEEDS " = *" 1 "* ]]; then for s in $STUDY_SCAN; do job 1 "$s" "$base"; done; fi
  if [ -n "$GAP_SPARSITY" ]; then
    for v in "${STUDY_GAP[@]}"; do for seed in $SEEDS; do job "$seed" $GAP_SPARSITY "$base" $v; done; done
  fi
}
study_jobs() {
  local e v seed RUNG
  for e in $BUDGETS; do
    local base="--dataset fashionmnist --arch resnet20 --epochs $e --subset 10000 --prune omp"
    RUNG=$([ "$e" = 5 ] || echo "e$e/")  # the 5-epoch rung keeps its folders: its finished runs are reused
    local at914=("${STUDY_914[@]}") at972=()
    if [ "$e" = 15 ]; then at972=("${STUDY_972[@]}"); fi
    if [ "$e" = 30 ]; then at914=("${STUDY_914_AT_30[@]}"); fi
    for v in "${at914[@]}"; do for seed in $SEEDS; do job "$seed" 0.914 "$base" $v; done; done  # seeds interleaved:
    for v in "${at972[@]}"; do for seed in $SEEDS; do job "$seed" 0.972 "$base" $v; done; done  # each core its draw
    if [ "$e" = 15 ]; then gap_jobs "$base"; fi
  done
}

# gpu_seconds: the GPU-seconds per epoch of a run behind --dry-run's GPU-hours, ES, and where it came from, ES_FROM:
# EPOCH_SECONDS if set, else --gpu-check's packing sweep (the best K runs at once per GPU), else its one run alone,
# else an assumed 10 s. When ES is the sweep's, ES1 and ES1_FROM are one run at a time's. A damaged file: exit 2.
gpu_seconds() {
  ES=10 ES_FROM="assumed, not measured: run --gpu-check on your GPU or set EPOCH_SECONDS" ES1=""
  if [ -n "${EPOCH_SECONDS:-}" ]; then ES=$EPOCH_SECONDS ES_FROM="set by EPOCH_SECONDS"; return; fi
  local fix="as --gpu-check writes it: run ./run_all.sh --gpu-check again, or delete the file" found
  if [ -e $MEASURED ]; then
    found=$(head -c 100 $MEASURED | tr '\0' '?')  # a damaged file may hold anything
    is_seconds "$found" || { echo "error: $MEASURED does not hold seconds per epoch (a number > 0) $fix" >&2; exit 2; }
    ES=$found ES_FROM="measured by --gpu-check, one run on the GPU, read from $MEASURED"
  fi
  if [ -e $PACKED ]; then
    found=$(head -c 100 $PACKED | tr '\0' '?')
    local k="" seconds="" mps=""
    if [[ $found =~ ^([1-9][0-9]*)\ ([0-9.]+)\ (mps|plain)$ ]]; then
      k=${BASH_REMATCH[1]} seconds=${BASH_REMATCH[2]} mps=${BASH_REMATCH[3]/plain/}
    fi
    is_seconds "$seconds" || { echo "error: $PACKED does not hold \"K SECONDS mps|plain\" $fix" >&2; exit 2; }
    ES1=$ES ES1_FROM=$ES_FROM ES=$seconds
    ES_FROM="$k runs at once per GPU${mps:+ under CUDA MPS} (--per-gpu $k), the best of --gpu-check's packing sweep, read from $PACKED"
  fi
}

# count LABEL < a job list: one line with its runs, spends and draws (an IMP draw trains its levels up to the highest
# one listed; a draw is one dense network: dataset, arch, seed, epochs), epochs in all, and for the full list
# GPU-hours at EPOCH_SECONDS per epoch.
count() {
  awk -v es="${ES:-}" -v label="$1" -v set=$SET '
    function n(k, word) { return k " " word (k == 1 ? "" : "s") }
    { match($0, /--dataset [a-z0-9-]+ --arch [a-z0-9]+/); draw = substr($0, RSTART, RLENGTH)
      match($0, /--seed [0-9]+/); draw = draw substr($0, RSTART, RLENGTH) ($0 ~ /rewind/ ? " rewind" : "")
      match($0, /--runs [^ ]+/); draw = draw substr($0, RSTART, RLENGTH)  # each --runs its own draw cache
      match($0, /--epochs [0-9]+/); E = substr($0, RSTART + 9, RLENGTH - 9); draw = draw " " E; epochs[draw] = E
      match($0, /--sparsity [0-9.]+/); s = substr($0, RSTART + 11, RLENGTH - 11)
      need = $0 ~ /--prune/ ? 1 : int(log(1 - s) / log(0.8) + 0.5) + 1  # IMP levels 0..L
      if (need > levels[draw]) levels[draw] = need
      tweaked = $0 ~ /--(skip|swish|mish|scale-init|ls|at|trt|kd|hessian-every)/
      if (tweaked || ($0 ~ /--prune/ && s > 0)) { spends++; spent += E } }  # a dense spend is its draw'"'"'s training
    END { for (d in levels) { draws++; trainings += levels[d]; spent += levels[d] * epochs[d] }
          printf "# %s%s: %s + %s of %s (vanilla LTH spends reuse them), %s", label, n(NR, "job"),
            n(spends + 0, "trained spend"), n(draws, "draw"), n(trainings, "training"), n(spent, "epoch")
          printf set == "full" ? ", %.0f GPU-hours\n" : "\n", spent * es / 3600 }'
}

GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c GPU || true)
VISIBLE=($(seq 0 $((GPUS - 1))))
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then VISIBLE=(${CUDA_VISIBLE_DEVICES//,/ }) GPUS=${#VISIBLE[@]}; fi  # the caller's GPUs
SLOTS=${JOBS:-$(( (GPUS > 0 ? GPUS : 1) * PER_GPU ))}
if [ $SET = study ] && [ -z "$JOBS" ] && [ "$GPUS" = 0 ]; then SLOTS=$(nproc); fi  # CPU: one run per core

# Run a job list (stdin) in $SLOTS concurrent slots, slot i on GPU i mod GPUs; finished runs are skipped. A queue:
# a free slot takes the next job of the list (a counter under flock), so a long run never holds up the jobs behind it.
# Each run's output goes to its train.log; the runner prints one line as a run starts and one as it ends.
run_list() {
  local jobs=(); mapfile -t jobs < <(grep -Ev '^[[:space:]]*(#|$)')  # blank lines and comments are no jobs
  local next tally i; next=$(mktemp) tally=$(mktemp); echo 0 > "$next"; echo "0 0 0" > "$tally"
  for ((slot = 0; slot < SLOTS; slot++)); do
    (while { flock 9; read -r i < "$next"; echo $((i + 1)) > "$next"; } 9< "$next"; ((i < ${#jobs[@]})); do
       [[ " ${jobs[i]} " =~ \ --out\ ([^ ]+)\  ]]  # every job names its folder (checked for --jobs-from)
       out=${BASH_REMATCH[1]} tag="[$((i + 1))/${#jobs[@]}]"
       if [ "$GPUS" -gt 1 ]; then export CUDA_VISIBLE_DEVICES=${VISIBLE[slot % GPUS]}; fi
       if ! claim "$out"; then settle - > /dev/null; continue; fi  # finished, or another runner trains it: quietly
       echo "$tag start: $out (log: $out/train.log)"
       echo "# $(date '+%F %T') train.py ${jobs[i]}" >> "$out/train.log"
       t0=$(date +%s)
       if $PY train.py ${jobs[i]} >> "$out/train.log" 2>&1; then rc=0; else rc=$?; fi
       exec 8>&-  # the run's lock (claim's)
       took=$(( $(date +%s) - t0 ))
       if [ $rc = 0 ]; then
         read -r left eta < <(settle $took)
         if [ "$left" = 0 ]; then echo "$tag done in $took s: $out; none left"
         else echo "$tag done in $took s: $out; $(thousands "$left") left, about $(duration "$eta") at the measured pace"; fi
       else
         settle - > /dev/null
         echo "$tag FAILED (exit $rc) after $took s: $out ($(tail -n 1 "$out/train.log")); log: $out/train.log" >&2
       fi
     done) &
  done
  wait; rm -f "$next" "$tally"
}

# claim OUT: hold OUT/.runner (file descriptor 8) for this runner, unless the run is finished or another runner on
# this folder holds it (it trains the run); mkdir only once the run is known to be unfinished.
claim() {
  [ ! -e "$1/results.json" ] || return 1
  mkdir -p "$1"
  exec 8> "$1/.runner"
  if flock -n 8 && [ ! -e "$1/results.json" ]; then return 0; fi  # finished while we waited for the lock: skip
  exec 8>&-
  return 1
}

# settle SECONDS|-: count one job of run_list's list as settled, trained in SECONDS (- if it was skipped or failed);
# prints the jobs left and the seconds they take at this runner's pace (the mean trained run's, over the slots).
settle() {
  local settled trained seconds
  {
    flock 7
    read -r settled trained seconds < "$tally"
    settled=$((settled + 1))
    if [ "$1" != - ]; then
      trained=$((trained + 1))
      seconds=$((seconds + $1))
    fi
    echo "$settled $trained $seconds" > "$tally"
  } 7< "$tally"
  local left=$((${#jobs[@]} - settled))
  echo "$left $((trained > 0 ? left * seconds / trained / SLOTS : 0))"
}

thousands() {  # 2408 -> 2,408
  local n=$1 grouped=""
  while [ "$n" -ge 1000 ]; do
    grouped=,$(printf %03d $((n % 1000)))$grouped
    n=$((n / 1000))
  done
  echo "$n$grouped"
}

duration() {  # seconds as read: 45 s, 12 min, 3.4 h
  if [ "$1" -lt 120 ]; then echo "$1 s"
  elif [ "$1" -lt 7200 ]; then echo "$(($1 / 60)) min"
  else awk -v s="$1" 'BEGIN { printf "%.1f h\n", s / 3600 }'; fi
}

# The analysis parts, after the trainings they read; an output that exists is skipped (a killed run resumes).
eigenvalue() {  # eigenvalue BATCHES ITERS RUN...: Fig. 2, A13: each run's top Hessian eigenvalue into RUN/hessian.json
  local run
  for run in "${@:3}"; do landscape "$run/hessian.json" eigenvalue "$run" --batches "$1" --iters "$2"; done
}
landscape() {  # landscape OUT contour|eigen|eigenvalue RUN... [OPTIONS]: Fig. 4, 8, 10 (a PNG and its .npz), 2, A13
  [ -e "$1" ] || $PY landscape.py "${@:2}" --out "$1" || echo "FAILED: landscape.py ${*:2}" >&2
}
has() { case " $PARTS " in *" $1 "*) ;; *) return 1 ;; esac; }

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
  part torchrun-1 240 $PY -m torch.distributed.run --nproc_per_node=1 train.py $small $same --out $dir/torchrun
  part torchrun-like-plain 5 diff <(grep -v '"seconds"' $dir/plain/results.json) \
    <(grep -v '"seconds"' $dir/torchrun/results.json)  # the same accuracies, losses and counts, to the last digit
  echo "gpu-check done;${failed:+ FAILED:$failed}${failed:- every part passed}"
}

case $MODE in
  jobs-from)  # each job needs its --out: the runner keeps the run's log there and skips it once it is finished
    [ -f "$JOBS_FROM" ] && [ -r "$JOBS_FROM" ] || { echo "error: --jobs-from $JOBS_FROM: no such readable file" >&2; exit 2; }
    line=$(awk '!/^[[:space:]]*(#|$)/ && !/(^|[[:space:]])--out [^[:space:]]/ { print NR; exit }' "$JOBS_FROM")
    if [ -n "$line" ]; then
      echo "error: --jobs-from $JOBS_FROM: line $line has no --out FOLDER; give each run its folder" >&2; exit 2
    fi
    setup
    run_list < "$JOBS_FROM" ;;
  gpu-check)
    setup
    gpu_check ;;
  test)
    setup
    $PY -m ruff format --check . && $PY -m ruff check . || exit 1  # formatted and lint-clean (ruff.toml), then tests
    # one test per core, each with one thread (as the tests' own runs); the Slurm tests share a worker (conftest.py)
    OMP_NUM_THREADS=1 exec $PY -m pytest -q -n auto --dist loadgroup ;;
  list)
    ${SET}_jobs ;;
  dry-run)  # the summary; --list prints the jobs
    if [ $SET = full ]; then gpu_seconds; for p in $PARTS; do PARTS=$p full_jobs | count "$p: "; done; fi
    if [ $SET = study ]; then for e in $BUDGETS; do BUDGETS=$e study_jobs | count "$e epochs: "; done; fi
    total=$(${SET}_jobs | count "in all: ")
    echo "$total"
    if [ $SET = full ]; then
      echo "# GPU-hours at $ES GPU-seconds per epoch of a run ($ES_FROM); parts share runs: the total counts each once"
      if [ -n "$ES1" ]; then  # the same epochs, one run per GPU at a time
        [[ $total =~ ([0-9]+)\ epochs ]]
        hours=$(awk -v e="${BASH_REMATCH[1]}" -v s="$ES1" 'BEGIN { printf "%.0f", e * s / 3600 }')
        echo "# one run per GPU at a time: $hours GPU-hours at $ES1 s per epoch ($ES1_FROM)"
      fi
    else echo "# the measured times of this list are in RESULTS.md"; fi
    if [ -n "$JOBS" ]; then how="set by --jobs"
    elif [ $SET = study ] && [ "$GPUS" = 0 ]; then how="one per CPU core"
    elif [ "$GPUS" = 0 ]; then how="no GPU found: $PER_GPU at a time"
    else how="$PER_GPU per GPU on $GPUS GPU$([ "$GPUS" = 1 ] || echo s)"; fi
    echo "# runs at once: $SLOTS ($how)" ;;
  run)
    setup
    start=$(date +%s)
    case $SET in
      study)
        export OMP_NUM_THREADS=$(( $(nproc) / SLOTS > 0 ? $(nproc) / SLOTS : 1 ))  # one thread per run beats shared ones
        study_jobs | run_list
        $PY report.py runs/study --out runs/study/report ;;
      quick)
        quick_jobs | run_list
        for seed in $SEEDS; do  # Fig. A13's eigenvalues and Fig. 8's contours of the two
          eigenvalue 2 10 runs/quick/fashionmnist_resnet20/omp_s0.914_{lth,attrt}/seed$seed
          landscape runs/quick/report/fig8_omp_s0.914_seed$seed.png contour \
            runs/quick/fashionmnist_resnet20/omp_s0.914_{lth,attrt}/seed$seed --grid 9 --images 256
        done
        $PY report.py runs/quick --out runs/quick/report ;;
      full)
        full_jobs | run_list
        d=runs/full/cifar100_resnet18 o=runs/full/report
        for seed in $SEEDS; do  # the paper's analysis: 10 batches, <= 100 power iterations, 1,000 test images
          if has fig2; then for s in $FIG2_LEVELS; do eigenvalue 10 100 $d/imp_s${s}_{lth,swish,mish}/seed$seed; done; fi
          if has figA13; then eigenvalue 10 100 $d/imp_s${FIG}_{lth,skip,swish,mish,scaleinit,ls0.1,at,trt,attrt}/seed$seed; fi
          if has fig4; then landscape $o/fig4_imp_s${FIG}_seed$seed.png contour --weights epoch5.pt --images 1000 \
            $d/imp_s${FIG}_{lth,skip,ls0.1,scaleinit}/seed$seed; fi
          if has fig8; then landscape $o/fig8_imp_s${FIG}_seed$seed.png contour --images 1000 \
            $d/imp_s${FIG}_{lth,at,trt,attrt}/seed$seed; fi
          if has fig10; then landscape $o/fig10_imp_s${FIG}_seed$seed.png eigen --images 1000 $d/imp_s${FIG}_{lth,attrt}/seed$seed; fi
        done
        $PY report.py runs/full --out runs/full/report ;;
    esac
    echo "$SET: $(( $(date +%s) - start )) s; the report is in runs/$SET/report" ;;
esac
