"""The GPU bill of the reproduction: every run priced by its own training FLOPs and what --gpu-check measured.

    python bill.py [run_all.sh's list options]      # ./run_all.sh --dry-run: per part and in all, GPU-hours and source
    python bill.py --time-cells runs/gpu_check/cells  # ./run_all.sh --gpu-check: each cell's seconds per image

A run costs its training images x epochs x the seconds per image of its cell (arch, dataset): measured by --gpu-check
for that cell if it was (runs/gpu_check/cells), else the ResNet-18 epoch it measured (seconds_per_epoch; EPOCH_SECONDS
if set; else an assumed 10 s) scaled by the cell's FLOPs per image (forward + backward, torch's FlopCounterMode, one
image on the CPU); a draw costs its IMP levels' trainings. At the best K runs per GPU of the packing sweep (packing),
each run takes that share of the device.
"""

import functools
import math
import os
import re
import sys

from grid import FIG5, IMAGES, PAPER, Refused, gpus, jobs, options, part_jobs, slots, study_jobs

MEASURED = "runs/gpu_check"  # what --gpu-check measured: seconds_per_epoch, packing, cells
CLASSES = {"cifar10": 10, "tinyimagenet": 200}  # else 100


@functools.cache
def flops(arch, dataset):
    """FLOPs of one training image of `arch` at `dataset`'s size, forward + backward, as torch's FlopCounterMode counts
    them (3.33 G: ResNet-18 on CIFAR-100); counted once per cell, on the CPU, in about a second."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import models

    channels, classes = (1, 10) if dataset == "fashionmnist" else (3, CLASSES.get(dataset, 100))
    size = IMAGES[dataset][1]
    with FlopCounterMode(display=False) as counter:
        models.get_model(arch, classes, channels)(torch.randn(1, channels, size, size)).sum().backward()
    return counter.get_total_flops()


def seconds(text):
    """A number of seconds > 0 (3, 3.36, .5) as --gpu-check writes it, else None."""
    return float(text) if re.fullmatch(r"[0-9]*[.]?[0-9]+", text) and float(text) > 0 else None


def measured():
    """What the bill prices by: (GPU-seconds per epoch of ResNet-18 + AT + TRT on 45,000 CIFAR images, one run at a
    time, and its source; {(arch, dataset): seconds per image measured by --gpu-check}; (K, the device time per run at
    K runs at once over one at a time) or None). EPOCH_SECONDS, if set, is used alone. A damaged file is refused."""
    env, fix = (
        os.environ.get("EPOCH_SECONDS"),
        "as --gpu-check writes it: run ./run_all.sh --gpu-check again, or delete the file",
    )
    if env:
        if seconds(env) is None:
            raise Refused(
                f"EPOCH_SECONDS={env}: give GPU-seconds per epoch of a ResNet-18 run, a number > 0 (e.g. 3.4)"
            )
        return (seconds(env), "EPOCH_SECONDS"), {}, None
    found = {}
    for name in ("seconds_per_epoch", "packing", "cells"):
        if os.path.exists(f"{MEASURED}/{name}"):
            with open(f"{MEASURED}/{name}", errors="replace") as f:
                found[name] = f.read(10000).strip(" \n")
    one = (seconds(found["seconds_per_epoch"]), "ResNet-18's") if "seconds_per_epoch" in found else (10.0, "assumed")
    if one[0] is None:
        raise Refused(f"{MEASURED}/seconds_per_epoch does not hold seconds per epoch (a number > 0) {fix}")
    packed = re.fullmatch(r"([1-9][0-9]*) ([0-9.]+) (mps|plain)", found.get("packing", "1 1 plain"))
    if not packed or seconds(packed[2]) is None:
        raise Refused(f'{MEASURED}/packing does not hold "K SECONDS mps|plain" {fix}')
    cells = {}
    for line in found.get("cells", "").splitlines():
        words = line.split()
        if len(words) != 3 or words[1] not in IMAGES or seconds(words[2]) is None:
            raise Refused(f'{MEASURED}/cells does not hold lines "ARCH DATASET SECONDS_PER_IMAGE" {fix}')
        cells[words[0], words[1]] = seconds(words[2])
    at_k = (
        (int(packed[1]), seconds(packed[2]) / one[0], packed[3]) if "packing" in found and one[1] != "assumed" else None
    )
    return one, cells, at_k


def per_image(arch, dataset, one, cells):
    """(GPU-seconds per training image of a cell, its source): --gpu-check's timed run of that cell (its training steps,
    scaled as the ResNet-18 run's whole epoch is to its steps), else the ResNet-18 epoch scaled by FLOPs."""
    paper = PAPER[0][::-1]
    if (arch, dataset) in cells:
        whole = one[0] / IMAGES["cifar100"][0] / cells[paper] if paper in cells and one[1] != "assumed" else 1
        return cells[arch, dataset] * whole, "measured"
    return one[0] / IMAGES["cifar100"][0] * flops(arch, dataset) / flops(*paper), f"{one[1]} by FLOPs"


