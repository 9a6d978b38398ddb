"""A run folder on disk and the plumbing around it: atomic writes, safe loads, JSON, the folder lock, rebuilding a
finished spend, the scripts' Parser, signals, and the helpers that keep torchrun's ranks in step.

    runs.save(state, "runs/x/model.pt"); state = runs.load("runs/x/model.pt")
    model, mask, ds, config = runs.load_run("runs/x")      # a finished spend of train.py, ready for analysis
"""

import argparse
import contextlib
import errno
import fcntl
import functools
import glob
import io
import json
import os
import signal
import sys
import tempfile
import textwrap
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist

import data
import models
import prune
import tweaks
from models import BadInput


class Parser(argparse.ArgumentParser):
    """The command-line parser of every script: a bad flag is a BadInput (`command`: one line, exit code 2)."""

    def error(self, message):
        raise BadInput(message)


STOP = []  # the signals received (SIGTERM: a scheduler's preemption; SIGINT: Ctrl-C): work stops at its next step


class Stopped(Exception):
    """Work stopped by a signal, what it had done saved where it can be: `command` prints why and exits 143."""


def note_signal(signum, frame):
    if STOP:  # the second signal: stop at once (`save` still removes its temporary file)
        sys.exit(128 + signum)
    STOP.append(signum)


