"""Datasets as tensors on the training device, augmented per batch with tensor ops (as in airbench).

    ds = data.load("fashionmnist", root="data", subset=5000, seed=42, device="cpu")
    for x, y in data.batches(ds, "train", 128, seed=1): ...

Each split is one uint8 tensor (N, C, H, W) plus int64 labels, decoded once. The original training set is split 9:1
into train/val by a seeded permutation (§4.1); the official test set is the test split (for Tiny-ImageNet, its labelled
val folder). Normalization uses the per-channel mean/std of the full training set, measured: right for every dataset.
"""

import contextlib
import glob
import gzip
import os
import pathlib
import pickle

import numpy as np
import torch
import torch.nn.functional as F

import models
from cli import BadInput

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@contextlib.contextmanager
def reading(path, fix):
    """A data file that fails to read, unpickle, decode or reshape is one BadInput naming it and the way out, `fix`."""
    try:
        yield
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, pickle.UnpicklingError) as e:
        raise BadInput(f"{path}: damaged or not the dataset's file ({type(e).__name__}: {e}); {fix}") from None


def fashionmnist(root):
    """Fashion-MNIST from Debian's dataset-fashion-mnist files, else downloaded by torchvision."""
    folder, fix = DEBIAN_FASHION_MNIST, "reinstall dataset-fashion-mnist"
    if not os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        import torchvision

        try:
            torchvision.datasets.FashionMNIST(root, download=True)
        except Exception as e:
            how = f"`apt-get install dataset-fashion-mnist`, or put the raw files in {root}/FashionMNIST/raw"
            raise BadInput(f"Fashion-MNIST not found ({type(e).__name__}): {how}") from None
        folder = os.path.join(root, "FashionMNIST", "raw")
        fix = f"delete {folder} and it is downloaded again"

    def idx(name):  # an IDX file (the MNIST format): name.gz if there is one, else name
        path = os.path.join(folder, name)
        path += ".gz" if os.path.exists(path + ".gz") else ""
        with reading(path, fix), gzip.open(path) if path.endswith(".gz") else open(path, "rb") as f:
            raw = f.read()
            shape = np.frombuffer(raw, ">u4", raw[3], 4).astype(int)  # byte 3: the number of dimensions
            return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape).copy())

    split = {
        k: (idx(f"{p}-images-idx3-ubyte")[:, None], idx(f"{p}-labels-idx1-ubyte").long())
        for k, p in (("train", "train"), ("test", "t10k"))
    }
    return split, 10


# What the official CIFAR archives (Python 2's cPickle, protocol 2) name, and numpy._core: an archive pickled anew
# under numpy 2 names it for numpy.core
ARCHIVE_GLOBALS = {"numpy.ndarray", "numpy.dtype"} | {f"numpy.{c}.multiarray._reconstruct" for c in ("core", "_core")}


class ArchiveUnpickler(pickle.Unpickler):
    """The archives hold dicts, bytes, lists and numpy arrays: a pickle naming any other global (os.system, exec) is
    refused before the name is looked up, so a crafted file cannot run code."""

    def find_class(self, module, name):
        if f"{module}.{name}" not in ARCHIVE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}, which the CIFAR archives never name")
        return super().find_class(module, name)


CIFAR = {  # folder in the official archive, train files, test files, label key
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def cifar(root, classes):
    """CIFAR-10/100 from the official python archives (downloaded by torchvision when online)."""
    folder, train_files, test_files, label_key = CIFAR[classes]
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(f"https://www.cs.toronto.edu/~kriz/cifar-{classes}-python.tar.gz", root)
        except Exception as e:
            how = f"put the extracted {folder}/ folder in {os.path.abspath(root)}/"
            raise BadInput(f"CIFAR-{classes} not found and not downloadable ({type(e).__name__}): {how}") from None
    split = {}
    for name, files in (("train", train_files), ("test", test_files)):
        xs, ys = [], []
        for f in (os.path.join(path, f) for f in files):
            with reading(f, f"delete {path} and it is downloaded again"), open(f, "rb") as fh:
                batch = ArchiveUnpickler(fh, encoding="bytes").load()  # the archive's own format: pickled numpy arrays
                xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
                ys += list(batch[label_key])
        split[name] = (torch.from_numpy(np.concatenate(xs)), torch.tensor(ys))
    return split, classes


def tinyimagenet(root):
    """Tiny-ImageNet as extracted (train/<wnid>/images/, val/images/, val/val_annotations.txt). Decoded at every load:
    about 110,000 64x64 JPEGs, seconds to a minute, small beside a training run, and no cache to go stale."""
    folder = os.path.join(root, "tiny-imagenet-200")
    if not os.path.exists(os.path.join(folder, "wnids.txt")):
        how = f"put the extracted tiny-imagenet-200/ folder in {os.path.abspath(root)}/"
        raise BadInput(f"Tiny-ImageNet not found: {how} (it cannot be downloaded by this tool)")
    wnids = open(os.path.join(folder, "wnids.txt")).read().split()
    label = {w: i for i, w in enumerate(wnids)}
    train = [(p, label[w]) for w in wnids for p in sorted(glob.glob(os.path.join(folder, "train", w, "images", "*")))]
    fix, annotations = "extract tiny-imagenet-200/ again", os.path.join(folder, "val", "val_annotations.txt")
    with reading(annotations, fix):  # lines of file, wnid, box
        test = [(os.path.join(folder, "val", "images", f), label[w]) for f, w, *_ in map(str.split, open(annotations))]
    from PIL import Image  # only Tiny-ImageNet needs it

    def rgb(path):  # an image file as a uint8 CHW tensor
        with reading(path, fix):
            return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)

    files = {"train": train, "test": test}
    split = {k: (torch.stack([rgb(p) for p, _ in v]), torch.tensor([c for _, c in v])) for k, v in files.items()}
    return split, len(wnids)