def time_cells(out, cells, device="cuda", steps=20, batch_size=128):
    """--gpu-check's timed run of each cell: `steps` training steps of the paper's spend (a 91% random mask, AT, label
    smoothing; GradInit only rescales weights) on random images of the cell's shape, after 3 steps that warm up cuDNN's
    autotuning. Writes `out` a cell at a time: "ARCH DATASET SECONDS" per training image, as measured() reads it."""
    import time

    import torch

    import prune
    import train
    import tweaks

    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    torch.backends.cudnn.benchmark = device.startswith("cuda")  # as train.fit trains
    with open(out, "w") as written:
        for dataset, arch in cells:
            flags = ["--arch", arch, "--device", device, "--batch-size", str(batch_size), "--at", "--ls", "0.1"]
            args, size, classes = train.parse_args(flags), IMAGES[dataset][1], CLASSES.get(dataset, 100)
            x = torch.randint(0, 256, (steps * batch_size, 3, size, size), dtype=torch.uint8, device=device)
            y, half = torch.randint(0, classes, (len(x),), device=device), torch.full((3,), 0.5, device=device)
            ds = dict(train=(x, y), classes=classes, mean=half, std=half)
            model = train.new_model(args, ds)
            mask = {n: m.to(device) for n, m in prune.random_prune(prune.prunable(model), 0.91, 0).items()}
            prune.apply_mask(model, mask)
            sgd = train.MaskedSGD(tweaks.apply(model, args), mask, tweaks.make_loss(0.1), args)
            train.train_epoch(sgd, ds, args, 0, max_steps=3)
            sync()
            start = time.perf_counter()
            seen = train.train_epoch(sgd, ds, args, 1)[0]["seen"]
            sync()
            line = f"{arch} {dataset} {(time.perf_counter() - start) / seen:.4g}\n"
            written.write(line)
            written.flush()  # a part cut short by its time limit keeps the cells it timed
            print(line, end="", flush=True)