def stop_on_signals():
    """SIGTERM and SIGINT ask for a stop (STOP) that training, GradInit and lock waits honour at their next step."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, note_signal)


def command(main):
    """Decorates a script's main: a user error (BadInput) or a file it cannot read or write (OSError: missing,
    read-only, a full disk) is one line on stderr and exit code 2, no traceback; `save` leaves nothing half-written.
    A stop for a signal (Stopped) is one line (rank 0's) and exit code 143."""

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Stopped as e:
            if rank() == 0:
                print(e, file=sys.stderr, flush=True)
            sys.exit(143)
        except (BadInput, OSError) as e:
            message = str(e) if isinstance(e, BadInput) else f"cannot read or write: {e}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    return guarded


def rank():
    """This process's rank under torchrun (DDP), else 0. Only rank 0 writes files."""
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier():
    if world() > 1:
        dist.barrier()


def init_distributed(args):
    """Under `torchrun --nproc_per_node=N train.py ...`: one process per device, one run data-parallel.
    Every rank computes the same draw and masks; only rank 0 prints and writes."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return
    if str(args.device).startswith("cuda"):
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(args.device)
    dist.init_process_group("nccl" if str(args.device).startswith("cuda") else "gloo")
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")


def save(obj, path):
    """Write atomically (a temporary file in the same folder, renamed): a kill never leaves a half-written file a later
    run would trust. Under torchrun rank 0 alone writes while all ranks wait: files change only here (see `exists`)."""
    if rank() != 0:
        return barrier()
    if not isinstance(obj, (str, bytes)):  # to bytes first: torch.save reports a full disk as a RuntimeError
        buf = io.BytesIO()
        torch.save(obj, buf)
        obj = buf.getvalue()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        umask = os.umask(0)  # reading the umask sets it: set it back
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # the umask's mode: mkstemp's 0600, kept by the rename, shuts a group out
        with os.fdopen(fd, "wb") as f:
            f.write(obj.encode() if isinstance(obj, str) else obj)
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            advice = "what was written before is intact; free space and run the same command again"
            raise OSError(e.errno, f"the disk is full: {path} not written ({advice})") from None
        raise
    barrier()


def exists(path):
    """os.path.exists, asked by all ranks at once under torchrun, so that all take the same branch: between two
    barriers, since rank 0 may write the file (in `save`) as soon as it has passed the second."""
    barrier()
    found = os.path.exists(path)
    barrier()
    return found


def load(path, device="cpu"):
    """Load a checkpoint of tensors only (weights_only=True): pickled code is refused, not run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except Exception as e:
        reason = str(e).split("WeightsUnpickler error:")[-1]  # torch's refusal of pickled code: why, not its advice
        reason = textwrap.shorten(reason.split(". ")[0], 160, placeholder=" ...")  # one line, cut between words
        raise BadInput(f"{path}: not a readable checkpoint of tensors ({type(e).__name__}: {reason})") from None


def read_json(path, fix=""):
    """A run's JSON file (config.json, results.json); an unreadable one is a BadInput, ending with `fix`."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: unreadable ({e}){fix}") from None


def write_json(obj, path):
    save(json.dumps(obj, indent=1, sort_keys=True) + "\n", path)


def try_lock(f):
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def locked(folder, wait):
    """Hold an exclusive lock on a folder (released by the OS if the process dies). A draw's ticket or an output
    folder is waited for, saying so once, until its holder ends or a signal stops the wait; a spend's own folder is
    refused if another process has it."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as f:
        if rank() == 0 and not try_lock(f):  # under torchrun rank 0 holds it for all
            if not wait:
                raise BadInput(f"{folder} is being written by another process; let it finish or choose another --out")
            print(f"waiting for {folder}: another process holds its lock and is writing it", flush=True)
            while not try_lock(f):
                if STOP:
                    raise Stopped(f"stopped by a signal while waiting for {folder}; the same command waits again")
                time.sleep(1)
        for stale in glob.glob(os.path.join(folder, ".tmp-*")) if rank() == 0 else []:
            os.remove(stale)  # half-written by a killed holder of this lock (SIGKILL skips save's clean-up)
        yield


def variant(c):
    """The paper's name of a spend: LTH (or Table A4's pruner at init) + tweaks (LTH+AT+TRT), ' Rewind' if rewound."""
    skip = ("Skip-1x1" if c.get("skip_proj") else "Skip") if c["skip"] or c.get("skip_proj") else None  # 1x1: ToST's
    at, trt = skip and c["swish"], c["scale_init"] and c["ls"] == 0.1
    acts = [p for p in (skip, c["swish"] and "Swish", c["mish"] and "Mish") if p]
    parts = [skip.replace("Skip", "AT")] if at else acts
    parts += ["TRT"] if trt else [n for n, on in (("Scaling", c["scale_init"]), ("LS", c["ls"])) if on]
    parts += ["KD"] if c["kd"] else []
    pruner = c.get("sparsity") and dict(random="Random", grasp="GraSP", synflow="SynFlow", snip="SNIP").get(c["prune"])
    return (pruner or "LTH") + "".join("+" + p for p in parts) + (" Rewind" if c["rewind_epoch"] is not None else "")


def run_config(run_dir):
    """The config.json of a finished train.py spend; anything else is refused, saying what the folder is."""
    expected = "expected the --out folder of a finished train.py spend (config.json, results.json, model.pt)"
    if not os.path.isdir(run_dir):
        raise BadInput(f"{run_dir}: no such folder; {expected}")
    if os.path.exists(os.path.join(run_dir, "..", "draw.json")):
        raise BadInput(f"{run_dir} is a ticket of a draw (its vanilla-LTH training), not a spend: {expected}")
    if not os.path.exists(os.path.join(run_dir, "config.json")):
        raise BadInput(f"{run_dir}: not a train.py run (no config.json); {expected}")
    if not os.path.exists(os.path.join(run_dir, "results.json")):
        raise BadInput(f"{run_dir}: an unfinished train.py run (no results.json): its command, run again, finishes it")
    return read_json(os.path.join(run_dir, "config.json"))


def load_run(run_dir, data_dir="data", device="cpu", weights="model.pt"):
    """(model with its tweaks and trained weights, in eval mode; mask; dataset; config) of a finished train.py spend."""
    config = run_config(run_dir)
    ds = data.load(config["dataset"], data_dir, config["subset"], config["seed"], device)
    model = models.get_model(config["arch"], ds["classes"], ds["train"][0].shape[1])
    linear = config.get("prune_classifier", True)  # runs older than the option pruned it
    mask = prune.check_mask(load(os.path.join(run_dir, "mask.pt"), device), model, f"{run_dir}/mask.pt", linear)
    tweaks.apply(model, SimpleNamespace(**config))  # after the check: a tweak may add weights the mask never covers
    try:
        model.load_state_dict(load(os.path.join(run_dir, weights)))
    except RuntimeError as e:
        raise BadInput(f"{run_dir}/{weights} does not fit its config.json ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), mask, ds, config
