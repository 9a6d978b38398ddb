"""Draw a lottery ticket by iterative magnitude pruning, then spend it (re-train it) with the paper's tweaks.

    python train.py --sparsity 0.91 --skip --swish --ls 0.1       # the signature use (ResNet-18, CIFAR-100)
    python train.py --dataset fashionmnist --arch resnet20 --epochs 2 --subset 5000 --sparsity 0.91 --at --trt

Read top to bottom as the paper: the flags (§4.1's recipe as defaults), the training loop (`fit`), a ticket's training
(`train_ticket`: the tweaks, GradInit, the loss, `fit`, the results), the draw (`draw`: IMP's loop over levels, §3), the
spend (`spend`: the draw's ticket, or --mask's, and its training). The draw is cached in <runs>/draws/, keyed by its
inputs (runs.DrawCache): a level found there is skipped, and a vanilla-LTH spend is its ticket's own training, copied. A
spend writes --out: config.json, metrics.csv, mask.pt, model.pt (final), best.pt (best val), last results.json (done). A
signal stops a run at its next step; the same command resumes from the last epoch.
"""

import argparse
import copy
import math
import os
import time

import torch
import torch.nn.functional as F

import cli
import data
import hessian
import landscape
import models
import prune
import runs
import tweaks

# the draw's cache key (a draw trains with tweaks.FLAGS off); HOW: how a run computes, not what (not in its config)
RECIPE = ["dataset", "arch", "seed", "subset", "prune_classifier", "rewind_epoch"]  # what is drawn from what
RECIPE += ["epochs", "lr", "batch_size", "momentum", "wd"]  # and trained how (§4.1)
HOW = ["device", "out", "runs", "data_dir", "deterministic", "compile", "amp", "hessian_every", "repair", "keep_epochs"]


