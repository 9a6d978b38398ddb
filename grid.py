"""The reproduction's grid, declared once: which train.py runs make which table or figure, and what they cost.

    python3 grid.py --list [--quick | --study] [--parts "fig2 a4"] [--seeds "42 1099"]     # one train.py line a run
    python3 grid.py --analysis [the same options]     # the landscape.py lines to run after the trainings
    python3 grid.py --folders < JOBS                    # per job line: finished or unfinished, a tab, its folder

run_all.sh (--list, --dry-run, the runner: runner.py), slurm.sh, slurm_task.sh and report.py (its figures) read it.
Listing needs only the standard library (any python3, a cluster's login node); --dry-run counts FLOPs with torch.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys

# The IMP levels of the paper: 0.8^L for L = 0..16 (0%, 20%, 36%, ... 97%)
LEVELS = "0 0.2 0.36 0.488 0.59 0.672 0.738 0.79 0.832 0.866 0.893 0.914 0.931 0.945 0.956 0.965 0.972".split()
FIG = "0.914"  # §3.3, §4.6, A1.2: the analysis at 91% (IMP level 11); every full run there keeps epoch 5 (Fig. 4)
FIG2_LEVELS = "0.2 0.59 0.832 0.914 0.965".split()  # Fig. 2's sparsities (not stated in the paper)
PAPER = [("cifar100", "resnet18")]  # §4.1: ResNet-18 on CIFAR-100
FIG5 = [
    (d, a)
    for d in ("cifar10", "cifar100", "tinyimagenet")
    for a in ("vgg16", "resnet18", "resnet34", "resnet50", "mobilenet")
]
COMBINED = ["LTH+AT", "LTH+TRT", "LTH+AT+TRT"]
ACTS, A3 = ["", "--skip", "--swish", "--scale-init", "--ls 0.1"], ["", "--at", "--trt", "--at --trt"]
REWIND = [f"--rewind-epoch {{rewind}}{v and ' '}{v}" for v in A3]
A13 = ["", "--skip", "--swish", "--mish", "--scale-init", "--ls 0.1", "--at", "--trt", "--at --trt"]
A13_NAMES = ["LTH", "LTH+Skip", "LTH+Swish", "LTH+Mish", "LTH+Scaling", "LTH+LS", *COMBINED]

# Each part of the full reproduction: its runs, rows of (sparsities, train.py flags of each spend) on each (dataset,
# arch) cell (default: the paper's), and the figure report.py draws of them: (masks, "accuracy" or "eigenvalue",
# panels of the paper's variant names, only at this sparsity or None). Parts share runs: a run is listed once.
PARTS = {
    "a2": dict(rows=[(LEVELS, ACTS)]),
    "a3": dict(rows=[(LEVELS, A3 + REWIND)]),
    "a4": dict(  # Table A4: ResNet-32, pruning at init vs LTH + AT + TRT; 0.95 and 0.98 are not IMP levels: one-shot
        cells=[("cifar10", "resnet32"), ("cifar100", "resnet32")],
        rows=[
            (["0"], [""]),
            (["0.9", "0.95", "0.98"], [f"--prune {p}" for p in ("random", "grasp", "synflow", "omp --at --trt")]),
        ],
    ),
    "fig1": dict(
        rows=[(LEVELS, ACTS)],
        figure=("imp", "accuracy", [["LTH", f"LTH+{v}"] for v in ("Skip", "Swish", "Scaling", "LS")], None),
    ),
    "fig2": dict(
        rows=[(FIG2_LEVELS, ["", "--swish", "--mish"])],
        figure=(None, "eigenvalue", [["LTH", "LTH+Swish", "LTH+Mish"]], None),
    ),
    "fig4": dict(rows=[([FIG], ["", "--skip", "--ls 0.1", "--scale-init"])]),
    "fig5": dict(cells=FIG5, rows=[(LEVELS, ["", "--at --trt"])]),
    "fig6": dict(
        rows=[(LEVELS, A3 + REWIND)], figure=("imp", "accuracy", [["LTH", *COMBINED], ["LTH Rewind", *COMBINED]], None)
    ),
    "fig7": dict(
        rows=[(LEVELS, A3 + REWIND)],
        figure=("imp", "accuracy", [[f"LTH{v} Rewind" for v in ("", "+AT", "+TRT", "+AT+TRT")]], None),
    ),
    "fig8": dict(rows=[([FIG], A3)]),
    "fig9": dict(
        rows=[(LEVELS, ["--at --trt", "--at --scale-init --kd"])],
        figure=("imp", "accuracy", [["LTH+AT+TRT", "LTH+AT+Scaling+KD"]], None),
    ),  # LS replaced by KD (§4.6)
    "fig10": dict(rows=[([FIG], ["", "--at --trt"])]),
    "figA11": dict(rows=[([FIG], ["--hessian-every 1", "--at --trt --hessian-every 1"])]),
    "figA12": dict(
        rows=[(LEVELS, [f"--prune omp{v and ' '}{v}" for v in A3])],
        figure=("one-shot", "accuracy", [["LTH", *COMBINED]], None),
    ),
    "figA13": dict(rows=[([FIG], A13)], figure=(None, "eigenvalue", [A13_NAMES], 0.914)),
    "tableA1": dict(rows=[("0.2 0.36 0.672 0.738 0.965 0.972".split(), ["", "--swish"])]),
    "skipproj": dict(rows=[(LEVELS, ["--at", "--skip-proj --swish"])]),
    # the abstract's claim at the least cost: Table A3's LTH, AT, TRT, AT+TRT at IMP levels 11 and 16 (a3's runs)
    "headline": dict(rows=[([FIG, "0.972"], A3)], figure=("imp", "accuracy", [["LTH", *COMBINED]], None)),
}
FIGURES = {part: p["figure"] for part, p in PARTS.items() if "figure" in p}

# The quick demo and the CPU study (RESULTS.md): one-shot tickets of Fashion-MNIST's ResNet-20, LTH against tweaks
QUICK = "--dataset fashionmnist --arch resnet20 --epochs 4 --subset 3000 --prune omp --scale-init-iters 10"
BUDGETS = ["30", "15", "5"]  # the study's ladder: epochs per rung, longest first (RESULTS.md: why 30, not 45)
STUDY_914 = ["--at --trt", "--trt", "--scale-init", "", "--skip-proj", "--at", "--skip", "--swish", "--ls 0.1"]
STUDY_972 = ["--at --trt", "--trt", "", "--at", "--ls 0.1"]  # 15 epochs only
STUDY_914_AT_30 = ["--at --trt", "--trt", "", "--skip-proj", "--at", "--skip", "--ls 0.1"]  # what 30 epochs afford
# A ticket well below its dense network (15 epochs; RESULTS.md, "The gap"): seed 1's scan of one-shot tickets, and
# every seed's STUDY_GAP at GAP_SPARSITY, on dense networks trained again in their own draw cache (runs/study/gap)
STUDY_SCAN = ["0.982", "0.986", "0.989", "0.991"]
STUDY_GAP = ["--at --trt", "--trt", "", "--at", "--ls 0.1"]
GAP_SPARSITY = "0.982"  # the scan's choice: the lowest whose LTH falls >= 4 pp below dense (RESULTS.md)
# training images (the 9:1 split of the training set) and their size, per dataset
IMAGES = {"cifar10": (45000, 32), "cifar100": (45000, 32), "tinyimagenet": (90000, 64), "fashionmnist": (54000, 28)}


class Refused(Exception):
    """Bad input: main prints it as one line on stderr and exits 2, before anything is created."""


def job(seed, s, base, flags, root, rung="", draws=None):
    """One train.py line; its --out is <root>/<rung><dataset>_<arch>/<prune>_s<sparsity>_<tweaks, or lth>/seed<seed>."""
    if root == "runs/full" and s == FIG:
        base += " --keep-epochs 5"
    prune = re.search(r"--prune ([a-z]+)", f"{base} {flags}")
    name = flags.replace(prune[0], "", 1) if prune else flags
    name = re.sub(r"--rewind-epoch \d+", "rewind", name, count=1).replace(" ", "").replace("-", "")
    words = base.split()
    out = f"{root}/{rung}{words[1]}_{words[3]}/{prune[1] if prune else 'imp'}_s{s}_{name or 'lth'}/seed{seed}"
    return f"{base}{' ' * bool(flags)}{flags} --seed {seed} --sparsity {s} --runs {draws or root} --out {out}"


def part_jobs(part, seed, epochs, cells=None):
    """The train.py lines of one part of the full reproduction, on its cells (or those of them in `cells`)."""
    lines = []
    for dataset, arch in [c for c in PARTS[part].get("cells", PAPER) if c in (cells or [c]) or part != "fig5"]:
        base = f"--dataset {dataset} --arch {arch} --epochs {epochs}"
        for levels, variants in PARTS[part]["rows"]:
            lines += [
                job(seed, s, base, v.format(rewind=epochs * 33 // 180), "runs/full") for s in levels for v in variants
            ]
    return lines


def study_jobs(seeds, budgets):
    """The CPU study's ladder: per rung, every tweak against LTH on the same one-shot tickets, seeds interleaved (each
    core its draw); at 15 epochs also the dense networks trained again, seed 1's scan and the gap (GAP_SPARSITY)."""
    lines = []
    for e in budgets:
        base, rung = (
            f"--dataset fashionmnist --arch resnet20 --epochs {e} --subset 10000 --prune omp",
            f"e{e}/" * (e != "5"),
        )
        tickets = [
            ("0.914", STUDY_914_AT_30 if e == "30" else STUDY_914, seeds),
            ("0.972", STUDY_972 * (e == "15"), seeds),
        ]
        gap = [("0", [""], seeds)] + [(s, [""], [x for x in seeds if x == "1"]) for s in STUDY_SCAN]
        gap += [(GAP_SPARSITY, STUDY_GAP, seeds)]
        for draws, rows in ((None, tickets), ("runs/study/gap", gap if e == "15" else [])):
            lines += [
                job(x, s, base, v, "runs/study", rung, draws)
                for s, variants, who in rows
                for v in variants
                for x in who
            ]
    return list(dict.fromkeys(lines))  # the scan's LTH at GAP_SPARSITY is the gap's seed 1 LTH: listed once


