"""Faults a long reproduction meets: a full disk, a damaged draw cache, preemption, two runners on one folder.
`python -m pytest -q test_faults.py`"""

import gzip
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import cli
import data
import runs
from conftest import HERE, ONE_THREAD, run_script, write_cifar_file

LTH = "--epochs 1 --prune random --sparsity 0.5".split()
SMALL = ["--dataset", "synthetic", "--arch", "resnet20", "--subset", "256", "--batch-size", "64", "--device", "cpu"]


def train(*args):
    return run_script("train.py", *SMALL, *args)


def one_line_error(r, *words):
    return (
        r.returncode == 2
        and r.stderr.count("\n") == 1
        and r.stderr.startswith("error: ")
        and all(w in r.stderr for w in words)
    )


def test_a_full_disk_is_one_line_and_the_same_command_finishes_once_space_is_freed(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    fs = tmp_path / "fs"
    fs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(fs)], capture_output=True).returncode:
        pytest.skip("this machine does not let root mount a tmpfs")
    try:
        cmd = [*LTH, "--at", "--runs", fs / "runs", "--out", fs / "out"]
        r = train(*cmd)  # init.pt (1 MB) fits, the first checkpoint (3 MB) does not
        assert one_line_error(r, "disk is full", "checkpoint.pt"), r.stderr
        assert not list(fs.rglob(".tmp-*"))  # no temporary file left behind
        init = next(fs.rglob("init.pt")).read_bytes()
        subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)
        r = train(*cmd)
        assert r.returncode == 0, r.stderr
        assert json.loads((fs / "out" / "results.json").read_text())["pruned_nonzero"] == 0
        assert next(fs.rglob("init.pt")).read_bytes() == init  # what was written before is what was kept
    finally:
        subprocess.run(["umount", str(fs)])


def test_a_damaged_draw_file_names_its_repair_and_repair_keeps_the_damaged_copy(tmp_path):
    runs_dir = tmp_path / "runs"
    common = ["--epochs", "1", "--runs", runs_dir]
    assert train(*common, "--sparsity", "0.2", "--out", tmp_path / "lth").returncode == 0  # trains imp_00, imp_01
    draw = next((runs_dir / "draws").iterdir())
    mask = draw / "imp_01" / "mask.pt"
    good = mask.read_bytes()
    mask.write_bytes(good[:100])  # a copy cut short
    spend = [*common, "--sparsity", "0.2", "--ls", "0.1", "--out", tmp_path / "ls"]
    r = train(*spend)
    assert one_line_error(r, "imp_01/mask.pt", "--repair") and not (tmp_path / "ls" / "results.json").exists()
    r = train(*spend, "--repair")
    assert r.returncode == 0, r.stderr
    assert (draw / "imp_01" / "mask.pt.damaged").read_bytes() == good[:100]  # moved aside, never deleted
    assert mask.read_bytes() != good[:100]
    assert torch_equal_masks(mask, tmp_path / "lth" / "mask.pt")  # derived again: the same mask as before

    (draw / "imp_01" / "model.pt").write_bytes(b"cut")  # a trained network: it cannot be derived again
    for extra in ([], ["--repair"]):  # imp_02's mask is drawn from imp_01's trained weights
        r = train(*common, "--sparsity", "0.36", "--out", tmp_path / f"next{len(extra)}", *extra)
        assert one_line_error(r, "imp_01/model.pt", "cannot be derived again", f"move {draw / 'imp_01'} aside"), (
            r.stderr
        )


