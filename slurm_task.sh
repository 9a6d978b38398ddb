#!/usr/bin/env bash
# One Slurm job of a reproduction submitted by ./slurm.sh; sbatch runs it, in the repository's folder.
#
#   slurm_task.sh JOBS            an array task: trains line $SLURM_ARRAY_TASK_ID of JOBS (train.py's arguments)
#   slurm_task.sh --report JOBS COMMAND...
#                                 the job after the array: once every run of JOBS has its results.json, runs
#                                 COMMAND (./run_all.sh with the list's options: analysis and report.py)
#
# An array task trains its run at most once at a time and survives preemption and time limits:
# - a run with results.json is finished: the task says so and exits 0;
# - a run another runner trains holds "$out/.runner" (the flock run_all.sh's runner takes around train.py):
#   the task leaves it to that runner and exits 0, so a cluster array and ./run_all.sh on one folder exclude
#   each other;
# - slurm.sh submits with --signal=B:TERM@SECONDS --requeue: before the time limit only this shell gets SIGTERM
#   (as from `scancel --signal=TERM --batch`). It passes the signal on to train.py, which stops at the next step
#   and exits 143, keeping its last epoch's checkpoint; then the task requeues itself (scontrol requeue), and its
#   rerun, the same train.py command, resumes from there. A preemption with PreemptMode=REQUEUE sends SIGTERM to
#   train.py as well and requeues the task itself.
set -euo pipefail

PY=${PYTHON:-.venv/bin/python}

state_of() {  # state_of < JOBS: per line "finished" or "unfinished", a tab, its folder (grid.run_folder, as the runner)
  python3 grid.py --folders
}

if [ "${1:-}" = --report ]; then
  jobs=$2
  shift 2
  mapfile -t lines < "$jobs"
  unfinished=0 i=0
  while IFS=$'\t' read -r state _; do
    [ "$state" = finished ] || { echo "unfinished: train.py ${lines[i]}"; unfinished=$((unfinished + 1)); }
    i=$((i + 1))
  done < <(state_of < "$jobs")
  if [ $unfinished -gt 0 ]; then  # a report of a part would look complete; say what is missing instead
    echo "error: $unfinished run(s) of $jobs unfinished (their task logs are beside it): no report." \
      "Submit again with the same options: slurm.sh skips finished runs" >&2
    exit 1
  fi
  echo "every run of $jobs is finished: $*"
  exec "$@"
fi

jobs=$1
task=${SLURM_ARRAY_TASK_ID:?"is not set: slurm_task.sh is an array task (./slurm.sh submits it)"}
line=$(sed -n "${task}p" "$jobs")
[ -n "$line" ] || { echo "error: $jobs has no line $task" >&2; exit 2; }
IFS=$'\t' read -r state out < <(state_of <<< "$line")
echo "task $task of array ${SLURM_ARRAY_JOB_ID:-?} (job ${SLURM_JOB_ID:-?}, restart ${SLURM_RESTART_COUNT:-0})" \
  "on $(hostname) at $(date '+%F %T'): train.py $line"

if [ "$state" = finished ]; then
  echo "finished already: $out/results.json"
  exit 0
fi
mkdir -p "$out"
exec 9>> "$out/.runner"  # held on fd 9, which train.py inherits: the lock lasts as long as the training
if ! flock -n 9; then
  echo "skipped: another runner holds $out/.runner and trains this run"
  exit 0
fi
if [[ $(state_of <<< "$line") == finished* ]]; then  # another runner finished it between the first look and the lock
  echo "finished already: $out/results.json"
  exit 0
fi

# SIGTERM reaches this shell, not train.py: pass it on. A trapped signal makes `wait` return at once (status 143)
# while train.py is still saving, so wait until it has exited, then once more for its own exit status.
stopped=""
pid=""
trap 'stopped=1; [ -z "$pid" ] || kill -TERM "$pid" 2> /dev/null || true' TERM
# the line is train.py's arguments, split into words as a shell (and the runner: shlex) would, quotes included
mapfile -d '' -t words < <(
  python3 -c 'import shlex, sys; print(*shlex.split(sys.argv[1]), sep="\0", end="\0")' "$line")
$PY train.py "${words[@]}" &
pid=$!
[ -z "$stopped" ] || kill -TERM "$pid"  # a signal that came before train.py started
while kill -0 "$pid" 2> /dev/null; do
  wait "$pid" || true
done
rc=0
wait "$pid" || rc=$?

# Requeue on the signal, not on train.py's exit code alone: after a SIGTERM an unfinished run requeues, whatever its exit
if [ ! -e "$out/results.json" ] && { [ -n "$stopped" ] || [ $rc = 143 ]; }; then
  # this task by its array name: the last task to start has the array's own job id, and `scontrol requeue ID`
  # would requeue every task of the array
  me=${SLURM_ARRAY_JOB_ID:?}_$task
  echo "stopped by SIGTERM (exit $rc): requeueing $me; its rerun resumes from the checkpoint"
  if scontrol requeue "$me"; then
    exit 0  # Slurm ends this run now; the task waits in the queue for its next one
  fi
  # A preemption with PreemptMode=REQUEUE requeues the job itself ("Job is pending execution"): nothing to do then
  echo "scontrol requeue $me was refused; unless Slurm requeued it itself (a preemption does), submit again" \
    "with the same options (slurm.sh skips finished runs)" >&2
fi
echo "train.py exited $rc"
exit $rc
