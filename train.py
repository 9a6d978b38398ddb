"""Draw a lottery ticket by iterative magnitude pruning, then spend it (re-train it) with the paper's tweaks.

    python train.py --sparsity 0.91 --skip --swish --ls 0.1       # the signature use (ResNet-18, CIFAR-100)
    python train.py --dataset fashionmnist --arch resnet20 --epochs 2 --subset 5000 --sparsity 0.91 --at --trt

Defaults: the §4.1 recipe. The draw is cached, keyed by its inputs, in runs/draws/<dataset>_<arch>_seed<seed>_<hash>/:
draw.json (the key), init.pt (theta_0) and per ticket (imp_LL: IMP level L, density 0.8^L; omp_S; random_S) mask.pt and
its vanilla-LTH training. IMP trains each level the vanilla way to prune the next, so a vanilla spend reuses that. A
spend writes --out: config.json, metrics.csv, mask.pt, model.pt (final), best.pt (best val), last results.json (done).
"""

import argparse
import copy
import csv
import functools
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import hessian
import landscape
import models
import prune
import runs
import tweaks
from models import BadInput
from runs import exists, load, save, write_json

# the draw's cache key; the spend-only tweaks (a draw has them off); how a run computes, not what (not in its config)
RECIPE = [
    "dataset",
    "arch",
    "seed",
    "epochs",
    "lr",
    "batch_size",
    "momentum",
    "wd",
    "subset",
    "rewind_epoch",
    "prune_classifier",
]
TWEAKS = ["skip", "skip_proj", "swish", "mish", "scale_init", "ls", "kd"]
HOW = ["device", "out", "runs", "data_dir", "deterministic", "compile", "amp", "hessian_every", "repair", "keep_epochs"]


def parser():
    p = runs.Parser(description=__doc__.split("\n")[0])

    def a(*flags, **options):  # add_argument; --help shows the default where there is one (not a switch's or a list's)
        if options.get("default") not in (None, []):
            shown = "(default: %(default)s)"
            options["help"] = f"{options['help']} {shown}" if "help" in options else shown
        p.add_argument(*flags, **options)

    a("--dataset", default="cifar100", choices=list(data.DATASETS))
    a("--arch", default="resnet18", choices=list(models.ARCHS))
    a("--data-dir", default="data", help="where datasets are found or downloaded")
    a("--runs", default="runs", help="root of the draw cache and of default run folders")
    a("--out", help="this spend's folder (default: <runs>/<dataset>_<arch>_seed<seed>/<ticket>_<tweaks>_<hash>)")
    a("--seed", type=int, default=42)
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--deterministic", action="store_true", help="deterministic kernels: a resumed run repeats exactly (on a CPU)")
    a("--repair", action="store_true", help="keep a damaged derived file as *.damaged and derive it again")
    a("--compile", action="store_true", help="torch.compile the model for training")
    a("--amp", action=argparse.BooleanOptionalAction, help="train in bf16 autocast (default: on with CUDA, off on CPU)")
    # the §4.1 recipe, for the draw and the spend alike
    a("--epochs", type=int, default=180, help="lr x0.1 at 50%% and 75%% of them (90 and 135 of 180)")
    a("--lr", type=float, default=0.1)
    a("--batch-size", type=int, default=128)
    a("--momentum", type=float, default=0.9)
    a("--wd", type=float, default=2e-4, help="weight decay")
    a("--subset", type=int, help="use only the first N training images (before the 9:1 split)")
    # the ticket
    a("--sparsity", type=float, help="target sparsity in [0, 1); IMP spends level round(log(1-s)/log 0.8)")
    a(
        "--prune",
        default="imp",
        choices=["imp", "omp", "random", "snip", "grasp", "synflow"],
        help="omp: one shot from the dense net; random, snip, grasp, synflow: at init (Table A4: all but snip)",
    )
    a("--prune-classifier", action="store_true", help="prune the linear classifier too (default: convs only)")
    a("--mask", help="spend this mask file ({weight name: bool tensor}) instead of drawing one")
    a("--rewind-epoch", type=int, help="reset to the dense weights after k epochs (LTH-Rewind), not theta_0")
    # the tweaks (§3), applied to the spend only
    a("--skip", action="store_true", help="AT: extra parameter-free skip around every 3x3 conv+BN (Fig. 3)")
    a("--skip-proj", action="store_true", help="the authors' extra skip: a dense 1x1 conv + BN, outside the mask")
    a("--swish", action="store_true", help="AT: every ReLU becomes Swish (SiLU)")
    a("--mish", action="store_true", help="every ReLU becomes Mish")
    a("--scale-init", action="store_true", help="TRT: GradInit-style layer-wise scaled initialization")
    a("--scale-init-iters", type=int, default=180, help="GradInit iterations (the authors' command: 180)")
    a("--scale-init-lr", type=float, default=1e-2, help="GradInit's Adam lr on the scales (the authors' command)")
    a("--ls", type=float, default=0.0, help="TRT: label smoothing alpha (the paper uses 0.1)")
    a("--kd", action="store_true", help="distil from the draw's dense network (§4.6)")
    a("--kd-temp", type=float, default=4.0)
    a("--kd-alpha", type=float, default=0.9, help="weight of the KD term; 1 - alpha on the hard labels")
    a("--at", action="store_true", help="architecture tweaking: --skip --swish")
    a("--trt", action="store_true", help="training recipe tweaking: --scale-init --ls 0.1")
    a("--hessian-every", type=int, default=0, help="record the Hessian's top eigenvalue every N epochs (Fig. A11)")
    a("--keep-epochs", type=int, nargs="*", default=[], help="also keep these epochs' weights as epochE.pt (Fig. 4: 5)")
    return p


