"""The run folder on disk and the machinery beneath train.py that keeps a run safe: atomic writes, safe loads, JSON and
metrics.csv, the folder lock, checkpoints, the draw cache, a run's name, masks from files, rebuilding a finished spend.

    runs.save(state, "runs/x/model.pt"); state = runs.load("runs/x/model.pt")
    model, mask, ds, config = runs.load_run("runs/x")      # a finished spend of train.py, ready for analysis
"""

import contextlib
import copy
import csv
import errno
import fcntl
import glob
import hashlib
import io
import json
import os
import sys
import tempfile
import textwrap
import time
from types import SimpleNamespace

import torch

import data
import models
import prune
import tweaks
from cli import STOP, BadInput, Stopped


def save(obj, path):
    """Write atomically (a temporary file, renamed): a kill never leaves a half-written file."""
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
    """An exclusive lock on a folder, released by the OS if the process dies. With `wait` (a draw's ticket, an output
    folder) it is waited for until its holder ends or a signal stops the wait; else (a spend's own folder) refused."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as f:
        if not try_lock(f):
            if not wait:
                raise BadInput(f"{folder} is being written by another process; let it finish or choose another --out")
            print(f"waiting for {folder}: another process holds its lock and is writing it", flush=True)
            while not try_lock(f):
                if STOP:
                    raise Stopped(f"stopped by a signal while waiting for {folder}; the same command waits again")
                time.sleep(1)
        for stale in glob.glob(os.path.join(folder, ".tmp-*")):
            os.remove(stale)  # half-written by a killed holder of this lock (SIGKILL skips save's clean-up)
        yield


def read_metrics(path):
    """metrics.csv's rows as `fit` wrote them (numbers; Fig. A11's blanks ""); a damaged file is a BadInput."""
    try:
        with open(path) as f:
            rows = [{k: json.loads(v) if v else "" for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, TypeError) as e:  # TypeError: a row with fewer or more values than the header
        raise BadInput(f"{path}: unreadable ({e})") from None
    if not rows:
        raise BadInput(f"{path}: unreadable (no epoch in it)")
    return rows


def read_or_repair(path, read, repair, how):
    """read(path), or None if there is no such file. A damaged one stops the run, naming --repair; with `repair` it is
    kept as *.damaged (never deleted) and None returned: the caller derives it again, the way `how` says."""
    if not os.path.exists(path):
        return None
    try:
        return read(path)
    except BadInput as e:
        if not repair:
            raise BadInput(f"{e}; the same command with --repair keeps it as *.damaged and {how}") from None
    os.replace(path, path + ".damaged")
    print(f"note: {path} was damaged, kept as {path}.damaged; {how}", file=sys.stderr)
    return None


def refuse_file(flag, folder):
    """Refuse a folder to use or create if it, or the nearest part of its path that exists, is a file."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise BadInput(f"{flag} {folder}: {path} is a file, not a folder; choose another {flag}")


def write_trained(out, mask, model, best_state, rows, results):
    """A trained ticket's files, results.json last: its presence means finished."""
    if not os.path.exists(os.path.join(out, "mask.pt")):
        save({n: m.cpu() for n, m in mask.items()}, os.path.join(out, "mask.pt"))
    save({k: v.cpu() for k, v in model.state_dict().items()}, os.path.join(out, "model.pt"))
    save({k: v.cpu() for k, v in best_state.items()}, os.path.join(out, "best.pt"))
    lines = [",".join(rows[0])] + [",".join(map(str, row.values())) for row in rows]
    save("\n".join(lines) + "\n", os.path.join(out, "metrics.csv"))
    write_json(results, os.path.join(out, "results.json"))
    os.remove(os.path.join(out, "checkpoint.pt"))


def smallest_batch(model, ds):
    """The fewest images a training batch needs: 2 where a BatchNorm runs at 1x1 (the last stage of
    VGG-16 and MobileNet on 16x16 images), since train mode needs more than one value per channel; else 1."""
    image = torch.zeros(1, *ds["train"][0].shape[1:], device=ds["train"][0].device)
    try:
        with torch.no_grad():
            copy.deepcopy(model).train()(image)
    except ValueError:  # torch's "Expected more than 1 value per channel when training"
        return 2
    return 1


def check_data(args, ds, model):
    """Refuse a --subset too small for a validation split, and a --batch-size too small for the arch's BatchNorm."""
    n_val, classes = len(ds["val"][1]), ds["classes"]
    if n_val < classes:
        split = f"{n_val} validation images for {classes} classes"
        raise BadInput(f"--subset {args.subset} is too small: {split}; use --subset >= {10 * classes}")
    least = smallest_batch(model, ds)
    if args.batch_size < least:
        raise BadInput(f"--batch-size {args.batch_size} is too small for {args.arch}'s BatchNorm: use >= {least}")