def parse_args(argv=None):
    p = cli.Parser(description=__doc__.split("\n")[0])
    a = p.add_argument
    whole, count = cli.number(int, 0), cli.number(int, 1)  # 0, 1, 2, ...; 1, 2, ...
    positive, fraction = cli.number(float, 0, above=True), cli.number(float, 0, 1, below=True)  # (0, inf); [0, 1)
    a("--dataset", default="cifar100", choices=list(data.DATASETS))
    a("--arch", default="resnet18", choices=list(models.ARCHS))
    a("--data-dir", default="data", help="where datasets are found or downloaded")
    a("--runs", default="runs", help="root of the draw cache and of default run folders")
    a("--out", help="this spend's folder (default: <runs>/<dataset>_<arch>_seed<seed>/<ticket>_<tweaks>_<hash>)")
    a("--seed", type=int, default=42)
    a("--device", help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    a("--deterministic", action="store_true", help="deterministic kernels: a resumed run repeats exactly (on a CPU)")
    a("--repair", action="store_true", help="keep a damaged derived file as *.damaged and derive it again")
    a("--compile", action="store_true", help="torch.compile the model for training")
    a("--amp", action=argparse.BooleanOptionalAction, help="train in bf16 autocast (default: on with CUDA, off on CPU)")
    # the §4.1 recipe, for the draw and the spend alike
    a("--epochs", type=count, default=180, help="lr x0.1 at 50%% and 75%% of them (90 and 135 of 180)")
    a("--lr", type=positive, default=0.1)
    a("--batch-size", type=count, default=128)
    a("--momentum", type=fraction, default=0.9)
    a("--wd", type=cli.number(float, 0), default=2e-4, help="weight decay")
    a("--subset", type=cli.number(int, 10), help="use only the first N training images (before the 9:1 split)")
    # the ticket
    a("--sparsity", type=fraction, help="target sparsity in [0, 1); IMP spends level round(log(1-s)/log 0.8)")
    a(
        "--prune",
        default="imp",
        choices=["imp", "omp", "random", "snip", "grasp", "synflow"],
        help="omp: one shot from the dense net; random, snip, grasp, synflow: at init (Table A4: all but snip)",
    )
    a("--prune-classifier", action="store_true", help="prune the linear classifier too (default: convs only)")
    a("--mask", help="spend this mask file ({weight name: bool tensor}) instead of drawing one")
    a("--rewind-epoch", type=whole, help="reset to the dense weights after k epochs (LTH-Rewind), not theta_0")
    # the tweaks (§3), applied to the spend only
    a("--skip", action="store_true", help="AT: extra parameter-free skip around every 3x3 conv+BN (Fig. 3)")
    a("--skip-proj", action="store_true", help="the authors' extra skip: a dense 1x1 conv + BN, outside the mask")
    a("--swish", action="store_true", help="AT: every ReLU becomes Swish (SiLU)")
    a("--mish", action="store_true", help="every ReLU becomes Mish")
    a("--scale-init", action="store_true", help="TRT: GradInit-style layer-wise scaled initialization")
    a("--scale-init-iters", type=count, default=180, help="GradInit iterations (the authors' command: 180)")
    a("--scale-init-lr", type=positive, default=1e-2, help="GradInit's Adam lr on the scales (the authors' command)")
    a("--ls", type=fraction, default=0.0, help="TRT: label smoothing alpha (the paper uses 0.1)")
    a("--kd", action="store_true", help="distil from the draw's dense network (§4.6)")
    a("--kd-temp", type=positive, default=4.0)
    a("--kd-alpha", type=cli.number(float, 0, 1), default=0.9, help="weight of the KD term; 1 - it on the hard labels")
    a("--at", action="store_true", help="architecture tweaking: --skip --swish")
    a("--trt", action="store_true", help="training recipe tweaking: --scale-init --ls 0.1")
    a("--hessian-every", type=whole, default=0, help="record the Hessian's top eigenvalue every N epochs (Fig. A11)")
    a("--keep-epochs", type=count, nargs="*", default=[], help="also keep epoch E's weights as epochE.pt (Fig. 4: 5)")
    args = p.parse_args(argv)
    if args.at:
        args.skip = args.swish = True
    if args.trt:
        args.scale_init, args.ls = True, args.ls or 0.1
    if args.mask and args.sparsity is not None:
        raise cli.BadInput("--mask and --sparsity conflict: the mask sets the sparsity")
    if args.swish and args.mish:
        raise cli.BadInput("--swish and --mish conflict: choose one activation")
    if args.rewind_epoch is not None and args.rewind_epoch > args.epochs:
        raise cli.BadInput(f"--rewind-epoch must be in [0, --epochs={args.epochs}], got {args.rewind_epoch}")
    if not all(e <= args.epochs for e in args.keep_epochs):
        raise cli.BadInput(f"--keep-epochs must be in [1, --epochs={args.epochs}], got {args.keep_epochs}")
    args.device = cli.device(args.device)
    return args


def new_model(args, ds):
    torch.manual_seed(args.seed)  # theta_0: the same weights for the same seed, every time
    return models.get_model(args.arch, ds["classes"], ds["train"][0].shape[1]).to(args.device)


def lr_at(args, epoch):
    """§4.1: lr x0.1 after 50% and 75% of the epochs (after epochs 90 and 135 of 180); epoch counts from 1."""
    return args.lr * 0.1 ** sum(epoch > math.ceil(args.epochs * f) for f in (0.5, 0.75))


class MaskedSGD:
    """What every training step needs (§4.1): SGD with momentum and weight decay on `model`, the loss(logits, x, y),
    and the mask as fused multiplies (no hooks) on the masked weights; with --compile, compiled."""

    def __init__(self, model, mask, loss_fn, args, smallest_batch=1):
        weights = dict(model.named_parameters())
        self.model = model  # the weights a checkpoint keeps
        self.mask = mask
        self.masked = [weights[n] for n in mask]
        self.keep = [mask[n].to(weights[n].dtype) for n in mask]
        self.loss_fn = loss_fn
        self.smallest_batch = smallest_batch  # images a batch needs: a smaller last batch is dropped
        self.opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
        self.cuda = str(args.device).startswith("cuda")
        self.amp = self.cuda if args.amp is None else args.amp
        self.net = torch.compile(model) if args.compile else model  # what runs forward

    def step(self, x, y):
        """One step on (x, y) -> (logits, loss), the pruned weights' gradients and weights kept zero."""
        with torch.autocast("cuda" if self.cuda else "cpu", torch.bfloat16, enabled=self.amp):
            logits = self.net(x)
            loss = self.loss_fn(logits, x, y)  # autocast computes losses in float32
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch._foreach_mul_([p.grad for p in self.masked], self.keep)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_mul_(self.masked, self.keep)
        return logits, loss.detach()


def train_epoch(sgd, ds, args, epoch, max_steps=None):
    """One epoch of masked SGD steps on the augmented training split, ended early by a signal. Returns (the totals:
    loss_sum, correct, seen; the first step with a non-finite loss, or -1), kept on the device until then: no sync."""
    sgd.net.train()
    loss_sum, correct = torch.zeros((), device=args.device), torch.zeros((), device=args.device, dtype=torch.long)
    seen, steps, first_bad = 0, 0, torch.tensor(-1, device=args.device)
    for x, y in data.batches(ds, "train", args.batch_size, args.seed * 1000 + epoch, augmented=True):
        if len(y) < sgd.smallest_batch:  # a last batch too small for BatchNorm: dropped
            continue
        logits, loss = sgd.step(x, y)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        steps += 1
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), steps, first_bad)
        if steps == max_steps or cli.STOP:
            break
    return dict(loss_sum=float(loss_sum), correct=int(correct), seen=seen), int(first_bad)


