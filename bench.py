"""Speed: our training loop against a bare PyTorch one, several runs at once on one device, evaluation in bf16.

    python bench.py --arch resnet18 --batch-size 128 [--compile] [--device cuda]
    python bench.py --arch resnet18 --subset 0 --device cuda --concurrent 1 2 4 8 --out runs/gpu_check/packing

Times, interleaved in one process on one device and batch size: (1) a bare PyTorch loop on the dense model with
torchvision's usual DataLoader pipeline, (2) our loop (`train.train_epoch`) on the dense model, (3) it on a 90%-sparse
ticket with --at --trt; (2) and (3) compiled with --compile. Prints images/s, epoch time, peak memory, the ratio of (3)
to (1), and the cost of one Hessian-vector product (hessian.py) and of building the graph it reuses, in training steps.
Instead: `--concurrent`, the packing sweep (`sweep`); `--compare-eval RUN`, evaluation in float32 vs bf16.
"""

import copy
import itertools
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import data
import hessian
import models
import prune
import runs
import train
import tweaks
from models import BadInput


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
        tweaks.scale_init(model, mask, train.forever(ds, args.batch_size, args.seed), iters=5)
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
        print(
            f"  {name:34s} {rate:9.0f} images/s   epoch {n_train / rate:7.2f} s"
            + (f"   peak {peaks[name]:.0f} MiB GPU" if cuda else "")
        )
    if not cuda:  # ru_maxrss: this process alone, not the DataLoader's worker processes
        print(f"  peak memory of the whole process (all loops): {peak_mib(cuda):.0f} MiB RSS")
    ratio = medians["ours 90% sparse +AT+TRT"] / medians["bare PyTorch + DataLoader (dense)"]
    x, y = next(data.batches(ds, "train", args.batch_size, seed=0))
    for name, sgd in ours.items():  # as hessian.top_eigen runs: one graph, then many products through it
        model, step = sgd.model, args.batch_size / medians[name]
        params = list(model.parameters())
        model.eval()  # BatchNorm in eval mode, as top_eigen (train_epoch sets train mode again)
        sync()
        t0 = time.perf_counter()
        matvec = hessian.hessian_operator(model, F.cross_entropy, [(x, y)], params, [None] * len(params))
        sync()
        build, product = time.perf_counter() - t0, []
        for _ in range(5):
            t0 = time.perf_counter()
            matvec([torch.randn_like(p) for p in params])
            sync()
            product.append(time.perf_counter() - t0)
        del matvec  # frees the graph
        print(
            f"{name}: one Hessian-vector product = {statistics.median(product) / step:.2f} training steps "
            f"(building the graph it reuses, once per top_eigen call: {build / step:.2f})"
        )
    print(f"sparse/bare throughput ratio: {ratio:.2f}")