def parse_args(argv=None, p=None):
    args = (p or parser()).parse_args(argv)
    if args.at:
        args.skip = args.swish = True
    if args.trt:
        args.scale_init, args.ls = True, args.ls or 0.1
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        raise BadInput(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.mask and args.sparsity is not None:
        raise BadInput("--mask and --sparsity conflict: the mask sets the sparsity")
    if args.swish and args.mish:
        raise BadInput("--swish and --mish conflict: choose one activation")
    if args.epochs < 1 or args.batch_size < 1 or (args.subset is not None and args.subset < 10):
        raise BadInput("--epochs and --batch-size must be >= 1, --subset >= 10")
    if args.rewind_epoch is not None and not 0 <= args.rewind_epoch <= args.epochs:
        raise BadInput(f"--rewind-epoch must be in [0, --epochs={args.epochs}], got {args.rewind_epoch}")
    if not all(1 <= e <= args.epochs for e in args.keep_epochs):
        raise BadInput(f"--keep-epochs must be in [1, --epochs={args.epochs}], got {args.keep_epochs}")
    if args.hessian_every < 0:
        raise BadInput(f"--hessian-every must be >= 0 (0: never), got {args.hessian_every}")
    if not 0 <= args.ls < 1 or not 0 <= args.kd_alpha <= 1 or args.kd_temp <= 0:
        raise BadInput("--ls must be in [0, 1), --kd-alpha in [0, 1], --kd-temp > 0")
    return args


def short_hash(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def new_model(args, ds):
    torch.manual_seed(args.seed)  # theta_0: the same weights for the same seed, every time
    return models.get_model(args.arch, ds["classes"], ds["train"][0].shape[1]).to(args.device)


def forever(ds, batch_size, seed):
    """Augmented training batches without end, a new shuffle each pass, for GradInit: a signal stops it (nothing saved:
    it is cheap to redo)."""
    for rnd in range(sys.maxsize):
        for batch in data.batches(ds, "train", batch_size, seed=seed + rnd, augmented=True):
            if runs.STOP:
                raise runs.Stopped("[spend] stopped by a signal during GradInit: the same command starts it again")
            yield batch


def smallest_batch(model, ds):
    """The fewest images a training batch needs on each rank: 2 where a BatchNorm runs at 1x1 (the last stage of
    VGG-16 and MobileNet on 16x16 images), since train mode needs more than one value per channel; else 1."""
    image = torch.zeros(1, *ds["train"][0].shape[1:], device=ds["train"][0].device)
    try:
        with torch.no_grad():
            copy.deepcopy(model).train()(image)
    except ValueError:  # torch's "Expected more than 1 value per channel when training"
        return 2
    return 1


def lr_at(args, epoch):
    """§4.1: lr x0.1 after 50% and 75% of the epochs (after epochs 90 and 135 of 180); epoch counts from 1."""
    return args.lr * 0.1 ** sum(epoch > math.ceil(args.epochs * f) for f in (0.5, 0.75))


class MaskedSGD:
    """What every training step needs (§4.1): SGD with momentum and weight decay on `model`, the loss(logits, x, y),
    and the mask as fused multiplies (no hooks) on the masked weights. Under torchrun the model steps as DDP (gradients
    averaged over ranks, BatchNorm statistics over the global batch); with --compile, compiled."""

    def __init__(self, model, mask, loss_fn, args, smallest_batch=1):
        weights = dict(model.named_parameters())
        self.model = model  # the weights a checkpoint keeps
        self.mask = mask
        self.masked = [weights[n] for n in mask]
        self.keep = [mask[n].to(weights[n].dtype) for n in mask]
        self.loss_fn = loss_fn
        self.smallest_batch = smallest_batch  # images per rank: a smaller last batch is dropped
        self.opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
        self.cuda = str(args.device).startswith("cuda")
        self.amp = self.cuda if args.amp is None else args.amp
        self.net = model  # what runs forward: the same weights, perhaps wrapped
        if runs.world() > 1:
            for m in model.modules():
                if isinstance(m, models.BatchNorm):
                    m.global_stats = True
            device_ids = [args.device] if self.cuda else None
            self.net = DDP(model, device_ids=device_ids, forward_sync_buffers=False)
        if args.compile:
            self.net = torch.compile(self.net)

    def step(self, x, y, weight):
        """One step on this rank's (x, y), its loss scaled by `weight`; returns (logits, loss) of the batch. The
        pruned weights' gradients are zeroed before the optimizer's step and the weights after it."""
        with torch.autocast("cuda" if self.cuda else "cpu", torch.bfloat16, enabled=self.amp):
            logits = self.net(x)
            loss = self.loss_fn(logits, x, y)  # autocast computes losses in float32
        self.opt.zero_grad(set_to_none=True)
        (loss * weight).backward()
        torch._foreach_mul_([p.grad for p in self.masked], self.keep)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_mul_(self.masked, self.keep)
        return logits, loss.detach()


def signalled(steps, device):
    """Whether a signal (runs.STOP) asks training to stop after this step. Under torchrun ranks get it at different
    steps: every 10 steps they agree."""
    if runs.world() == 1:
        return bool(runs.STOP)
    if steps % 10:
        return False
    count = torch.tensor(len(runs.STOP), device=device)
    dist.all_reduce(count, dist.ReduceOp.MAX)
    return bool(count)


def train_epoch(sgd, ds, args, epoch, resumed=None, max_steps=None):
    """One epoch of masked SGD steps on the augmented training split; each torchrun rank takes its shard of a batch.
    `resumed`, the totals of an epoch a signal cut short, resumes it: its batches (set by (seed, epoch) alone) are
    skipped, its sums added. Returns (the totals over all ranks, as `resumed`; the first step with a non-finite loss,
    or -1; whether a signal cut the epoch short). The sums stay on the device until then: no sync per step."""
    sgd.net.train()
    rank, world = runs.rank(), runs.world()
    done = resumed or dict(loss_sum=0.0, correct=0, seen=0, batches=0)
    share = rank == 0  # a cut epoch's totals are over all ranks: rank 0 carries them, the all_reduce below adds them
    loss_sum = torch.tensor(done["loss_sum"] * share, device=args.device)
    correct = torch.tensor(done["correct"] * share, device=args.device)
    seen = done["seen"] * share
    steps = done["batches"]
    first_bad = torch.tensor(-1, device=args.device)
    stopped = False
    order = data.batches(ds, "train", args.batch_size, args.seed * 1000 + epoch, augmented=True)
    for i, (x, y) in enumerate(order):
        if i < done["batches"]:  # done before the signal
            continue
        if len(y) < world * sgd.smallest_batch:  # a last batch too small for each rank's BatchNorm: dropped
            continue
        n = len(y)
        x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
        # DDP averages over ranks: weighted by its share, a rank's loss makes the step the global batch's mean
        logits, loss = sgd.step(x, y, len(y) * world / n)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        steps += 1
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), steps, first_bad)
        if steps == max_steps:
            break
        if signalled(steps, args.device):
            stopped = True
            break
    if world > 1:
        sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen, device=args.device).double()])
        dist.all_reduce(sums)
        dist.all_reduce(first_bad, dist.ReduceOp.MAX)
        loss_sum, correct, seen = sums[0], sums[1], int(sums[2])
    totals = dict(loss_sum=float(loss_sum), correct=int(correct), seen=seen, batches=steps)
    return totals, int(first_bad), stopped


