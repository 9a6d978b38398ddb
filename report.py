"""Gather every finished spend under a runs folder into the paper's tables and figures.

    python report.py runs --out report      # report/report.md, and beside it every figure's PNG with its .csv

Per (dataset, arch, masks, epochs) group: Tables A2/A3 (mean accuracy over seeds +- std and the paired difference to
LTH on the same ticket with its 95% t-interval; "missing", never zero) and their plot, every part of run_all.sh whose
runs are there, Table A1, the skip table, Fig. A11 and the landscape.py plots in --out. The paired plots star the
paper's gains (paper.csv); ResNet-18 on CIFAR-100 also shows the paper's accuracies as hollow squares."""

import csv
import glob
import io
import math
import os
import pathlib
import statistics
from types import SimpleNamespace

from matplotlib.figure import Figure  # no pyplot: headless, no global state
from scipy.stats import t as student_t

import grid
from cli import BadInput, Parser, command
from runs import locked, read_json, read_metrics, save, ticket_name, variant

# Tables A2, A3, a column per IMP level: {variant: {sparsity: test acc. %}}, ResNet-18, CIFAR-100, mean of 3 seeds
_, *_rows = csv.reader(pathlib.Path(__file__).with_name("paper.csv").read_text().splitlines())
PAPER = {row[0]: {float(s): float(a) for s, a in zip(grid.LEVELS, row[1:]) if a != "-"} for row in _rows}
ORDER = [  # the tables' and figures' order of variants
    "dense",  # the ticket's own dense network: its draw's first training
    *["LTH", "LTH+Skip", "LTH+Skip-1x1", "LTH+Swish", "LTH+Mish", "LTH+Scaling", "LTH+LS", "LTH+KD"],  # one tweak
    *["LTH+AT", "LTH+AT-1x1", "LTH+TRT", "LTH+AT+TRT", "LTH+AT+Scaling+KD"],  # combined
    *["LTH Rewind", "LTH+AT Rewind", "LTH+TRT Rewind", "LTH+AT+TRT Rewind"],  # LTH-Rewind (Fig. 6b, 7)
]
# what a figure shows: (axis label, the number of one run's results; None where that run has not measured it)
ACCURACY = ("test accuracy (%)", lambda r: 100 * r["test_acc"])
EIGEN = ("top Hessian eigenvalue (mean over its batches)", lambda r: r.get("hessian", {}).get("top_eigenvalue"))
# grid.py's figure parts: {part: (masks, or None for any; what; panels, each a list of variants; only at sparsity)}
FIGURES = {
    part: (masks, {"accuracy": ACCURACY, "eigenvalue": EIGEN}[what], panels, at)
    for part, (masks, what, panels, at) in grid.FIGURES.items()
}
# the skip table: how much of the authors' 1x1 skip (--skip-proj) their reported sparsity leaves uncounted
SKIP_COLUMNS = [
    (f"{v} {what}", v, f)
    for v in ("LTH+AT", "LTH+AT-1x1")
    for what, f in (
        ("acc. (%)", ACCURACY[1]),
        ("sparsity of all trained weights (%)", lambda r: 100 * r["sparsity_all"]),
        ("weights outside the mask", lambda r: r["unmasked_weights"]),
    )
]