def summarize(results, out):
    return (
        f"test acc {results['test_acc']:.2%} (best val {results['best_val_acc']:.2%} at epoch "
        f"{results['best_epoch']}; final epoch {results['final_test_acc']:.2%})  sparsity "
        f"{results['sparsity']:.2%} ({results['weights_nonzero']:,} of {results['weights_total']:,} pruned-layer "
        f"weights left; {results.get('sparsity_all', results['sparsity']):.2%} of all conv/linear weights)  "
        f"{results['seconds']:.0f}s on {results['device']}  -> {out}"
    )


def forever(ds, batch_size, seed):
    """Augmented training batches without end, for GradInit; a signal stops it (cheap to redo)."""
    for rnd in range(sys.maxsize):
        for batch in data.batches(ds, "train", batch_size, seed=seed + rnd, augmented=True):
            if STOP:
                raise Stopped("[spend] stopped by a signal during GradInit: the same command starts it again")
            yield batch


def save_checkpoint(path, state, model, opt):
    """The loop's state, weights, momentum and generators (the data order is seeded by epoch)."""
    rng = dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all())
    save(dict(state, model=model.state_dict(), optimizer=opt.state_dict(), rng=rng), path)


def restore_checkpoint(saved, model, opt):
    """A checkpoint's weights, momentum and generators restored in place; returns the loop's state."""
    model.load_state_dict(saved.pop("model"))
    opt.load_state_dict(saved.pop("optimizer"))
    rng = saved.pop("rng")
    torch.set_rng_state(rng["torch"].cpu())  # loaded onto --device with the rest; the generators take CPU bytes
    torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    return saved