def checkpoint_state(state, sgd):
    """What a checkpoint holds: the loop's state, the weights, the momentum and torch's generators (the data order
    and augmentation need none: they are seeded by epoch)."""
    rng = dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all())
    return dict(state, model=sgd.model.state_dict(), optimizer=sgd.opt.state_dict(), rng=rng)


def read_or_repair(path, read, args, repair):
    """read(path), or None if there is no such file. A damaged one stops the run, naming --repair, which keeps it as
    *.damaged (never deleted) and returns None: the caller derives it again, the way `repair` says."""
    if not exists(path):
        return None
    try:
        return read(path)
    except BadInput as e:
        if not args.repair:
            raise BadInput(f"{e}; the same command with --repair keeps it as *.damaged and {repair}") from None
    if runs.rank() == 0:
        os.replace(path, path + ".damaged")
    print(f"note: {path} was damaged, kept as {path}.damaged; {repair}", file=sys.stderr)
    return None


def restore(state, sgd, label, checkpoint):
    """A checkpoint's weights, momentum and torch's generators restored in place; returns the loop's state."""
    sgd.model.load_state_dict(state.pop("model"))
    sgd.opt.load_state_dict(state.pop("optimizer"))
    rng = state.pop("rng")
    torch.set_rng_state(rng["torch"].cpu())  # loaded onto --device with the rest; the generators take CPU bytes
    torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    where = f"epoch {state['epoch']}"
    if state.get("done"):  # a signal cut the next epoch short
        where += f", batch {state['done']['batches']}"
    print(f"{label} resuming after {where} from {checkpoint}", flush=True)
    return state