def fit(sgd, ds, args, state, label, out):
    """The one training loop (§4.1), for the dense draw, every IMP level and every spend. Each epoch ends in a
    checkpoint of `state` (epoch, best-validation weights, metrics rows, seconds so far), from which a rerun resumes."""
    checkpoint = os.path.join(out, "checkpoint.pt")
    if sgd.cuda:
        torch.backends.cudnn.benchmark = not args.deterministic
    clock, start, first = time.time() - state["seconds"], time.time(), state["epoch"] + 1  # earlier processes count
    for epoch in range(first, args.epochs + 1):
        t0, lr = time.time(), lr_at(args, epoch)
        for group in sgd.opt.param_groups:
            group["lr"] = lr
        totals, bad_step = train_epoch(sgd, ds, args, epoch)
        train_secs = time.time() - t0  # --gpu-check splits an epoch into training and the rest
        if cli.STOP:  # preempted: `cli.command` exits 143; the checkpoint of the last epoch stays
            kept = f"{checkpoint} keeps epoch {epoch - 1}" if os.path.exists(checkpoint) else "no epoch was saved"
            raise cli.Stopped(f"{label} stopped by a signal in epoch {epoch}: {kept}; the same command resumes")
        train_loss, train_acc = totals["loss_sum"] / totals["seen"], totals["correct"] / totals["seen"]
        if bad_step >= 0 or not math.isfinite(train_loss):  # the last good checkpoint (the previous epoch's) stays
            kept = (
                f"the last good checkpoint is {checkpoint}" if os.path.exists(checkpoint) else "no checkpoint was saved"
            )
            fix = f"a lower --lr may help, with another --out or {out} moved aside; {kept}"
            raise cli.Diverged(
                f"{label} the loss became {train_loss} in epoch {epoch}, step {bad_step}: diverged ({fix})"
            )
        val_acc, val_loss = data.evaluate(sgd.model, ds, "val")
        if val_acc > state["best_val"]:
            state.update(best_val=val_acc, best_epoch=epoch)
            state["best_state"] = {k: v.detach().clone() for k, v in sgd.model.state_dict().items()}
        secs = time.time() - t0
        row = dict(epoch=epoch, train_loss=round(train_loss, 5), train_acc=round(train_acc, 5))
        row.update(val_loss=round(val_loss, 5), val_acc=round(val_acc, 5), lr=lr, seconds=round(secs, 2))
        row.update(train_seconds=round(train_secs, 2))
        if args.hessian_every:  # Fig. A11: the mean top eigenvalue of 3 fixed training batches, along training
            row.update(top_eigenvalue="", top_eigenvalue_std="")  # blank in the epochs between
            if epoch % args.hessian_every == 0:
                batches = hessian.fixed_batches(ds, 3, 128, args.seed)
                value, std, _, _ = hessian.per_batch(sgd.model, F.cross_entropy, batches, masks=sgd.mask)
                row.update(top_eigenvalue=value, top_eigenvalue_std=std)
        state["rows"].append(row)
        eta = (time.time() - start) / (epoch - first + 1) * (args.epochs - epoch)
        print(
            f"{label} epoch {epoch:3d}/{args.epochs}  loss {train_loss:.4f}  train {train_acc:.2%}  "
            f"val {val_acc:.2%}  lr {lr:.4g}  {secs:.1f}s  eta {eta / 60:.1f}m",
            flush=True,
        )
        if epoch in args.keep_epochs:  # Fig. 4 looks at the landscape after epoch 5; LTH-Rewind restarts from one
            runs.save({k: v.cpu() for k, v in sgd.model.state_dict().items()}, os.path.join(out, f"epoch{epoch}.pt"))
        state.update(epoch=epoch, seconds=time.time() - clock)
        runs.save_checkpoint(checkpoint, state, sgd.model, sgd.opt)
    return state


