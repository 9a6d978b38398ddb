"""Gather every finished spend under a runs folder into the paper's tables and accuracy-vs-sparsity plots.

    python report.py runs --out report      # writes report/report.md and report/acc_<dataset>_<arch>_<prune>.png

Tables are laid out like Tables A2/A3: one row per sparsity, one column per variant, each cell the mean test
accuracy over seeds +- its std and, in brackets, the paired difference to LTH (seed by seed: on the same ticket)
with its 95% t-interval over seeds. A missing variant is "missing", never zero. Each plot's numbers are beside it
as .csv; for ResNet-18 on CIFAR-100 the plots carry the paper's numbers (Tables A2, A3) as dashed lines.
"""
import functools
import glob
import io
import math
import os
import statistics

from models import BadInput
from runs import Parser, command, read_json, save

# Published test accuracies (%), ResNet-18 on CIFAR-100, mean of seeds 42, 1099, 5469: Tables A2 and A3 of the paper.
PAPER_SPARSITY = [0, 20, 36, 49, 59, 67, 74, 79, 83, 87, 89, 91, 93, 94, 95, 96, 97]
PAPER = {
    "LTH": "74.87 74.28 74.54 74.45 74.07 74.43 73.31 73.21 72.94 71.91 71.58 71.12 70.51 70.44 69.43 69.57 67.89",
    "LTH+Skip": "74.10 73.99 75.03 74.56 73.91 74.08 73.94 73.77 73.69 72.86 72.42 72.17 72.15 72.17 72.01 71.71 70.11",
    "LTH+Swish": "75.08 74.95 75.35 74.34 74.94 74.62 73.37 73.45 73.22 73.27 72.67 72.43 71.98 71.33 70.61 69.87 69.01",
    "LTH+Scaling": "74.82 74.62 74.74 74.50 74.60 74.63 74.20 73.93 73.12 72.10 72.09 71.83 71.35 70.65 70.10 69.62 68.45",
    "LTH+LS": "75.42 75.90 75.91 75.54 75.61 75.46 74.69 74.58 74.12 72.65 72.26 71.13 71.24 70.47 69.61 69.51 68.58",
    "LTH+AT": "- 74.61 74.58 74.61 74.77 74.34 73.91 73.45 74.04 74.26 73.72 72.86 72.93 72.77 72.53 72.11 71.97",
    "LTH+TRT": "- 75.27 75.79 75.59 75.09 75.43 75.23 74.3 73.68 73.4 72.87 72.18 71.18 70.9 70.44 69.83 68.4",
    "LTH+AT+TRT": "- 76.12 76.32 76.08 75.71 75.57 75.12 74.84 74.93 74.9 74.83 74.23 73.26 73.69 72.75 73.04 72.82",
    "LTH Rewind": "- 75.38 74.97 74.79 75.04 75.48 75.19 75.5 75.38 75.04 75.25 75.68 75.34 74.86 74.63 74.52 73.11",
}
ORDER = ["LTH", "LTH+Skip", "LTH+Skip-1x1", "LTH+Swish", "LTH+Mish", "LTH+Scaling", "LTH+LS", "LTH+KD", "LTH+AT",
         "LTH+AT-1x1", "LTH+TRT", "LTH+AT+TRT", "LTH Rewind", "LTH+AT Rewind", "LTH+TRT Rewind", "LTH+AT+TRT Rewind"]


def variant(c):
    """The paper's name for a spend's tweaks: LTH, LTH+Skip, ..., LTH+AT+TRT, with ' Rewind' if rewound."""
    skip = ("Skip-1x1" if c.get("skip_proj") else "Skip") if c["skip"] or c.get("skip_proj") else None  # 1x1: ToST's
    at, trt = skip and c["swish"], c["scale_init"] and c["ls"] == 0.1
    parts = [skip.replace("Skip", "AT")] if at else [p for p in (skip, c["swish"] and "Swish", c["mish"] and "Mish") if p]
    parts += ["TRT"] if trt else [n for n, on in (("Scaling", c["scale_init"]), ("LS", c["ls"])) if on]
    parts += ["KD"] if c["kd"] else []
    return "LTH" + "".join("+" + p for p in parts) + (" Rewind" if c["rewind_epoch"] is not None else "")


def gather(root):
    """{(dataset, arch, prune): {(target sparsity, variant): [results of each seed]}}"""
    groups = {}
    for path in glob.glob(os.path.join(root, "**", "results.json"), recursive=True):
        folder = os.path.dirname(path)
        if not os.path.exists(os.path.join(folder, "config.json")):
            continue  # a draw's own ticket folder; its spend copy carries the config
        res, cfg = read_json(path), read_json(os.path.join(folder, "config.json"))
        res["seed"] = cfg["seed"]  # pairs a variant with LTH on the same ticket
        key = (cfg["dataset"], cfg["arch"], cfg["prune"] if cfg["sparsity"] else "imp")
        groups.setdefault(key, {}).setdefault((cfg["sparsity"] or 0.0, variant(cfg)), []).append(res)
    return groups


@functools.cache
def t_quantile(p, df):
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom, by bisection on its CDF: the density
    Gamma((df+1)/2) / (sqrt(df pi) Gamma(df/2)) * (1 + x^2/df)^(-(df+1)/2), integrated from 0 by Simpson's rule."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = lambda x: math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))
    cdf = lambda x, n=2000: 0.5 + x / n / 3 * sum((1 if i in (0, n) else 4 - 2 * (i % 2 == 0)) * density(i * x / n)
                                                  for i in range(n + 1))
    lo, hi = 0.0, 1000.0
    for _ in range(50):
        lo, hi = ((lo + hi) / 2, hi) if cdf((lo + hi) / 2) < p else (lo, (lo + hi) / 2)
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