def torch_equal_masks(a, b):
    import torch

    ma, mb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_a_damaged_config_is_one_line_and_a_dead_holders_lock_is_free(tmp_path):
    cmd = [*LTH, "--runs", tmp_path / "runs", "--out", tmp_path / "r"]
    (tmp_path / "r").mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(tmp_path / "r" / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    assert one_line_error(train(*cmd), "being written by another process")
    holder.kill()  # SIGKILL: the OS releases its lock
    holder.wait()
    assert train(*cmd).returncode == 0
    good_config = (tmp_path / "r" / "config.json").read_bytes()
    (tmp_path / "r" / "config.json").write_text("{not json")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    assert one_line_error(train(*cmd), "config.json", "unreadable", f"move {tmp_path / 'r'} aside")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before  # nothing on disk changed
    (tmp_path / "r" / "config.json").write_bytes(good_config)
    (tmp_path / "r" / "results.json").write_text("")  # a finished run's record, cut to nothing
    assert one_line_error(train(*cmd), "results.json", "unreadable", f"move {tmp_path / 'r'} aside")


def test_two_runners_on_one_folder_train_each_run_once_and_as_one_runner_would(tmp_path):
    variants = ["", "--ls 0.1", "--swish"]
    for root in ("two", "one"):
        lines = [
            f"{' '.join(SMALL)} --epochs 1 --prune random --sparsity 0.5 --deterministic --runs {tmp_path / root} "
            f"--out {tmp_path / root / f'v{i}'} {v}"
            for i, v in enumerate(variants)
        ]
        (tmp_path / f"{root}.txt").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PYTHON=sys.executable)

    def runner(root):
        return subprocess.Popen(
            ["bash", os.path.join(HERE, "run_all.sh"), "--jobs-from", str(tmp_path / f"{root}.txt"), "--jobs", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    first, second = runner("two"), runner("two")  # the same list, the same folders, at once
    outs = [p.communicate() for p in (first, second)]
    assert first.returncode == second.returncode == 0 and "FAILED" not in outs[0][1] + outs[1][1], outs
    progress = (outs[0][0] + outs[1][0]).splitlines()  # the runners': a line as each run starts and ends
    for i in range(len(variants)):
        out = tmp_path / "two" / f"v{i}"
        log = (out / "train.log").read_text()
        finished = [line for line in log.splitlines() if line.startswith("test acc")]  # train.py's summary of a run
        assert len(finished) == 1 and finished[0].endswith(f"-> {out}"), log  # trained and finished once
        assert sum(line.endswith(f"] start: {out} (log: {out}/train.log)") for line in progress) == 1, progress
        assert sum("] done in " in line and f" s: {out};" in line for line in progress) == 1, progress
    single = runner("one")
    single.communicate()
    for i in range(len(variants)):
        a, b = (json.loads((tmp_path / root / f"v{i}" / "results.json").read_text()) for root in ("two", "one"))
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_a_long_run_holds_up_no_job_behind_it(tmp_path):
    """--jobs 2 over [long, short, short, short]: a round-robin split would leave job 2 waiting behind the long job 0
    on its slot; the queue gives it to the free slot. Each job runs once (a stand-in train.py: sleep, results.json)."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/bash\nout=${{@: -1}}; sleep $3; touch $out/results.json; echo $out >> {tmp_path}/done\n")
    fake.chmod(0o755)
    outs = [tmp_path / f"j{i}" for i in range(4)]
    (tmp_path / "jobs.txt").write_text(
        "".join(f"--sleep {4 if i == 0 else 0.1} --out {o}\n" for i, o in enumerate(outs))
    )
    r = subprocess.run(
        ["bash", os.path.join(HERE, "run_all.sh"), "--jobs-from", str(tmp_path / "jobs.txt"), "--jobs", "2"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=str(fake)),
    )
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert (tmp_path / "done").read_text().split() == [str(outs[i]) for i in (1, 2, 3, 0)]


def test_the_runner_logs_each_run_in_its_folder_and_shows_progress_and_failures(tmp_path):
    """A stand-in train.py (prints to stdout and stderr, sleeps, fails for --sleep 2): each run's output goes to its own
    train.log, appended when it runs again; the runner prints a line as each run starts and ends (its place in the
    list, the jobs left and their time at the pace so far), and a failure on stderr with the path of its log."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/bash\nout=${@: -1}; echo training $out; echo a warning >&2; sleep $3\n"
        'if [ $3 = 2 ]; then echo "error: it broke" >&2; exit 3; fi\ntouch $out/results.json\n'
    )
    fake.chmod(0o755)
    outs = [tmp_path / f"j{i}" for i in range(4)]
    (tmp_path / "jobs.txt").write_text("".join(f"--sleep {2 if i == 1 else 1} --out {o}\n" for i, o in enumerate(outs)))
    command = ["bash", os.path.join(HERE, "run_all.sh"), "--jobs-from", str(tmp_path / "jobs.txt"), "--jobs", "1"]
    r = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHON=str(fake)))
    assert r.returncode == 1, r.stderr  # a failed run fails the runner, which says how many
    lines = r.stdout.splitlines()
    assert [line for line in lines if " start: " in line] == [
        f"[{i + 1}/4] start: {o} (log: {o}/train.log)" for i, o in enumerate(outs)
    ]
    ends = [line for line in lines if " start: " not in line]
    pattern = r"\[(\d)/4\] done in (\d+) s: (\S+); (?:none left|(\d+) left, about (\d+) s at the measured pace)"
    trained = []  # the seconds of each run trained so far, as printed
    for line, (place, left) in zip(ends, [(1, "3"), (3, "1"), (4, None)], strict=True):
        done = re.fullmatch(pattern, line)
        assert done and done.group(1, 3, 4) == (str(place), str(outs[place - 1]), left), line
        trained.append(int(done.group(2)))
        if left:  # the jobs not yet settled, at the mean time of this runner's trained runs (one slot)
            assert int(done.group(5)) == int(left) * sum(trained) // len(trained), line
    assert lines[-1].endswith("; none left")
    failed = rf"\[2/4\] FAILED \(exit 3\) after \d+ s: {outs[1]} \(error: it broke\); log: {outs[1]}/train.log\n"
    failed += r"1 of 4 runs failed \(their logs are named above\)\n"
    assert re.fullmatch(failed, r.stderr), r.stderr
    for o in outs:  # stdout and stderr of train.py, after a line naming the command
        log = (o / "train.log").read_text().splitlines()
        assert log[0].startswith("# ") and log[0].endswith(f"train.py --sleep {2 if o == outs[1] else 1} --out {o}")
        assert log[1:3] == [f"training {o}", "a warning"]
    again = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHON=str(fake)))
    assert again.stdout.splitlines()[0] == f"[2/4] start: {outs[1]} (log: {outs[1]}/train.log)"  # only the failed one
    assert (outs[1] / "train.log").read_text().count("error: it broke") == 2  # appended
    assert (outs[0] / "train.log").read_text().count("training") == 1  # finished runs are not run again
    (tmp_path / "bad.txt").write_text(f"--sleep 1 --out {tmp_path / 'b0'}\n\n# a comment\n--sleep 1\n")
    bad = subprocess.run([*command[:3], str(tmp_path / "bad.txt")], capture_output=True, text=True)
    assert bad.returncode == 2 and not bad.stdout and not (tmp_path / "b0").exists()
    assert (
        bad.stderr
        == f"error: --jobs-from {tmp_path / 'bad.txt'}: line 4 has no --out FOLDER; give each run its folder\n"
    )