def fit(sgd, ds, args, state, label, checkpoint):
    """The one training loop (§4.1), for the dense draw, every IMP level and every spend: SGD with momentum and weight
    decay, the step lr schedule, masked steps (`train_epoch`), the best-validation weights kept. Every epoch the state
    (weights, momentum, best weights, metrics, RNG, seconds so far; the data order needs none) goes to `checkpoint`:
    a rerun resumes. Returns the state."""
    if str(args.device).startswith("cuda"):
        torch.backends.cudnn.benchmark = not args.deterministic
    model = sgd.model
    clock = time.time() - state.get("seconds", 0.0)  # what earlier processes spent counts too
    start = time.time()
    first = state["epoch"] + 1
    for epoch in range(first, args.epochs + 1):
        t0 = time.time()
        lr = lr_at(args, epoch)
        for group in sgd.opt.param_groups:
            group["lr"] = lr
        totals, bad_step, stopped = train_epoch(sgd, ds, args, epoch, resumed=state.pop("done", None))
        train_secs = time.time() - t0  # --gpu-check splits an epoch into training and the rest
        if stopped:  # preempted: the step's state and the epoch's totals so far; `runs.command` exits 143
            state["done"] = totals
            state["seconds"] = time.time() - clock
            save(checkpoint_state(state, sgd), checkpoint)
            raise runs.Stopped(
                f"{label} stopped by a signal in epoch {epoch} after batch {totals['batches']}: "
                f"saved {checkpoint}; the same command resumes from there"
            )
        train_loss = totals["loss_sum"] / totals["seen"]
        train_acc = totals["correct"] / totals["seen"]
        if bad_step >= 0 or not math.isfinite(train_loss):  # the last good checkpoint (previous epoch) is left as is
            kept = f"the last good checkpoint is {checkpoint}" if exists(checkpoint) else "no checkpoint was saved"
            print(
                f"error: {label}: the loss became {train_loss} in epoch {epoch}, step {bad_step}: the run "
                f"diverged (a lower --lr may help); {kept}",
                file=sys.stderr,
            )
            sys.exit(3)
        val_acc, val_loss = data.evaluate(model, ds, "val")
        if val_acc > state["best_val"]:
            state["best_val"] = val_acc
            state["best_epoch"] = epoch
            state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        secs = time.time() - t0
        row = dict(
            epoch=epoch,
            train_loss=round(train_loss, 5),
            train_acc=round(train_acc, 5),
            val_loss=round(val_loss, 5),
            val_acc=round(val_acc, 5),
            lr=lr,
            seconds=round(secs, 2),
            train_seconds=round(train_secs, 2),
        )
        if args.hessian_every:  # Fig. A11: the mean top eigenvalue of 3 fixed training batches, along training
            value, std = "", ""  # blank in the epochs between
            if epoch % args.hessian_every == 0:
                batches = hessian.fixed_batches(ds, 3, 128, args.seed)
                value, std, _, _ = hessian.per_batch(model, F.cross_entropy, batches, masks=sgd.mask)
            row.update(top_eigenvalue=value, top_eigenvalue_std=std)
        state["rows"].append(row)
        eta = (time.time() - start) / (epoch - first + 1) * (args.epochs - epoch)
        print(
            f"{label} epoch {epoch:3d}/{args.epochs}  loss {train_loss:.4f}  train {train_acc:.2%}  "
            f"val {val_acc:.2%}  lr {lr:.4g}  {secs:.1f}s  eta {eta / 60:.1f}m",
            flush=True,
        )
        if epoch in args.keep_epochs:  # Fig. 4 looks at the landscape after epoch 5; LTH-Rewind restarts from one
            weights = {k: v.cpu() for k, v in model.state_dict().items()}
            save(weights, os.path.join(os.path.dirname(checkpoint), f"epoch{epoch}.pt"))
        state["epoch"] = epoch
        state["seconds"] = time.time() - clock
        save(checkpoint_state(state, sgd), checkpoint)
    return state