def synthetic(classes, shape, sizes, seed=0):
    """Random images whose class sets a fixed random pattern: learnable, no files needed. `sizes`: (train, test)."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, *shape, generator=gen)
    split = {}
    for name, size in zip(("train", "test"), sizes):
        y = torch.randint(0, classes, (size,), generator=gen)
        chunks = [
            (128 + 40 * patterns[c] + 50 * torch.randn(len(c), *shape, generator=gen)).clamp(0, 255).byte()
            for c in y.split(5000)
        ]  # 5,000 at a time: 50,000 float images at once would take 2 GB
        split[name] = (torch.cat(chunks), y)
    return split, classes


DATASETS = {
    "cifar10": lambda root: cifar(root, 10),
    "cifar100": lambda root: cifar(root, 100),
    "tinyimagenet": tinyimagenet,
    "fashionmnist": fashionmnist,
    "synthetic": lambda root: synthetic(10, (3, 16, 16), (1000, 200)),  # tiny, for tests
    "synthetic-cifar100": lambda root: synthetic(100, (3, 32, 32), (50000, 10000)),  # CIFAR-100's shape: for timing
}


def load(name, root="data", subset=None, seed=42, device="cpu"):
    """{'train'|'val'|'test': (uint8 images, labels) on device, 'classes', 'mean', 'std'}."""
    if name not in DATASETS:
        raise BadInput(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    path = pathlib.Path(os.path.abspath(root))
    made = [d for d in (path, *path.parents) if not d.exists()]  # what a failed download may create: removed if empty
    try:
        split, classes = DATASETS[name](root)
    except BadInput:
        for folder, _, _ in os.walk(made[-1], topdown=False) if made else ():
            if not os.listdir(folder):  # a file never is
                os.rmdir(folder)
        raise
    x, y = split["train"]
    mean = x.float().mean((0, 2, 3)) / 255
    std = (x.float() / 255).std((0, 2, 3))
    if subset:
        x, y = x[:subset], y[:subset]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm.tensor_split([len(x) // 10])  # 9:1
    splits = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": split["test"]}
    ds = {k: (images.to(device), labels.to(device)) for k, (images, labels) in splits.items()}
    return ds | {"classes": classes, "mean": mean.to(device), "std": std.to(device)}


def augment(x, gen):
    """Random crop with zero padding 4 and horizontal flip, per image, on the device (§4.1)."""
    n, _, h, w = x.shape
    dy, dx = (torch.randint(0, 9, (n,), generator=gen, device=x.device) for _ in range(2))
    crops = F.pad(x, (4, 4, 4, 4)).unfold(2, h, 1).unfold(3, w, 1)  # (n, c, 9, 9, h, w): every shifted crop, a view
    out = crops[torch.arange(n, device=x.device), :, dy, dx]
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def normalize(ds, x):
    x = (x.to(torch.get_default_dtype()) / 255 - ds["mean"].view(1, -1, 1, 1)) / ds["std"].view(1, -1, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)  # as the models' weights (models.get_model)


def batches(ds, split, batch_size, seed=None, augmented=False):
    """Yield normalized (x, y) batches of a split. With a seed: shuffled (and augmented if asked) by a
    generator seeded from it alone, so an epoch's order depends only on (seed, epoch), never on history."""
    x, y = ds[split]
    gen = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    order = torch.randperm(len(x), generator=gen, device=x.device) if gen else torch.arange(len(x), device=x.device)
    for idx in order.split(batch_size):
        yield normalize(ds, augment(x[idx], gen) if augmented else x[idx]), y[idx]


def balanced_batch(ds, per_class, seed):
    """`per_class` training images of every class, picked by a seeded shuffle, not augmented: GraSP's sample
    (alecwangcq/GraSP, pruner/GraSP.py: GraSP_fetch_data)."""
    x, y = ds["train"]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
    picks = torch.cat([order[y[order] == c][:per_class] for c in range(ds["classes"])])
    return normalize(ds, x[picks]), y[picks]


@torch.inference_mode()
def evaluate(model, ds, split, batch_size=1000, amp=None):
    """(accuracy, mean cross-entropy) of the model in eval mode over a whole split. In bf16 autocast on a GPU, as
    training is by default (amp=None: on CUDA only; True or False chooses); the CPU's default stays float32."""
    correct, loss, n = 0, 0.0, max(len(ds[split][1]), 1)
    amp = ds[split][0].is_cuda if amp is None else amp
    with models.mode(model, False):
        for x, y in batches(ds, split, batch_size):
            with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
                logits = model(x).to(torch.get_default_dtype())  # with amp bf16: the loss from float32 logits
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
    return correct / n, loss / n