def test_sigterm_to_the_runner_stops_every_run_it_started_and_starts_no_more(tmp_path):
    """--jobs 2 over three stand-in runs that wait for a signal: SIGTERM to the runner reaches both (each "saves" and
    exits 143, as train.py does), the third never starts, the runner exits 143; the same command then finishes all."""
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/bash\nout=${@: -1}; echo $$ > "$out/pid"\n'
        'if [ ! -e "$out/../resume" ]; then trap \'kill $!; echo saved > "$out/saved"; exit 143\' TERM\n'
        "sleep 60 & wait; fi\n"
        'touch "$out/results.json"\n'
    )
    fake.chmod(0o755)
    outs = [tmp_path / f"j{i}" for i in range(3)]
    (tmp_path / "jobs.txt").write_text("".join(f"--wait 1 --out {o}\n" for o in outs))
    command = ["bash", os.path.join(HERE, "run_all.sh"), "--jobs-from", str(tmp_path / "jobs.txt"), "--jobs", "2"]
    env = dict(os.environ, PYTHON=str(fake))
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 30
    while not all((o / "pid").exists() for o in outs[:2]):
        assert time.time() < deadline and runner.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)  # the stand-ins have set their trap
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=30)
    assert runner.returncode == 143 and "the same command resumes" in err, (out, err)
    for o in outs[:2]:  # each run it started was told to stop and has exited
        assert (o / "saved").read_text() == "saved\n", err
        with pytest.raises(ProcessLookupError):
            os.kill(int((o / "pid").read_text()), 0)
    assert not outs[2].exists() and "FAILED" not in err  # nothing more started
    (tmp_path / "resume").touch()
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and all((o / "results.json").exists() for o in outs), again.stderr