def gather(root):
    """({(dataset, arch, masks, epochs or 0): {(target sparsity, variant): [each seed's results]}}, the same for the
    --hessian-every runs of Fig. A11), each result with its seed, metrics.csv and hessian.json. Variant "dense": the
    dense network (imp_00) of the draw that holds the spend's ticket."""
    groups, curves, draws = {}, {}, []
    for path in sorted(glob.glob(os.path.join(root, "**", "draw.json"), recursive=True)):
        dense = pathlib.Path(path).parent / "imp_00"
        if grid.finished(dense):
            found = dict(read_json(dense / "results.json"), epochs=read_metrics(dense / "metrics.csv"), hessian={})
            draws.append((read_json(path), os.listdir(dense.parent), found))
    for path in sorted(glob.glob(os.path.join(root, "**", "config.json"), recursive=True)):  # a spend, not a ticket
        folder = pathlib.Path(path).parent
        if not grid.finished(folder):
            continue
        res, cfg = read_json(folder / "results.json"), read_json(path)
        metrics, hessian = folder / "metrics.csv", folder / "hessian.json"
        res["epochs"] = read_metrics(metrics) if metrics.exists() else []
        res["hessian"] = read_json(hessian) if hessian.exists() else {}
        res["seed"] = cfg["seed"]  # pairs the run with LTH on the same ticket
        masks = "user" if cfg.get("mask") else "one-shot" if cfg["sparsity"] and cfg["prune"] != "imp" else "imp"
        target = curves if res["epochs"] and "top_eigenvalue" in res["epochs"][0] else groups
        group = target.setdefault((cfg["dataset"], cfg["arch"], masks, cfg.get("epochs", 0)), {})
        at = cfg["sparsity"] or round(res["sparsity"], 3)  # --mask runs: the measured sparsity
        group.setdefault((at, variant(cfg)), []).append(res)
        for key, tickets, dense in draws if at else []:
            if ticket_name(SimpleNamespace(**cfg)) in tickets and all(cfg.get(k) == v for k, v in key.items()):
                found = group.setdefault((at, "dense"), [])
                if all(r["seed"] != cfg["seed"] for r in found):
                    found.append(dict(dense, seed=cfg["seed"]))
    return groups, curves


def differences(accs, base):
    """Paired by seed, i.e. by ticket: acc_i - acc_LTH_i for each seed i both {seed: accuracy} dicts have."""
    return [accs[seed] - base[seed] for seed in sorted(set(accs) & set(base))]


def paired(d):
    """The mean d of the paired differences d_i and the half-width of its 95% confidence interval,
    t(0.975, n - 1) * s_d / sqrt(n), s_d the sample std of the n differences: (d, half-width or None for n = 1, n)."""
    if d:
        half = student_t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None
        return statistics.mean(d), half, len(d)


def interval(diff):
    d, half, _ = diff
    return f"{d:+.2f}" + (f" [{d - half:+.2f}, {d + half:+.2f}]" if half is not None else "")


def values(runs, s, name, value=ACCURACY[1]):
    """{seed: value(result)} of one variant at one target sparsity, over the runs that have that number."""
    return {r["seed"]: value(r) for r in runs.get((s, name), []) if value(r) is not None}


def variants(runs):
    return sorted({v for _, v in runs}, key=lambda v: (ORDER.index(v) if v in ORDER else len(ORDER), v))


def cell(found, diff):
    """A table cell: mean ± std over seeds, and the paired difference to LTH if given; "missing", never zero."""
    a = list(found.values())
    if not a:
        return "missing"
    spread = f" ± {statistics.stdev(a):,.2f}" if len(a) > 1 else ""
    return f"{statistics.mean(a):,.2f}{spread}" + (f" ({interval(diff)})" if diff else "")


def table(runs, columns=None, rows="sparsity", label=None):
    """Markdown: one row per key (the measured sparsity, or `label(key)`); by default one column per variant, its
    accuracy and (paired difference to LTH [95% interval]), repeated in words below. `columns` [(header, variant,
    value of a result)]: other numbers, mean +- std (Table A1, skips, the budget's convergence)."""
    accuracy, words = columns is None, []
    columns = columns or [(v, v, ACCURACY[1]) for v in variants(runs)]
    lines = [f"| {rows} | " + " | ".join(h for h, _, _ in columns) + " | seeds |", "|---" * (len(columns) + 2) + "|"]
    for key in sorted({key for key, _ in runs}):
        found = [values(runs, key, v, f) for _, v, f in columns]
        if not any(found):
            continue
        if label:
            name = label(key)
        else:
            sparsities = [r["sparsity"] for _, v, _ in columns if v != "dense" for r in runs.get((key, v), [])]
            name = f"{100 * statistics.mean(sparsities):.1f}%"
        diffs = [
            paired(differences(f, values(runs, key, "LTH"))) if accuracy and v != "LTH" else None
            for f, (_, v, _) in zip(found, columns)
        ]
        lines.append(f"| {name} | " + " | ".join(map(cell, found, diffs)) + f" | {max(map(len, found))} |")
        words += [
            f"- {name}: {v} − LTH: {interval(d)} pp, {d[2]} seed{'s' * (d[2] > 1)}"
            for (_, v, _), d in zip(columns, diffs)
            if d
        ]
    return "\n".join(lines + [""] + words)