def results_of(model, best, state, mask, ds):
    """What results.json records of a trained ticket: test accuracy of the best-validation weights (the paper's) and
    of the final ones, fit's `state`'s best epoch, sparsity measured from the weights, Table A1's activations."""
    images, _ = landscape.fixed_images(ds, "test", 500)
    weights = dict(model.named_parameters())
    every = prune.prunable(model, linear=True)  # every conv/linear weight
    pruned = [weights[n] for n in mask]  # the layers the mask covers: the paper's sparsity is theirs
    cuda = next(model.parameters()).is_cuda  # evaluation runs in bf16 there: float32's accuracy shows what it costs
    return dict(
        test_acc=data.evaluate(best, ds, "test")[0],
        test_acc_float32=data.evaluate(best, ds, "test", amp=False)[0] if cuda else None,
        final_test_acc=data.evaluate(model, ds, "test")[0],
        best_val_acc=state["best_val"],
        best_epoch=state["best_epoch"],
        final_val_acc=state["rows"][-1]["val_acc"],
        sparsity=prune.sparsity(pruned),
        sparsity_all=prune.sparsity(every.values()),
        params_total=sum(p.numel() for p in model.parameters()),
        params_nonzero=sum(int(p.count_nonzero()) for p in model.parameters()),
        activation_sparsity=landscape.activation_sparsity(model, images),  # Table A1: |a| <= 1e-2
        activation_zeros=landscape.activation_sparsity(model, images, threshold=0),
        weights_total=sum(w.numel() for w in pruned),
        weights_nonzero=sum(int(w.count_nonzero()) for w in pruned),
        unmasked_weights=sum(w.numel() for n, w in every.items() if n not in mask),  # trained, never pruned
        pruned_nonzero=sum(int(weights[n][~m].count_nonzero()) for n, m in mask.items()),
        train_images=len(ds["train"][1]),
        peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20) if cuda else 0,
    )


def metrics_csv(rows):
    """metrics.csv: a header of the rows' keys, then one line per epoch."""
    lines = [",".join(rows[0])] + [",".join(map(str, row.values())) for row in rows]
    return "\n".join(lines) + "\n"