def test_a_quoted_out_with_a_space_and_an_umlaut_is_one_folder(tmp_path):
    """A --jobs-from line is split as a shell would: a quoted --out with a space is one folder, and nothing else
    (no folder named by a stray quote) appears; a quote never closed is one line of error, exit 2."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\nout="${@: -1}"; echo "$#" > "$out/argc"; touch "$out/results.json"\n')
    fake.chmod(0o755)
    folder = tmp_path / "q" / "my run ü"
    (tmp_path / "jobs.txt").write_text(f'--sleep 0 --out "{folder}"\n')
    before = set(os.listdir(HERE))
    command = ["bash", os.path.join(HERE, "run_all.sh"), "--jobs-from", str(tmp_path / "jobs.txt")]
    r = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHON=str(fake)))
    assert r.returncode == 0 and (folder / "results.json").exists(), r.stderr
    assert (folder / "argc").read_text() == "5\n" and f"[1/1] start: {folder} " in r.stdout  # train.py, 4 words
    assert set(os.listdir(HERE)) == before and sorted(os.listdir(tmp_path / "q")) == ["my run ü"]
    (tmp_path / "open.txt").write_text(f'--sleep 0 --out "{tmp_path / "x"}\n')
    bad = subprocess.run([*command[:3], str(tmp_path / "open.txt")], capture_output=True, text=True)
    assert one_line_error(bad, "line 1: No closing quotation") and not (tmp_path / "x").exists(), bad.stderr


def test_bad_seeds_jobs_and_epochs_are_one_line_and_create_nothing():
    for args, words in (
        (["--quick", "--seeds", "1 x"], "--seeds '1 x'"),
        (["--seeds", "1 x", "--list"], "--seeds '1 x'"),
        (["--quick", "--jobs", "two"], "--jobs must be a whole number"),
        (["--epochs", "-3", "--parts", "fig8"], "--epochs must be a whole number"),
        (["--study", "--jobs", "0"], "--jobs must be a whole number"),
    ):
        before = set(os.listdir(HERE)) | {"runs"}
        r = subprocess.run(["bash", os.path.join(HERE, "run_all.sh"), *args], capture_output=True, text=True)
        assert one_line_error(r, words) and not r.stdout, (args, r.stderr)
        assert set(os.listdir(HERE)) <= before and not any("seedx" in f for _, d, _ in os.walk(HERE) for f in d)


def test_a_preempted_run_stops_at_the_next_step_exits_143_and_resumes_from_its_last_epoch_to_the_same_result(tmp_path):
    """SIGTERM (a scheduler's preemption) during epoch 2 of 2: the run stops at the next step, says so in one line,
    exits 143 and keeps epoch 1's checkpoint (it loses at most one epoch); the same command resumes from there and ends
    exactly like a run never stopped."""
    cmd = [
        *"--subset 640 --epochs 2 --prune random --sparsity 0.5 --at --deterministic".split(),
        "--runs",
        tmp_path / "runs",
    ]
    p = start(*cmd, "--out", tmp_path / "cut")  # one thread, as the two runs below: the same arithmetic
    for line in p.stdout:
        if "epoch   1/2" in line:  # epoch 2 starts now
            p.terminate()
    assert p.wait() == 143
    stderr = p.stderr.read()
    assert stderr.count("\n") == 1 and "stopped by a signal in epoch 2" in stderr and "keeps epoch 1" in stderr, stderr
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    r = train(*cmd, "--out", tmp_path / "cut")
    assert r.returncode == 0 and "resuming after epoch 1" in r.stdout, r.stdout + r.stderr
    r = train(*cmd, "--out", tmp_path / "whole")
    assert r.returncode == 0, r.stderr
    cut, whole = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("cut", "whole"))
    assert {k: v for k, v in cut.items() if k != "seconds"} == {k: v for k, v in whole.items() if k != "seconds"}
    assert (tmp_path / "cut" / "metrics.csv").read_text().split("\n")[2].split(",")[:6] == (
        tmp_path / "whole" / "metrics.csv"
    ).read_text().split("\n")[2].split(",")[:6]  # epoch 2's train loss too
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("cut", "whole"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- issue 25: every fault has a way out


def start(*args):
    """train.py in the background, its stdout read line by line."""
    command = [sys.executable, os.path.join(HERE, "train.py"), *SMALL, *map(str, args)]
    return subprocess.Popen(
        command, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD
    )


def read_until(p, text, timeout=300):
    """Read p's stdout until a line containing `text`; p is killed if it takes longer than `timeout` seconds."""
    import threading

    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        for line in p.stdout:
            if text in line:
                return line
    finally:
        timer.cancel()
    raise AssertionError(f"{text!r} never printed: {p.stderr.read()}")


def exit_code_within(p, seconds):
    """p's exit code if it ends within `seconds`; else None, and p is killed."""
    try:
        return p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


def results_without_seconds(path):
    found = json.loads(path.read_text())
    return {k: v for k, v in found.items() if "seconds" not in k}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A vanilla LTH spend of a random ticket, trained under umask 022: the draw's ticket folder and the spend."""
    root = tmp_path_factory.mktemp("finished")
    r = run_script("train.py", *SMALL, *LTH, "--runs", root / "runs", "--out", root / "lth", umask=0o022)
    assert r.returncode == 0, r.stderr
    return root


def test_files_are_created_with_the_umasks_mode(finished):
    ticket = next((finished / "runs" / "draws").glob("*/random_0.5000"))
    for f in [*ticket.iterdir(), *(finished / "lth").iterdir()]:
        if not f.name.startswith("."):
            assert f.stat().st_mode & 0o777 == 0o644, f


def test_a_damaged_results_json_of_the_draw_is_not_copied_and_repair_measures_it_again(tmp_path):
    common = [*LTH, "--deterministic", "--runs", tmp_path / "runs"]
    assert train(*common, "--out", tmp_path / "first").returncode == 0
    (ticket,) = (tmp_path / "runs" / "draws").glob("*/random_0.5000")
    good = (ticket / "results.json").read_bytes()
    (ticket / "results.json").write_bytes(good[:50])
    r = train(*common, "--out", tmp_path / "again")
    assert one_line_error(r, f"{ticket}/results.json", "--repair"), r.stderr
    assert not (tmp_path / "again" / "results.json").exists()  # nothing damaged is copied
    r = train(*common, "--out", tmp_path / "again", "--repair")
    assert r.returncode == 0, r.stderr
    assert (ticket / "results.json.damaged").read_bytes() == good[:50]
    measured = {k: v for k, v in json.loads(good).items() if "seconds" not in k}
    assert results_without_seconds(ticket / "results.json") == measured  # all as training measured it
    assert results_without_seconds(tmp_path / "again" / "results.json") == measured


def test_a_damaged_checkpoint_is_one_whole_line_and_repair_restarts_the_training(tmp_path):
    import io

    buf = io.BytesIO()
    torch.save({"model": torch.ones(1000)}, buf)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.pt").write_bytes(buf.getvalue()[:500])  # cut short by a kill
    spend = [*LTH, "--ls", "0.1", "--runs", tmp_path / "runs", "--out", tmp_path / "out"]
    r = train(*spend)
    assert one_line_error(r, "checkpoint.pt", "failed finding central directory", "--repair"), r.stderr
    assert "If yo" not in r.stderr  # torch's message, no longer cut mid-word
    r = train(*spend, "--repair")
    assert r.returncode == 0 and "trains from the start" in r.stderr, r.stderr
    assert (tmp_path / "out" / "checkpoint.pt.damaged").exists() and (tmp_path / "out" / "results.json").exists()


def test_a_last_batch_too_small_for_batchnorm_is_dropped_and_a_batch_size_too_small_refused(tmp_path):
    """VGG-16 on 16x16 images runs its last stage's BatchNorm at 1x1: a batch of one image cannot be normalized."""
    vgg = [*LTH, "--arch", "vgg16", "--ls", "0.1", "--runs", tmp_path / "runs"]
    r = train(*vgg, "--batch-size", "230", "--out", tmp_path / "last1")  # 231 training images: 230, then 1
    assert r.returncode == 0, r.stderr[-2000:]
    r = train(*LTH, "--arch", "vgg16", "--batch-size", "1", "--runs", tmp_path / "r1", "--out", tmp_path / "b1")
    assert one_line_error(r, "--batch-size 1", "vgg16", ">= 2"), r.stderr
    assert not (tmp_path / "r1").exists() and not (tmp_path / "b1").exists()


def test_a_mask_with_an_empty_layer_is_warned_of_as_a_drawn_one_and_one_with_no_weight_refused(tmp_path):
    """One rule for drawn and given masks: a layer pruned entirely is a warning (layer collapse, §3.1), and the ticket
    trains; a mask that keeps no weight at all is refused."""
    import models
    import prune

    mask = prune.ones_mask(models.get_model("resnet20", 10))
    mask["layer2.0.unit1.conv.weight"][:] = False
    torch.save(mask, tmp_path / "one_empty.pt")
    torch.save({n: torch.zeros_like(m) for n, m in mask.items()}, tmp_path / "all_empty.pt")
    r = train("--epochs", "1", "--mask", tmp_path / "all_empty.pt", "--runs", tmp_path / "runs")
    assert one_line_error(r, "keeps no weight at all"), r.stderr
    assert not (tmp_path / "runs").exists()
    r = train(
        "--epochs", "1", "--mask", tmp_path / "one_empty.pt", "--runs", tmp_path / "runs", "--out", tmp_path / "o"
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "warning: layer collapse, layer2.0.unit1.conv.weight is pruned entirely (§3.1)\n"
    drawn = train(
        *LTH[:2], "--prune", "omp", "--sparsity", "0.9999", "--runs", tmp_path / "runs", "--out", tmp_path / "d"
    )
    assert drawn.returncode == 0 and "warning: layer collapse" in drawn.stderr, drawn.stderr
    again = train(*LTH[:2], "--mask", tmp_path / "d" / "mask.pt", "--runs", tmp_path / "runs", "--out", tmp_path / "m")
    assert again.returncode == 0 and again.stderr.count("layer collapse") == drawn.stderr.count("layer collapse")


def test_divergence_in_the_first_epoch_names_no_checkpoint(tmp_path):
    r = train("--epochs", "1", "--lr", "1e30", "--runs", tmp_path / "runs", "--out", tmp_path / "run")
    assert r.returncode == 3 and "diverged" in r.stderr, r.stderr
    assert "checkpoint is" not in r.stderr and "no checkpoint was saved" in r.stderr


def test_a_signal_stops_gradinit_at_once(tmp_path):
    p = start(
        *LTH, "--scale-init", "--scale-init-iters", "100000", "--runs", tmp_path / "runs", "--out", tmp_path / "o"
    )
    read_until(p, "=== spend")
    time.sleep(2)  # inside GradInit
    p.terminate()
    assert exit_code_within(p, 60) == 143
    stderr = p.stderr.read()
    assert stderr.count("\n") == 1 and "during GradInit" in stderr, stderr


def test_a_spend_waiting_for_its_draw_says_so_and_a_signal_stops_the_wait(tmp_path):
    import fcntl

    import train as train_module

    args = train_module.parse_args([*SMALL, *LTH, "--runs", str(tmp_path / "runs")])
    key = {k: getattr(args, k) for k in train_module.RECIPE}
    ticket = tmp_path / "runs" / "draws" / f"synthetic_resnet20_seed42_{runs.short_hash(key)}" / "random_0.5000"
    ticket.mkdir(parents=True)
    with open(ticket / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process trains the ticket
        p = start(*LTH, "--runs", tmp_path / "runs", "--out", tmp_path / "o")
        assert str(ticket) in read_until(p, "waiting for")
        p.terminate()
        assert exit_code_within(p, 30) == 143
    assert "while waiting for" in p.stderr.read()


def test_a_second_signal_stops_at_once():
    code = "import cli, time\ncli.stop_on_signals()\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.01)\n"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGINT)  # the first asks for a stop at the next step: this loop has none
    time.sleep(1)
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    assert exit_code_within(p, 10) == 130


def test_a_stop_during_the_final_evaluation_exits_143_and_the_rerun_finishes(tmp_path, monkeypatch):
    import train as train_module

    monkeypatch.setattr(runs, "STOP", [])
    evaluate = data.evaluate

    def signalled_at_test(model, ds, split, *args, **kwargs):  # a SIGTERM that arrives during the test evaluation
        if split == "test":
            cli.STOP.append(signal.SIGTERM)
        return evaluate(model, ds, split, *args, **kwargs)

    monkeypatch.setattr(data, "evaluate", signalled_at_test)
    spend = [*SMALL, *LTH, "--ls", "0.1", "--deterministic", "--runs", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as stopped:
        train_module.main([*spend, "--out", str(tmp_path / "cut")])
    assert stopped.value.code == 143
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "results.json").exists()
    monkeypatch.setattr(data, "evaluate", evaluate)
    cli.STOP.clear()
    train_module.main([*spend, "--out", str(tmp_path / "cut")])
    train_module.main([*spend, "--out", str(tmp_path / "whole")])
    cut, whole = (results_without_seconds(tmp_path / d / "results.json") for d in ("cut", "whole"))
    assert cut == whole


def test_seconds_count_gradinit_and_give_its_time_beside_them(tmp_path):
    r = train(*LTH, "--scale-init", "--scale-init-iters", "20", "--runs", tmp_path / "runs", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    epochs = sum(float(line.split(",")[6]) for line in (tmp_path / "o" / "metrics.csv").read_text().split("\n")[1:-1])
    assert results["scale_init_seconds"] > 0 and results["seconds"] >= results["scale_init_seconds"] + epochs


def test_a_mask_flag_given_weights_or_json_says_what_the_file_is(finished):
    r = train("--mask", finished / "lth" / "model.pt", "--runs", finished / "elsewhere")
    assert one_line_error(r, "holds model weights", "not a mask", "mask.pt"), r.stderr
    r = train("--mask", finished / "lth" / "results.json", "--runs", finished / "elsewhere")
    assert one_line_error(r, "--mask", "results.json", "a mask is the mask.pt"), r.stderr


def test_flags_that_cannot_be_honoured_are_refused(tmp_path):
    runs_dir = ["--runs", tmp_path / "runs"]
    assert one_line_error(train(*LTH, "--keep-epochs", "9", *runs_dir), "--keep-epochs", "[1, --epochs=1]")
    assert one_line_error(train(*LTH, "--hessian-every", "-1", *runs_dir), "--hessian-every")
    assert not (tmp_path / "runs").exists()


def test_flag_values_torch_would_refuse_or_misuse_are_one_line_before_anything_is_written(tmp_path):
    """--lr -1 reached torch.optim (a traceback after config.json, init.pt and mask.pt were written); --lr nan trained
    to "diverged"; --momentum 5 was taken; a --device torch does not know, or this machine lacks, was a traceback."""
    runs_dir = ["--runs", tmp_path / "runs", "--out", tmp_path / "out"]
    for flag, value, words in (
        ("--lr", "-1", ["--lr", "(0, inf)"]),
        ("--lr", "nan", ["--lr", "got nan"]),
        ("--momentum", "5", ["--momentum", "[0, 1)"]),
        ("--wd", "-0.1", ["--wd"]),
        ("--device", "nosuch", ["--device nosuch", "not usable here"]),
        ("--device", "cuda:7", ["--device cuda:7", "not usable here"]),
    ):
        r = train(*LTH, *runs_dir, flag, value)
        assert one_line_error(r, *words), (flag, value, r.stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_a_diverged_run_says_how_to_try_a_lower_lr_and_its_folder_then_takes_it(tmp_path):
    """The advice of a diverged run can be followed: a run folder holding nothing but the failed run's config.json
    takes the new config; one with a checkpoint is refused, the message saying to move it aside or use another --out."""
    cmd = ["--epochs", "1", "--prune", "random", "--sparsity", "0.5", "--ls", "0.1", "--runs", tmp_path / "runs"]
    r = train(*cmd, "--lr", "1e30", "--out", tmp_path / "o")
    assert r.returncode == 3 and "a lower --lr may help" in r.stderr and "another --out" in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.name != ".lock") == ["config.json"]
    r = train(*cmd, "--lr", "0.05", "--out", tmp_path / "o")
    assert r.returncode == 0 and json.loads((tmp_path / "o" / "config.json").read_text())["lr"] == 0.05, r.stderr
    r = train(*cmd, "--lr", "0.01", "--out", tmp_path / "o")  # now it holds a finished run of another config
    assert one_line_error(r, "holds a run with another config", "move", "aside", "another --out"), r.stderr


def test_a_subset_too_small_for_a_validation_split_is_refused(tmp_path):
    r = train(*LTH, "--runs", tmp_path / "runs", "--subset", "50")  # a validation split of 5 images for 10 classes
    assert one_line_error(r, "--subset 50", "5 validation images for 10 classes", ">= 100"), r.stderr
    assert not (tmp_path / "runs").exists()


def test_a_file_as_out_and_missing_data_offline_create_nothing(tmp_path):
    (tmp_path / "afile.txt").write_text("mine")
    r = train(*LTH, "--runs", tmp_path / "runs", "--out", tmp_path / "afile.txt")
    assert one_line_error(r, "--out", "afile.txt", "is a file"), r.stderr
    assert not (tmp_path / "runs").exists() and (tmp_path / "afile.txt").read_text() == "mine"
    offline = {**ONE_THREAD, "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    r = run_script(
        "train.py", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--runs", tmp_path / "r", env=offline
    )
    assert one_line_error(r, "CIFAR-10"), r.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "r").exists()
    deep = tmp_path / "new" / "deeper" / "data"  # parents that do not exist: the failed download leaves none behind
    r = run_script("train.py", "--dataset", "cifar10", "--data-dir", deep, "--runs", tmp_path / "r", env=offline)
    assert one_line_error(r, "CIFAR-10"), r.stderr
    assert not (tmp_path / "new").exists()


def test_landscape_says_what_a_wrong_folder_is(finished, tmp_path):
    r = run_script("landscape.py", "eigenvalue", tmp_path / "missing", "--out", tmp_path / "h.json")
    assert one_line_error(r, "missing: no such folder", "expected the --out folder of a finished train.py spend")
    (ticket,) = (finished / "runs" / "draws").glob("*/random_0.5000")
    r = run_script("landscape.py", "eigenvalue", ticket, "--out", tmp_path / "h.json")
    assert one_line_error(r, "is a ticket of a draw", "not a spend"), r.stderr
    r = run_script("landscape.py", "eigenvalue", ticket, "--out", tmp_path / "h.json", "--device", "nosuch")
    assert one_line_error(r, "--device nosuch", "not usable here"), r.stderr
    foreign = tmp_path / "foreign"
    shutil.copytree(finished / "lth", foreign)
    config = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps(dict(config, arch="resnet99")))
    r = run_script("landscape.py", "eigenvalue", foreign, "--out", tmp_path / "h.json")
    assert one_line_error(r, "foreign/config.json names an arch or dataset train.py does not know"), r.stderr


def test_landscape_removes_what_a_killed_writer_left_in_its_output_folder(finished, tmp_path):
    (tmp_path / ".tmp-killed").write_bytes(b"half")
    args = ["--batches", "1", "--batch-size", "8", "--iters", "2", "--out", tmp_path / "h.json"]
    r = run_script("landscape.py", "eigenvalue", finished / "lth", *args)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "h.json").exists() and not (tmp_path / ".tmp-killed").exists()