def activation_columns(runs, key):
    """Table A1's columns: per stage, LTH (ReLU) and LTH+Swish, the % of activations counted by `key` in results.json
    (activation_sparsity: |a| <= 1e-2, the paper's count; activation_zeros: exactly 0)."""
    found = {stage for results in runs.values() for r in results for stage in r.get(key, {})}
    stages = sorted(found, key=lambda stage: (stage != "stem", stage))  # stem, layer1, layer2, ...
    return [
        (f"{stage} {act}", v, lambda r, stage=stage: 100 * r[key][stage])
        for stage in stages
        for act, v in (("ReLU", "LTH"), ("Swish", "LTH+Swish"))
    ]


def present(runs, names, value):
    return [n for n in names if any(values(runs, s, n, value) for s, v in runs if v == n)]


def spread(i, n):
    """Where the i-th of n variants sits beside its neighbours at one sparsity (or budget): within +-0.4."""
    return (i - (n - 1) / 2) * 0.8 / n


def dots(ax, x, samples, color, half, label):
    """Every sample a dot at x, their mean a circle with an error bar of +-half (none for None)."""
    ax.plot([x] * len(samples), samples, ".", color=color, ms=3)
    ax.errorbar([x], [statistics.mean(samples)], half, fmt="o", color=color, ms=5, capsize=3, label=label)


def paper_gain(name, sparsity):
    """The paper's (dense - LTH, name - LTH) in pp at its IMP level within 0.25 of our sparsity (%), else None."""
    lth, mine = PAPER["LTH"], PAPER.get(name, {})
    near = [s for s in mine if s and abs(100 * s - sparsity) < 0.25]
    return (lth[0] - lth[near[0]], mine[near[0]] - lth[near[0]]) if near else None


def panel(ax, runs, names, metric, colors, reference=False, budget=False):
    """`metric` of each variant at each sparsity (or budget), side by side: each seed a dot, the mean with +-std;
    with reference the paper's accuracy a hollow square. Returns the csv rows it drew."""
    (label, value), rows, reference = metric, [], reference and metric is ACCURACY
    names = present(runs, names, value)
    levels = sorted({s for s, v in runs if v in names})
    for i, name in enumerate(names):
        shown = name.replace("+", " + ")
        for j, s in enumerate(levels):
            found, x = values(runs, s, name, value), j + spread(i, len(names))
            if found:
                half = statistics.stdev(found.values()) if len(found) > 1 else None
                dots(ax, x, list(found.values()), colors[name], half, shown)
                shown = None  # one legend entry per variant
                sparsity = {r["seed"]: 100 * r["sparsity"] for r in runs[s, name]}
                rows += [f"{s},{name},{seed},{sparsity[seed]:.3f},{v:.3f}" for seed, v in found.items()]
            paper = PAPER.get(name, {}).get(s) if reference else None
            if paper:
                ax.plot([x], [paper], "s", mfc="none", color=colors[name])
    ax.set_xticks(range(len(levels)), [str(s) if budget else f"{100 * s:.1f}" for s in levels])
    ax.set(xlabel="epochs" if budget else "sparsity (%)" + ("; squares: the paper" if reference else ""))
    ax.set(ylabel=label, yscale="log" if metric is EIGEN else "linear")
    return rows


