"""The Slurm path, slurm.sh and slurm_task.sh, on a real one-node Slurm started by this file: the array runs every
line like a plain run, a task signalled mid-epoch is requeued and resumes, the report job waits for the array, a run
another runner holds is skipped. `python -m pytest -q test_slurm.py`

As root with apt-get, the `slurm` fixture installs Debian's Slurm (slurmctld, slurmd, slurm-client, munge) if it is
missing, and starts munged, slurmctld and slurmd with their configuration, state and logs in a temporary folder
(own socket and ports: nothing of the machine's is used); it stops them by their PIDs at the end. Where that cannot
be done (not root, no apt-get, no network) the cluster tests skip, saying why. The bad-input test needs no Slurm.
"""

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SLURM_SH = os.path.join(HERE, "slurm.sh")
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
PROGRAMS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo"]
SEARCH_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin"  # the daemons live in sbin
SMALL = "--dataset synthetic --arch resnet20 --device cpu --batch-size 32 --prune random --sparsity 0.5 --deterministic"


def without_seconds(path):
    return {k: v for k, v in json.loads(open(path).read()).items() if k != "seconds"}


# ---------------------------------------------------------------- bad input, no Slurm needed


def test_bad_input_is_one_line_on_stderr_exit_2_and_creates_nothing(tmp_path):
    no_out = tmp_path / "no_out.txt"
    no_out.write_text(f"{SMALL} --epochs 1 --out {tmp_path / 'a'}\n{SMALL} --epochs 1\n")
    logs = tmp_path / "logs"
    cases = {
        "--bogus": ["--bogus"],  # run_all.sh's own line, passed on
        "--list is run_all.sh's": ["--quick", "--list"],
        "no such file": ["--jobs-from", str(tmp_path / "missing.txt")],
        "line 2: has no --out FOLDER": ["--jobs-from", str(no_out)],
        "give only the throttle": ["--quick", "--", "--array=1-5"],
        "--output=x.log: slurm.sh sets this itself": ["--quick", "--", "--output=x.log"],
        "give --signal=B:TERM@SECONDS": ["--quick", "--", "--signal=USR1@60"],
        "takes none of run_all.sh's list options": ["--quick", "--jobs-from", str(no_out)],
    }
    for words, args in cases.items():
        r = subprocess.run([SLURM_SH, "--log-dir", str(logs), *args], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, (args, r.stderr)
        assert r.stdout == "" and not logs.exists(), args


def test_a_task_splits_its_line_as_a_shell_would_as_the_runner_does(tmp_path):
    """slurm_task.sh on a line whose quoted --out has a space and an umlaut (a stand-in for train.py, no Slurm
    needed): train.py gets 4 words, the folder is one, and a second look finds the run finished."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\nout="${@: -1}"; echo "$#" > "$out/argc"; touch "$out/results.json"\n')
    fake.chmod(0o755)
    folder = tmp_path / "q" / "my run ü"
    (tmp_path / "jobs.txt").write_text(f'--sleep 0 --out "{folder}"\n')
    env = dict(os.environ, PYTHON=str(fake), SLURM_ARRAY_TASK_ID="1")
    task = [os.path.join(HERE, "slurm_task.sh"), str(tmp_path / "jobs.txt")]
    r = subprocess.run(task, capture_output=True, text=True, env=env, cwd=HERE)
    assert r.returncode == 0 and (folder / "argc").read_text() == "5\n", r.stdout + r.stderr  # train.py, 4 words
    assert sorted(os.listdir(tmp_path / "q")) == ["my run ü"]
    r = subprocess.run(task, capture_output=True, text=True, env=env, cwd=HERE)
    assert r.returncode == 0 and f"finished already: {folder}/results.json" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------- a one-node Slurm


class Slurm:
    """The client side of the test cluster: its environment (SLURM_CONF) and a few queries."""

    def __init__(self, folder, env):
        self.folder, self.env = folder, env

    def run(self, *args, check=True):
        r = subprocess.run(args, capture_output=True, text=True, env=self.env, cwd=HERE, timeout=60)
        assert not check or r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    def submit(self, *args):
        """./slurm.sh ARGS: (array id or None, report job id, stdout)."""
        out = self.run(SLURM_SH, *args).stdout
        array = re.search(r"submitted job array (\d+)", out)
        return array and array[1], re.search(r"submitted report job (\d+)", out)[1], out

    def jobs(self, job):
        """`scontrol show job JOB` (an array: every task) as dicts of its fields."""
        lines = self.run("scontrol", "-o", "show", "job", job).stdout.splitlines()
        return [dict(field.split("=", 1) for field in line.split() if "=" in field) | {"line": line} for line in lines]

    def queue(self, *ids):
        """squeue's lines for these jobs: id, state, reason."""
        return self.run("squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i %T %r").stdout.splitlines()

    def wait_until_gone(self, *ids, timeout=150):
        deadline = time.time() + timeout
        while self.queue(*ids):
            assert time.time() < deadline, self.queue(*ids)
            time.sleep(0.5)


def install_slurm():
    """Debian's Slurm where it is missing; the reason it cannot be had, or None."""
    if all(shutil.which(p, path=SEARCH_PATH) for p in PROGRAMS):
        return None
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    for commands in ([install], [["apt-get", "update", "-q"], install]):  # the package lists may be missing or old
        try:
            for command in commands:
                r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
                if r.returncode:
                    break
        except subprocess.TimeoutExpired:
            return "apt-get took over 10 minutes (no network?)"
        if r.returncode == 0 and all(shutil.which(p, path=SEARCH_PATH) for p in PROGRAMS):
            return None
    errors = [line for line in (r.stderr + r.stdout).splitlines() if line.startswith("E:")] or [r.stderr.strip()]
    return f"apt-get could not install {' '.join(PACKAGES)}: {' '.join(errors)[:300]}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(d, host, cpus):
    return f"""ClusterName=lotterytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# our own munged; a requeued job may start again cred_expire + 1 seconds after it stopped (default 120)
AuthInfo=socket={d}/munge.socket,cred_expire=5
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
PlugStackConfig={d}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# the scheduler looks at pending jobs every second (default 60: a requeued task would wait a minute)
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
# finished jobs stay in scontrol's view through the tests
MinJobAge=600
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/log/jobcomp.txt
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a one-node Slurm here needs root (slurmd, munged, apt-get)")
    reason = install_slurm()
    if reason:
        pytest.skip(reason)
    program = {p: shutil.which(p, path=SEARCH_PATH) for p in PROGRAMS}
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir()
    (d / "munge.key").write_bytes(os.urandom(1024))
    (d / "munge.key").chmod(0o600)
    (d / "plugstack.conf").write_text("")  # no SPANK plugins of the machine's
    host = socket.gethostname().split(".")[0]
    (d / "slurm.conf").write_text(slurm_conf(d, host, min(2, os.cpu_count())))
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env["PATH"] = SEARCH_PATH
    daemons = []

    def start(*command):
        log = open(d / "log" / f"{os.path.basename(command[0])}.out", "w")
        daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))

    def logs():
        return "\n".join(f"{p.name}:\n{p.read_text()[-2000:]}" for p in sorted((d / "log").iterdir()))

    cluster = Slurm(d, env)
    try:
        start(
            program["munged"],
            "--foreground",
            "--force",
            f"--key-file={d}/munge.key",
            f"--socket={d}/munge.socket",
            f"--pid-file={d}/munged.pid",
            f"--log-file={d}/log/munged.log",
            f"--seed-file={d}/munged.seed",
        )
        deadline = time.time() + 20
        while not (d / "munge.socket").exists():
            assert time.time() < deadline and daemons[0].poll() is None, logs()
            time.sleep(0.1)
        start(program["slurmctld"], "-D", "-f", str(d / "slurm.conf"))
        start(program["slurmd"], "-D", "-f", str(d / "slurm.conf"))
        deadline = time.time() + 60
        while cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() != "idle":
            assert time.time() < deadline and all(p.poll() is None for p in daemons), "no idle node:\n" + logs()
            time.sleep(0.5)
        yield cluster
    finally:
        if len(daemons) == 3:  # a failed test may leave jobs: end them before their daemons
            left = cluster.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
            if left:
                cluster.run("scancel", *left, check=False)
                deadline = time.time() + 30
                while cluster.run("squeue", "-h", check=False).stdout.strip() and time.time() < deadline:
                    time.sleep(0.5)
        for p in reversed(daemons):  # slurmd, slurmctld, munged
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------- one array: every scenario but the held run

VARIANTS = {
    "lth": "--epochs 1 --subset 256",
    "swish": "--swish --epochs 1 --subset 256",
    "ls": "--ls 0.1 --epochs 4 --subset 1000",
}
# The task (line) that gets SIGTERM mid-training: 4 epochs of 28 batches. The last task to start keeps the array's
# own job id, the id that names the whole array: a task that requeued itself by that id would requeue them all.
SIGNALLED = 3


def lines(root):
    """The job list: one line per variant, runs under `root`."""
    return [f"{SMALL} {flags} --runs {root}/runs --out {root}/{name}" for name, flags in VARIANTS.items()]


@pytest.fixture(scope="module")
def array(slurm, tmp_path_factory):
    """The array of `lines`, its task SIGNALLED signalled in its epoch 2, run to its end under Slurm; beside it
    the same lines run plainly (no Slurm, never stopped) into another folder."""
    d = tmp_path_factory.mktemp("array")
    (d / "jobs.txt").write_text("\n".join(lines(d / "slurm")) + "\n")
    plain = [
        subprocess.Popen(
            [sys.executable, "train.py", *line.split()], cwd=HERE, env=slurm.env, stdout=subprocess.DEVNULL
        )
        for line in lines(d / "plain")
    ]
    array_id, report_id, printed = slurm.submit("--jobs-from", str(d / "jobs.txt"), "--log-dir", str(d / "logs"))
    queued = slurm.queue(report_id)
    dependency = slurm.jobs(report_id)[0]["Dependency"]
    log = d / "logs" / f"task-{SIGNALLED}.log"
    deadline = time.time() + 90
    while not (log.exists() and "[spend] epoch   1/4" in log.read_text()):  # epoch 2 has begun
        assert time.time() < deadline and slurm.queue(array_id), log.read_text() if log.exists() else "no log"
        time.sleep(0.1)
    signalled_at = slurm.queue(f"{array_id}_{SIGNALLED}")
    signalled_job_id = slurm.jobs(f"{array_id}_{SIGNALLED}")[0]["JobId"]
    slurm.run("scancel", "--signal=TERM", "--batch", f"{array_id}_{SIGNALLED}")
    slurm.wait_until_gone(array_id, report_id)
    assert all(p.wait() == 0 for p in plain)
    return dict(
        dir=d,
        array_id=array_id,
        report_id=report_id,
        printed=printed,
        queued=queued,
        dependency=dependency,
        signalled_at=signalled_at,
        signalled_job_id=signalled_job_id,
    )


def test_the_array_runs_each_line_to_the_end_like_a_plain_run(slurm, array):
    d = array["dir"]
    assert f"task N of 1-3 trains line N of {d / 'logs' / 'jobs.txt'}" in array["printed"], array["printed"]
    assert (d / "logs" / "jobs.txt").read_text() == (d / "jobs.txt").read_text()  # nothing finished: every line
    tasks = slurm.jobs(array["array_id"])
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == [1, 2, 3]
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks), tasks
    for name in VARIANTS:
        assert without_seconds(d / "slurm" / name / "results.json") == without_seconds(
            d / "plain" / name / "results.json"
        )
    for task in (1, 2, 3):  # one log per task, in one folder
        assert f"task {task} of array {array['array_id']}" in (d / "logs" / f"task-{task}.log").read_text()


def test_a_task_signalled_mid_epoch_is_requeued_and_resumes_from_its_last_epoch(slurm, array):
    d = array["dir"]
    assert re.fullmatch(rf"{array['array_id']}_{SIGNALLED} RUNNING None", array["signalled_at"][0])
    log = (d / "logs" / f"task-{SIGNALLED}.log").read_text()
    stop = re.search(r"stopped by a signal in epoch (\d): \S+ keeps epoch (\d)", log)
    assert stop and int(stop[1]) >= 2 and int(stop[2]) == int(stop[1]) - 1, log
    assert f"stopped by SIGTERM (exit 143): requeueing {array['array_id']}_{SIGNALLED};" in log, log
    assert "restart 1)" in log and f"resuming after epoch {stop[2]} from" in log, log
    assert "[spend] epoch   4/4" in log and log.count("test acc") == 1, log  # trained to the end, once
    assert array["signalled_job_id"] == array["array_id"]  # the premise of SIGNALLED
    restarts = {t["ArrayTaskId"]: t["Restarts"] for t in slurm.jobs(array["array_id"])}
    assert restarts == {"1": "0", "2": "0", str(SIGNALLED): "1"}, restarts  # this task requeued, and only it
    # the same result as the run never stopped (the test above compares every run; this one was cut)
    assert without_seconds(d / "slurm" / "ls" / "results.json") == without_seconds(d / "plain" / "ls" / "results.json")


def test_the_report_job_waits_for_the_array_then_writes_the_report(slurm, array):
    d = array["dir"]
    assert array["queued"] == [f"{array['report_id']} PENDING Dependency"], array["queued"]
    assert array["dependency"].startswith(f"afterany:{array['array_id']}_*"), array["dependency"]
    (report,) = slurm.jobs(array["report_id"])
    assert report["JobState"] == "COMPLETED", (d / "logs" / "report.log").read_text()
    last_task_end = max(t["EndTime"] for t in slurm.jobs(array["array_id"]))  # ISO times, comparable as text
    assert report["StartTime"] >= last_task_end, (report, last_task_end)
    log = (d / "logs" / "report.log").read_text()
    assert "every run of" in log and f"report.py {d / 'slurm'} --out {d / 'slurm' / 'report'}" in log, log
    md = (d / "slurm" / "report" / "report.md").read_text()
    assert "| Random | Random+Swish |" in md and "| Random+LS |" in md, md  # random masks: named by pruner


# ---------------------------------------------------------------- a run another runner holds


def test_a_run_another_runner_holds_is_skipped_and_the_report_says_it_is_unfinished(slurm, array, tmp_path):
    held = tmp_path / "held"
    finished = array["dir"] / "plain" / "lth"  # a run finished before submission: left out of the array
    (tmp_path / "jobs.txt").write_text(
        f"{SMALL} --epochs 1 --subset 256 --runs {tmp_path}/runs --out {held}\n"
        f"{SMALL} --epochs 1 --subset 256 --runs {array['dir']}/plain/runs --out {finished}\n"
    )
    held.mkdir()
    with open(held / ".runner", "w") as lock:  # the lock run_all.sh's runner holds while it trains a run
        fcntl.flock(lock, fcntl.LOCK_EX)
        array_id, report_id, printed = slurm.submit(
            "--jobs-from", str(tmp_path / "jobs.txt"), "--log-dir", str(tmp_path / "logs")
        )
        assert "task N of 1-1 trains" in printed and "(1 of the list's 2 runs finished already)" in printed, printed
        slurm.wait_until_gone(array_id, report_id)
    (task,) = slurm.jobs(array_id)
    assert task["JobState"] == "COMPLETED", task
    log = (tmp_path / "logs" / "task-1.log").read_text()
    assert f"skipped: another runner holds {held}/.runner" in log, log
    assert sorted(os.listdir(held)) == [".runner"]  # train.py never started here: no config.json, no checkpoint
    (report,) = slurm.jobs(report_id)
    assert report["JobState"] == "FAILED" and report["ExitCode"] == "1:0", report
    report_log = (tmp_path / "logs" / "report.log").read_text()
    assert f"unfinished: train.py {SMALL} --epochs 1 --subset 256 --runs {tmp_path}/runs --out {held}" in report_log
    assert "1 run(s)" in report_log and not (tmp_path / "report").exists(), report_log


# ---------------------------------------------------------------- a fixed list, with the user's sbatch options


def test_a_fixed_list_is_submitted_with_the_users_sbatch_options(slurm, tmp_path):
    """The full reproduction's Fig. 8 for a seed nobody runs: the array holds `./run_all.sh ... --list`, the user's
    options reach both jobs. Submitted on hold, then cancelled: nothing trains."""
    options = ["--parts", "fig8", "--seeds", "777"]
    expected = subprocess.run([os.path.join(HERE, "run_all.sh"), *options, "--list"], capture_output=True, text=True)
    assert expected.returncode == 0 and len(expected.stdout.splitlines()) == 4
    array_id, report_id, _ = slurm.submit(
        *options, "--log-dir", str(tmp_path / "logs"), "--", "--hold", "--time=30", "--array=%1", "-J", "fig8"
    )
    try:
        assert (tmp_path / "logs" / "jobs.txt").read_text() == expected.stdout
        tasks, (report,) = slurm.jobs(array_id), slurm.jobs(report_id)
        (pending,) = [t for t in tasks if "ArrayTaskThrottle" in t]  # the array's pending tasks, as one record
        assert pending["ArrayTaskId"] == "1-4%1" and pending["ArrayTaskThrottle"] == "1", pending
        for job in (pending, report):
            assert job["JobName"] == "fig8" and job["TimeLimit"] == "00:30:00" and job["Requeue"] == "1", job
            assert job["Reason"] == "JobHeldUser" and job["WorkDir"] == HERE, job
        assert f"Command={HERE}/slurm_task.sh {tmp_path}/logs/jobs.txt " in pending["line"], pending["line"]
        assert f"slurm_task.sh --report {tmp_path}/logs/jobs.txt ./run_all.sh {' '.join(options)} " in report["line"]
        assert report["Dependency"].startswith(f"afterany:{array_id}_*"), report
    finally:
        slurm.run("scancel", array_id, report_id)


def test_options_sbatch_refuses_are_one_line_and_nothing_is_submitted(slurm, tmp_path):
    before = slurm.run("squeue", "-h").stdout
    r = slurm.run(SLURM_SH, "--quick", "--log-dir", str(tmp_path / "logs"), "--", "--partition=nope", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: sbatch refused the options: ") and "partition" in r.stderr, r.stderr
    assert not (tmp_path / "logs").exists() and slurm.run("squeue", "-h").stdout == before