def accuracies(runs, s, name):
    return {r["seed"]: 100 * r["test_acc"] for r in runs.get((s, name), [])}


def variants(runs):
    return sorted({v for _, v in runs}, key=lambda v: (ORDER.index(v) if v in ORDER else len(ORDER), v))


def cell(accs, diff):
    a = list(accs.values())
    return (f"{statistics.mean(a):.2f}" + (f" ± {statistics.stdev(a):.2f}" if len(a) > 1 else "")
            + (f" ({interval(diff)})" if diff else "")) if a else "missing"


def table(runs):
    """Markdown table: rows are sparsities (measured, mean over runs), columns are the variants present; each cell
    mean +- std over seeds and (the paired difference to LTH [95% interval]). Below it, that difference in words."""
    names, words = variants(runs), []
    lines = ["| sparsity | " + " | ".join(names) + " | seeds |", "|---" * (len(names) + 2) + "|"]
    for s in sorted({s for s, _ in runs}):
        accs = {v: accuracies(runs, s, v) for v in names}
        measured = 100 * statistics.mean(r["sparsity"] for v in names for r in runs.get((s, v), []))
        diffs = {v: paired(differences(accs[v], accs.get("LTH", {}))) for v in names if v != "LTH"}
        lines.append(f"| {measured:.1f}% | " + " | ".join(cell(accs[v], diffs.get(v)) for v in names)
                     + f" | {max(len(a) for a in accs.values())} |")
        words += [f"- {measured:.1f}%: {v} − LTH: {interval(d)} pp, {d[2]} seed{'s' * (d[2] > 1)}"
                  for v, d in diffs.items() if d]
    return "\n".join(lines + [""] + words)


def plot(runs, title, path, reference):
    """Left: accuracy vs sparsity, mean line, +-std band and each seed's point (the paper's published line dashed).
    Right: each variant's paired difference to LTH, each seed's point and the mean with its 95% interval."""
    from matplotlib.figure import Figure  # no pyplot: headless, no global state
    fig = Figure(figsize=(13, 4.5))
    ax, bx = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[3, 2]))
    names, levels = variants(runs), sorted({s for s, _ in runs})
    others = [n for n in names if n != "LTH"]  # the right panel's columns
    for i, name in enumerate(names):
        pts = [(100 * statistics.mean(r["sparsity"] for r in runs[s, name]), accuracies(runs, s, name))
               for s in levels if (s, name) in runs]
        x, means = [p for p, _ in pts], [statistics.mean(a.values()) for _, a in pts]
        spread = [statistics.stdev(a.values()) if len(a) > 1 else 0 for _, a in pts]
        ax.plot(x, means, "o-", label=name, color=f"C{i}")
        ax.fill_between(x, [m - d for m, d in zip(means, spread)], [m + d for m, d in zip(means, spread)],
                        color=f"C{i}", alpha=0.15)
        ax.plot([p for p, a in pts for _ in a], [v for _, a in pts for v in a.values()], ".", color=f"C{i}", ms=3)
        if reference and name in PAPER:
            paper = [(x, float(a)) for x, a in zip(PAPER_SPARSITY, PAPER[name].split()) if a != "-"]
            ax.plot(*zip(*paper), "--", color=f"C{i}", alpha=0.6, label=f"{name} (paper)")
        for j, s in enumerate(levels):
            d = differences(accuracies(runs, s, name), accuracies(runs, s, "LTH")) if name != "LTH" else []
            if d:
                at, (mean, half, _) = others.index(name) + (j - (len(levels) - 1) / 2) * 0.8 / len(levels), paired(d)
                bx.plot([at] * len(d), d, ".", color=f"C{i}", ms=4)
                bx.errorbar([at], [mean], half, fmt="_", color="k", ms=10, capsize=3)
    ax.set(xlabel="sparsity (%)", ylabel="test accuracy (%)", title=title)
    ax.legend(fontsize=7, ncol=2)
    bx.axhline(0, color="gray", lw=0.8)
    bx.set_xticks(range(len(others)), others, rotation=40, ha="right", fontsize=8)
    bx.set(ylabel="test accuracy − LTH, same ticket (pp)", title="paired difference: seeds (dots), mean and 95% interval"
           + (f"\n{len(levels)} sparsities, left to right" if len(levels) > 1 else ""))
    for a in (ax, bx):
        a.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    save(buf.getvalue(), path)
    rows = [f"{s},{name},{r['seed']},{100 * r['sparsity']:.3f},{100 * r['test_acc']:.3f}"
            for (s, name), rs in sorted(runs.items()) for r in rs]
    save("\n".join(["target_sparsity,variant,seed,sparsity_pct,test_acc_pct", *rows]) + "\n", path[:-4] + ".csv")


@command
def main(argv=None):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="?", default="runs")
    p.add_argument("--out", default="report")
    args = p.parse_args(argv)
    groups = gather(args.runs)
    if not groups:
        raise BadInput(f"no finished runs under {args.runs}")
    md = [f"# Results gathered from {args.runs}\n", "Test accuracy (%) of the best-validation checkpoint, "
          "mean ± std over seeds, (paired difference to LTH on the same ticket, seed by seed [95% t-interval over seeds]).\n"]
    for (dataset, arch, method), runs in sorted(groups.items()):
        title = f"{arch} on {dataset}, {method} masks"
        png = f"acc_{dataset}_{arch}_{method}.png"
        plot(runs, title, os.path.join(args.out, png), reference=(dataset, arch) == ("cifar100", "resnet18"))
        md += [f"## {title}\n", table(runs) + "\n", f"![{title}]({png})\n"]
    save("\n".join(md), os.path.join(args.out, "report.md"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
