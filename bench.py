"""Speed: our training loop against a bare PyTorch one; the numbers of several runs at once on one GPU.

    python bench.py --arch resnet18 --batch-size 128 [--compile] [--device cuda]
    python bench.py --packing runs/gpu_check/work/packing runs/gpu_check/packing     # after --gpu-check

Times, interleaved in one process on one device and batch size: (1) a bare PyTorch loop on the dense model with
torchvision's usual DataLoader pipeline, (2) our loop (`train.train_epoch`) on the dense model, (3) it on a 90%-sparse
ticket with --at --trt; (2) and (3) compiled with --compile. Prints images/s, epoch time, peak memory and the ratio of
(3) to (1). Instead, `--packing FOLDER OUT`: the numbers of the packing sweep that --gpu-check trains (`packing`).
"""

import copy
import glob
import itertools
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import cli
import data
import models
import prune
import runs
import train
import tweaks
from cli import BadInput


def bare_loader(ds, batch_size):
    """The usual CIFAR input pipeline: PIL images, torchvision transforms per image, a DataLoader."""
    import torchvision.transforms as T

    x, y = ds["train"]
    crop, mean, std = T.RandomCrop(x.shape[-1], padding=4), ds["mean"].tolist(), ds["std"].tolist()
    transform = T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])

    def collate(batch):  # in the workers: each image transformed alone
        return torch.stack([transform(img) for img, _ in batch]), torch.tensor([label for _, label in batch])

    dataset = list(zip(map(T.functional.to_pil_image, x.cpu()), y.tolist()))
    return torch.utils.data.DataLoader(
        dataset, batch_size, shuffle=True, num_workers=2, collate_fn=collate, persistent_workers=True
    )


def bare_steps(model, loader, device, steps):
    """A plain training loop, no masks, no tweaks: the baseline everyone writes first."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    model.train()
    n = 0
    for x, y in itertools.islice(loader, steps):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n


def peak_mib(cuda):
    """Peak memory: the GPU's allocations since the last reset, or on a CPU this process's RSS."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return torch.cuda.max_memory_allocated() / 2**20 if cuda else rss


def ticket(args, ds, sparsity=0.0):
    """A model with its optimizer, mask and loss (`train.MaskedSGD`): dense, or at `sparsity` the paper's spend at an
    IMP ticket's compute: a random mask, AT (skip, Swish), TRT (GradInit's scales, label smoothing 0.1)."""
    model = train.new_model(args, ds)
    mask = prune.ones_mask(model)
    if sparsity:
        mask = prune.random_prune(prune.prunable(model), sparsity, args.seed)
        mask = {n: m.to(args.device) for n, m in mask.items()}
        prune.apply_mask(model, mask)
        tweaks.skip(model)
        tweaks.swish(model)
        tweaks.scale_init(model, mask, runs.forever(ds, args.batch_size, args.seed), iters=5)
    return train.MaskedSGD(model, mask, tweaks.make_loss(0.1 if sparsity else 0.0), args)


def bench(args, rounds=3):
    ds = data.load(args.dataset, args.data_dir, args.subset, args.seed, args.device)
    cuda = str(args.device).startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.backends.cudnn.benchmark = cuda  # as train.fit trains
    ours = {"ours dense": ticket(args, ds), "ours 90% sparse +AT+TRT": ticket(args, ds, 0.9)}
    bare = copy.deepcopy(ours["ours dense"].model).to(memory_format=torch.contiguous_format)
    loader = bare_loader(ds, args.batch_size)
    timings = {k: [] for k in ["bare PyTorch + DataLoader (dense)", *ours]}
    peaks = dict.fromkeys(timings, 0)  # GPU memory, each loop's own peak
    for r in range(rounds + 1):  # round 0 warms up (workers, allocator, cudnn autotuning, compiling): not counted
        for name in timings:
            n_steps = args.steps if r else 2
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            if name in ours:
                n = train.train_epoch(ours[name], ds, args, r, max_steps=n_steps)[0]["seen"]
            else:
                n = bare_steps(bare, loader, args.device, n_steps)
            sync()
            if r:
                timings[name].append(n / (time.perf_counter() - t0))
            peaks[name] = max(peaks[name], peak_mib(cuda))
    n_train = len(ds["train"][0])
    print(
        f"{args.arch} on {args.dataset} ({n_train} training images), batch {args.batch_size}, {args.device}, "
        f"{torch.get_num_threads()} threads, {args.steps} steps x {rounds} interleaved rounds"
        f"{', ours compiled' if args.compile else ''}"
    )
    medians = {name: statistics.median(rates) for name, rates in timings.items()}
    for name, rate in medians.items():
        peak = f"   peak {peaks[name]:.0f} MiB GPU" if cuda else ""
        print(f"  {name:34s} {rate:9.0f} images/s   epoch {n_train / rate:7.2f} s{peak}")
    if not cuda:  # ru_maxrss: this process alone, not the DataLoader's worker processes
        print(f"  peak memory of the whole process (all loops): {peak_mib(cuda):.0f} MiB RSS")
    ratio = medians["ours 90% sparse +AT+TRT"] / medians["bare PyTorch + DataLoader (dense)"]
    print(f"sparse/bare throughput ratio: {ratio:.2f}")


