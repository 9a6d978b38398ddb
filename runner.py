"""The runner: trains a job list, N runs at once, a GPU per slot, skipping finished runs; ./run_all.sh calls it.

    python3 runner.py [run_all.sh's list options] [--jobs N] [--per-gpu K]     # the grid's list (grid.py)
    python3 runner.py --jobs-from FILE [--jobs N]                              # lines of train.py arguments

A free slot takes the next job of the list, so a long run holds up no job behind it. Each run's output goes to its
train.log; a line as a run starts and one as it ends (the jobs left, and their time at this runner's pace so far);
a failure on stderr with its log. A run is trained under the lock <out>/.runner (held by train.py as well), so two
runners or Slurm tasks never train one run. SIGTERM or Ctrl-C: every train.py started is told to stop (SIGTERM: it
saves at its next step), nothing more starts, and the same command resumes. Exit status: 0, 1 if a run failed, 143
(130 for Ctrl-C) if stopped. Standard library only; train.py runs under --python (default: $PYTHON or .venv).
"""

import concurrent.futures
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import grid


def read_jobs(path):
    """The job lines of a --jobs-from file (blank lines and # comments skipped), each checked to name its folder."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise grid.Refused(f"--jobs-from {path}: no such readable file") from None
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                grid.run_folder(line)
            except grid.Refused as e:
                raise grid.Refused(f"--jobs-from {path}: line {n} {e}") from None
            except ValueError as e:  # shlex's: a quote never closed
                raise grid.Refused(f"--jobs-from {path}: line {n}: {e}; quote as a shell would") from None
            lines.append(line)
    return lines


def duration(seconds):
    """45 s, 12 min, 3.4 h."""
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class Runner:
    def __init__(self, lines, slots, gpus, python, env=None):
        self.lines, self.slots, self.gpus, self.python = lines, slots, gpus, python
        self.env = dict(os.environ, **(env or {}))
        self.lock, self.next, self.settled, self.trained, self.seconds, self.failed = threading.Lock(), 0, 0, 0, 0, 0
        self.running, self.stopped = set(), None

    def stop(self, signum, frame):
        """A signal: nothing more starts; each train.py running is told to stop (it saves, then exits 143)."""
        with self.lock:
            self.stopped = signum
            for proc in self.running:
                proc.send_signal(signal.SIGTERM)

    def settle(self, took=None):
        """Count one job as settled (trained in `took` s, or skipped or failed): (jobs left, their time at the pace)."""
        with self.lock:
            self.settled += 1
            if took is not None:
                self.trained, self.seconds = self.trained + 1, self.seconds + took
            left = len(self.lines) - self.settled
            return left, left * self.seconds // self.trained // self.slots if self.trained else 0

    def slot(self, i):
        env = dict(self.env, CUDA_VISIBLE_DEVICES=self.gpus[i % len(self.gpus)]) if len(self.gpus) > 1 else self.env
        while True:
            with self.lock:
                if self.stopped or self.next == len(self.lines):
                    return
                n, self.next = self.next, self.next + 1
            self.train(n, env)

    def train(self, n, env):
        line, tag = self.lines[n], f"[{n + 1}/{len(self.lines)}]"
        out, finished = grid.run_folder(line)
        if finished:
            return self.settle()
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, ".runner"), "a") as held, open(os.path.join(out, "train.log"), "a") as log:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another runner trains it: leave it, quietly
                return self.settle()
            if grid.finished(out):  # finished while we looked
                return self.settle()
            print(f"{tag} start: {out} (log: {out}/train.log)", flush=True)
            log.write(f"# {time.strftime('%F %T')} train.py {line}\n")
            log.flush()
            t0 = time.time()
            with self.lock:  # a signal between taking the job and here: it does not start
                if self.stopped:
                    return
                proc = subprocess.Popen(
                    [self.python, "train.py", *shlex.split(line)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=[held.fileno()],  # the lock lasts as long as train.py, even if this runner dies
                    start_new_session=True,  # Ctrl-C reaches the runner alone, which passes on one SIGTERM
                )
                self.running.add(proc)
            rc = proc.wait()
            with self.lock:
                self.running.discard(proc)
        took = round(time.time() - t0)
        if self.stopped:
            print(f"{tag} stopped (exit {rc}) after {took} s: {out}; the same command resumes it", file=sys.stderr)
        elif rc == 0:
            left, eta = self.settle(took)
            more = f"{left:,} left, about {duration(eta)} at the measured pace" if left else "none left"
            print(f"{tag} done in {took} s: {out}; {more}", flush=True)
        else:
            self.settle()
            with self.lock:
                self.failed += 1
            with open(os.path.join(out, "train.log"), errors="replace") as f:
                last = (f.read().splitlines() or [""])[-1]
            print(f"{tag} FAILED (exit {rc}) after {took} s: {out} ({last}); log: {out}/train.log", file=sys.stderr)

    def run(self):
        """Every job in its slot; returns the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        with concurrent.futures.ThreadPoolExecutor(self.slots) as pool:
            slots = [pool.submit(self.slot, i) for i in range(self.slots)]
            while concurrent.futures.wait(slots, timeout=0.5).not_done:  # a signal's handler runs in between
                pass
            for done in slots:
                done.result()
        if self.stopped:
            print(f"stopped by signal {self.stopped}: nothing more started; the same command resumes", file=sys.stderr)
            return 128 + self.stopped
        if self.failed:
            print(f"{self.failed} of {len(self.lines)} runs failed (their logs are named above)", file=sys.stderr)
            return 1
        return 0


def main(argv):
    try:
        o = grid.options(argv)
        lines = read_jobs(o.jobs_from) if o.jobs_from else grid.jobs(o)
        slots, _ = grid.slots(o, gpus := grid.gpus())
    except grid.Refused as e:
        sys.exit(print(f"error: {e}", file=sys.stderr) or 2)
    if o.check:  # run_all.sh checks the input before it sets up the environment
        return
    threads = {"OMP_NUM_THREADS": str(max(1, os.cpu_count() // slots))} if o.set == "study" else {}
    sys.exit(Runner(lines, slots, gpus, o.python, threads).run())


if __name__ == "__main__":
    main(sys.argv[1:])