def test_help_shows_the_defaults():
    r = run_script("train.py", "--help")
    assert r.returncode == 0
    assert "(default: 180)" in r.stdout and "(default: 0.1)" in r.stdout and "(default: resnet18)" in r.stdout


def test_grasp_scores_each_class_sorted_sample_as_two_halves_as_the_official_code(tmp_path):
    """alecwangcq/GraSP, pruner/GraSP.py: inputs[:N//2] and inputs[N//2:], each a batch for train-mode BatchNorm."""
    import prune
    import train as train_module

    args = train_module.parse_args([*SMALL, "--prune", "grasp", "--sparsity", "0.9", "--runs", str(tmp_path)])
    ds = data.load("synthetic", subset=256)
    cache = runs.DrawCache(str(tmp_path), {k: getattr(args, k) for k in train_module.RECIPE}, repair=False)
    drawn = train_module.one_shot(args, ds, cache, "grasp", 0.9)
    model = train_module.new_model(args, ds)
    x, y = data.balanced_batch(ds, 10, args.seed)
    halves = prune.grasp(model, [(x[:50], y[:50]), (x[50:], y[50:])], 0.9)
    whole = prune.grasp(model, [(x, y)], 0.9)
    assert all(torch.equal(drawn[n], halves[n]) for n in halves)
    assert not all(torch.equal(drawn[n], whole[n]) for n in whole)  # the two ways differ here: the test can tell


