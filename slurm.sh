#!/usr/bin/env bash
# The reproduction on a Slurm cluster: one job array, a task per run of the job list, then one job for the report.
#
#   ./slurm.sh --quick -- --partition=cpu --time=1:00:00
#   ./slurm.sh --study --budget 15 -- --account=abc --array=%10
#   ./slurm.sh --parts "fig2 a4" --seeds 42 -- --partition=gpu --gres=gpu:1 --time=12:00:00
#   ./slurm.sh --jobs-from my_grid.txt --log-dir runs/slurm/grid -- --partition=gpu --gres=gpu:1
#
# Before "--": run_all.sh's job-list options (--quick, --study [--budget E], the full list's --parts, --seeds, ...:
# see the top of run_all.sh); the list is `./run_all.sh OPTIONS --list`. Or --jobs-from FILE: lines of train.py
# arguments, each with --out DIR. --log-dir DIR: where the list and the logs go (default
# runs/slurm/<list>-<date>-<time>).
# After "--": sbatch options for both jobs (partition, account, --gres, --time, --hold, ...); --array=%M lets at
# most M tasks run at once; --signal=B:TERM@S, how many seconds before the time limit a task is told to stop
# (default 120; Slurm may send it up to a minute earlier).
#
# What it submits:
# 1. one array, task N training line N of DIR/jobs.txt with slurm_task.sh (it skips a finished run and a run another
#    runner holds; on SIGTERM train.py stops at the next step and the task requeues itself, to resume after its last
#    epoch). Runs finished before submission are left out of the list, so submitting again submits what is left.
# 2. the report job, once the array has ended (--dependency=afterany): if every run finished, ./run_all.sh OPTIONS,
#    which skips them, runs the analysis (Hessian, landscapes) and report.py; for --jobs-from, report.py over the
#    folder that holds the runs. It trains nothing: unfinished runs are named in its log, and it fails.
# Bad input is one line on stderr and exit 2, before anything is created or submitted. The tasks do not install the
# environment: create it first where the nodes see it (./run_all.sh --test sets up .venv), or set PYTHON.
set -euo pipefail

fail() {
  echo "error: $*" >&2
  exit 2
}
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

# The command line: run_all.sh's options until "--", sbatch's after it
list_opts=() sbatch_opts=() jobs_from="" log_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; sbatch_opts=("$@"); break ;;
    --jobs-from) [ $# -ge 2 ] || fail "--jobs-from needs a file"; jobs_from=$(realpath -m -- "$2"); shift ;;
    --log-dir) [ $# -ge 2 ] || fail "--log-dir needs a folder"; log_dir=$(realpath -m -- "$2"); shift ;;
    --list|--dry-run|--test|--gpu-check) fail "$1 is run_all.sh's (./run_all.sh $1); slurm.sh submits a job list" ;;
    -h|--help) usage; exit 0 ;;
    *) list_opts+=("$1") ;;
  esac
  shift
done
if [ -n "$jobs_from" ] && [ ${#list_opts[@]} -gt 0 ]; then
  fail "--jobs-from FILE is a job list of its own: it takes none of run_all.sh's list options (${list_opts[*]})"
fi

# sbatch options: slurm.sh sets the array's range, the logs, the dependency, the folder and requeueing itself
throttle="" signal=B:TERM@120 user_opts=()
for ((i = 0; i < ${#sbatch_opts[@]}; i++)); do
  opt=${sbatch_opts[i]} value=""
  case "$opt" in
    --array|-a|--signal) value=${sbatch_opts[i + 1]:-}; i=$((i + 1)) ;;
    --array=*|--signal=*) value=${opt#*=} ;;
    -a?*) value=${opt#-a} ;;
  esac
  case "$opt" in
    --array*|-a*)
      [[ $value =~ ^%[1-9][0-9]*$ ]] ||
        fail "--array $value: slurm.sh sets the range (a task per run); give only the throttle, --array=%M"
      throttle=$value ;;
    --signal*)
      [[ $value =~ ^B:(SIG)?TERM@[0-9]+$ ]] ||
        fail "--signal $value: the task passes SIGTERM from the batch shell to train.py: give --signal=B:TERM@SECONDS"
      signal=$value ;;
    -o|-o?*|--output*|-e|-e?*|--error*|--open-mode*|-d|-d?*|--dependency*|-D|-D?*|--chdir*|--wrap*|--no-requeue)
      fail "$opt: slurm.sh sets this itself (logs in --log-dir, the report's dependency, the working folder, requeueing)" ;;
    --test-only|--parsable) fail "$opt: slurm.sh checks the options with sbatch --test-only itself" ;;
    *) user_opts+=("$opt") ;;
  esac
done

