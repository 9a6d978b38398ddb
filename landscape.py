"""Looking at finished spends: loss landscapes (§3.3, §4.6; Fig. 4, 8, 10), the Hessian's top eigenvalue (Fig. 2, A13)
and activation sparsity (Table A1, which train.py measures for every run into its results.json).

    python landscape.py contour RUN_LTH RUN_AT_TRT --out fig8.png   # 2-D loss contours, one plane, one colour scale
    python landscape.py eigen RUN_LTH RUN_AT_TRT --out fig10.png    # loss along each run's top Hessian eigenvector
    python landscape.py eigenvalue RUN --out RUN/hessian.json       # mean and std of 10 batches' top eigenvalues

A loss is the mean cross-entropy in eval mode on fixed, seeded, unaugmented images, one batched forward pass per point
via functional_call (weights never touched). Beside each plot: a .npz of the raw numbers and the cost (points x images).
"""

import contextlib
import io
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import cli
import data
import hessian
import models
import runs


def fixed_images(ds, split, n, seed=0):
    """n images of a split, picked by a CPU-seeded permutation (the same on every device), normalized."""
    x, y = ds[split]
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].to(x.device)
    return data.normalize(ds, x[pick]), y[pick]


def filter_normalize(direction, weights):
    """Li et al. 2018, on {name: tensor} dicts: each output filter (dim-0 slice) of the direction gets the norm of
    the same filter of the weights, so that any weight scale compares. 1-D params (BatchNorm, biases) get zero."""

    def rescaled(d, w):  # a filter pruned away entirely stays zero
        flat, norms = d.flatten(1), w.flatten(1).norm(dim=1, keepdim=True)
        return (flat * norms / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(d)

    return {n: rescaled(d, weights[n]) if d.dim() > 1 else torch.zeros_like(d) for n, d in direction.items()}


def plane_directions(model, mask, seed=0):
    """Two seeded Gaussian directions (drawn on the CPU: alike on every device), masked, filter-normalized."""
    gen = torch.Generator().manual_seed(seed)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    directions = []
    for _ in range(2):  # masked: the plane keeps the ticket's zeros
        direction = {n: torch.randn(w.shape, generator=gen).to(w.device) * mask.get(n, 1) for n, w in weights.items()}
        directions.append(filter_normalize(direction, weights))
    return directions


def losses_along(model, steps, x, y):
    """The loss at weights + c1 * d1 + c2 * d2 + ... for each step [(c1, d1), (c2, d2), ...]."""
    weights, losses = {n: p.detach() for n, p in model.named_parameters()}, []
    with models.mode(model, False), torch.inference_mode():  # eval: BatchNorm's running statistics read, not updated
        for step in steps:
            moved = {n: w + sum(c * d[n] for c, d in step) for n, w in weights.items()}  # new tensors
            losses.append(float(F.cross_entropy(functional_call(model, moved, (x,)), y)))
    return np.array(losses)


def loss_plane(model, mask, x, y, grid=21, span=1.0, seed=0):
    """Fig. 4, 8: the loss on grid x grid points of [-span, span]^2 of a random plane: (coords, losses[b, a])."""
    d1, d2 = plane_directions(model, mask, seed)
    coords = span * (np.arange(grid) - (grid - 1) / 2) / max((grid - 1) / 2, 1)  # an odd grid has an exact 0
    steps = [[(float(a), d1), (float(b), d2)] for b in coords for a in coords]
    return coords, losses_along(model, steps, x, y).reshape(grid, grid)


def activation_sparsity(model, x, threshold=1e-2):
    """Table A1: {stage: fraction of ReLU/Swish/Mish outputs with |a| <= threshold} over one forward pass of x, by
    the stage (layer1..layerN; the ResNet stem's "stem") the module is in. The paper's count uses 1e-2 (ToST's
    soft_activation/activation_analysis.py), so Swish is not at 0; threshold=0 counts exact zeros."""
    stage_of = {
        m: name.split(".")[0] if name.startswith("layer") else "stem"
        for name, m in model.named_modules()
        if isinstance(m, (nn.ReLU, nn.SiLU, nn.Mish))
    }
    tally = {stage: [0, 0] for stage in stage_of.values()}  # [zeros, outputs]

    def count(module, inputs, output):
        tally[stage_of[module]][0] += (output.abs() <= threshold).sum()  # a tensor: no device sync per activation
        tally[stage_of[module]][1] += output.numel()

    with contextlib.ExitStack() as hooks, models.mode(model, False), torch.inference_mode():  # eval, as losses_along
        for m in stage_of:
            hooks.enter_context(m.register_forward_hook(count))  # removed on leaving, even on an exception
        model(x)
    return {stage: float(zeros) / max(outputs, 1) for stage, (zeros, outputs) in tally.items()}  # stem, layer1, ...


def load_runs(args):
    """[(label, model, mask, ds, test x, y)] per run, and their dataset; bad folders and mixed datasets stop early."""
    configs = [runs.run_config(r) for r in args.runs]
    datasets = sorted({c["dataset"] for c in configs})
    if len(datasets) > 1:
        raise cli.BadInput(f"the runs are of different datasets ({', '.join(datasets)}): compare runs of one dataset")
    names, loaded = [runs.variant(c).replace("+", " + ") for c in configs], []  # as the paper: "LTH + AT + TRT"
    if len(set(names)) < len(names):  # one variant twice (seeds, sparsities): named by the folders that differ
        common = os.path.commonpath([os.path.dirname(os.path.abspath(r)) for r in args.runs])
        names = [os.path.relpath(os.path.abspath(r), common) for r in args.runs]
    for name, r in zip(names, args.runs):
        model, mask, ds, _ = runs.load_run(r, args.data_dir, args.device, args.weights)
        loaded.append((name, model, mask, ds, *fixed_images(ds, "test", args.images, args.seed)))
    return loaded, datasets[0]


def output_folder(args):
    """--out's folder, locked while this writes it: the lock's holder removes what a killed writer left (.tmp-*)."""
    return runs.locked(os.path.dirname(os.path.abspath(args.out)), wait=True)


def save_figure(fig, args, loaded, dataset, cost, **arrays):
    """The PNG, and beside it the raw numbers as .npz with what they were measured on; written atomically."""
    n = len(loaded[0][4])
    cost = f"{len(loaded)} runs x {cost} x {n} images"
    fig.suptitle(f"{dataset}: loss on {n} fixed test images")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    measured_on = dict(runs=args.runs, labels=[r[0] for r in loaded], dataset=dataset, split="test", images=n)
    npz = io.BytesIO()
    np.savez(npz, cost=cost, **measured_on, seed=args.seed, **arrays)
    with output_folder(args):
        for path, buf in ((args.out, png), (os.path.splitext(args.out)[0] + ".npz", npz)):
            runs.save(buf.getvalue(), path)
    print(f"cost: {cost}\nwrote {args.out} and its raw numbers, {os.path.splitext(args.out)[0]}.npz")


def contour(args):
    loaded, dataset = load_runs(args)  # test images: Fig. 8's are "randomly chosen from CIFAR-100 test dataset"
    planes = [loss_plane(model, mask, x, y, args.grid, args.span, args.seed) for _, model, mask, _, x, y in loaded]
    coords, grids = planes[0][0], [losses for _, losses in planes]
    lo, hi = min(g.min() for g in grids), min(max(g.max() for g in grids), 8.0)  # clamped at 8 as in Fig. 8
    levels = np.linspace(lo, max(hi, lo + 1e-6), 21)  # one colour scale for every panel
    from matplotlib.figure import Figure  # here: train.py imports this module, and needs no matplotlib

    fig = Figure(figsize=(5.3 * len(loaded) + 1.5, 5), layout="constrained")
    axes = fig.subplots(1, len(loaded), squeeze=False)[0]
    for ax, grid, (name, *_) in zip(axes, grids, loaded):
        filled = ax.contourf(coords, coords, grid, levels, cmap="viridis", extend="max")
        ax.contour(coords, coords, grid, levels, colors="k", linewidths=0.4)
        ax.plot(0, 0, "r+", ms=10)  # the trained weights
        ax.set(title=name, xlabel="random direction 1 (filter-normalized)", ylabel="random direction 2", aspect=1)
    fig.colorbar(filled, ax=axes.tolist(), label="loss (cross-entropy)", format="%.2f")
    save_figure(fig, args, loaded, dataset, f"{args.grid**2} grid points", coords=coords, losses=np.stack(grids))


def eigen(args):
    loaded, dataset = load_runs(args)  # test images: Fig. 10 plots the testing loss
    alphas, lines, values, products = np.linspace(-args.radius, args.radius, args.points), [], [], 0
    from matplotlib.figure import Figure  # no pyplot: headless, no global state

    ax = Figure(figsize=(6.5, 4.3), layout="constrained").subplots()
    for name, model, mask, ds, x, y in loaded:
        batches = hessian.fixed_batches(ds, seed=args.seed)  # training images, as the eigenvalues of Fig. 2, A13
        # the eigenvector: unit norm, zero where the mask prunes
        value, vector, iters = hessian.top_eigen(model, F.cross_entropy, batches, args.iters, masks=mask)
        products += iters * sum(len(b[1]) for b in batches)
        direction = dict(zip((n for n, _ in model.named_parameters()), vector))  # in model.parameters() order
        lines.append(losses_along(model, [[(float(a), direction)] for a in alphas], x, y))
        values.append(value)
        ax.plot(alphas, lines[-1], marker=".", label=f"{name}, top eigenvalue {value:.3g}")
    ax.set(xlabel="distance along the top Hessian eigenvector (unit norm)", ylabel="loss (cross-entropy)")
    ax.legend(fontsize=8)
    hessian_cost = f"{products:,} image Hessian-vector products (power iterations x images)"
    arrays = dict(alphas=alphas, losses=np.stack(lines), eigenvalues=values, hessian_cost=hessian_cost)
    save_figure(ax.figure, args, loaded, dataset, f"{args.points} points", **arrays)


def eigenvalue(args):
    """Fig. 2, A13: the top eigenvalue of each of --batches fixed training batches' Hessians (`hessian.per_batch`),
    their mean and std, as JSON into --out. Plain cross-entropy: spends with and without TRT's LS share one loss."""
    if len(args.runs) > 1:
        raise cli.BadInput("eigenvalue: one run at a time (its JSON goes to --out)")
    model, mask, ds, _ = runs.load_run(args.runs[0], args.data_dir, args.device, args.weights)
    batches = hessian.fixed_batches(ds, args.batches, args.batch_size)
    value, std, values, iters = hessian.per_batch(model, F.cross_entropy, batches, args.iters, args.tol, mask)
    images = sum(len(y) for _, y in batches)
    found = dict(top_eigenvalue=value, std=std, per_batch=values, iterations=iters, batches=len(batches), images=images)
    with output_folder(args):
        runs.write_json(dict(found, run=args.runs[0], weights=args.weights), args.out)
    print(f"{args.runs[0]}: top eigenvalue {value:.4g} +- {std:.2g} over {len(batches)} batches -> {args.out}")


def parse_args(argv=None):
    count, positive = cli.number(int, 1), cli.number(float, 0, above=True)
    shared, images, power = cli.Parser(add_help=False), cli.Parser(add_help=False), cli.Parser(add_help=False)
    shared.add_argument("runs", nargs="+", metavar="RUN", help="folders of finished train.py runs")
    shared.add_argument("--out", required=True, help="the PNG, its raw numbers beside it as .npz (eigenvalue: JSON)")
    shared.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    shared.add_argument("--weights", default="model.pt", help="which weights of a run: model.pt (final), epoch5.pt")
    shared.add_argument("--data-dir", default="data", help="where the runs' dataset is found or downloaded")
    images.add_argument("--images", type=count, default=500, help="fixed test images per loss (Fig. 8, 10)")
    images.add_argument("--seed", type=int, default=0, help="picks the images and the random directions")
    power.add_argument("--iters", type=count, default=100, help="most power iterations (per stage: hessian.top_eigen)")
    p = cli.Parser(description=__doc__.split("\n")[0])
    commands = p.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
    plane = commands.add_parser("contour", parents=[shared, images], help="Fig. 4, 8: the loss on a random plane")
    plane.add_argument("--grid", type=cli.number(int, 2), default=21, help="points per axis")
    plane.add_argument("--span", type=positive, default=1.0, help="the plane is [-span, span]^2")
    line = commands.add_parser("eigen", parents=[shared, images, power], help="Fig. 10: along the top eigenvector")
    line.add_argument("--radius", type=positive, default=1.0, help="distances in [-radius, radius]")
    line.add_argument("--points", type=cli.number(int, 2), default=21, help="points on the line")
    top = commands.add_parser("eigenvalue", parents=[shared, power], help="Fig. 2, A13: the top Hessian eigenvalue")
    top.add_argument("--batches", type=count, default=10, help="fixed training batches (the paper's Fig. 2, A13: 10)")
    top.add_argument("--batch-size", type=count, default=128, help="images per batch")
    top.add_argument("--tol", type=positive, default=1e-4, help="stop when it changes by at most this, relatively")
    args = p.parse_args(argv)
    args.device = cli.device(args.device)
    return args


@cli.command
def main(argv=None):
    args = parse_args(argv)
    {"contour": contour, "eigen": eigen, "eigenvalue": eigenvalue}[args.command](args)


if __name__ == "__main__":
    main()