def paired_panel(ax, runs, names, colors, budget):
    """Each variant's paired difference to LTH on the same ticket: every seed a dot, the mean with its 95% interval;
    a hollow star the paper's own gain at that sparsity. x: the ticket's gap to its own dense network (dense - LTH,
    same draw) where every sparsity has it, else the sparsities (or budgets) in order."""
    levels = sorted({s for s, v in runs if v in names})
    gaps = {s: paired(differences(values(runs, s, "dense"), values(runs, s, "LTH"))) for s in levels}
    by_gap = not budget and all(gaps.values())
    for i, name in enumerate(names):
        shown = name.replace("+", " + ")
        for j, s in enumerate(levels):
            d = differences(values(runs, s, name), values(runs, s, "LTH"))
            x = gaps[s][0] + spread(i, len(names)) / 2 if by_gap else j + spread(i, len(names))
            if d:
                dots(ax, x, d, colors[name], paired(d)[1], shown)
                shown = None
                paper = paper_gain(name, 100 * statistics.mean(r["sparsity"] for r in runs[s, "LTH"]))
                if paper:
                    ax.plot([paper[0] if by_gap else x], [paper[1]], "*", mfc="none", ms=10, color=colors[name])
    if by_gap:
        ax.set_xticks([gaps[s][0] for s in levels], [f"{gaps[s][0]:+.1f}\n({100 * s:.1f}%)" for s in levels])
        ax.set(xlabel="the ticket's gap: dense − LTH on the same draw, pp (sparsity)")
    else:
        ax.set_xticks(range(len(levels)), [str(s) if budget else f"{100 * s:.1f}" for s in levels])
        ax.set(xlabel="epochs" if budget else "sparsity (%)")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(ylabel="test accuracy − LTH, same ticket (pp)", title="paired: seeds, mean, 95% interval; ☆ paper's gain")


def figure(runs, panels, metric, title, path, reference, paired_view=False, budget=False):
    """One `panel` per list of variants and with paired_view a `paired_panel`; the numbers drawn beside as .csv."""
    names = [name for name in variants(runs) if name not in ("LTH", "dense")]
    paired_view = paired_view and bool(names)  # a variant to pair with LTH
    fig = Figure(figsize=(5.5 * (len(panels) + paired_view), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels) + paired_view, squeeze=False)[0]
    colors = {name: "black" if name == "dense" else f"C{i % 10}" for i, name in enumerate(variants(runs))}
    rows = [row for ax, names in zip(axes, panels) for row in panel(ax, runs, names, metric, colors, reference, budget)]
    if paired_view:
        paired_panel(axes[-1], runs, names, colors, budget)
    for ax in axes:  # a legend where something is labelled
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    seeds = len({r["seed"] for found in runs.values() for r in found})
    fig.suptitle(f"{title}, {seeds} seed{'s' * (seeds > 1)}")
    header = ("epochs" if budget else "target_sparsity") + ",variant,seed,sparsity_pct," + metric[0]
    write(fig, header, sorted(set(rows)), path)  # a variant in several panels: its rows once


def write(fig, header, rows, path):
    """The PNG, and beside it its numbers as .csv."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    save(buf.getvalue(), path)
    save("\n".join([header, *rows]) + "\n", path[:-4] + ".csv")


def curves(found, title, path):
    """Fig. A11: for runs trained with --hessian-every, the top Hessian eigenvalue per epoch (right axis, log scale)
    with train (solid) and validation (dashed) accuracy (left axis); dotted: the epochs after which the lr drops;
    a cross: the best-validation epoch; a level line: the test accuracy of that epoch's weights."""
    ax = Figure(figsize=(8, 4.5), layout="constrained").subplots()
    bx, rows = ax.twinx(), []
    for i, (name, r) in enumerate(found):
        m, shown = r["epochs"], name.replace("+", " + ")
        epochs = [int(e["epoch"]) for e in m]
        ax.plot(epochs, [100 * float(e["train_acc"]) for e in m], "-", color=f"C{i}", lw=1, label=f"{shown}: train")
        ax.plot(epochs, [100 * float(e["val_acc"]) for e in m], "--", color=f"C{i}", lw=1, label=f"{shown}: validation")
        ax.plot(r["best_epoch"], 100 * r["best_val_acc"], "x", color=f"C{i}", ms=10, mew=2)
        ax.axhline(100 * r["test_acc"], color=f"C{i}", lw=0.8, alpha=0.6)
        top = [(int(e["epoch"]), float(e["top_eigenvalue"])) for e in m if e["top_eigenvalue"]]
        bx.plot(*zip(*top), ".-", color=f"C{i}", alpha=0.5, label=f"{shown}: top eigenvalue")
        rows += [f"{name},{r['seed']},{e['epoch']},{e['train_acc']},{e['val_acc']},{e['top_eigenvalue']}" for e in m]
    for a, b in zip(m, m[1:]):
        if a["lr"] != b["lr"]:
            ax.axvline(int(a["epoch"]), ls=":", color="gray")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    bx.set(ylabel="top Hessian eigenvalue (mean over 3 batches)", yscale="log")
    ax.figure.legend(fontsize=7, loc="outside right")
    write(ax.figure, "variant,seed,epoch,train_acc,val_acc,top_eigenvalue", rows, path)