def packing(folder, out):
    """The packing sweep that `./run_all.sh --gpu-check` trains: for each K, K runs of the paper's setting at once on
    one GPU through run_all.sh's runner (as --per-gpu K trains the reproduction), in folder/K<k>[-mps]/run<i>. Per K:
    the slowest run's last epoch split into training and the rest (evaluation, checkpoint; from metrics.csv), the
    images/s of all K, a run's peak GPU memory, and the device's time per epoch of a run (the epoch / K). The least
    goes to `out` as "K SECONDS mps|plain"."""
    found = {}
    sweeps = glob.glob(os.path.join(folder, "K*"))  # K1, K2, K4, K8, then K2-mps, ...
    for sweep in sorted(sweeps, key=lambda path: (path.endswith("-mps"), len(path), path)):
        name = os.path.basename(sweep)
        k, finished = int(name[1:].removesuffix("-mps")), sorted(glob.glob(os.path.join(sweep, "run*", "results.json")))
        if len(finished) < k:
            print(f"{name}: {k - len(finished)} of its {k} runs did not finish (their train.log says why)")
            continue
        results = [runs.read_json(path) for path in finished]
        last = [runs.read_metrics(os.path.join(os.path.dirname(path), "metrics.csv"))[-1] for path in finished]
        slowest = max(last, key=lambda row: float(row["seconds"]))
        epoch, training = float(slowest["seconds"]), float(slowest["train_seconds"])
        images = sum(r["train_images"] / float(row["train_seconds"]) for r, row in zip(results, last))
        peak = max(r["peak_gpu_mib"] or 0 for r in results)  # 0 on a CPU
        found[name] = (k, epoch / k)
        print(
            f"{name}: {epoch:.2f} s per epoch per run (training {training:.2f} s + evaluation and checkpoint "
            f"{epoch - training:.2f} s), {images:.0f} images/s in all, peak {peak:.0f} MiB GPU per run; "
            f"{epoch / k:.2f} s of the device per epoch of a run"
        )
    if not found:
        raise BadInput(f"{folder}: no finished run of the packing sweep in it (./run_all.sh --gpu-check trains them)")
    name, (k, best) = min(found.items(), key=lambda item: item[1][1])
    print(f"best: {name}: {best:.2f} s of the device per epoch of a run")
    runs.save(f"{k} {best:.3f} {'mps' if name.endswith('-mps') else 'plain'}\n", out)


def parser():
    p = cli.Parser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--arch", default="resnet20", choices=list(models.ARCHS), help="the network (default: %(default)s)")
    a("--dataset", default="synthetic-cifar100", choices=list(data.DATASETS), help="(default: %(default)s)")
    a("--subset", type=int, default=3000, help="the first N training images; 0: all (default: %(default)s)")
    a("--batch-size", type=int, default=128, help="(default: %(default)s)")
    a("--device", help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    a("--data-dir", default="data", help="where datasets are found or downloaded (default: %(default)s)")
    a("--steps", type=int, default=10, help="timed steps per loop and round (default: %(default)s)")
    a("--compile", action="store_true", help="torch.compile our loops (the bare loop stays eager)")
    sweep = "instead: the numbers of the packing sweep's runs in FOLDER (--gpu-check trains them); the best K into OUT"
    a("--packing", nargs=2, metavar=("FOLDER", "OUT"), help=sweep)
    p.set_defaults(seed=42, lr=0.01, momentum=0.9, wd=2e-4, amp=None)  # not flags: a small lr keeps steps finite
    return p


@cli.command
def main(argv=None):
    args = parser().parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or 0 < args.subset < 10:
        raise BadInput("--batch-size and --steps must be >= 1, --subset 0 (all) or >= 10")
    if args.packing:
        packing(*args.packing)
    else:
        args.device = cli.device(args.device)  # as train.py: the default, and refused unless this machine has it
        bench(args)


if __name__ == "__main__":
    main()