def read_metrics(path):
    """metrics.csv's rows as `fit` made them (numbers; Fig. A11's blanks ""); a damaged file is a BadInput."""
    try:
        with open(path) as f:
            rows = [{k: json.loads(v) if v else "" for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, TypeError) as e:  # TypeError: a row with fewer or more values than the header
        raise BadInput(f"{path}: unreadable ({e})") from None
    if not rows:
        raise BadInput(f"{path}: unreadable (no epoch in it)")
    return rows


def train_ticket(args, ds, mask, reset_state, out, label, teacher=None):
    """Build the ticket (reset weights * mask), apply the spend's tweaks, train it with `fit`, write `out`. Its
    seconds count GradInit (also given alone) and what earlier processes spent on it."""
    start = time.time()
    model = new_model(args, ds)
    model.load_state_dict(reset_state)
    prune.apply_mask(model, mask)
    tweaks.apply(model, args)
    checkpoint = os.path.join(out, "checkpoint.pt")
    saved = read_or_repair(checkpoint, functools.partial(load, device=args.device), args, "trains from the start")
    state = dict(epoch=0, best_val=-1.0, best_epoch=0, best_state=None, rows=[], seconds=0.0, scale_init_seconds=0.0)
    if args.scale_init and saved is None:  # a checkpoint has the scaled weights
        batches = forever(ds, args.batch_size, args.seed)
        scales = tweaks.scale_init(model, mask, batches, args.scale_init_iters, args.scale_init_lr)
        state["seconds"] = time.time() - start
        state["scale_init_seconds"] = round(state["seconds"], 1)
        print(f"{label} scale_init: scales in [{min(scales.values()):.3f}, {max(scales.values()):.3f}]")
    loss_fn = tweaks.make_loss(args.ls, teacher, args.kd_temp, args.kd_alpha)
    sgd = MaskedSGD(model, mask, loss_fn, args, smallest_batch(model, ds))
    if saved:
        state = restore(saved, sgd, label, checkpoint)
    state = fit(sgd, ds, args, state, label, checkpoint)
    measured = time.time()
    best = copy.deepcopy(model)
    best.load_state_dict(state["best_state"])
    results = results_of(model, best, state, mask, ds)
    results["seconds"] = round(state["seconds"] + time.time() - measured, 1)
    results["scale_init_seconds"] = state.get("scale_init_seconds", 0.0)  # older checkpoints have none
    results["device"] = str(args.device)
    if runs.STOP:  # a signal during the final evaluation: the checkpoint stays, and a rerun measures again
        raise runs.Stopped(f"{label} stopped by a signal after its last epoch: the same command writes its results")
    if not exists(os.path.join(out, "mask.pt")):  # a draw's ticket folder has it already
        save({n: m.cpu() for n, m in mask.items()}, os.path.join(out, "mask.pt"))
    save({k: v.cpu() for k, v in model.state_dict().items()}, os.path.join(out, "model.pt"))
    save({k: v.cpu() for k, v in state["best_state"].items()}, os.path.join(out, "best.pt"))
    save(metrics_csv(state["rows"]), os.path.join(out, "metrics.csv"))
    write_json(results, os.path.join(out, "results.json"))  # written last: its presence means finished
    if runs.rank() == 0:
        os.remove(checkpoint)
    return results


class Draw:
    """One cached draw: theta_0, the rewind weights and every ticket (mask + vanilla-LTH training)."""

    def __init__(self, args, ds):
        self.args, self.ds = args, ds
        key = {k: getattr(args, k) for k in RECIPE}
        self.dir = os.path.join(args.runs, "draws", f"{args.dataset}_{args.arch}_seed{args.seed}_{short_hash(key)}")
        if not exists(os.path.join(self.dir, "draw.json")):
            write_json(key, os.path.join(self.dir, "draw.json"))
        self.vanilla = copy.copy(args)  # the draw never sees the tweaks (§3)
        vars(self.vanilla).update(dict.fromkeys(TWEAKS, False), ls=0.0, hessian_every=0)  # nor Fig. A11's Hessians

    def derived(self, path, derive):
        """A draw file derivable again exactly (init.pt from the seed, a mask from what it is drawn from): derived once,
        then read. A damaged one stops the run, naming --repair, which keeps it as *.damaged and derives it again."""
        found = read_or_repair(path, load, self.args, "derives it again exactly")
        if found is not None:
            return found
        save(derive(), path)
        return load(path)

    def trained_weights(self, ticket, name="model.pt"):
        """A file of the ticket's vanilla training (weights, or metrics.csv's rows). A damaged one cannot be derived
        again exactly (training is not bit-exact on every device): the message says which runs to redo."""
        path = os.path.join(self.trained(ticket), name)
        try:
            if name == "metrics.csv":
                return read_metrics(path)
            return load(path, self.args.device)
        except BadInput as e:
            raise BadInput(
                f"{e}; a trained network cannot be derived again exactly: move {os.path.dirname(path)} "
                f"aside and run again (it retrains; redo also every IMP level drawn after it)"
            ) from None

    def results(self, ticket):
        """A trained ticket's results.json; --repair measures a damaged one again from the ticket's weights and
        metrics.csv, all as training measured it but seconds (the epochs' own, summed)."""
        path = os.path.join(self.trained(ticket), "results.json")
        found = read_or_repair(path, runs.read_json, self.args, "measures it again from the weights beside it")
        if found is not None:
            return found
        model = new_model(self.args, self.ds)  # a draw's ticket has no tweak
        model.load_state_dict(self.trained_weights(ticket))
        best = new_model(self.args, self.ds)
        best.load_state_dict(self.trained_weights(ticket, "best.pt"))
        rows = self.trained_weights(ticket, "metrics.csv")
        val = [row["val_acc"] for row in rows]
        best_val, _ = data.evaluate(best, self.ds, "val")
        state = dict(rows=rows, best_epoch=rows[val.index(max(val))]["epoch"], best_val=best_val)
        results = results_of(model, best, state, self.mask(ticket), self.ds)
        results["seconds"] = round(sum(row["seconds"] for row in rows), 1)
        results["device"] = str(self.args.device)
        write_json(results, path)
        return results

    def vanilla_files(self, ticket, kept):
        """{name: bytes} of the files a vanilla spend copies from the ticket's training, each checked first so that
        nothing damaged spreads: a damaged one stops the run, naming the draw's file and what to do."""
        folder = self.trained(ticket)
        self.mask(ticket)
        for name in ("model.pt", "best.pt", "metrics.csv", *kept):
            self.trained_weights(ticket, name)
        self.results(ticket)
        files = {}
        for name in ("mask.pt", "model.pt", "best.pt", "metrics.csv", "results.json", *kept):
            with open(os.path.join(folder, name), "rb") as f:
                files[name] = f.read()
        return files

    def init(self):
        return self.derived(os.path.join(self.dir, "init.pt"), lambda: new_model(self.args, self.ds).state_dict())

    def reset_state(self):
        """theta_0 (vanilla LTH), or the dense weights after --rewind-epoch epochs (LTH-Rewind)."""
        if not self.args.rewind_epoch:
            return self.init()
        return self.trained_weights("imp_00", f"epoch{self.args.rewind_epoch}.pt")  # kept by the dense training

    def mask(self, ticket):
        """The mask of a ticket named imp_LL, omp_S or random_S; drawn once, then read from disk."""
        masks = self.derived(os.path.join(self.dir, ticket, "mask.pt"), lambda: self.draw_mask(ticket))
        return {n: m.to(self.args.device) for n, m in masks.items()}

    def draw_mask(self, ticket):
        """Draw a ticket's mask, returned on the CPU: IMP from the previous level's trained weights, OMP from the dense
        network's, random from the seed, pruning at initialization from theta_0 and the data."""
        method, value = ticket.split("_")
        model = new_model(self.args, self.ds)
        linear = self.args.prune_classifier
        names = list(prune.prunable(model, linear))
        if ticket == "imp_00":
            mask = prune.ones_mask(model, linear)
        elif method == "imp":  # by magnitude: 20% of what the previous level kept, from its trained weights
            prev = f"imp_{int(value) - 1:02d}"
            weights = {n: w for n, w in self.trained_weights(prev).items() if n in names}
            mask = prune.imp_step(weights, self.mask(prev))
        elif method == "omp":  # by magnitude, in one shot from the dense network's trained weights
            weights = {n: w for n, w in self.trained_weights("imp_00").items() if n in names}
            mask = prune.omp(weights, float(value))
        elif method == "random":
            mask = prune.random_prune(prune.prunable(model, linear), float(value), self.args.seed)
        else:  # pruning at initialization (Table A4): scored on theta_0
            model.load_state_dict(self.init())
            if method == "synflow":
                input_shape = tuple(self.ds["train"][0].shape[1:])
                mask = prune.synflow(model, float(value), input_shape=input_shape, linear=linear)
            elif method == "snip":  # one batch, as the official code
                batch = next(data.batches(self.ds, "train", self.args.batch_size, seed=self.args.seed))
                mask = prune.snip(model, [batch], float(value), linear)
            else:  # GraSP's official configs: 10 images per class; 5 per class, twice, for 100 classes
                per_class, fetches = (10, 1) if self.ds["classes"] <= 10 else (5, 2)
                batches = []
                for i in range(fetches):  # each class-sorted sample scored as two batches, as the official code
                    x, y = data.balanced_batch(self.ds, per_class, self.args.seed + i)
                    half = len(y) // 2
                    batches += [(x[:half], y[:half]), (x[half:], y[half:])]
                mask = prune.grasp(model, batches, float(value), linear)
        return {n: m.cpu() for n, m in mask.items()}

    def trained(self, ticket):
        """The ticket trained the vanilla-LTH way (reset weights * mask, no tweaks); its folder."""
        out = os.path.join(self.dir, ticket)
        if exists(os.path.join(out, "results.json")):
            return out
        with runs.locked(out, wait=True):
            if exists(os.path.join(out, "results.json")):  # another process trained it meanwhile
                return out
            mask = self.mask(ticket)
            sparsity = prune.sparsity(mask.values())
            print(f"=== draw {ticket}: {sparsity:.2%} sparse, vanilla LTH training -> {out}", flush=True)
            dense, vanilla = ticket == "imp_00", copy.copy(self.vanilla)
            if dense and self.args.rewind_epoch:  # LTH-Rewind's theta_k: the dense training keeps epoch k
                vanilla.keep_epochs = [*vanilla.keep_epochs, self.args.rewind_epoch]
            train_ticket(vanilla, self.ds, mask, self.init() if dense else self.reset_state(), out, f"[{ticket}]")
        return out

    def teacher(self):
        """The draw's dense network (best validation weights), frozen, as the KD teacher."""
        model = new_model(self.args, self.ds)
        model.load_state_dict(self.trained_weights("imp_00", "best.pt"))
        return model.eval().requires_grad_(False)


def summarize(results, out):
    return (
        f"test acc {results['test_acc']:.2%} (best val {results['best_val_acc']:.2%} at epoch "
        f"{results['best_epoch']}; final epoch {results['final_test_acc']:.2%})  sparsity "
        f"{results['sparsity']:.2%} ({results['weights_nonzero']:,} of {results['weights_total']:,} pruned-layer "
        f"weights left; {results.get('sparsity_all', results['sparsity']):.2%} of all conv/linear weights)  "
        f"{results['seconds']:.0f}s on {results['device']}  -> {out}"
    )


def ticket_name(args):
    """The draw's ticket a spend takes: IMP level L (imp_LL); other pruners one per sparsity (omp_S, ...); or --mask."""
    if args.mask:
        return "mask"
    s = args.sparsity or 0.0
    if args.prune == "imp" or s == 0:
        return f"imp_{prune.imp_level(s):02d}"
    return f"{args.prune}_{s:.4f}"


def variant_name(args):
    """The spend's tweaks, joined by +, label smoothing with its alpha (skip+swish+scale_init+ls0.1); "" if none."""
    tweaks_on = [k for k in TWEAKS if k != "ls" and getattr(args, k)]
    if args.ls:
        tweaks_on.append(f"ls{args.ls}")
    return "+".join(tweaks_on)


def load_data(args):
    """The dataset; if it is missing and cannot be downloaded, the --data-dir folders the attempt made are removed."""
    fresh = not os.path.exists(args.data_dir)
    try:
        return data.load(args.dataset, args.data_dir, args.subset, args.seed, args.device)
    except BadInput:
        if fresh:  # a failed download leaves the folders it made: removed where empty (a file never is)
            for folder, _, _ in reversed(list(os.walk(args.data_dir))):
                if not os.listdir(folder):
                    os.rmdir(folder)
        raise


def refuse_file(flag, folder):
    """Refuse a folder to use or create if it, or the nearest part of its path that exists, is a file."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise BadInput(f"{flag} {folder}: {path} is a file, not a folder; choose another {flag}")


def check_data(args, ds, model):
    """Refuse a --subset too small for a validation split, and a --batch-size too small for the arch's BatchNorm."""
    n_val, classes = len(ds["val"][1]), ds["classes"]
    if n_val < classes:
        split = f"{n_val} validation images for {classes} classes"
        raise BadInput(f"--subset {args.subset} is too small: {split}; use --subset >= {10 * classes}")
    least = smallest_batch(model, ds) * runs.world()  # under torchrun: per process
    if args.batch_size < least:
        raise BadInput(f"--batch-size {args.batch_size} is too small for {args.arch}'s BatchNorm: use >= {least}")


def user_mask(args, model):
    """--mask's file on the device, refused unless it is a mask of this model's prunable weights that keeps some
    weights in every layer."""
    try:
        mask = load(args.mask)
    except BadInput as e:
        raise BadInput(f"--mask: {e}; a mask is the mask.pt of a run or of a draw's ticket") from None
    if isinstance(mask, dict) and any(str(n).endswith("running_mean") for n in mask):
        where = "a run keeps its mask as mask.pt beside its model.pt"
        raise BadInput(f"--mask {args.mask} holds model weights (BatchNorm statistics too), not a mask: {where}")
    prune.check_mask(mask, model, args.mask, args.prune_classifier)
    empty = [n for n, m in mask.items() if not m.any()]
    if empty:
        layers = "any of its layers" if len(empty) == len(mask) else ", ".join(empty)
        raise BadInput(f"--mask {args.mask} keeps no weight of {layers}: a ticket needs weights in every layer")
    return {n: m.to(args.device) for n, m in mask.items()}


def run(args):
    config = {k: v for k, v in vars(args).items() if k not in HOW}
    ticket = ticket_name(args)
    variant = variant_name(args)
    folder = f"{ticket}_{variant or 'lth'}_{short_hash(config)}"
    out = args.out or os.path.join(args.runs, f"{args.dataset}_{args.arch}_seed{args.seed}", folder)
    refuse_file("--out" if args.out else "--runs", out)
    refuse_file("--runs", args.runs)
    refuse_file("--data-dir", args.data_dir)
    if exists(os.path.join(out, "config.json")):
        fix = f"; move {out} aside (it trains again) or choose another --out"
        if runs.read_json(os.path.join(out, "config.json"), fix) != config:
            raise BadInput(f"{out} holds a run with another config; choose another --out")
        if exists(os.path.join(out, "results.json")):
            print(f"already finished: {summarize(runs.read_json(os.path.join(out, 'results.json'), fix), out)}")
            return
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)  # CUDA: a few ops (pooling backward) only warn
    ds = load_data(args)
    model = new_model(args, ds)
    check_data(args, ds, model)
    mask = user_mask(args, model) if args.mask else None
    draw = Draw(args, ds)  # the first file written: every input is known good
    with runs.locked(out, wait=False):
        write_json(config, os.path.join(out, "config.json"))
        spend(args, ds, draw, ticket, variant, mask, out)