def results_of(model, best, state, mask, ds):
    """What results.json records of a trained ticket: test accuracy of the best-validation weights (the paper's) and
    of the final ones, fit's `state`'s best epoch, sparsity measured from the weights, Table A1's activations."""
    images, _ = landscape.fixed_images(ds, "test", 500)
    every = prune.prunable(model, linear=True)  # every conv/linear weight
    pruned = [every[n] for n in mask]  # the layers the mask covers: the paper's sparsity is theirs
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
        pruned_nonzero=sum(int(every[n][~m].count_nonzero()) for n, m in mask.items()),
        train_images=len(ds["train"][1]),
        peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20) if cuda else 0,
        scale_init_seconds=state.get("scale_init_seconds", 0.0),  # GradInit's part of the seconds (train_ticket)
    )


def train_ticket(args, ds, mask, reset, out, label, teacher=None):
    """Build the ticket (reset weights * mask), apply the spend's tweaks (§3.1) and GradInit (§3.2), train it with
    `fit` and write `out`. Its seconds count GradInit (also given alone) and what earlier processes spent on it."""
    start = time.time()
    model = new_model(args, ds)
    model.load_state_dict(reset)
    prune.apply_mask(model, mask)
    prune.warn_collapse(mask)  # a layer pruned entirely: trained as it is
    tweaks.apply(model, args)
    loss_fn = tweaks.make_loss(args.ls, teacher, args.kd_temp, args.kd_alpha)
    sgd = MaskedSGD(model, mask, loss_fn, args, runs.smallest_batch(model, ds))
    checkpoint = os.path.join(out, "checkpoint.pt")
    saved = runs.read_or_repair(checkpoint, lambda p: runs.load(p, args.device), args.repair, "trains from the start")
    state = dict(epoch=0, best_val=-1.0, best_epoch=0, best_state=None, rows=[], seconds=0.0, scale_init_seconds=0.0)
    if saved:  # the scaled weights too: GradInit is not run again
        state = runs.restore_checkpoint(saved, sgd.model, sgd.opt)
        print(f"{label} resuming after epoch {state['epoch']} from {checkpoint}", flush=True)
    elif args.scale_init:
        batches = runs.forever(ds, args.batch_size, args.seed)
        scales = tweaks.scale_init(model, mask, batches, args.scale_init_iters, args.scale_init_lr)
        state["seconds"] = time.time() - start
        state["scale_init_seconds"] = round(state["seconds"], 1)
        print(f"{label} scale_init: scales in [{min(scales.values()):.3f}, {max(scales.values()):.3f}]")
        runs.save_checkpoint(checkpoint, state, sgd.model, sgd.opt)  # a signal in epoch 1 keeps them
    state = fit(sgd, ds, args, state, label, out)
    measured = time.time()
    best = copy.deepcopy(model)
    best.load_state_dict(state["best_state"])
    results = results_of(model, best, state, mask, ds)
    results.update(seconds=round(state["seconds"] + time.time() - measured, 1), device=str(args.device))
    if cli.STOP:  # a signal during the final evaluation: the checkpoint stays, and a rerun measures again
        raise cli.Stopped(f"{label} stopped by a signal after its last epoch: the same command writes its results")
    runs.write_trained(out, mask, model, state["best_state"], state["rows"], results)
    return results