def short_hash(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def ticket_name(c):
    """The draw's ticket a spend takes: IMP level L (imp_LL); other pruners one per sparsity (omp_S, ...); or --mask."""
    if c.mask:
        return "mask"
    s = c.sparsity or 0.0
    if c.prune == "imp" or s == 0:
        return f"imp_{prune.imp_level(s):02d}"
    return f"{c.prune}_{s:.4f}"


def tweak_names(c):
    """The spend's tweaks, joined by +, label smoothing with its alpha (skip+swish+scale_init+ls0.1); "" if none."""
    on = [k for k in tweaks.FLAGS if k != "ls" and getattr(c, k)]
    return "+".join(on + ([f"ls{c.ls}"] if c.ls else []))


def run_folder(args, config):
    """--out, or <runs>/<dataset>_<arch>_seed<seed>/<ticket>_<tweaks, or lth>_<hash of the config>."""
    name = f"{ticket_name(args)}_{tweak_names(args) or 'lth'}_{short_hash(config)}"
    return args.out or os.path.join(args.runs, f"{args.dataset}_{args.arch}_seed{args.seed}", name)


def finished(out, config):
    """The results of `out` if it holds this config's finished run; None if it holds nothing of it yet. A folder of
    another config is refused, unless it holds nothing but that config (a run that failed before it saved anything)."""
    fix = f"; move {out} aside (it trains again) or choose another --out"
    if not os.path.exists(os.path.join(out, "config.json")):
        return None
    if read_json(os.path.join(out, "config.json"), fix) != config:
        if set(os.listdir(out)) - {"config.json", ".lock", "train.log"}:  # else a run that failed before it saved
            raise BadInput(f"{out} holds a run with another config{fix}")
        return None
    results = os.path.join(out, "results.json")
    return read_json(results, fix) if os.path.exists(results) else None


class DrawCache:
    """One draw on disk, keyed by everything that changes its result (draw.json): init.pt (theta_0) and a folder per
    ticket (imp_LL: IMP level L; omp_S, random_S, ...) with its mask.pt and, once trained the vanilla-LTH way, its
    model.pt, best.pt, metrics.csv and results.json (written last: its presence means trained)."""

    def __init__(self, root, key, repair):
        name = f"{key['dataset']}_{key['arch']}_seed{key['seed']}_{short_hash(key)}"
        self.dir, self.repair = os.path.join(root, "draws", name), repair
        if not os.path.exists(os.path.join(self.dir, "draw.json")):
            write_json(key, os.path.join(self.dir, "draw.json"))

    def folder(self, ticket):
        return os.path.join(self.dir, ticket)

    def derived(self, path, derive):
        """A file derivable again exactly (init.pt from the seed, a mask from what it is drawn from): derived once,
        then read. A damaged one stops the run, naming --repair, which keeps it as *.damaged and derives it again."""
        found = read_or_repair(path, load, self.repair, "derives it again exactly")
        if found is not None:
            return found
        save(derive(), path)
        return load(path)

    def mask(self, ticket, draw, device):
        """The ticket's mask on `device`: drawn once by draw(), then read from disk."""
        return {n: m.to(device) for n, m in self.derived(os.path.join(self.folder(ticket), "mask.pt"), draw).items()}

    @contextlib.contextmanager
    def training(self, ticket):
        """Whether the ticket is trained (has results.json), and if not its folder's lock while it trains: another
        process drawing the same ticket waits for it, then finds it trained."""
        results = os.path.join(self.folder(ticket), "results.json")
        if os.path.exists(results):
            yield True
            return
        with locked(self.folder(ticket), wait=True):
            yield os.path.exists(results)

    def trained_file(self, ticket, name, device="cpu"):
        """A file of the ticket's vanilla training (weights, or metrics.csv's rows). A damaged one cannot be derived
        again exactly (training is not bit-exact on every device): the message says which runs to redo."""
        path = os.path.join(self.folder(ticket), name)
        try:
            return read_metrics(path) if name == "metrics.csv" else load(path, device)
        except BadInput as e:
            redo = f"move {self.folder(ticket)} aside, and every IMP level drawn after it, and run again: they retrain"
            raise BadInput(f"{e}; a trained network cannot be derived again exactly: {redo}") from None

    def copy_training(self, ticket, out, kept, measure):
        """A vanilla spend is the ticket's own training: its files copied to `out`, each checked first so that nothing
        damaged spreads (--repair writes a damaged results.json again from measure()). Returns the results."""
        for name in ("model.pt", "best.pt", "metrics.csv", *kept):
            self.trained_file(ticket, name)
        path = os.path.join(self.folder(ticket), "results.json")
        results = read_or_repair(path, read_json, self.repair, "measures it again from the weights beside it")
        if results is None:
            results = measure()
            write_json(results, path)
        for name in ("mask.pt", "model.pt", "best.pt", "metrics.csv", *kept, "results.json"):  # results.json last
            with open(os.path.join(self.folder(ticket), name), "rb") as f:
                save(f.read(), os.path.join(out, name))
        return results


def check_mask(mask, model, source, linear=False):
    """Refuse anything that is not a mask of exactly this model's prunable weights."""
    expected = {n: p.shape for n, p in prune.prunable(model, linear).items()}
    if not isinstance(mask, dict) or not all(isinstance(v, torch.Tensor) for v in mask.values()):
        raise BadInput(f"{source}: not a mask (expected a dict of weight name -> bool tensor)")
    if set(mask) != set(expected):
        missing, extra = sorted(set(expected) - set(mask)), sorted(set(mask) - set(expected))
        fix = "pass the mask.pt of a run of this --arch and --prune-classifier, or draw one with --sparsity"
        raise BadInput(f"{source}: mask is for another model (missing {missing[:3]}, unexpected {extra[:3]}); {fix}")
    for n, m in mask.items():
        if m.dtype != torch.bool or m.shape != expected[n]:
            raise BadInput(f"{source}: {n} is {m.dtype} {tuple(m.shape)}, expected bool {tuple(expected[n])}")
    return mask


def load_mask(path, model, linear, device):
    """--mask's file on the device, refused unless it is a mask of this model's prunable weights that keeps a weight."""
    try:
        mask = load(path)
    except BadInput as e:
        raise BadInput(f"--mask: {e}; a mask is the mask.pt of a run or of a draw's ticket") from None
    if isinstance(mask, dict) and any(str(n).endswith("running_mean") for n in mask):
        where = "a run keeps its mask as mask.pt beside its model.pt"
        raise BadInput(f"--mask {path} holds model weights (BatchNorm statistics too), not a mask: {where}")
    check_mask(mask, model, path, linear)
    if not any(m.any() for m in mask.values()):
        raise BadInput(f"--mask {path} keeps no weight at all: a ticket needs some")
    return {n: m.to(device) for n, m in mask.items()}


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
    config = read_json(os.path.join(run_dir, "config.json"))
    if config.get("arch") not in models.ARCHS or config.get("dataset") not in data.DATASETS:
        raise BadInput(f"{run_dir}/config.json names an arch or dataset train.py does not know; {expected}")
    return config


def load_run(run_dir, data_dir="data", device="cpu", weights="model.pt"):
    """(model with its tweaks and trained weights, in eval mode; mask; dataset; config) of a finished train.py spend."""
    config = run_config(run_dir)
    ds = data.load(config["dataset"], data_dir, config["subset"], config["seed"], device)
    model = models.get_model(config["arch"], ds["classes"], ds["train"][0].shape[1])
    linear = config.get("prune_classifier", True)  # runs older than the option pruned it
    mask = check_mask(load(os.path.join(run_dir, "mask.pt"), device), model, f"{run_dir}/mask.pt", linear)
    tweaks.apply(model, SimpleNamespace(**config))  # after the check: a tweak may add weights the mask never covers
    try:
        model.load_state_dict(load(os.path.join(run_dir, weights)))
    except RuntimeError as e:
        raise BadInput(f"{run_dir}/{weights} does not fit its config.json ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), mask, ds, config
