"""The speed benchmark: `python bench.py` (ResNet-20 on CIFAR-shaped synthetic data; train.py's flags).

    python bench.py --arch resnet18 --batch-size 128 [--compile] [--device cuda]

Times, interleaved in one process on one device and batch size: (1) a bare PyTorch loop on the dense model with
torchvision's usual DataLoader pipeline, (2) our loop (`train.train_epoch`) on the dense model, (3) it on a 90%-sparse
ticket with --at --trt; (2) and (3) compiled with --compile. Prints images/s, epoch time, peak memory, the ratio of (3)
to (1), and the cost of one Hessian-vector product (hessian.py) and of building the graph it reuses, in training steps.
"""

import copy
import itertools
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import data
import hessian
import prune
import runs
import train
import tweaks


def bare_loader(ds, batch_size):
    """The usual CIFAR input pipeline: PIL images, torchvision transforms per image, a DataLoader."""
    import torchvision.transforms as T
    from PIL import Image

    x, y = ds["train"]
    transform = T.Compose(
        [
            T.RandomCrop(x.shape[-1], padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(ds["mean"].tolist(), ds["std"].tolist()),
        ]
    )
    dataset = [
        (Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img), int(label))
        for img, label in zip(x.permute(0, 2, 3, 1).cpu().numpy(), y.cpu())
    ]
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=2,
        collate_fn=lambda b: (torch.stack([transform(i) for i, _ in b]), torch.tensor([t for _, t in b])),
        persistent_workers=True,
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


def bench(args, steps=10, rounds=3):
    args.lr, args.epochs = 0.01, 180  # small lr: the timed steps must stay finite
    ds = data.load(args.dataset, args.data_dir, args.subset, args.seed, args.device)
    cuda = str(args.device).startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.backends.cudnn.benchmark = cuda  # as train.fit trains
    dense = train.new_model(args, ds)
    sparse = copy.deepcopy(dense)
    mask = {n: m.to(args.device) for n, m in prune.random_prune(prune.prunable(sparse), 0.9, args.seed).items()}
    prune.apply_mask(sparse, mask)
    tweaks.skip(sparse)
    tweaks.swish(sparse)
    tweaks.scale_init(sparse, mask, train.forever(ds, args.batch_size, args.seed), iters=5)
    ours = {}
    for name, model, m, ls in (
        ("ours dense", dense, prune.ones_mask(dense), 0.0),
        ("ours 90% sparse +AT+TRT", sparse, mask, 0.1),
    ):
        w = dict(model.named_parameters())
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd)
        ours[name] = (model, opt, [w[n] for n in m], [m[n].to(w[n].dtype) for n in m], tweaks.make_loss(ls))
    step_models = {k: torch.compile(o[0]) if args.compile else o[0] for k, o in ours.items()}  # as train.fit
    bare, loader = copy.deepcopy(dense).to(memory_format=torch.contiguous_format), bare_loader(ds, args.batch_size)
    timings = {k: [] for k in ["bare PyTorch + DataLoader (dense)", *ours]}
    peaks = dict.fromkeys(timings, 0)  # GPU memory, each loop's own peak
    for r in range(rounds + 1):  # round 0 warms up (workers, allocator, cudnn autotuning, compiling): not counted
        for name in timings:
            n_steps = steps if r else 2
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            if name in ours:
                _, opt, masked, keep, loss = ours[name]
                n = train.train_epoch(step_models[name], ds, args, opt, masked, keep, loss, r, max_steps=n_steps)[2]
            else:
                n = bare_steps(bare, loader, args.device, n_steps)
            sync()
            if r:
                timings[name].append(n / (time.perf_counter() - t0))
            peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**20 if cuda else 0)
    n_train = len(ds["train"][0])
    print(
        f"{args.arch} on {args.dataset} ({n_train} training images), batch {args.batch_size}, {args.device}, "
        f"{torch.get_num_threads()} threads, {steps} steps x {rounds} interleaved rounds"
        f"{', ours compiled' if args.compile else ''}"
    )
    medians = {name: statistics.median(rates) for name, rates in timings.items()}
    for name, rate in medians.items():
        print(
            f"  {name:34s} {rate:9.0f} images/s   epoch {n_train / rate:7.2f} s"
            + (f"   peak {peaks[name]:.0f} MiB GPU" if cuda else "")
        )
    if not cuda:  # ru_maxrss: this process alone, not the DataLoader's worker processes
        print(
            f"  peak memory of the whole process (all loops): "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB RSS"
        )
    ratio = medians["ours 90% sparse +AT+TRT"] / medians["bare PyTorch + DataLoader (dense)"]
    x, y = next(data.batches(ds, "train", args.batch_size, seed=0))
    for name, (model, *_) in ours.items():  # as hessian.top_eigen runs: one graph, then many products through it
        params, step = list(model.parameters()), args.batch_size / medians[name]
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


@runs.command
def main(argv=None):
    p = train.parser()
    p.description = __doc__.split("\n")[0]
    p.set_defaults(dataset="synthetic-cifar100", arch="resnet20", subset=3000)
    bench(train.parse_args(argv, p))


if __name__ == "__main__":
    main()
