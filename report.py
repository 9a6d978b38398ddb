"""Gather every finished spend under a runs folder into the paper's tables and figures.

    python report.py runs --out report      # report/report.md, and beside it every figure's PNG with its .csv

Per (dataset, arch, masks: imp, one-shot (OMP, Table A4's) or user) group: Tables A2/A3 (each cell the mean accuracy
over seeds +- std and, in brackets, the paired difference to LTH on the same ticket with its 95% t-interval; "missing",
never zero) and their plot, then every part of run_all.sh whose runs are there (FIGURES, Table A1, the skip table,
Fig. A11) and the landscape.py plots in --out. ResNet-18 on CIFAR-100 carries the paper's accuracies (paper.csv) dotted.
"""

import csv
import functools
import glob
import io
import math
import os
import pathlib
import statistics

from matplotlib.figure import Figure  # no pyplot: headless, no global state

from models import BadInput
from runs import Parser, command, read_json, save, variant

# Tables A2, A3: {variant: [(sparsity %, test acc. %)]}, ResNet-18 on CIFAR-100, mean of seeds 42, 1099, 5469
_header, *_rows = csv.reader(pathlib.Path(__file__).with_name("paper.csv").read_text().splitlines())
PAPER = {row[0]: [(float(s), float(a)) for s, a in zip(_header[1:], row[1:]) if a != "-"] for row in _rows}
ORDER = [
    "LTH",
    "LTH+Skip",
    "LTH+Skip-1x1",
    "LTH+Swish",
    "LTH+Mish",
    "LTH+Scaling",
    "LTH+LS",
    "LTH+KD",
    "LTH+AT",
    "LTH+AT-1x1",
    "LTH+TRT",
    "LTH+AT+TRT",
    "LTH+AT+Scaling+KD",
    "LTH Rewind",
    "LTH+AT Rewind",
    "LTH+TRT Rewind",
    "LTH+AT+TRT Rewind",
]
# what a figure shows: (axis label, the number of one run's results; None where that run has not measured it)
ACCURACY = ("test accuracy (%)", lambda r: 100 * r["test_acc"])
EIGEN = ("top Hessian eigenvalue (mean over its batches)", lambda r: r.get("hessian", {}).get("top_eigenvalue"))
# run_all.sh's figure parts: {part: (masks, or None for any; what; panels, each a list of variants; only at sparsity)}
FIGURES = {
    "fig1": ("imp", ACCURACY, [["LTH", v] for v in ("LTH+Skip", "LTH+Swish", "LTH+Scaling", "LTH+LS")], None),
    "fig6": (
        "imp",
        ACCURACY,
        [
            ["LTH", "LTH+AT", "LTH+TRT", "LTH+AT+TRT"],  # (a) the tweaks, (b) against rewinding
            ["LTH Rewind", "LTH+AT", "LTH+TRT", "LTH+AT+TRT"],
        ],
        None,
    ),
    "fig7": ("imp", ACCURACY, [["LTH Rewind", "LTH+AT Rewind", "LTH+TRT Rewind", "LTH+AT+TRT Rewind"]], None),
    "fig9": ("imp", ACCURACY, [["LTH+AT+TRT", "LTH+AT+Scaling+KD"]], None),  # LS replaced by KD (§4.6)
    "figA12": ("one-shot", ACCURACY, [["LTH", "LTH+AT", "LTH+TRT", "LTH+AT+TRT"]], None),
    "fig2": (None, EIGEN, [["LTH", "LTH+Swish", "LTH+Mish"]], None),
    "figA13": (None, EIGEN, [ORDER], 0.914),
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
    """({(dataset, arch, masks): {(target sparsity, variant): [each seed's results]}}, the same for Fig. A11's runs),
    each result with its seed, its metrics.csv rows and the hessian.json of `landscape.py eigenvalue`, if any. A run
    that recorded the Hessian every epoch (--hessian-every) is a re-training for Fig. A11, not one more seed."""
    groups, curves = {}, {}
    for path in sorted(glob.glob(os.path.join(root, "**", "results.json"), recursive=True)):
        folder = os.path.dirname(path)
        if not os.path.exists(os.path.join(folder, "config.json")):
            continue  # a draw's own ticket folder; its spend copy carries the config
        res, cfg = read_json(path), read_json(os.path.join(folder, "config.json"))
        hessian, metrics = pathlib.Path(folder, "hessian.json"), pathlib.Path(folder, "metrics.csv")
        res.update(
            seed=cfg["seed"],
            hessian=read_json(hessian) if hessian.exists() else {},  # seed: pairs with LTH
            epochs=list(csv.DictReader(metrics.read_text().splitlines())) if metrics.exists() else [],
        )
        masks = "user" if cfg.get("mask") else "one-shot" if cfg["sparsity"] and cfg["prune"] != "imp" else "imp"
        target = curves if res["epochs"] and "top_eigenvalue" in res["epochs"][0] else groups
        target.setdefault((cfg["dataset"], cfg["arch"], masks), {}).setdefault(  # --mask runs: the measured sparsity
            (cfg["sparsity"] or round(res["sparsity"], 3), variant(cfg)), []
        ).append(res)
    return groups, curves


@functools.cache
def t_quantile(p, df):
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom, by bisection on its CDF: the density
    Gamma((df+1)/2) / (sqrt(df pi) Gamma(df/2)) * (1 + x^2/df)^(-(df+1)/2), integrated from 0 by Simpson's rule."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x):
        return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))

    def cdf(x, n=2000):
        weights = [1 if i in (0, n) else 4 if i % 2 else 2 for i in range(n + 1)]
        return 0.5 + x / n / 3 * sum(w * density(i * x / n) for i, w in enumerate(weights))

    lo, hi = 0.0, 1000.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return lo