def jobs(o):
    """The job list of the options `o` (options()): the full reproduction's parts per seed, each run once; or --quick's,
    or --study's."""
    if o.set == "quick":
        return [job(seed, FIG, QUICK, v, "runs/quick") for seed in o.seeds for v in ("", "--at --trt")]
    if o.set == "study":
        return study_jobs(o.seeds, o.budgets)
    return list(
        dict.fromkeys(line for seed in o.seeds for p in o.parts for line in part_jobs(p, seed, o.epochs, o.cells))
    )


def folders(seed, s, names, root="runs/full/cifar100_resnet18", prune="imp"):
    return " ".join(f"{root}/{prune}_s{s}_{name}/seed{seed}" for name in names.split())


def eigenvalues(runs, batches=10, iters=100):
    return [f"eigenvalue {run} --batches {batches} --iters {iters} --out {run}/hessian.json" for run in runs.split()]


def analysis(o):
    """The analysis after the trainings, one landscape.py command line each, its output last: Fig. 2's and A13's top
    Hessian eigenvalues (the paper's: 10 batches, <= 100 power iterations), Fig. 4's and 8's loss contours and Fig. 10's
    eigen-directions (1,000 test images); --quick: A13's and 8's, smaller."""
    lines, on = [], lambda part: o.set == "full" and part in o.parts
    for seed in o.seeds if o.set != "study" else []:
        if o.set == "quick":
            two, png = (
                folders(seed, FIG, "lth attrt", "runs/quick/fashionmnist_resnet20", "omp"),
                "runs/quick/report/fig8",
            )
            lines += eigenvalues(two, 2, 10) + [
                f"contour {two} --grid 9 --images 256 --out {png}_omp_s{FIG}_seed{seed}.png"
            ]
        lines += [e for s in FIG2_LEVELS if on("fig2") for e in eigenvalues(folders(seed, s, "lth swish mish"))]
        lines += (
            eigenvalues(folders(seed, FIG, "lth skip swish mish scaleinit ls0.1 at trt attrt")) if on("figA13") else []
        )
        png = f"--out runs/full/report/{{}}_imp_s{FIG}_seed{seed}.png"
        for part, command, names in (
            ("fig4", "contour --weights epoch5.pt", "lth skip ls0.1 scaleinit"),
            ("fig8", "contour", "lth at trt attrt"),
            ("fig10", "eigen", "lth attrt"),
        ):
            lines += [f"{command} --images 1000 {folders(seed, FIG, names)} {png.format(part)}"] * on(part)
    return lines