def count(lines, label, price=None):
    """One line on a job list: its runs, trained spends and draws (an IMP draw trains its levels up to the highest one
    listed; a draw is one dense network: dataset, arch, seed, rewinding, draw cache, epochs), epochs in all, and with
    price (measured()) the GPU-hours of each training at its cell's seconds per image, with their source."""
    levels, spends, spent, cost, sources = {}, 0, 0, 0.0, set()

    def charge(o, epochs):
        nonlocal cost
        if price:
            rate, source = per_image(o["--arch"], o["--dataset"], *price[:2])
            images = int(o["--subset"]) - int(o["--subset"]) // 10 if "--subset" in o else IMAGES[o["--dataset"]][0]
            cost, _ = cost + rate * images * epochs, sources.add(source)

    for line in lines:
        words = line.split()
        o = {w: v for w, v in zip(words, words[1:]) if w.startswith("--")}
        draw = (o["--dataset"], o["--arch"], o["--seed"], "rewind" in line, o["--runs"], int(o["--epochs"]))
        s, e = float(o["--sparsity"]), int(o["--epochs"])
        need = 1 if "--prune" in line else int(math.log(1 - s) / math.log(0.8) + 0.5) + 1  # IMP levels 0..L
        levels[draw] = (max(need, levels.get(draw, (0,))[0]), o)
        if re.search(r"--(skip|swish|mish|scale-init|ls|at|trt|kd|hessian-every)", line) or ("--prune" in line and s):
            spends, spent, _ = spends + 1, spent + e, charge(o, e)  # a dense spend is its draw's training
    for draw, (n, o) in levels.items():
        spent, _ = spent + n * draw[-1], charge(o, n * draw[-1])
    trainings = sum(n for n, _ in levels.values())
    n = lambda k, word: f"{k} {word}{'s' * (k != 1)}"  # noqa: E731
    text = f"# {label}{n(len(lines), 'job')}: {n(spends, 'trained spend')} + {n(len(levels), 'draw')} of "
    text += f"{n(trainings, 'training')} (vanilla LTH spends reuse them), {n(spent, 'epoch')}"
    if price:
        text += f", {cost / 3600:.0f} GPU-hours one run at a time" + (
            f", {cost * price[2][1] / 3600:.0f} at {price[2][0]} per GPU" if price[2] else ""
        )
        text += f" ({' + '.join(sorted(sources))})"
    return text


def dry_run(o):
    """--dry-run: per part (the study: per rung) and in all: runs, draws, epochs and, for the full list, GPU-hours."""
    price = measured() if o.set == "full" else None
    for part in o.parts if price else []:
        lines = dict.fromkeys(line for seed in o.seeds for line in part_jobs(part, seed, o.epochs, o.cells))
        print(count(list(lines), f"{part}: ", price))
    for e in o.budgets if o.set == "study" else []:
        print(count(study_jobs(o.seeds, [e]), f"{e} epochs: "))
    print(count(jobs(o), "in all: ", price))
    if price:
        (one, source), cells, at_k = price
        origin = {
            "EPOCH_SECONDS": "set by EPOCH_SECONDS",
            "ResNet-18's": f"measured by --gpu-check, read from {MEASURED}/seconds_per_epoch",
            "assumed": "assumed, not measured: run --gpu-check on your GPU or set EPOCH_SECONDS",
        }[source]
        print("# GPU-hours: each training's FLOPs (forward + backward of an image of its arch at its size, torch's")
        print("# FlopCounterMode) x images x epochs; parts share runs: the total counts each once. Sources:")
        print(f"# {source} by FLOPs: {one:g} s per epoch of ResNet-18 + AT + TRT on 45,000 CIFAR images ({origin})")
        if cells:
            print(
                f"# measured: --gpu-check's timed steps of the cell on synthetic images of its shape ({MEASURED}/cells)"
            )
        if at_k:
            mps = " under CUDA MPS" * (at_k[2] == "mps")
            print(
                f"# at K: {at_k[0]} runs at once per GPU{mps} (--per-gpu {at_k[0]}), each {at_k[1]:.2f} of the device"
            )
            print(f"# time of one alone: the best of --gpu-check's packing sweep, read from {MEASURED}/packing")
    else:
        print("# the measured times of this list are in RESULTS.md")
    print("# runs at once: %s (%s)" % slots(o, gpus()))


def main(argv):
    try:
        if argv[:1] == ["--time-cells"] and len(argv) == 2:  # --gpu-check's: Fig. 5's cells, on the GPU
            return time_cells(argv[1], dict.fromkeys(PAPER + FIG5))
        dry_run(options(argv))
    except Refused as e:
        sys.exit(print(f"error: {e}", file=sys.stderr) or 2)


if __name__ == "__main__":
    main(sys.argv[1:])