def spend(args, ds, draw, ticket, variant, mask, out):
    """Spend the ticket (or --mask's `mask`) into `out`: vanilla LTH is the draw's own training, copied, unless it
    asks for records that training may not have (--hessian-every, weights of --keep-epochs: Fig. A11, 4); anything
    else trains."""
    kept = [f"epoch{e}.pt" for e in args.keep_epochs]
    source = None
    if not (mask or variant or args.hessian_every):
        source = draw.trained(ticket)
    if source and all(os.path.exists(os.path.join(source, f)) for f in kept):
        for name, content in draw.vanilla_files(ticket, kept).items():
            save(content, os.path.join(out, name))
        results = runs.read_json(os.path.join(out, "results.json"))
    else:
        mask = mask or draw.mask(ticket)
        teacher = draw.teacher() if args.kd else None
        print(f"=== spend {ticket} with {variant or 'no tweaks'} -> {out}", flush=True)
        results = train_ticket(args, ds, mask, draw.reset_state(), out, "[spend]", teacher)
    print(summarize(results, out))


@runs.command
def main(argv=None):
    args = parse_args(argv)
    runs.init_distributed(args)
    run(args)
    if runs.world() > 1:  # leave together: a rank that exits at once can cut off its last message to rank 0
        runs.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    runs.stop_on_signals()
    main()