def finished(folder):
    """Whether a run folder holds a finished run: train.py writes its results.json last."""
    return os.path.exists(os.path.join(folder, "results.json"))


def run_folder(line):
    """(the run folder of a train.py line: its last --out, the line split as a shell would; whether it is finished)."""
    words = shlex.split(line)
    if "--out" not in words[:-1]:
        raise Refused("has no --out FOLDER; give each run its folder")
    folder = words[max(i for i, w in enumerate(words[:-1]) if w == "--out") + 1]
    return folder, finished(folder)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Refused(message)


def options(argv):
    """run_all.sh's options (see its top), checked: a Refused names the first wrong one and how to fix it."""
    p = Parser(add_help=False, allow_abbrev=False)
    p.add_argument("--quick", dest="set", action="store_const", const="quick", default="full")
    p.add_argument("--study", dest="set", action="store_const", const="study")
    for flag in ("--list", "--dry-run", "--test", "--gpu-check", "--check"):  # the modes (run_all.sh chooses)
        p.add_argument(flag, action="store_true")
    for flag in ("--jobs-from", "--jobs", "--seeds", "--budget", "--parts", "--epochs", "--arch", "--dataset"):
        p.add_argument(flag)
    p.add_argument("--per-gpu", default="1")
    p.add_argument("--python", default=os.environ.get("PYTHON", ".venv/bin/python"))  # the runner's, for train.py
    o = p.parse_args(argv)
    full_only = [f"--{k}" for k in ("parts", "epochs", "arch", "dataset") if getattr(o, k) is not None]
    if o.set != "full" and full_only:
        raise Refused(f"{' '.join(full_only)}: the full reproduction's options; --{o.set} is a fixed job list")
    if o.budget is not None and o.set != "study":
        raise Refused("--budget chooses rungs of the study's ladder: use it with --study")
    o.budgets = o.budget.split() if o.budget is not None else BUDGETS
    for e in o.budgets if o.budget is not None else []:
        if e not in BUDGETS:
            raise Refused(f"--budget {e}: the study's rungs are {' '.join(BUDGETS)} epochs")
    o.parts = (o.parts or " ".join(PARTS)).split()
    for part in o.parts:
        if part not in PARTS:
            raise Refused(f"unknown part {part}; the parts: {' '.join(PARTS)}")
    for flag, value in (("--jobs", o.jobs), ("--per-gpu", o.per_gpu), ("--epochs", o.epochs)):
        if value is not None and not re.fullmatch(r"[1-9][0-9]*", value):
            raise Refused(f"{flag} must be a whole number >= 1, got {value!r}")
    o.epochs, o.jobs, o.per_gpu = int(o.epochs or 180), o.jobs and int(o.jobs), int(o.per_gpu)
    default = {"quick": "42", "study": "1 2 3 4 5", "full": "42 1099 5469"}[o.set]
    o.seeds = (default if o.seeds is None else o.seeds).split()
    if not o.seeds or not all(re.fullmatch(r"[0-9]+", seed) for seed in o.seeds):
        raise Refused(f'--seeds {o.seeds and " ".join(o.seeds)!r}: give whole numbers, e.g. --seeds "42 1099 5469"')
    archs, datasets = (o.arch or "").split(), (o.dataset or "").split()
    for flag, given, known in (("--arch", archs, {a for _, a in FIG5}), ("--dataset", datasets, {d for d, _ in FIG5})):
        if set(given) - known:
            raise Refused(f"{flag} {' '.join(given)}: Fig. 5's are {' '.join(sorted(known))}")
    o.cells = [(d, a) for d, a in FIG5 if d in (datasets or [d]) and a in (archs or [a])] if archs or datasets else None
    return o