# The job list, and the runs of it not finished yet
jobs_file_name=${jobs_from:-"./run_all.sh ${list_opts[*]} --list"}
cd "$(dirname "$0")"
if [ -n "$jobs_from" ]; then
  [ -f "$jobs_from" ] || fail "--jobs-from $jobs_from: no such file"
  all=$(grep -v -e '^[[:space:]]*$' -e '^[[:space:]]*#' "$jobs_from" || true)  # as the runner: blanks, comments
  label=$(basename "$jobs_from" .txt)
else
  all=$(./run_all.sh "${list_opts[@]}" --list) || exit 2  # run_all.sh has said what is wrong, in one line
  label=full
  for opt in "${list_opts[@]}"; do case "$opt" in --quick|--study) label=${opt#--} ;; esac; done
fi
[ -n "$all" ] || fail "$jobs_file_name: no runs in the list"
if ! states=$(python3 grid.py --folders <<< "$all" 2>&1); then
  states=$(tail -1 <<< "$states")  # its error, after the lines it read
  fail "$jobs_file_name, ${states#error: }"
fi
mapfile -t lines <<< "$all"
todo=() folders=() n=${#lines[@]} i=0
while IFS=$'\t' read -r state folder; do  # grid.run_folder: the runner's and report.py's rule
  folders+=("$folder")
  [ "$state" = finished ] || todo+=("${lines[i]}")
  i=$((i + 1))
done <<< "$states"

PY=${PYTHON:-.venv/bin/python}
command -v "$PY" > /dev/null || fail "no Python at $PY: set up .venv first (./run_all.sh --test does) or set PYTHON"
command -v sbatch > /dev/null || fail "sbatch not found: run slurm.sh where Slurm's commands are (a login node)"
max=$(scontrol show config 2> /dev/null | awk '$1 == "MaxArraySize" { print $3 }' || true)
if [ -n "$max" ] && [ ${#todo[@]} -ge "$max" ]; then
  fail "${#todo[@]} runs to submit, and this cluster's MaxArraySize is $max: submit a piece (--parts, --seeds)"
fi
log_dir=${log_dir:-$PWD/runs/slurm/$label-$(date +%Y%m%d-%H%M%S)}
[ ! -e "$log_dir" ] || fail "$log_dir exists: choose another --log-dir"
both=(--chdir="$PWD" --requeue --open-mode=append "${user_opts[@]}")  # append: a requeued run keeps its first log
array=(--job-name=lottery-runs "--array=1-${#todo[@]}$throttle" --signal="$signal" "${both[@]}")
checked=("${both[@]}")  # the report job's options, and the array's when there is one
if [ ${#todo[@]} -gt 0 ]; then checked=("${array[@]}"); fi
if ! refusal=$(sbatch --test-only "${checked[@]}" slurm_task.sh 2>&1); then
  fail "sbatch refused the options: $(tail -1 <<< "$refusal")"
fi

# What the report job runs once every run is finished
if [ -n "$jobs_from" ]; then
  root=$(printf '%s\n' "${folders[@]}" | awk '
    { n = split($0, part, "/") - 1  # the parent of the run folder
      if (NR == 1) { depth = n; for (i = 1; i <= n; i++) common[i] = part[i] }
      for (i = 1; i <= depth; i++) if (i > n || part[i] != common[i]) { depth = i - 1; break } }
    END { s = common[1]; for (i = 2; i <= depth; i++) s = s "/" common[i]
          print depth == 0 ? "." : (s == "" ? "/" : s) }')
  report=("$PY" report.py "$root" --out "$root/report")
else
  report=(./run_all.sh "${list_opts[@]}")
fi

mkdir -p "$log_dir"
if [ ${#todo[@]} -gt 0 ]; then printf '%s\n' "${todo[@]}"; fi > "$log_dir/jobs.txt"
array_id=""
if [ ${#todo[@]} -gt 0 ]; then
  array_id=$(sbatch --parsable "${array[@]}" --output="$log_dir/task-%a.log" slurm_task.sh "$log_dir/jobs.txt")
  array_id=${array_id%%;*}  # "id;cluster" on a multi-cluster setup
  echo "submitted job array $array_id: task N of 1-${#todo[@]} trains line N of $log_dir/jobs.txt" \
    "($((n - ${#todo[@]})) of the list's $n runs finished already)"
else
  echo "every run of the list ($n) is finished already: no array, only the report job"
fi
report_id=$(sbatch --parsable --job-name=lottery-report ${array_id:+--dependency=afterany:$array_id} "${both[@]}" \
  --output="$log_dir/report.log" slurm_task.sh --report "$log_dir/jobs.txt" "${report[@]}")
report_id=${report_id%%;*}
echo "submitted report job $report_id${array_id:+, to start when array $array_id has ended}: ${report[*]}"
echo "watch:  squeue -j ${array_id:+$array_id,}$report_id  (squeue -r: one line per task; scontrol show job ID)"
echo "logs:   ${array_id:+$log_dir/task-N.log (task N), }$log_dir/report.log"
echo "cancel: scancel ${array_id:+$array_id }$report_id"