def packed_run(args, k, ready, results):
    """One of k runs at once: the paper's spend at 91%, warmed up, then (once all k are ready) `--steps` timed
    training steps and one evaluation of the validation split (`data.evaluate` ends in a sync)."""
    cuda = torch.backends.cudnn.benchmark = str(args.device).startswith("cuda")  # as train.fit trains
    torch.set_num_threads(max(1, torch.get_num_threads() // k))  # on a CPU the k runs share its cores
    try:
        ds = data.load(args.dataset, args.data_dir, args.subset, args.seed, args.device)
        sgd = ticket(args, ds, 0.91)
        train.train_epoch(sgd, ds, args, 0, max_steps=3)  # warm-up: autotuning, the allocator
        data.evaluate(sgd.model, ds, "val")
        ready.wait(timeout=600)
    except BaseException:
        ready.abort()  # the other runs stop waiting for this one
        raise
    t0 = time.perf_counter()
    images = train.train_epoch(sgd, ds, args, 1, max_steps=args.steps)[0]["seen"]  # its sums as numbers: synced
    t1 = time.perf_counter()
    data.evaluate(sgd.model, ds, "val")
    epoch_train = len(ds["train"][1]) * (t1 - t0) / images
    results.put(dict(rate=images / (t1 - t0), train=epoch_train, eval=time.perf_counter() - t1, peak=peak_mib(cuda)))


def concurrent_runs(args, k):
    """k `packed_run`s at once, each its own spawned process: their numbers, or None if one failed (stderr says why)."""
    ctx = mp.get_context("spawn")
    ready, results = ctx.Barrier(k), ctx.Queue()
    processes = [ctx.Process(target=packed_run, args=(args, k, ready, results)) for _ in range(k)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    return None if any(p.exitcode for p in processes) else [results.get() for _ in processes]


def sweep(args):
    """The packing sweep: for each K of --concurrent, K runs at once on one device, then again under CUDA MPS where
    nvidia-cuda-mps-control exists. Per K: the epoch of a run (the slowest's: training the loaded split, evaluating
    its validation split), the images/s of all K, a run's peak memory, and the device's time per epoch of a run (the
    epoch / K). The K with the least goes to --out as "K SECONDS mps|plain"."""
    cuda = str(args.device).startswith("cuda")
    mps = cuda and shutil.which("nvidia-cuda-mps-control") is not None
    print(f"{args.arch} on {args.dataset}, 91% random mask + AT + TRT, batch {args.batch_size}, {args.steps} steps")
    mps_line = "tried after the plain runs" if mps else "not used (no nvidia-cuda-mps-control, or no CUDA)"
    print(f"CUDA MPS: {mps_line}", flush=True)  # before the runs' own output
    found = {}  # (K, under MPS): device seconds per epoch of a run
    for under_mps in [False, True] if mps else [False]:
        if under_mps:  # a daemon of our own: its pipes in a new folder, which the spawned runs find in the environment
            os.environ["CUDA_MPS_PIPE_DIRECTORY"] = os.environ["CUDA_MPS_LOG_DIRECTORY"] = tempfile.mkdtemp()
            if subprocess.run(["nvidia-cuda-mps-control", "-d"]).returncode:
                print("CUDA MPS: nvidia-cuda-mps-control -d failed: no runs under MPS")
                break
        for k in [k for k in args.concurrent if k > 1 or not under_mps]:
            numbers, how = concurrent_runs(args, k), f"K={k}" + " with MPS" * under_mps
            if numbers is None:
                print(f"{how}: a run failed (its error is above)", flush=True)
                continue
            slowest = max(numbers, key=lambda n: n["train"] + n["eval"])
            epoch = slowest["train"] + slowest["eval"]
            found[k, under_mps] = epoch / k
            print(
                f"{how}: {epoch:.2f} s per epoch per run (training {slowest['train']:.2f} s + evaluation "
                f"{slowest['eval']:.2f} s), {sum(n['rate'] for n in numbers):.0f} images/s in all, peak "
                f"{max(n['peak'] for n in numbers):.0f} MiB {'GPU' if cuda else 'RSS'} per run; "
                f"{epoch / k:.2f} s of the device per epoch of a run",
                flush=True,
            )
        if under_mps:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True)
    if not found:
        raise SystemExit("error: the packing sweep measured nothing: every K failed (the errors are above)")
    (k, under_mps), best = min(found.items(), key=lambda item: item[1])
    print(f"best: K={k}{' with MPS' * under_mps}: {best:.2f} s of the device per epoch of a run")
    if args.out:
        runs.save(f"{k} {best:.3f} {'mps' if under_mps else 'plain'}\n", args.out)


def compare_eval(args):
    """A finished run's test accuracy by `data.evaluate` in float32 and in bf16 autocast (its default on CUDA), each
    timed after a warm-up. A difference small beside the standard error, sqrt(acc (1 - acc) / images), is noise."""
    model, _, ds, _ = runs.load_run(args.compare_eval, args.data_dir, args.device)
    for amp in (False, True):
        data.evaluate(model, ds, "test", amp=amp)  # warm-up: cuDNN autotuning
        t0 = time.perf_counter()
        acc, loss = data.evaluate(model, ds, "test", amp=amp)  # Python numbers: synced
        error = (acc * (1 - acc) / len(ds["test"][1])) ** 0.5
        print(
            f"evaluation in {'bf16 autocast' if amp else 'float32'}: test accuracy {acc:.2%} (standard error "
            f"{error:.2%}), loss {loss:.4f}, {time.perf_counter() - t0:.2f} s for {len(ds['test'][1]):,} images"
        )


def parser():
    p = runs.Parser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--arch", default="resnet20", choices=list(models.ARCHS), help="the network (default: %(default)s)")
    a("--dataset", default="synthetic-cifar100", choices=list(data.DATASETS), help="(default: %(default)s)")
    a("--subset", type=int, default=3000, help="the first N training images; 0: all (default: %(default)s)")
    a("--batch-size", type=int, default=128, help="(default: %(default)s)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default here: %(default)s)")
    a("--data-dir", default="data", help="where datasets are found or downloaded (default: %(default)s)")
    a("--steps", type=int, default=10, help="timed steps per loop and round, or per run (default: %(default)s)")
    a("--compile", action="store_true", help="torch.compile our loops (the bare loop stays eager)")
    a("--concurrent", type=int, nargs="+", metavar="K", help="instead: the packing sweep, K runs at once for each K")
    a("--out", help="with --concurrent: the file to write the best K to")
    a("--compare-eval", metavar="RUN", help="instead: a finished run (its own data) in float32 and bf16")
    p.set_defaults(seed=42, lr=0.01, momentum=0.9, wd=2e-4, amp=None)  # not flags: a small lr keeps steps finite
    return p


@runs.command
def main(argv=None):
    args = parser().parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or min(args.concurrent or [1]) < 1 or 0 < args.subset < 10:
        raise BadInput("--batch-size, --steps and each K of --concurrent must be >= 1, --subset 0 (all) or >= 10")
    if args.out and not args.concurrent or args.compare_eval and args.concurrent:
        raise BadInput("--out goes with --concurrent K... (where it writes the best K); --compare-eval goes alone")
    if args.compare_eval:
        compare_eval(args)
    elif args.concurrent:
        sweep(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