# ---------------------------------------------------------------- issue 48: damaged data files, files that run code
def cifar10_folder(root, n=10):
    """A cifar-10-batches-py/ laid out and pickled as the official archive (five training files and a test file)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(c) for c in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        write_cifar_file(folder / name, batch)
    return folder


def train_on_cifar10(tmp_path):
    cifar10 = ["--dataset", "cifar10", "--data-dir", tmp_path / "data"]
    return train(*cifar10, "--runs", tmp_path / "runs", "--out", tmp_path / "o")


def test_a_damaged_or_cut_short_cifar_file_is_one_line_naming_it_and_creates_nothing(tmp_path):
    folder = cifar10_folder(tmp_path / "data")
    assert data.load("cifar10", tmp_path / "data")["train"][0].shape == (45, 3, 32, 32)  # as written, it loads
    good = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(b"<html>503 Service Unavailable</html>\n")  # not the archive's pickle
    r = train_on_cifar10(tmp_path)
    assert one_line_error(r, f"{folder / 'data_batch_2'}: damaged", "UnpicklingError", f"delete {folder}"), r.stderr
    (folder / "data_batch_2").write_bytes(good[: len(good) // 2])  # a copy cut short
    r = train_on_cifar10(tmp_path)
    assert one_line_error(r, f"{folder / 'data_batch_2'}: damaged", f"delete {folder}"), r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()


def test_damaged_fashion_mnist_and_tiny_imagenet_files_are_bad_input_naming_them(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(tmp_path / "fm"))
    (tmp_path / "fm").mkdir()
    images = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    idx = b"\0\0\x08\x03" + struct.pack(">III", 2, 28, 28) + bytes(2 * 28 * 28)
    for damaged, reason in (
        (b"not gzip", "BadGzipFile"),
        (gzip.compress(idx)[:-12], "EOFError"),  # the gz file cut short
        (gzip.compress(idx[:-5]), "ValueError"),  # whole gz, but fewer pixels than its header says
    ):
        images.write_bytes(damaged)
        with pytest.raises(cli.BadInput, match=f"{images}: damaged.*{reason}.*reinstall dataset-fashion-mnist"):
            data.load("fashionmnist")
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    (root / "train" / "n01" / "images").mkdir(parents=True)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("n01\n")
    jpeg = root / "train" / "n01" / "images" / "n01_0.JPEG"
    Image.new("RGB", (64, 64), (200, 10, 0)).save(jpeg)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t10\t10\n")  # a class not in wnids.txt
    with pytest.raises(cli.BadInput, match=r"val_annotations.txt: damaged.*KeyError.*extract tiny-imagenet-200/"):
        data.load("tinyimagenet", tmp_path)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t10\t10\n")
    jpeg.write_bytes(jpeg.read_bytes()[:300])  # cut short
    with pytest.raises(cli.BadInput, match=f"{jpeg}: damaged.*extract tiny-imagenet-200/"):
        data.load("tinyimagenet", tmp_path)


class RunsOnLoad:
    """Pickles as a call of `function(argument)` on unpickling: what a crafted data file holds."""

    def __init__(self, function, argument):
        self.call = function, (argument,)

    def __reduce__(self):
        return self.call


def test_a_crafted_cifar_file_is_refused_and_never_runs_its_code(tmp_path):
    folder = cifar10_folder(tmp_path / "data")
    marker = tmp_path / "ran"
    crafted = {b"data": RunsOnLoad(os.system, f"touch {marker}"), b"labels": []}
    write_cifar_file(folder / "data_batch_1", crafted)  # pickled as the official files, but for os.system
    r = train_on_cifar10(tmp_path)
    assert one_line_error(r, f"{folder / 'data_batch_1'}: damaged", "refused to load", "system"), r.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()
    crafted = {b"data": RunsOnLoad(exec, f"open({str(marker)!r}, 'w')"), b"labels": []}
    for written in (write_cifar_file, lambda path, obj: path.write_bytes(pickle.dumps(obj, protocol=4))):
        written(folder / "data_batch_1", crafted)  # builtins.exec: as Python 2 named it, and as Python 3 does
        with pytest.raises(cli.BadInput, match=f"{folder / 'data_batch_1'}: damaged.*refused to load .*\\.exec"):
            data.load("cifar10", tmp_path / "data")
        assert not marker.exists()


def test_a_run_another_process_finishes_while_this_one_loads_its_data_is_not_trained_again(tmp_path, monkeypatch):
    """The check for results.json is made again once the --out lock is held: a second process that passed the first
    check while the run was in its last epoch finds it finished and leaves its files as they are."""
    import train as train_module

    cmd = [*SMALL, *LTH, "--ls", "0.1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "o")]
    assert train(*cmd[len(SMALL) :]).returncode == 0  # a tweaked spend: it trains, unlike vanilla LTH's copy
    results = tmp_path / "o" / "results.json"
    written = results.read_bytes()
    results.unlink()  # as while the first process was still training
    load = data.load

    def load_while_the_other_finishes(*args, **kwargs):
        results.write_bytes(written)  # the first process finishes meanwhile
        return load(*args, **kwargs)

    monkeypatch.setattr(data, "load", load_while_the_other_finishes)
    train_module.main(cmd)
    assert results.read_bytes() == written


def test_a_run_and_six_late_starts_of_its_command_train_it_once(tmp_path):
    """A stress test: the same command started 6 more times, staggered, while the first trains; it is trained once,
    and results.json is what the first wrote."""
    cmd = ["--epochs", "2", *LTH[2:], "--ls", "0.1", "--runs", tmp_path / "runs", "--out", tmp_path / "o"]
    first = start(*cmd)
    read_until(first, "epoch   1/2")
    late = []
    for _ in range(6):
        late.append(start(*cmd))
        time.sleep(0.4)
    assert first.wait() == 0
    written = (tmp_path / "o" / "results.json").read_bytes()
    outputs = [p.communicate() for p in late]
    assert all(p.returncode in (0, 2) for p in late), outputs
    assert all("already finished" in out or "being written by another process" in err for out, err in outputs)
    assert (tmp_path / "o" / "results.json").read_bytes() == written
    assert not any("=== spend" in out or "epoch   1/" in out for out, _ in outputs)  # none of them trained