def group_section(key, runs, out):
    """One group's accuracy table and plot, then every figure part whose runs are there, Table A1, the skip table."""
    dataset, arch, method, epochs = key
    title, group = f"{arch} on {dataset}, {method} masks", f"{dataset}_{arch}_{method}"
    if epochs:  # the budget in titles and file names: the study's ladder has several per group
        title, group = f"{title}, {epochs} epochs", f"{group}_e{epochs}"
    reference = (dataset, arch) == ("cifar100", "resnet18")
    figure(runs, [variants(runs)], ACCURACY, title, os.path.join(out, f"acc_{group}.png"), reference, True)
    md = [f"## {title}\n", table(runs) + "\n", f"![{title}](acc_{group}.png)\n"]
    for part, (masks, metric, panels, at) in FIGURES.items():
        chosen = {k: found for k, found in runs.items() if at in (None, k[0])}
        panels = [names for names in panels if len(present(chosen, names, metric[1])) > 1]
        if masks in (None, method) and panels:
            figure(chosen, panels, metric, f"{part}: {title}", os.path.join(out, f"{part}_{group}.png"), reference)
            md += [f"### {part}\n", f"![{part}]({part}_{group}.png)\n"]
    if present(runs, ["LTH+Swish"], ACCURACY[1]):
        md += [
            "### tableA1: activation sparsity (%) per stage, |a| <= 1e-2 (the paper's count)\n",
            table(runs, activation_columns(runs, "activation_sparsity")) + "\n",
            "Exactly zero (%):\n",
            table(runs, activation_columns(runs, "activation_zeros")) + "\n",
        ]
    if present(runs, ["LTH+AT-1x1"], ACCURACY[1]):
        md += [
            "### skipproj: our parameter-free skip vs the authors' 1x1 skip (sparsity: of the masked layers)\n",
            table(runs, SKIP_COLUMNS) + "\n",
        ]
    return md


def last_train_acc(r):
    """Train accuracy (%) in the last epoch, from the run's metrics.csv (None without one)."""
    return 100 * float(r["epochs"][-1]["train_acc"]) if r["epochs"] else None


def final_lr_rise(r):
    """How much train accuracy (pp) still rose over the epochs at the final lr (the last quarter): ~0 if converged."""
    if not r["epochs"]:
        return None
    return last_train_acc(r) - 100 * float(r["epochs"][math.ceil(0.75 * len(r["epochs"])) - 1]["train_acc"])