# ---------------------------------------------------------------- the draw (§3)


def draw(args, ds, cache, ticket):
    """The ticket's mask. IMP trains the dense network, prunes 20% of the remaining weights by global magnitude,
    resets the survivors to theta_0 (theta_k with --rewind-epoch) and trains them again, level after level: level L
    keeps 0.8^L of the weights. A level whose mask is in the draw cache is skipped, and so is its training."""
    method, value = ticket.split("_")
    if method != "imp":
        return cache.mask(ticket, lambda: one_shot(args, ds, cache, method, float(value)), args.device)
    mask = dense(args, ds, cache)  # level 0
    for level in range(1, int(value) + 1):

        def prune_previous(previous=f"imp_{level - 1:02d}", mask=mask):
            train_vanilla(args, ds, cache, previous, mask)
            trained = cache.trained_file(previous, "model.pt", args.device)
            return prune.imp_step({n: trained[n] for n in mask}, mask)

        mask = cache.mask(f"imp_{level:02d}", prune_previous, args.device)
    return mask


def one_shot(args, ds, cache, method, sparsity):
    """A one-shot mask: OMP of the trained dense net (§A1.4), random, or pruning at init (Table A4)."""
    model, linear = new_model(args, ds), args.prune_classifier
    if method == "omp":
        names, trained = dense(args, ds, cache), cache.trained_file("imp_00", "model.pt", args.device)
        return prune.omp({n: trained[n] for n in names}, sparsity)
    if method == "random":
        return prune.random_prune(prune.prunable(model, linear), sparsity, args.seed)
    model.load_state_dict(theta_0(args, ds, cache))
    if method == "synflow":
        return prune.synflow(model, sparsity, input_shape=tuple(ds["train"][0].shape[1:]), linear=linear)
    if method == "snip":  # one batch, as the official code
        return prune.snip(model, [next(data.batches(ds, "train", args.batch_size, seed=args.seed))], sparsity, linear)
    per_class, fetches = (10, 1) if ds["classes"] <= 10 else (5, 2)  # GraSP's official configs: 10 images per class;
    batches = []  # 5 per class, twice, for 100 classes; each class-sorted sample scored as two batches, as theirs
    for i in range(fetches):
        x, y = data.balanced_batch(ds, per_class, args.seed + i)
        batches += [(x[: len(y) // 2], y[: len(y) // 2]), (x[len(y) // 2 :], y[len(y) // 2 :])]
    return prune.grasp(model, batches, sparsity, linear)


def dense(args, ds, cache):
    """The draw's dense network, IMP level 0, trained once: its mask (all ones)."""
    mask = cache.mask("imp_00", lambda: prune.ones_mask(new_model(args, ds), args.prune_classifier), args.device)
    train_vanilla(args, ds, cache, "imp_00", mask)
    return mask


def theta_0(args, ds, cache):
    return cache.derived(os.path.join(cache.dir, "init.pt"), lambda: new_model(args, ds).state_dict())


def reset_weights(args, ds, cache):
    """theta_0 (vanilla LTH), or the dense weights after --rewind-epoch epochs (LTH-Rewind)."""
    if not args.rewind_epoch:
        return theta_0(args, ds, cache)
    dense(args, ds, cache)  # its training keeps epoch k
    return cache.trained_file("imp_00", f"epoch{args.rewind_epoch}.pt", args.device)


def untweaked(args):
    """What the draw trains with: the spend's flags without its tweaks (§3) and Fig. A11's Hessian records."""
    vanilla = copy.copy(args)
    vars(vanilla).update(dict.fromkeys(tweaks.FLAGS, False), ls=0.0, hessian_every=0)
    return vanilla


def train_vanilla(args, ds, cache, ticket, mask):
    """Train a ticket of the draw the vanilla-LTH way (reset weights * mask, no tweak) into its folder, unless the
    cache has it; a process that finds another training it waits."""
    with cache.training(ticket) as trained:
        if trained:
            return
        vanilla, dense = untweaked(args), ticket == "imp_00"
        if dense and args.rewind_epoch:  # LTH-Rewind's theta_k: the dense training keeps epoch k
            vanilla.keep_epochs = [*vanilla.keep_epochs, args.rewind_epoch]
        out, sparsity = cache.folder(ticket), prune.sparsity(mask.values())
        print(f"=== draw {ticket}: {sparsity:.2%} sparse, vanilla LTH training -> {out}", flush=True)
        reset = theta_0(args, ds, cache) if dense else reset_weights(args, ds, cache)
        train_ticket(vanilla, ds, mask, reset, out, f"[{ticket}]")


def remeasure(args, ds, cache, ticket, mask):
    """--repair of a draw ticket's damaged results.json: measured again from its weights and metrics.csv, all as its
    training measured them but seconds (the epochs' own, summed) and peak_gpu_mib (this process's)."""
    model, best = new_model(args, ds), new_model(args, ds)  # a draw's ticket has no tweak
    model.load_state_dict(cache.trained_file(ticket, "model.pt", args.device))
    best.load_state_dict(cache.trained_file(ticket, "best.pt", args.device))
    rows = cache.trained_file(ticket, "metrics.csv")
    val = [row["val_acc"] for row in rows]
    state = dict(rows=rows, best_epoch=rows[val.index(max(val))]["epoch"], best_val=data.evaluate(best, ds, "val")[0])
    results = results_of(model, best, state, mask, ds)
    return dict(results, seconds=round(sum(row["seconds"] for row in rows), 1), device=str(args.device))


# ---------------------------------------------------------------- the spend (§3, §4)


def spend(args, ds, cache, mask, out):
    """Spend the ticket (or --mask's `mask`) into `out`. Vanilla LTH is the draw's own training, copied, unless it asks
    for records that training may not have (--hessian-every, --keep-epochs: Fig. A11, 4); anything else trains."""
    ticket, tweaked, kept = runs.ticket_name(args), runs.tweak_names(args), [f"epoch{e}.pt" for e in args.keep_epochs]
    mask = draw(args, ds, cache, ticket) if mask is None else mask
    if not (args.mask or tweaked or args.hessian_every):
        train_vanilla(args, ds, cache, ticket, mask)
        if all(os.path.exists(os.path.join(cache.folder(ticket), f)) for f in kept):
            return cache.copy_training(ticket, out, kept, lambda: remeasure(args, ds, cache, ticket, mask))
    teacher = None
    if args.kd:  # the draw's dense network (best validation weights), frozen
        dense(args, ds, cache)
        teacher = new_model(args, ds)
        teacher.load_state_dict(cache.trained_file("imp_00", "best.pt", args.device))
        teacher.eval().requires_grad_(False)
    print(f"=== spend {ticket} with {tweaked or 'no tweaks'} -> {out}", flush=True)
    return train_ticket(args, ds, mask, reset_weights(args, ds, cache), out, "[spend]", teacher)


@cli.command
def main(argv=None):
    args = parse_args(argv)
    config = {k: v for k, v in vars(args).items() if k not in HOW}
    out = runs.run_folder(args, config)
    runs.refuse_file("--out" if args.out else "--runs", out)
    runs.refuse_file("--runs", args.runs)
    runs.refuse_file("--data-dir", args.data_dir)
    if done := runs.finished(out, config):
        return print(f"already finished: {runs.summarize(done, out)}")
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)  # CUDA: a few ops (pooling backward) only warn
    ds = data.load(args.dataset, args.data_dir, args.subset, args.seed, args.device)
    model = new_model(args, ds)
    runs.check_data(args, ds, model)
    mask = runs.load_mask(args.mask, model, args.prune_classifier, args.device) if args.mask else None
    cache = runs.DrawCache(args.runs, {k: getattr(args, k) for k in RECIPE}, args.repair)  # every input is known good
    with runs.locked(out, wait=False):
        if done := runs.finished(out, config):  # another process finished it while this one loaded its data
            return print(f"already finished: {runs.summarize(done, out)}")
        runs.write_json(config, os.path.join(out, "config.json"))
        results = spend(args, ds, cache, mask, out)
    print(runs.summarize(results, out))


if __name__ == "__main__":
    cli.stop_on_signals()
    main()