def gpus():
    """The GPUs to use: CUDA_VISIBLE_DEVICES if set, else every one nvidia-smi lists."""
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return os.environ["CUDA_VISIBLE_DEVICES"].split(",")
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    except OSError:
        listed = ""
    return [str(i) for i in range(listed.count("GPU"))]


def slots(o, found):
    """(how many runs at once, why): --jobs, else --per-gpu on each GPU; the study on a CPU: one run per core."""
    if o.jobs:
        return o.jobs, "set by --jobs"
    if o.set == "study" and not found:
        return os.cpu_count(), "one per CPU core"
    if not found:
        return o.per_gpu, f"no GPU found: {o.per_gpu} at a time"
    return len(found) * o.per_gpu, f"{o.per_gpu} per GPU on {len(found)} GPU{'s' * (len(found) > 1)}"


def main(argv):
    try:
        if argv == ["--folders"]:  # job lines on stdin: for each, "finished" or "unfinished", a tab and its run folder
            for n, line in enumerate(sys.stdin.read().splitlines(), 1):
                try:
                    folder, done = run_folder(line)
                except (Refused, ValueError) as e:  # ValueError: shlex's, a quote never closed
                    raise Refused(f"line {n}: {e}") from None
                print(f"{'finished' if done else 'unfinished'}\t{folder}")
            return
        o = options(argv[1:] if argv[:1] == ["--analysis"] else argv)
        for line in analysis(o) if argv[:1] == ["--analysis"] else jobs(o):  # none: no line (the study's analysis)
            print(line)
    except Refused as e:
        sys.exit(print(f"error: {e}", file=sys.stderr) or 2)


if __name__ == "__main__":
    main(sys.argv[1:])