def differences(accs, base):
    """Paired by seed, i.e. by ticket: acc_i - acc_LTH_i for each seed i both {seed: accuracy} dicts have."""
    return [accs[seed] - base[seed] for seed in sorted(set(accs) & set(base))]


def paired(d):
    """The mean d of the paired differences d_i and the half-width of its 95% confidence interval,
    t(0.975, n - 1) * s_d / sqrt(n), s_d the sample std of the n differences: (d, half-width or None for n = 1, n)."""
    if d:
        half = t_quantile(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None
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
    a = list(found.values())
    return (
        (
            f"{statistics.mean(a):,.2f}"
            + (f" ± {statistics.stdev(a):,.2f}" if len(a) > 1 else "")
            + (f" ({interval(diff)})" if diff else "")
        )
        if a
        else "missing"
    )


def table(runs, columns=None):
    """Markdown: one row per sparsity (measured, mean over runs). By default one column per variant, its accuracy:
    mean +- std over seeds and (the paired difference to LTH [95% interval]), that difference in words below the
    table. `columns` [(header, variant, value of a result)] shows other numbers as mean +- std (Table A1, skips)."""
    accuracy, words = columns is None, []
    columns = columns or [(v, v, ACCURACY[1]) for v in variants(runs)]
    lines = ["| sparsity | " + " | ".join(h for h, _, _ in columns) + " | seeds |", "|---" * (len(columns) + 2) + "|"]
    for s in sorted({s for s, _ in runs}):
        found = [values(runs, s, v, f) for _, v, f in columns]
        if not any(found):
            continue
        measured = 100 * statistics.mean(r["sparsity"] for _, v, _ in columns for r in runs.get((s, v), []))
        diffs = [
            paired(differences(f, values(runs, s, "LTH"))) if accuracy and v != "LTH" else None
            for f, (_, v, _) in zip(found, columns)
        ]
        lines.append(f"| {measured:.1f}% | " + " | ".join(map(cell, found, diffs)) + f" | {max(map(len, found))} |")
        words += [
            f"- {measured:.1f}%: {v} − LTH: {interval(d)} pp, {d[2]} seed{'s' * (d[2] > 1)}"
            for (_, v, _), d in zip(columns, diffs)
            if d
        ]
    return "\n".join(lines + [""] + words)


def activation_columns(runs, key):
    """Table A1's columns: per stage, LTH (ReLU) and LTH+Swish, the % of activations counted by `key` in results.json
    (activation_sparsity: |a| <= 1e-2, the paper's count; activation_zeros: exactly 0)."""
    stages = sorted(
        {stage for found in runs.values() for r in found for stage in r.get(key, {})},
        key=lambda stage: (stage != "stem", stage),
    )  # stem, layer1, layer2, ...
    return [
        (f"{stage} {act}", v, lambda r, stage=stage: 100 * r[key][stage])
        for stage in stages
        for act, v in (("ReLU", "LTH"), ("Swish", "LTH+Swish"))
    ]


def present(runs, names, value):
    return [n for n in names if any(values(runs, s, n, value) for s, v in runs if v == n)]


def panel(ax, runs, names, metric, reference=False):
    """Draw `metric` of each variant against sparsity: the mean over seeds as a line, +-std shaded, each seed a dot;
    the dense network (0%) as a dashed level line (Fig. 1, 5); with reference, the paper's line dotted. At a single
    sparsity the variants stand side by side (Fig. A13). Returns the csv rows of what it drew."""
    (label, value), reference = metric, reference and metric is ACCURACY
    names, rows = present(runs, names, value), []
    levels = sorted({s for s, v in runs if s > 0 and v in names})
    for i, name in enumerate(names):
        points = [(s, values(runs, s, name, value)) for s in levels]
        points = [(100 * statistics.mean(r["sparsity"] for r in runs[s, name]), found) for s, found in points if found]
        x = [p for p, _ in points] if len(levels) > 1 else [i] * len(points)
        means = [statistics.mean(found.values()) for _, found in points]
        spread = [statistics.stdev(found.values()) if len(found) > 1 else 0 for _, found in points]
        ax.plot(x, means, "o-", label=name.replace("+", " + "), color=f"C{i}")
        ax.fill_between(
            x, [m - d for m, d in zip(means, spread)], [m + d for m, d in zip(means, spread)], color=f"C{i}", alpha=0.15
        )
        ax.plot(
            [a for a, (_, f) in zip(x, points) for _ in f],
            [v for _, f in points for v in f.values()],
            ".",
            color=f"C{i}",
            ms=3,
        )
        dense = values(runs, 0.0, name, value)
        if dense and levels:
            ax.axhline(statistics.mean(dense.values()), ls="--", color=f"C{i}", lw=1)
        if reference and name in PAPER and len(levels) > 1:
            ax.plot(*zip(*[p for p in PAPER[name] if p[0] > 0]), ":", color=f"C{i}", alpha=0.7)
        rows += [
            f"{s},{name},{r['seed']},{100 * r['sparsity']:.3f},{value(r):.3f}"
            for s in [0.0, *levels]
            for r in runs.get((s, name), [])
            if value(r) is not None
        ]
    if len(levels) > 1:
        ax.set(xlabel="sparsity (%); dashed: the dense network" + ("; dotted: the paper" if reference else ""))
        ax.legend(fontsize=7)
    else:
        ax.set_xticks(range(len(names)), [n.replace("+", " + ") for n in names], rotation=30, ha="right")
        ax.set(xlabel=f"at {100 * levels[0]:.1f}% sparsity" if levels else "")
    ax.set(ylabel=label, yscale="log" if metric is EIGEN and len(levels) > 1 else "linear")
    ax.grid(alpha=0.3)
    return rows


def figure(runs, panels, metric, title, path, reference, paired_view=False):
    """Panels side by side, one per list of variants (`panel`), and with paired_view one more: each variant's paired
    difference to LTH (same ticket), each seed's point and the mean with its 95% interval. Its numbers go beside."""
    fig = Figure(figsize=(5.5 * (len(panels) + paired_view), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels) + paired_view, squeeze=False)[0]
    rows = sorted({row for ax, names in zip(axes, panels) for row in panel(ax, runs, names, metric, reference)})
    names, levels = [n for n in variants(runs) if n != "LTH"], sorted({s for s, _ in runs})
    for i, name in enumerate(names if paired_view else []):
        for j, s in enumerate(levels):  # several sparsities side by side, left to right
            d = differences(values(runs, s, name), values(runs, s, "LTH"))
            if d:
                at, (mean, half, _) = i + (j - (len(levels) - 1) / 2) * 0.8 / len(levels), paired(d)
                axes[-1].plot([at] * len(d), d, ".", color=f"C{i + 1}", ms=4)
                axes[-1].errorbar([at], [mean], half, fmt="_", color="k", ms=10, capsize=3)
    if paired_view:
        axes[-1].axhline(0, color="gray", lw=0.8)
        axes[-1].set_xticks(range(len(names)), [n.replace("+", " + ") for n in names], rotation=30, ha="right")
        axes[-1].set(ylabel="test accuracy − LTH, same ticket (pp)", title="paired: seeds, mean, 95% interval")
        axes[-1].grid(alpha=0.3)
    fig.suptitle(title)
    write(fig, "target_sparsity,variant,seed,sparsity_pct," + metric[0], rows, path)


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


@command
def main(argv=None):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="?", default="runs")
    p.add_argument("--out", default="report")
    args = p.parse_args(argv)
    groups, curve_groups = gather(args.runs)
    if not groups and not curve_groups:
        raise BadInput(f"no finished runs under {args.runs}")
    md = [
        f"# Results gathered from {args.runs}\n",
        "Test accuracy (%) of the best-validation checkpoint, mean ± std "
        "over seeds, (paired difference to LTH on the same ticket, seed by seed [95% t-interval over seeds]).\n",
    ]
    for (dataset, arch, method), runs in sorted(groups.items()):
        title, group = f"{arch} on {dataset}, {method} masks", f"{dataset}_{arch}_{method}"
        reference = (dataset, arch) == ("cifar100", "resnet18")
        figure(runs, [variants(runs)], ACCURACY, title, os.path.join(args.out, f"acc_{group}.png"), reference, True)
        md += [f"## {title}\n", table(runs) + "\n", f"![{title}](acc_{group}.png)\n"]
        for part, (masks, metric, panels, at) in FIGURES.items():
            chosen = {k: found for k, found in runs.items() if at in (None, k[0])}
            panels = [names for names in panels if len(present(chosen, names, metric[1])) > 1]
            if masks in (None, method) and panels:
                path = os.path.join(args.out, f"{part}_{group}.png")
                figure(chosen, panels, metric, f"{part}: {title}", path, reference)
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
    for (dataset, arch, method), runs in sorted(curve_groups.items()):
        for seed in sorted({r["seed"] for found in runs.values() for r in found}):
            png = f"figA11_{dataset}_{arch}_{method}_seed{seed}.png"
            curves(
                [(v, r) for (_, v), found in sorted(runs.items()) for r in found if r["seed"] == seed],
                f"figA11: {arch} on {dataset}, {method} masks, seed {seed}",
                os.path.join(args.out, png),
            )
            md += [f"### figA11, seed {seed}\n", f"![figA11]({png})\n"]
    made = {line[line.index("(") + 1 : -2] for line in md if line.startswith("![")}
    md += [
        f"### {os.path.basename(png)[:-4]} (landscape.py)\n\n![]({os.path.basename(png)})\n"
        for png in sorted(glob.glob(os.path.join(args.out, "fig*.png")))
        if os.path.basename(png) not in made
    ]
    save("\n".join(md), os.path.join(args.out, "report.md"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