def budget_section(groups, out):
    """Each (dataset, arch, masks) trained at several budgets (the study's ladder): how converged each rung is, every
    variant's paired difference to LTH by sparsity and budget, and per sparsity trained at 2 budgets or more a figure
    against the budget; a sparsity with one seed (a scan) is in the table of differences only."""
    ladders = {}
    for (dataset, arch, masks, epochs), runs in sorted(groups.items()):
        if epochs:
            ladders.setdefault((dataset, arch, masks), {})[epochs] = runs
    md = []
    for (dataset, arch, masks), rungs in [(key, rungs) for key, rungs in ladders.items() if len(rungs) > 1]:
        title, name = f"{arch} on {dataset}, {masks} masks", f"budget_{dataset}_{arch}_{masks}"
        seeded = {s for runs in rungs.values() for (s, _), found in runs.items() if s > 0 and len(found) > 1}
        levels = sorted(seeded or {s for runs in rungs.values() for s, _ in runs if s > 0})  # one seed each: all
        lth = {s: f"LTH {100 * s:.1f}%" for s in levels}
        trained = {(e, "dense"): runs.get((levels[0], "dense"), []) for e, runs in rungs.items()}  # of the tickets
        trained.update({(e, lth[s]): runs.get((s, "LTH"), []) for e, runs in rungs.items() for s in levels})
        columns = [
            (f"{who}: {what}", who, value)
            for who in ["dense", *lth.values()]
            for what, value in (("test acc.", ACCURACY[1]), ("train acc.", last_train_acc), ("rise", final_lr_rise))
        ]
        md += [
            f"## The budget: {title}\n",
            "Each rung trains the dense network, its tickets and every spend for that many epochs. Train accuracy is "
            "the last epoch's; rise: its gain over the epochs at the final lr (near 0: converged).\n",
            table(trained, columns, "budget", lambda e: f"{e} epochs") + "\n",
        ]
        by_rung = {((s, e), v): found for e, runs in rungs.items() for (s, v), found in runs.items() if s > 0}
        md.append(table(by_rung, None, "sparsity, budget", lambda key: f"{100 * key[0]:.1f}%, {key[1]} epochs") + "\n")
        for s in levels:  # one figure per sparsity: accuracy and the paired differences against the budget
            at = {(e, v): found for e, runs in rungs.items() for (t, v), found in runs.items() if t == s}
            if len({e for e, _ in at}) < 2:
                continue
            png, shown = f"{name}_s{100 * s:.1f}.png", f"{title}, {100 * s:.1f}% sparse"
            figure(at, [variants(at)], ACCURACY, f"the budget: {shown}", os.path.join(out, png), False, True, True)
            md.append(f"![the budget: {shown}]({png})\n")
    return md


@command
def main(argv=None):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="?", default="runs", help="a folder of train.py runs, at any depth (default: runs)")
    p.add_argument("--out", help="where report.md (tables) and the figures (.png, .csv) go (default: <runs>/report)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.runs):
        raise BadInput(f"{args.runs}: no such folder; give the folder train.py or run_all.sh wrote its runs to")
    out = args.out or os.path.join(args.runs, "report")
    groups, curve_groups = gather(args.runs)
    if not groups and not curve_groups:
        raise BadInput(f"{args.runs}: no finished train.py run in it (one with config.json and results.json)")
    with locked(out, wait=True):  # landscape.py writes here too; the lock clears what a killed writer left
        md = [
            f"# Results gathered from {args.runs}\n",
            "Test accuracy (%) of the best-validation checkpoint, mean ± std over "
            "seeds, (paired difference to LTH on the same ticket, seed by seed [95% t-interval over seeds]).\n",
        ]
        for key, runs in sorted(groups.items()):
            md += group_section(key, runs, out)
        md += budget_section(groups, out)
        for (dataset, arch, method, _), runs in sorted(curve_groups.items()):
            for seed in sorted({r["seed"] for found in runs.values() for r in found}):
                png = f"figA11_{dataset}_{arch}_{method}_seed{seed}.png"
                found = [(v, r) for (_, v), results in sorted(runs.items()) for r in results if r["seed"] == seed]
                curves(found, f"figA11: {arch} on {dataset}, {method} masks, seed {seed}", os.path.join(out, png))
                md += [f"### figA11, seed {seed}\n", f"![figA11]({png})\n"]
        made = {line[line.index("(") + 1 : -2] for line in md if line.startswith("![")}
        for png in sorted(glob.glob(os.path.join(out, "fig*.png"))):  # landscape.py's plots
            if os.path.basename(png) not in made:
                md.append(f"### {os.path.basename(png)[:-4]} (landscape.py)\n\n![]({os.path.basename(png)})\n")
        save("\n".join(md), os.path.join(out, "report.md"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
