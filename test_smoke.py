"""Fast tests of the whole project, on CPU, offline: `python -m pytest -q test_smoke.py`."""

import csv
import itertools
import json
import os
import pickletools
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import models
import prune
import runs
import train
import tweaks
from cli import BadInput
from conftest import HERE, ONE_THREAD, run_script, write_cifar_file

TINY = "--dataset synthetic --arch resnet20 --epochs 2 --batch-size 64 --device cpu --scale-init-iters 5".split()


def cli(*args, cwd=HERE, script="train.py"):
    return run_script(script, *args, cwd=cwd)


def cli_in_process(tmp_path, *args, capsys=None):
    train.main(TINY + ["--runs", str(tmp_path / "runs"), *args])
    return capsys.readouterr().out if capsys else None


# ---------------------------------------------------------------- the project's layout
LAYERS = [["models"], ["cli"], ["prune", "tweaks", "data"], ["runs"], ["hessian"], ["landscape"], ["train"], ["grid"]]
LAYERS += [["bench", "report", "bill", "runner"]]  # the tools on top: grid.py declares the runs they read


def test_imports_run_one_way_down_the_layers():
    """Every project import in the non-test code (function-level ones too) goes to a strictly lower layer: no
    circle; models.py imports nothing of the project; data.py nothing above models.py."""
    import ast

    layer = {m: i for i, names in enumerate(LAYERS) for m in names}
    files = {f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("test_") and f != "conftest.py"}
    assert files == set(layer), "a module is missing from LAYERS"
    for mod in files:
        tree = ast.parse(open(os.path.join(HERE, mod + ".py")).read())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in (n.split(".")[0] for n in names):
                assert name not in layer or layer[name] < layer[mod], f"{mod}.py imports {name} (a layer up or level)"


# ---------------------------------------------------------------- models
def test_resnet18_cifar100_has_the_standard_size():
    assert sum(p.numel() for p in models.get_model("resnet18", 100).parameters()) == 11_220_132


@pytest.mark.parametrize("arch", list(models.ARCHS))
def test_every_arch_takes_any_input_size_and_channels(arch):
    for channels, size in ((1, 28), (3, 32), (3, 64)):
        model = models.get_model(arch, 7, channels).eval()
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)
        assert hasattr(model, "layer1") and hasattr(model, "layer3")


# ---------------------------------------------------------------- pruning
def test_imp_level_mapping():
    assert [prune.imp_level(s) for s in (0.0, 0.2, 0.36, 0.91, 0.97)] == [0, 1, 2, 11, 16]


def test_imp_density_after_k_levels_is_0_8_to_the_k():
    model = models.get_model("resnet20", 10)
    weights, mask = prune.prunable(model), prune.ones_mask(model)
    total = sum(m.numel() for m in mask.values())
    for level in range(1, 7):
        new = prune.imp_step(weights, mask)
        assert all((new[n] <= mask[n]).all() for n in mask)  # only ever removes
        mask = new
        density = sum(int(m.sum()) for m in mask.values()) / total
        assert abs(density - 0.8**level) < 1e-5


def test_magnitude_pruning_is_global_and_keeps_the_largest():
    weights = {"a": torch.tensor([[0.1, -5.0], [0.3, 0.2]]), "b": torch.tensor([[4.0, -0.05, 2.0]])}
    mask = prune.omp(weights, sparsity=4 / 7)  # keep 3 of 7
    assert mask["a"].tolist() == [[False, True], [False, False]]
    assert mask["b"].tolist() == [[True, False, True]]


@pytest.mark.parametrize("method", ["omp", "random"])
def test_one_shot_pruners_hit_the_sparsity_exactly(method):
    weights = prune.prunable(models.get_model("resnet20", 10))
    total = sum(w.numel() for w in weights.values())
    mask = prune.omp(weights, 0.9) if method == "omp" else prune.random_prune(weights, 0.9, seed=1)
    assert sum(int(m.sum()) for m in mask.values()) == round(total * 0.1)


def test_check_mask_refuses_foreign_masks():
    model = models.get_model("resnet20", 10)
    good = prune.ones_mask(model)
    assert runs.check_mask(good, model, "m") is good
    with pytest.raises(BadInput, match="mask is for another model .*; pass the mask.pt of a run of this --arch"):
        runs.check_mask(prune.ones_mask(models.get_model("vgg16", 10)), model, "m")
    with pytest.raises(BadInput):
        runs.check_mask({n: m.float() for n, m in good.items()}, model, "m")
    with pytest.raises(BadInput):
        runs.check_mask(torch.zeros(3), model, "m")


# ---------------------------------------------------------------- tweaks
def test_swish_and_mish_leave_no_relu_and_no_new_parameter():
    for tweak, act in ((tweaks.swish, nn.SiLU), (tweaks.mish, nn.Mish)):
        model = models.get_model("resnet18", 10)
        before = sum(p.numel() for p in model.parameters())
        tweak(model)
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
        assert any(isinstance(m, act) for m in model.modules())
        assert sum(p.numel() for p in model.parameters()) == before


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg16", "mobilenet"])
def test_skip_adds_no_parameter_and_keeps_sparsity(arch):
    torch.manual_seed(0)
    model = models.get_model(arch, 10).eval()
    mask = prune.random_prune(prune.prunable(model), 0.9, seed=0)
    prune.apply_mask(model, mask)
    x = torch.randn(2, 3, 32, 32)
    before_out, before_params, before_sparsity = (
        model(x),
        list(model.parameters()),
        prune.sparsity(prune.prunable(model).values()),
    )
    tweaks.skip(model)
    threes = [m for m in model.modules() if isinstance(m, models.ConvBN) and m.conv.kernel_size == (3, 3)]
    assert all(m.skip is not None for m in threes[1:]) and threes[0].skip is None  # every 3x3 but the stem
    assert list(model.parameters()) == before_params
    assert prune.sparsity(prune.prunable(model).values()) == before_sparsity
    assert not torch.allclose(model(x), before_out)  # and it does change the function


def test_label_smoothing_is_the_papers_formula():
    logits, y, alpha, k = torch.randn(8, 5), torch.randint(0, 5, (8,)), 0.1, 5
    target = F.one_hot(y, k) * (1 - alpha) + alpha / k  # y_k^LS = y_k (1 - alpha) + alpha / K  (§3.2)
    by_hand = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(tweaks.make_loss(ls=alpha)(logits, None, y), by_hand)


def test_kd_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(16, 10)
    assert tweaks.kd_loss(logits, logits.clone(), 4.0).abs() < 1e-6
    assert tweaks.kd_loss(logits, torch.randn(16, 10), 4.0) > 0.01
    teacher = nn.Linear(3, 10)
    loss = tweaks.make_loss(teacher=teacher, kd_alpha=1.0)  # pure distillation from itself
    x = torch.randn(4, 3)
    assert loss(teacher(x), x, torch.zeros(4, dtype=torch.long)).abs() < 1e-6


def post_step_loss(model, mask, x, y, eta=0.1):
    """The loss after one normalized SGD step of size eta (what scale_init minimizes, here with S = S~ = x)."""
    params = dict(model.named_parameters())
    loss = F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    grads = [g * mask[n] if n in mask else g for n, g in zip(params, grads)]
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    stepped = {n: p - eta * g / norm for (n, p), g in zip(params.items(), grads)}
    return float(F.cross_entropy(torch.func.functional_call(model, stepped, (x,)), y).detach())


def test_scale_init_keeps_zeros_and_lowers_the_post_step_loss():
    torch.manual_seed(0)
    ds = data.load("synthetic")
    model = models.get_model("resnet20", 10, 3).train()
    mask = prune.omp(prune.prunable(model), 0.8)
    prune.apply_mask(model, mask)
    x, y = next(data.batches(ds, "train", 64, seed=0))
    before = post_step_loss(model, mask, x, y)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    scales = tweaks.scale_init(model, mask, itertools.repeat((x, y)), iters=30, lr=0.05, gamma=100.0)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # BN statistics untouched
    after = post_step_loss(model, mask, x, y)
    assert after < before - 1e-3, (before, after)
    assert min(v for n, v in scales.items() if n.endswith("weight")) >= 0.01 - 1e-6 and max(scales.values()) != 1.0
    assert "fc.bias" in scales and min(scales.values()) >= 0 and "layer1.0.unit1.bn.bias" not in scales  # zero at init
    weights = prune.prunable(model)
    assert all((weights[n][~m] == 0).all() for n, m in mask.items())


def test_gradinit_objective_gradient_is_first_order_as_the_reference():
    """One iteration's scale gradient, against central finite differences of the same objective computed apart:
    with the step eta*g/|g| held at its value for the current scales (objective), or moving with them (constraint)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    mask = {"0.weight": torch.rand(6, 4) < 0.5}
    gen = torch.Generator().manual_seed(1)
    first, second, fresh = [
        (torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (5,), generator=gen))
        for _ in range(3)
    ]
    x, y = torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])
    x2, y2 = torch.cat([first[0], fresh[0]]), torch.cat([first[1], fresh[1]])
    alpha = {n: torch.tensor(0.5 + 0.2 * i, dtype=torch.float64) for i, n in enumerate(params)}

    def loss(a, xs, ys, step=None):
        return F.cross_entropy(
            torch.func.functional_call(
                model, {n: p * a[n] - (0 if step is None else step[n]) for n, p in params.items()}, (xs,)
            ),
            ys,
        )

    def step_and_norm(a):  # eta * g / |g| and |g|, g the masked gradient on S at scales a
        w = {n: (p * a[n]).requires_grad_() for n, p in params.items()}
        g = torch.autograd.grad(F.cross_entropy(torch.func.functional_call(model, w, (x,)), y), list(w.values()))
        g = {n: gi * mask[n] if n in mask else gi for n, gi in zip(w, g)}
        norm = torch.sqrt(sum(gi.pow(2).sum() for gi in g.values()))
        return {n: 0.1 * gi / norm for n, gi in g.items()}, norm

    fixed, norm = step_and_norm(alpha)
    for gamma, objective in ((1e9, lambda a: loss(a, x2, y2, fixed) / 0.1), (1e-9, lambda a: step_and_norm(a)[1])):
        scales = {n: a.clone().requires_grad_() for n, a in alpha.items()}
        value, branch = tweaks.gradinit_objective(model, params, scales, mask, first, second, lambda: fresh, 0.1, gamma)
        assert branch == (gamma < 1) and value.item() == pytest.approx(objective(alpha).item(), rel=1e-9)
        auto = torch.autograd.grad(value, list(scales.values()))
        for (n, a), g in zip(alpha.items(), auto):
            h = 1e-6
            up, down = dict(alpha, **{n: a + h}), dict(alpha, **{n: a - h})
            assert float(g) == pytest.approx(float(objective(up) - objective(down)) / (2 * h), rel=1e-5, abs=1e-8), n


# ---------------------------------------------------------------- data
def test_augment_is_a_padded_crop_and_maybe_a_flip():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = data.augment(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (4, 4, 4, 4))
    flips, shifts = 0, set()
    for i in range(len(x)):
        hits = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (0, 1)
            if torch.equal(
                out[i], padded[i, :, dy : dy + 8, dx : dx + 8].flip(2) if f else padded[i, :, dy : dy + 8, dx : dx + 8]
            )
        ]
        assert hits, f"image {i} is not a crop of its padded original"
        flips += hits[0][2]
        shifts.add(hits[0][:2])
    assert 16 < flips < 48 and len(shifts) > 20  # both flips and many offsets occur


def test_split_is_seeded_9_to_1_and_disjoint():
    a, b = data.load("synthetic", seed=1), data.load("synthetic", seed=1)
    assert torch.equal(a["val"][0], b["val"][0]) and len(a["val"][0]) * 9 == len(a["train"][0])
    c = data.load("synthetic", seed=2)
    assert not torch.equal(a["val"][0], c["val"][0])


def test_cifar_and_tinyimagenet_loaders_read_their_standard_layouts(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 20), ("test", 10)):
        batch = {  # the official files' keys and types: Python ints in the lists, Python 2 str (read as bytes)
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{name}ing batch 1 of 1".encode(),
            b"fine_labels": [int(c) for c in rng.integers(0, 100, n)],
            b"coarse_labels": [int(c) for c in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        write_cifar_file(folder / name, batch)
    pickled = {arg for op, arg, _ in pickletools.genops((folder / "train").read_bytes()) if op.name == "GLOBAL"}
    assert pickled == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}  # the official files'
    ds = data.load("cifar100", str(tmp_path), seed=0)
    assert ds["train"][0].shape == (18, 3, 32, 32) and ds["test"][0].shape == (10, 3, 32, 32)
    assert ds["classes"] == 100 and ds["train"][0].dtype == torch.uint8
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids))
    lines = []
    for k, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        for j in range(5):
            Image.new("RGB", (64, 64), (k * 100, j, 0)).save(root / "train" / w / "images" / f"{w}_{j}.JPEG")
        Image.new("RGB", (64, 64), (k * 100, 0, 0)).save(root / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines))
    ds = data.load("tinyimagenet", str(tmp_path), seed=0)
    assert ds["classes"] == 2 and ds["test"][1].tolist() == [0, 1] and ds["train"][0].shape == (9, 3, 64, 64)
    red = ds["train"][0][ds["train"][1] == 1][:, 0].int()  # class n02 was drawn with red 100 (JPEG: nearly)
    assert (red - 100).abs().max() <= 3


def test_fashionmnist_reads_the_debian_files_when_present():
    if not os.path.exists(data.DEBIAN_FASHION_MNIST):
        pytest.skip("dataset-fashion-mnist is not installed")
    ds = data.load("fashionmnist", subset=1000)
    assert ds["train"][0].shape == (900, 1, 28, 28) and ds["test"][0].shape == (10000, 1, 28, 28)
    assert abs(float(ds["mean"]) - 0.286) < 0.01


# ---------------------------------------------------------------- the whole loop
def test_cli_draws_spends_and_reuses_the_draw(tmp_path, capsys):
    out = tmp_path / "spend"
    log = cli_in_process(tmp_path, "--sparsity", "0.5", "--at", "--trt", "--out", str(out), capsys=capsys)
    assert log.count("=== draw") == 3  # levels 0, 1, 2 are trained to draw level 3's mask
    results = json.loads((out / "results.json").read_text())
    for key in ("test_acc", "best_val_acc", "sparsity", "params_total", "params_nonzero", "seconds", "device"):
        assert key in results
    assert abs(results["sparsity"] - (1 - 0.8**3)) < 1e-3  # measured from the weights
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    model, mask = runs.load(out / "model.pt"), runs.load(out / "mask.pt")
    assert set(mask) <= set(model)
    assert all((model[n][~m] == 0).all() for n, m in mask.items())  # pruned weights stayed exactly zero
    assert any((model[n][m] != 0).any() for n, m in mask.items())
    # another variant at the same sparsity draws nothing new; vanilla LTH reuses the draw's own training
    draw_dir = next((tmp_path / "runs" / "draws").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in draw_dir.rglob("*") if p.is_file()}
    log = cli_in_process(tmp_path, "--sparsity", "0.5", "--ls", "0.1", capsys=capsys)
    assert "=== draw" not in log and "=== spend" in log
    log = cli_in_process(tmp_path, "--sparsity", "0.5", capsys=capsys)
    assert "=== draw imp_03" in log and "=== spend" not in log
    assert [p for p, t in stamps.items() if p.stat().st_mtime_ns != t] == []  # nothing in the draw rewritten
    # asking for a higher sparsity trains only the levels it lacks
    log = cli_in_process(tmp_path, "--sparsity", "0.6", "--skip", capsys=capsys)
    assert "=== draw" not in log  # level 4's mask comes from level 3's training, done just above
    log = cli_in_process(tmp_path, "--sparsity", "0.5", "--at", "--trt", "--out", str(out), capsys=capsys)
    assert log.startswith("already finished")


def test_rewind_omp_random_kd_and_user_masks_spend(tmp_path, capsys):
    cli_in_process(
        tmp_path,
        "--sparsity",
        "0.8",
        "--prune",
        "omp",
        "--rewind-epoch",
        "1",
        "--kd",
        "--out",
        str(tmp_path / "a"),
        capsys=capsys,
    )
    draw_dir = next((tmp_path / "runs" / "draws").iterdir())
    assert (draw_dir / "imp_00" / "epoch1.pt").exists() and (draw_dir / "omp_0.8000" / "mask.pt").exists()
    args = train.parse_args(TINY + ["--runs", str(tmp_path / "runs"), "--at", "--ls", "0.1", "--hessian-every", "1"])
    vanilla = train.untweaked(args)  # what the draw trains with: no tweak, no Fig. A11 Hessian records
    assert not (vanilla.skip or vanilla.swish or vanilla.ls or vanilla.hessian_every) and args.hessian_every == 1
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert abs(res["sparsity"] - 0.8) < 1e-4 and json.loads((tmp_path / "a" / "config.json").read_text())["kd"]
    cli_in_process(tmp_path, "--sparsity", "0.7", "--prune", "random", "--out", str(tmp_path / "b"), capsys=capsys)
    assert abs(json.loads((tmp_path / "b" / "results.json").read_text())["sparsity"] - 0.7) < 1e-4
    cli_in_process(
        tmp_path, "--mask", str(tmp_path / "b" / "mask.pt"), "--swish", "--out", str(tmp_path / "c"), capsys=capsys
    )
    assert torch.equal(
        torch.cat([m.flatten() for m in runs.load(tmp_path / "c" / "mask.pt").values()]),
        torch.cat([m.flatten() for m in runs.load(tmp_path / "b" / "mask.pt").values()]),
    )


# ---------------------------------------------------------------- bad input
def bad(tmp_path, *args):
    r = cli(*TINY, "--runs", str(tmp_path / "runs"), *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_convs_are_pruned_by_default_and_the_classifier_only_with_the_flag(tmp_path, capsys):
    """As the authors' code: every conv weight, globally; the classifier stays dense and is counted apart."""
    common = ["--prune", "omp", "--sparsity", "0.5", "--epochs", "1", "--subset", "300", "--ls", "0.1"]
    cli_in_process(tmp_path, *common, "--out", str(tmp_path / "conv"))
    cli_in_process(tmp_path, *common, "--prune-classifier", "--out", str(tmp_path / "all"))
    conv, every = (runs.load(tmp_path / d / "mask.pt") for d in ("conv", "all"))
    assert "fc.weight" not in conv and set(every) == set(conv) | {"fc.weight"}
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("conv", "all"))
    assert abs(a["sparsity"] - 0.5) < 1e-3 and a["unmasked_weights"] == 64 * 10 and a["sparsity_all"] < a["sparsity"]
    assert abs(b["sparsity"] - 0.5) < 1e-3 and b["unmasked_weights"] == 0 and b["sparsity_all"] == b["sparsity"]
    assert a["pruned_nonzero"] == b["pruned_nonzero"] == 0
    assert len(os.listdir(tmp_path / "runs" / "draws")) == 2  # the choice is part of the draw's key
    cli_in_process(tmp_path, *common, "--skip-proj", "--out", str(tmp_path / "proj"))  # the authors' 1x1 skip
    c = json.loads((tmp_path / "proj" / "results.json").read_text())
    proj = sum(
        p.numel()
        for n, p in runs.load_run(str(tmp_path / "proj"))[0].named_parameters()
        if ".skip." in n and p.dim() == 4
    )
    assert proj > 0 and c["unmasked_weights"] == 640 + proj and c["params_total"] > a["params_total"] + proj
    assert c["sparsity"] == a["sparsity"] and c["sparsity_all"] < a["sparsity_all"] and c["pruned_nonzero"] == 0


def test_bf16_autocast_on_cpu_trains_a_sparse_ticket_with_every_tweak(tmp_path, capsys):
    """--amp on CPU takes the path a GPU takes by default (bf16 autocast): AT + TRT + KD finish with finite losses,
    pruned weights exactly zero and results.json written, the Hessian (float32) runs on the result, and the
    weights differ from the same spend in float32 (so autocast was really on)."""
    import hessian

    spend = ["--prune", "omp", "--sparsity", "0.8", "--at", "--trt", "--kd", "--epochs", "1", "--subset", "400"]
    cli_in_process(tmp_path, *spend, "--amp", "--out", str(tmp_path / "bf16"))
    cli_in_process(tmp_path, *spend, "--out", str(tmp_path / "fp32"))
    out = tmp_path / "bf16"
    assert json.loads((out / "results.json").read_text())["sparsity"] > 0.79
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    model, mask, ds, _ = runs.load_run(str(out))
    weights = dict(model.named_parameters())
    assert all(weights[n][~m].abs().sum() == 0 for n, m in mask.items())
    value, _, _ = hessian.top_eigen(model, F.cross_entropy, hessian.fixed_batches(ds, 1, 32), iters=5, masks=mask)
    assert np.isfinite(value)
    fp32 = runs.load(tmp_path / "fp32" / "model.pt")
    assert any(not torch.equal(fp32[n], p.detach()) for n, p in weights.items())


def test_bad_input_gets_one_line_and_exit_code_2(tmp_path):
    assert "sparsity" in bad(tmp_path, "--sparsity", "1.0")
    assert "sparsity" in bad(tmp_path, "--sparsity", "-0.1")
    assert "arch" in bad(tmp_path, "--arch", "resnet1000")
    assert "dataset" in bad(tmp_path, "--dataset", "imagenet22k")
    assert "rewind" in bad(tmp_path, "--rewind-epoch", "5")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    assert "not a mask" in bad(tmp_path, "--mask", str(tmp_path / "tensor.pt"))
    torch.save(prune.ones_mask(models.get_model("vgg16", 10)), tmp_path / "vgg.pt")
    assert "another model" in bad(tmp_path, "--mask", str(tmp_path / "vgg.pt"))
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    assert "checkpoint" in bad(tmp_path, "--mask", str(tmp_path / "junk.pt"))
    torch.save({"x": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled object, refused unread
    assert "checkpoint" in bad(tmp_path, "--mask", str(tmp_path / "pickled.pt"))
    assert "CIFAR-10" in bad(tmp_path, "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_a_run_folder_of_another_config_is_refused_untouched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"something": "else"}))
    (out / "model.pt").write_bytes(b"precious")
    assert "another config" in bad(tmp_path, "--out", str(out))
    assert (out / "model.pt").read_bytes() == b"precious"
    assert json.loads((out / "config.json").read_text()) == {"something": "else"}


# ---------------------------------------------------------------- never lose a run
def test_a_run_killed_at_a_random_moment_resumes_to_the_same_result(tmp_path):
    import random
    import signal
    import time

    args = [*TINY, "--epochs", "4", "--sparsity", "0.36", "--skip", "--deterministic"]
    clean = cli(*args, "--runs", str(tmp_path / "clean"), "--out", str(tmp_path / "clean_run"))  # one thread, as below
    assert clean.returncode == 0, clean.stderr
    cmd = [
        sys.executable,
        os.path.join(HERE, "train.py"),
        *args,
        "--runs",
        str(tmp_path / "k"),
        "--out",
        str(tmp_path / "killed_run"),
    ]
    kills, rng = 0, random.Random()
    for attempt in range(3):  # killed twice, each time at a random moment after it saved an epoch; then left to finish
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
        if attempt == 2:
            break
        while proc.poll() is None and not [
            p for p in (tmp_path / "k").rglob("checkpoint.pt") if p.stat().st_mtime > started
        ]:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert proc.wait() == 0
    assert kills >= 1 and (tmp_path / "killed_run" / "results.json").exists()
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("clean_run", "killed_run"))
    for key in ("test_acc", "final_test_acc", "best_val_acc", "best_epoch", "sparsity", "params_nonzero"):
        assert a[key] == b[key], key
    ma, mb = runs.load(tmp_path / "clean_run" / "model.pt"), runs.load(tmp_path / "killed_run" / "model.pt")
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert not list((tmp_path / "k").rglob("checkpoint.pt"))  # finished runs keep no checkpoint
    assert not list((tmp_path / "k").rglob(".tmp-*"))  # and no half-written file is left in use


def test_divergence_stops_with_exit_code_3(tmp_path):
    r = cli(*TINY, "--lr", "1e30", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "run"))
    assert r.returncode == 3 and "diverged" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert "another process" in bad(tmp_path, "--out", str(out))


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_every_pruner_spends_from_the_cli(tmp_path, capsys, method):
    cli_in_process(
        tmp_path,
        "--epochs",
        "1",
        "--sparsity",
        "0.9",
        "--prune",
        method,
        "--at",
        "--out",
        str(tmp_path / "run"),
        capsys=capsys,
    )
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert abs(res["sparsity"] - 0.9) < 1e-4


# ---------------------------------------------------------------- reproduction and report
def fake_run(root, seed, sparsity, acc, **tweak):
    cfg = dict(
        dataset="cifar100",
        arch="resnet18",
        prune="imp",
        sparsity=sparsity,
        seed=seed,
        skip=False,
        swish=False,
        mish=False,
        scale_init=False,
        ls=0.0,
        kd=False,
        rewind_epoch=None,
        mask=None,
    )
    cfg.update(tweak)
    folder = root / f"run_{sparsity}_{seed}_{'_'.join(sorted(tweak)) or 'lth'}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "results.json").write_text(json.dumps(dict(test_acc=acc, sparsity=sparsity + 0.001)))


def test_report_builds_tables_and_plots_and_shows_missing_runs(tmp_path):
    import report

    for seed, noise in ((42, 0.0), (1099, 0.01)):
        fake_run(tmp_path, seed, 0.2, 0.70 + noise)
        fake_run(tmp_path, seed, 0.2, 0.72 + noise, skip=True, swish=True)
        fake_run(tmp_path, seed, 0.914, 0.60 + noise)
    fake_run(tmp_path, 42, 0.914, 0.65, skip=True, swish=True, scale_init=True, ls=0.1)  # one seed only
    (tmp_path / "draws" / "imp_01").mkdir(parents=True)  # a draw's folder without config: not a spend
    (tmp_path / "draws" / "imp_01" / "results.json").write_text(json.dumps(dict(test_acc=0.0, sparsity=0.2)))
    report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert "| sparsity | LTH | LTH+AT | LTH+AT+TRT | seeds |" in rows
    assert "| 20.1% | 70.50 ± 0.71 | 72.50 ± 0.71 (+2.00 [+2.00, +2.00]) | missing | 2 |" in rows
    assert "| 91.5% | 60.50 ± 0.71 | missing | 65.00 (+5.00) | 2 |" in rows  # paired: seed 42's LTH, 60.00
    assert "- 91.5%: LTH+AT+TRT − LTH: +5.00 pp, 1 seed" in md.splitlines()
    assert (tmp_path / "rep" / "acc_cifar100_resnet18_imp.png").stat().st_size > 10_000
    csv_rows = (tmp_path / "rep" / "acc_cifar100_resnet18_imp.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 7 and "0.914,LTH+AT+TRT,42,91.500,65.000" in csv_rows


def test_report_renders_every_part_from_known_numbers(tmp_path):
    """Fabricated runs with known numbers in; each part's cells, PNG and .csv out (run_all.sh's --parts)."""
    import report

    tweaks = dict(
        lth={},
        skip=dict(skip=True),
        swish=dict(swish=True),
        mish=dict(mish=True),
        ls=dict(ls=0.1),
        scale=dict(scale_init=True),
        at=dict(skip=True, swish=True),
        trt=dict(scale_init=True, ls=0.1),
        attrt=dict(skip=True, swish=True, scale_init=True, ls=0.1),
        kd=dict(skip=True, swish=True, scale_init=True, kd=True),
        proj=dict(skip_proj=True, swish=True),
        rewind=dict(rewind_epoch=33),
        atrewind=dict(skip=True, swish=True, rewind_epoch=33),
    )
    for seed in (42, 1099):
        for s in (0.0, 0.2, 0.914):
            for i, (name, tweak) in enumerate(tweaks.items()):
                fake_run(tmp_path, seed, s, 0.5 + i / 100 + seed / 1e5, **tweak)
                folder = tmp_path / f"run_{s}_{seed}_{'_'.join(sorted(tweak)) or 'lth'}"
                res = json.loads((folder / "results.json").read_text())
                res.update(
                    sparsity_all=s * 0.8,
                    unmasked_weights=1000 * (name == "proj"),
                    activation_sparsity=dict(layer1=0.3 - 0.29 * (name == "swish"), layer2=0.5),
                    activation_zeros=dict(layer1=0.1, layer2=0.2),
                )
                (folder / "results.json").write_text(json.dumps(res))
                if name in ("lth", "swish", "mish", "attrt"):  # hessian.py's output: Fig. 2, A13
                    (folder / "hessian.json").write_text(json.dumps(dict(top_eigenvalue=100 + i + s)))
        fake_run(tmp_path / "omp", seed, 0.914, 0.6, prune="omp")
        fake_run(tmp_path / "omp", seed, 0.914, 0.62, prune="omp", skip=True, swish=True)
        fake_run(tmp_path / "grasp", seed, 0.914, 0.4, prune="grasp")  # Table A4: a pruner at init beside OMP
    a11 = tmp_path / "a11"  # Fig. A11: a run with --hessian-every 1, 4 epochs, lr drops after epochs 2 and 3
    fake_run(a11, 42, 0.914, 0.61, skip=True, swish=True, scale_init=True, ls=0.1)
    folder = next(a11.iterdir())
    res = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps(dict(res, best_epoch=3, best_val_acc=0.6)))
    (folder / "metrics.csv").write_text(
        "epoch,train_acc,val_acc,lr,top_eigenvalue\n"
        + "\n".join(
            f"{e},{0.1 * e},{0.1 * e + 0.2},{0.1 * 0.1 ** (e > 2) * 0.1 ** (e > 3)},{500 / e}" for e in range(1, 5)
        )
        + "\n"
    )
    out = tmp_path / "rep"
    out.mkdir()
    (out / "fig8_imp_s0.914_seed42.png").write_bytes(b"a landscape.py plot")
    report.main([str(tmp_path), "--out", str(out)])
    md = (out / "report.md").read_text()
    for part in ("fig1", "fig2", "fig6", "fig7", "fig9", "figA13"):
        assert f"![{part}]({part}_cifar100_resnet18_imp.png)" in md, part
        assert (out / f"{part}_cifar100_resnet18_imp.png").stat().st_size > 10_000
    assert (out / "figA12_cifar100_resnet18_one-shot.png").exists() and not (
        out / "figA12_cifar100_resnet18_imp.png"
    ).exists()
    assert "| sparsity | LTH | LTH+AT | GraSP | seeds |" in md and "grasp masks" not in md
    assert "![](fig8_imp_s0.914_seed42.png)" in md  # landscape.py's plots are linked
    fig2 = (out / "fig2_cifar100_resnet18_imp.csv").read_text().splitlines()  # LTH (i=0), Swish (2), Mish (3)
    assert (
        len(fig2) == 1 + 3 * 3 * 2
        and "0.914,LTH+Mish,42,91.500,103.914" in fig2
        and "0.2,LTH,1099,20.100,100.200" in fig2
    )
    fig1 = (out / "fig1_cifar100_resnet18_imp.csv").read_text().splitlines()
    assert len(fig1) == len(set(fig1)) == 1 + 5 * 3 * 2  # LTH is in each of the four panels: its rows once
    a13 = (out / "figA13_cifar100_resnet18_imp.csv").read_text().splitlines()
    assert len(a13) == 1 + 4 * 2 and "0.914,LTH+AT+TRT,42,91.500,108.914" in a13
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert "| 20.1% | 30.00 ± 0.00 | 1.00 ± 0.00 | 50.00 ± 0.00 | 50.00 ± 0.00 | 2 |" in rows  # Table A1: layer1
    assert (
        "| 91.5% | 10.00 ± 0.00 | 10.00 ± 0.00 | 20.00 ± 0.00 | 20.00 ± 0.00 | 2 |" in rows
    )  # ReLU, Swish; layer2; zeros
    assert (
        "| 91.5% | 56.57 ± 0.75 | 73.12 ± 0.00 | 0.00 ± 0.00 | 60.57 ± 0.75 | 73.12 ± 0.00 | 1,000.00 ± 0.00 | 2 |"
        in rows
    )  # the skip table: accuracy, sparsity of all trained weights, weights outside the mask
    curve = (out / "figA11_cifar100_resnet18_imp_seed42.csv").read_text().splitlines()
    assert curve[1:] == [f"LTH+AT+TRT,42,{e},{0.1 * e},{0.1 * e + 0.2},{500 / e}" for e in range(1, 5)]
    assert "| 91.5% | 50.57 ± 0.75 |" in md and "61.00" not in md  # A11's run is not a third seed of the tables


def test_the_papers_numbers_are_read_at_their_imp_level():
    """paper.csv's columns are IMP levels 0..16, headed by the paper's rounded sparsities: "95" is level 14 (95.6%),
    "96" level 15 (96.5%); a sparsity no level is near (a one-shot 95%) has no paper gain."""
    import report

    lth, at_trt = report.PAPER["LTH"], report.PAPER["LTH+AT+TRT"]
    assert (lth[0.956], lth[0.965], lth[0.914]) == (69.43, 69.57, 71.12) and at_trt[0.914] == 74.23
    assert report.paper_gain("LTH+AT+TRT", 95.62) == (74.87 - 69.43, at_trt[0.956] - 69.43)
    assert report.paper_gain("LTH+AT+TRT", 91.41) == (74.87 - 71.12, 74.23 - 71.12)
    assert report.paper_gain("LTH+AT+TRT", 95.0) is None


def test_paired_differences_and_their_t_interval_have_the_known_values(tmp_path):
    """Student t quantiles from the printed tables, and a paired interval worked by hand: differences 1, 1.5, 0 over
    3 seeds: mean 0.8333, s_d = 0.7638, half-width t(0.975, 2) * s_d / sqrt(3) = 4.3027 * 0.4410 = 1.8973."""
    import report

    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert abs(report.student_t.ppf(0.975, df) - t) < 1e-4, df
    assert report.differences({1: 75.0, 2: 76.0, 3: 74.0, 4: 70.0}, {1: 74.0, 2: 74.5, 3: 74.0, 5: 80.0}) == [1, 1.5, 0]
    mean, half, n = report.paired([1, 1.5, 0])
    assert n == 3 and abs(mean - 0.8333) < 1e-4 and abs(half - 1.8973) < 1e-4
    assert report.paired([2.0]) == (2.0, None, 1) and not report.paired([])
    for seed, (lth, at) in enumerate(
        ((74.0, 75.0), (74.5, 76.0), (74.0, 74.0)), start=1
    ):  # the same, through the report
        fake_run(tmp_path, seed, 0.914, lth / 100)
        fake_run(tmp_path, seed, 0.914, at / 100, skip=True, swish=True)
    report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    assert "| 91.5% | 74.17 ± 0.29 | 75.00 ± 1.00 (+0.83 [-1.06, +2.73]) | 3 |" in md
    assert "- 91.5%: LTH+AT − LTH: +0.83 [-1.06, +2.73] pp, 3 seeds" in md


def test_results_are_report_py_on_the_committed_records(tmp_path, monkeypatch):
    """results/ is exactly what `python report.py runs/study --out results` writes from runs/study's records: the
    same files, and report.md and every figure's .csv byte for byte (the PNGs by name: renderers differ). RESULTS.md
    quotes report.md's tables row by row (the cost table aside: runner times) and shows results/'s figures."""
    import report

    monkeypatch.chdir(HERE)
    report.main(["runs/study", "--out", str(tmp_path)])
    made = sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock")
    kept = sorted(name for name in os.listdir("results") if name != ".lock")
    assert made == kept, "rebuild results/: python report.py runs/study --out results"
    for name in made:
        if not name.endswith(".png"):
            assert (tmp_path / name).read_bytes() == open(os.path.join("results", name), "rb").read(), name
    report_md, results_md = (tmp_path / "report.md").read_text(), open("RESULTS.md").read()
    for table in re.findall(r"(?:^\|.*\n)+", results_md, re.M):  # every table but the cost's: report.md's rows
        if not table.startswith("| cost"):
            assert all(row in report_md.splitlines() for row in table.splitlines()), table
    for png in re.findall(r"\]\(results/([^)]+)\)", results_md):
        assert png in made, png


def run_all(*a):
    """./run_all.sh with these arguments: the completed process, its output as text."""
    return subprocess.run(["bash", os.path.join(HERE, "run_all.sh"), *a], capture_output=True, text=True)


def test_run_all_lists_the_full_reproduction():
    r, listed = run_all("--dry-run"), run_all("--list")
    assert r.returncode == listed.returncode == 0, r.stderr + listed.stderr
    jobs = listed.stdout.splitlines()
    assert not any(line.startswith("#") for line in jobs) and all(
        line.startswith("# ") for line in r.stdout.splitlines()
    )
    assert len(jobs) == len(set(jobs)) and len({j.split("--out ")[1] for j in jobs}) == len(jobs)  # one folder each
    attrt = [j for j in jobs if "--arch resnet18" in j and "--dataset cifar100" in j and "--at --trt" in j]
    attrt = [j for j in attrt if "--seed 1099" in j and not re.search("rewind|prune|hessian", j)]
    assert len(attrt) == 17  # AT+TRT: dense, 16 IMP levels
    assert "GPU-hours" in r.stdout
    for job in jobs[:50]:
        train.parse_args(job.split())  # every job line is a valid train.py command line
    parts = dict(
        re.findall(r"^# (\w+): (\d+) jobs: .*, \d+ GPU-hours one run at a time \(assumed by FLOPs\)$", r.stdout, re.M)
    )
    assert f"# in all: {len(jobs)} jobs: " in r.stdout
    all_parts = "a2 a3 a4 fig1 fig2 fig4 fig5 fig6 fig7 fig8 fig9 fig10 figA11 figA12 figA13 tableA1 skipproj headline"
    assert list(parts) == all_parts.split() and parts["headline"] == str(3 * 2 * 4)  # seeds x levels 11, 16 x variants
    assert parts["fig1"] == parts["a2"] == str(3 * 17 * 5)  # seeds x levels x variants
    assert parts["figA12"] == str(3 * 17 * 4)
    assert (parts["fig8"], parts["fig10"], parts["figA13"]) == (str(3 * 4), str(3 * 2), str(3 * 9))  # seeds x variants
    assert "# figA11: 6 jobs: 6 trained spends + 3 draws of 36 trainings" in r.stdout  # IMP levels 0..11 of 3 draws
    a11 = [j for j in jobs if "--hessian-every 1" in j]  # Fig. A11's re-trainings have folders of their own
    assert len(a11) == 6 and all("--sparsity 0.914" in j and "hessianevery1/seed" in j for j in a11)
    assert all("--keep-epochs 5" in j for j in jobs if "--sparsity 0.914" in j)  # Fig. 4 reads their epoch-5 weights
    bad = run_all("--parts", "fig3", "--list")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown part fig3") and not bad.stdout


def test_run_all_options_in_any_order_and_several_runs_per_gpu():
    a = run_all("--seeds", "7", "--per-gpu", "3", "--list")
    b = run_all("--list", "--per-gpu", "3", "--seeds", "7")
    assert a.returncode == 0 and a.stdout == b.stdout and "--seed 7 " in a.stdout and "--seed 42 " not in a.stdout
    summary = run_all("--seeds", "7", "--per-gpu", "3", "--dry-run").stdout
    assert re.search(r"^# runs at once: 3 \(no GPU found: 3 at a time\)$", summary, re.M)
    summary = run_all("--dry-run", "--per-gpu", "3", "--jobs", "5").stdout
    assert re.search(r"^# runs at once: 5 \(set by --jobs\)$", summary, re.M)
    for bad in (
        run_all("--per-gpu", "0", "--dry-run"),
        run_all("--epochs", "5", "--quick"),
        run_all("--quick", "--parts", "a2"),
    ):
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and not bad.stdout  # refused, not ignored


def test_run_all_study_spends_every_tweak_on_the_same_tickets_per_seed_and_budget():
    """The CPU study's ladder: per seed and rung (5, 15, 30 epochs) OMP tickets at 91.4% (and at 15 epochs 97.2%),
    drawn from that rung's dense network, and on each LTH and the tweaks (the pairs of the paired statistics). The
    5-epoch rung keeps its folders, so that its finished runs are reused."""
    jobs = run_all("--study", "--list").stdout.splitlines()
    every = ["", "--skip", "--skip-proj", "--swish", "--scale-init", "--ls 0.1", "--at", "--trt", "--at --trt"]
    high = ["", "--ls 0.1", "--at", "--trt", "--at --trt"]
    at_30 = ["", "--skip", "--skip-proj", "--ls 0.1", "--at", "--trt", "--at --trt"]
    expected = {(5, 0.914): every, (15, 0.914): every, (15, 0.972): high, (30, 0.914): at_30, (15, 0.0): [""]}
    expected[15, 0.982] = high  # the scan's choice: LTH >= 4 pp below the dense network (grid.GAP_SPARSITY)
    scan = {(15, s, 1): [""] for s in (0.986, 0.989, 0.991)}  # the rest of seed 1's scan, from 98.2% up
    assert len({j.split("--out ")[1] for j in jobs}) == len(jobs) == 5 * sum(map(len, expected.values())) + len(scan)
    found = {}
    for job in jobs:
        args = train.parse_args(job.split())
        assert (args.dataset, args.arch, args.prune, args.subset) == ("fashionmnist", "resnet20", "omp", 10000)
        tweak = re.search(r"--prune omp (.*?) ?--seed", job).group(1)
        found.setdefault((args.epochs, args.sparsity, args.seed), []).append(tweak)
        rung = "" if args.epochs == 5 else f"e{args.epochs}/"
        cache = "runs/study/gap" if args.sparsity not in (0.914, 0.972) else "runs/study"  # drawn from retrained nets
        assert f"--runs {cache} --out runs/study/{rung}fashionmnist_resnet20/omp_s{args.sparsity:g}_" in job
    assert sorted(found) == sorted([(e, s, seed) for e, s in expected for seed in range(1, 6)] + list(scan))
    assert all(
        sorted(v) == sorted({**expected, **scan}.get((e, s, seed)) or expected[e, s])
        for (e, s, seed), v in found.items()
    )
    epochs = [train.parse_args(j.split()).epochs for j in jobs]
    assert epochs == sorted(epochs, reverse=True)  # the longest rung first
    summary = run_all("--study", "--dry-run").stdout
    assert "# 5 epochs: 45 jobs: 45 trained spends + 5 draws of 5 trainings" in summary
    assert "# 30 epochs: 35 jobs: 35 trained spends + 5 draws of 5 trainings (vanilla LTH" in summary
    assert re.search(r"^# 30 epochs: .*, 1200 epochs$", summary, re.M)  # 35 spends and 5 dense runs of 30 epochs
    piece = run_all("--study", "--budget", "15", "--seeds", "4 5", "--dry-run").stdout
    # 28 spends on 2 draws; 2 dense networks trained again, each a draw of its own, and 10 spends at 98.2% from them
    assert re.search(r"^# in all: 40 jobs: 38 trained spends \+ 4 draws of 4 trainings .*, 630 epochs$", piece, re.M)
    listed = run_all("--study", "--budget", "15", "--seeds", "4 5", "--list").stdout.splitlines()
    assert len(listed) == 40 and all("--epochs 15 " in j and re.search("--seed [45] ", j) for j in listed)
    analysis = subprocess.run([sys.executable, "grid.py", "--analysis", "--study"], cwd=HERE, capture_output=True)
    assert analysis.returncode == 0 and analysis.stdout == b""  # no landscape.py to run, not one empty line
    for bad, message in (
        (run_all("--study", "--epochs", "3"), "error: --epochs"),
        (run_all("--study", "--budget", "45"), "error: --budget 45"),
        (run_all("--quick", "--budget", "15"), "error: --budget"),
    ):
        assert bad.returncode == 2 and bad.stderr.startswith(message) and not bad.stdout


def test_run_all_help_prints_the_usage_at_the_top_of_the_script_and_the_parts_and_exits_0():
    import grid

    header = []
    for line in open(os.path.join(HERE, "run_all.sh")).read().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line[2:] if line.startswith("# ") else line[1:])
    for flag in ("--help", "-h"):
        r = run_all("--quick", flag)
        assert r.returncode == 0 and not r.stderr and r.stdout.splitlines()[:-1] == header, r.stderr
    assert r.stdout.splitlines()[-1] == "The parts (--parts P --list: their runs): " + " ".join(grid.PARTS)
    assert "--budget" in r.stdout and "train.log" in r.stdout and "EPOCH_SECONDS" in r.stdout


def test_the_bill_prices_each_run_by_its_cell_from_fabricated_measurements(tmp_path, monkeypatch):
    """bill.py on fabricated --gpu-check files: a measured cell at its seconds per image (scaled as the ResNet-18 run's
    whole epoch is to its measured steps), another cell by its FLOPs, at K by the packing sweep's share; without any
    file, an assumed 10 s scaled by FLOPs: a Fig. 5 cell of ResNet-50 on Tiny-ImageNet costs more than ResNet-18's."""
    import bill
    import grid

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EPOCH_SECONDS", raising=False)

    def hours(cell, price):
        text = bill.count(grid.part_jobs("fig5", "42", 180, [cell]), "", price)
        return float(re.search(r", (\d+) GPU-hours one run at a time", text).group(1)), text

    assumed = bill.measured()
    r50, r18 = hours(("tinyimagenet", "resnet50"), assumed)[0], hours(("cifar100", "resnet18"), assumed)[0]
    assert r50 > 5 * r18 > 0  # 31.1 against 3.33 GFLOP per image, twice the images
    ratio = bill.flops("resnet50", "tinyimagenet") / bill.flops("resnet18", "cifar100")
    assert abs(r50 / r18 - 2 * ratio) < 0.05 * r50 / r18, (r50, r18, ratio)
    os.makedirs("runs/gpu_check")
    for name, text in (
        ("seconds_per_epoch", "9\n"),
        ("packing", "4 2.25 plain\n"),
        ("cells", "resnet18 cifar100 0.0001\n"),
    ):
        open(f"runs/gpu_check/{name}", "w").write(text)
    open("runs/gpu_check/cells", "a").write("resnet50 tinyimagenet 0.0004\n")
    price = bill.measured()
    assert price[1:] == ({("resnet18", "cifar100"): 0.0001, ("resnet50", "tinyimagenet"): 0.0004}, (4, 0.25, "plain"))
    assert bill.per_image("resnet50", "tinyimagenet", *price[:2]) == (pytest.approx(0.0008), "measured")
    rate, source = bill.per_image("resnet34", "cifar10", *price[:2])
    assert source == "ResNet-18's by FLOPs"
    assert abs(rate - 9 / 45000 * bill.flops("resnet34", "cifar10") / bill.flops("resnet18", "cifar100")) < 1e-12
    # one spend at level 1 (0.2) and its draw's levels 0 and 1: 540 epochs x 90,000 images x 0.0008 s = 10.8 h
    line = grid.part_jobs("fig5", "42", 180, [("tinyimagenet", "resnet50")])[3]
    assert "--sparsity 0.2 " in line and "--at --trt" in line
    text = bill.count([line], "x: ", price)
    assert text.endswith(", 540 epochs, 11 GPU-hours one run at a time, 3 at 4 per GPU (measured)"), text


def test_the_cells_gpu_check_times_are_what_the_bill_reads(tmp_path, monkeypatch):
    """bill.py --time-cells, here on this CPU (2 steps of 8 images on two cells): a line per cell that measured()
    reads back, and the bill prices those cells as measured."""
    import bill

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EPOCH_SECONDS", raising=False)
    os.makedirs("runs/gpu_check")
    cells = [("cifar100", "resnet18"), ("tinyimagenet", "mobilenet")]
    bill.time_cells("runs/gpu_check/cells", cells, "cpu", steps=2, batch_size=8)
    one, measured, _ = bill.measured()
    assert sorted(measured) == [("mobilenet", "tinyimagenet"), ("resnet18", "cifar100")], measured
    assert all(0 < s < 10 for s in measured.values()) and one == (10.0, "assumed")
    assert bill.per_image("mobilenet", "tinyimagenet", one, measured) == (
        measured["mobilenet", "tinyimagenet"],
        "measured",
    )


def test_dry_run_names_its_sources_and_refuses_a_damaged_file(tmp_path):
    """--dry-run in a copy of the project: each line's GPU-hours name their source; a damaged file or a bad
    EPOCH_SECONDS is one line on stderr and exit code 2, no number."""
    for f in os.listdir(HERE):
        if f.endswith(".py") or f == "run_all.sh":
            (tmp_path / f).write_bytes(open(os.path.join(HERE, f), "rb").read())
    measured = tmp_path / "runs" / "gpu_check"
    measured.mkdir(parents=True)
    unset = {k: v for k, v in os.environ.items() if k != "EPOCH_SECONDS"}

    def dry_run(**env):
        command = ["bash", str(tmp_path / "run_all.sh"), "--parts", "fig8 headline", "--dry-run"]
        return subprocess.run(command, capture_output=True, text=True, env=dict(unset, PYTHON=sys.executable, **env))

    (measured / "seconds_per_epoch").write_text("3.36\n")
    r = dry_run()
    assert r.returncode == 0, r.stderr
    assert re.search(
        r"^# headline: 24 jobs: 18 trained spends \+ 3 draws of 51 trainings .*, 12420 epochs, 12 GPU-hours "
        r"one run at a time \(ResNet-18's by FLOPs\)$",
        r.stdout,
        re.M,
    ), r.stdout
    assert (
        "# ResNet-18's by FLOPs: 3.36 s per epoch" in r.stdout
        and "read from runs/gpu_check/seconds_per_epoch" in r.stdout
    )
    for name, damaged in (
        ("packing", "4 0.9\n"),
        ("packing", "0 0.9 plain\n"),
        ("packing", "4 abc plain\n"),
        ("seconds_per_epoch", "abc\n"),
        ("seconds_per_epoch", "3.3\0\0\n"),
        ("seconds_per_epoch", ""),
        ("seconds_per_epoch", "0\n"),
        ("cells", "resnet18 cifar100\n"),
    ):
        for f in ("packing", "seconds_per_epoch", "cells"):
            (measured / f).write_text({"packing": "4 0.9 plain\n", "cells": ""}.get(f, "7.2\n"))
        (measured / name).write_text(damaged)
        r = dry_run()
        assert r.returncode == 2 and not r.stdout and r.stderr.count("\n") == 1, (name, damaged, r.stdout, r.stderr)
        assert r.stderr.startswith(f"error: runs/gpu_check/{name} does not hold ") and "--gpu-check again" in r.stderr
    for bad in ("abc", "0", "-3", "1e3"):
        r = dry_run(EPOCH_SECONDS=bad)
        assert r.returncode == 2 and not r.stdout and r.stderr.count("\n") == 1, (bad, r.stderr)
        assert r.stderr.startswith(f"error: EPOCH_SECONDS={bad}: ")


def test_gpu_check_without_a_gpu_says_so_and_runs_what_a_cpu_can(tmp_path):
    """`run_all.sh --gpu-check` on this CPU machine, in a copy of the project (it writes runs/gpu_check/)."""
    for f in os.listdir(HERE):
        if f.endswith(".py") or f == "run_all.sh":
            (tmp_path / f).write_bytes(open(os.path.join(HERE, f), "rb").read())
    r = subprocess.run(
        ["bash", str(tmp_path / "run_all.sh"), "--gpu-check"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES=""),
    )
    assert r.returncode == 0 and "no GPU found" in r.stdout, r.stdout + r.stderr
    parts = (
        "environment",
        "signature",
        "signature-zeros",
        "plain",
    )
    for part in parts:
        assert f"-- {part}: ok" in r.stdout, part
    assert r.stdout.rstrip().endswith("every part passed") and "FAILED" not in r.stdout


# ---------------------------------------------------------------- speed benchmark
def test_bench_times_the_three_loops():
    """`bench.py` at a small batch: it must run end to end and print every figure it promises."""
    r = cli("--batch-size", "16", "--device", "cpu", script="bench.py")
    assert r.returncode == 0, r.stderr
    bare, *ours = ("bare PyTorch + DataLoader (dense)", "ours dense", "ours 90% sparse +AT+TRT")
    for loop in (bare, *ours):
        assert float(re.search(re.escape(loop) + r"\s+(\d+) images/s", r.stdout).group(1)) > 0, loop
    assert float(re.search(r"^sparse/bare throughput ratio: (\d+\.\d\d)$", r.stdout, re.M).group(1)) > 0


def test_bench_help_lists_only_the_flags_it_honours_with_their_defaults():
    r = cli("--help", script="bench.py")
    assert r.returncode == 0, r.stderr
    flags = set(re.findall(r"^  (?:-h, )?(--[a-z-]+)", r.stdout, re.M))
    honoured = {"--arch", "--dataset", "--subset", "--batch-size", "--device", "--data-dir", "--steps", "--compile"}
    assert flags == honoured | {"--help", "--packing"}, flags
    for default in ("resnet20", "synthetic-cifar100", "3000", "128", "data", "10"):
        assert f"(default: {default})" in " ".join(r.stdout.split()), default  # as argparse wraps it
    for flag, value in (("--sparsity", "0.5"), ("--lr", "1"), ("--epochs", "3"), ("--at", None)):
        bad = cli(flag, *([value] if value else []), script="bench.py")  # train.py's flags: refused, not ignored
        assert bad.returncode == 2 and bad.stderr.startswith("error: unrecognized arguments: " + flag), bad.stderr
    bad = cli("--packing", "x", script="bench.py")  # FOLDER and OUT: never guessed
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--packing" in bad.stderr, bad.stderr
    bad = cli("--device", "nosuch", script="bench.py")  # checked as train.py checks it: one line, no traceback
    assert bad.returncode == 2 and bad.stderr.startswith("error: --device nosuch: not usable here"), bad.stderr
    assert bad.stderr.count("\n") == 1 and not bad.stdout, bad.stderr


def test_packing_sweep_trains_k_runs_at_once_through_the_runner_and_writes_the_best_k(tmp_path):
    """The packing sweep's code path on the CPU, as --gpu-check runs it on a GPU: for K = 1, 2, K tiny runs at once
    through run_all.sh's runner into packing/K<k>/run<i>, then `bench.py --packing`: per K a line with the slowest
    run's epoch split into training and the rest, the images/s of all K and the device time per epoch of a run (the
    epoch / K); the least is the best K, written as "K SECONDS plain"."""
    tiny = "--dataset synthetic --arch resnet20 --device cpu --subset 300 --batch-size 16 --epochs 2 --prune random"
    tiny += f" --sparsity 0.91 --at --runs {tmp_path / 'draws'}"
    for k in (1, 2):
        jobs = tmp_path / f"K{k}.txt"
        lines = [f"{tiny} --out {tmp_path / 'packing' / f'K{k}' / f'run{i}'}" for i in range(1, k + 1)]
        jobs.write_text("\n".join(lines) + "\n")
        ran = run_all("--jobs-from", str(jobs), "--jobs", str(k))
        assert ran.returncode == 0 and "FAILED" not in ran.stderr, ran.stdout + ran.stderr
    out = tmp_path / "gpu_check" / "packing"
    r = cli("--packing", str(tmp_path / "packing"), str(out), script="bench.py")
    assert r.returncode == 0, r.stdout + r.stderr
    number = r"(\d+\.\d\d)"
    per_k = {}
    for k in (1, 2):
        line = re.search(
            rf"^K{k}: {number} s per epoch per run \(training {number} s \+ evaluation and checkpoint {number} s\), "
            rf"(\d+) images/s in all, peak 0 MiB GPU per run; {number} s of the device per epoch of a run$",
            r.stdout,
            re.M,
        )
        assert line, (k, r.stdout)
        epoch, training, rest, images, device_time = map(float, line.groups())
        # a tiny run's evaluation and checkpoint may round to 0.00 s on a fast machine
        assert abs(epoch - training - rest) <= 0.011 and training > 0 and rest >= 0 and images > 0
        assert abs(device_time - epoch / k) <= 0.011
        per_k[k] = device_time
    k, seconds, mps = out.read_text().split()
    best = int(k)  # the least device time per epoch; the lines round to 2 decimals, so a tie there may go either way
    assert per_k[best] == min(per_k.values()) and mps == "plain", (out.read_text(), per_k)
    assert abs(float(seconds) - per_k[best]) <= 0.0051, (out.read_text(), per_k)  # the file keeps 3 decimals
    assert f"best: K{best}: {per_k[best]:.2f} s of the device per epoch of a run" in r.stdout
    (tmp_path / "packing" / "K2" / "run2" / "results.json").unlink()  # a run of K = 2 that did not finish
    r = cli("--packing", str(tmp_path / "packing"), str(out), script="bench.py")
    assert r.returncode == 0 and "K2: 1 of its 2 runs did not finish" in r.stdout and "best: K1:" in r.stdout
    empty = cli("--packing", str(tmp_path / "nothing"), str(out), script="bench.py")
    assert empty.returncode == 2 and empty.stderr.startswith("error: ") and empty.stderr.count("\n") == 1


def test_evaluate_runs_in_bf16_autocast_when_asked_and_float32_by_default_on_a_cpu():
    ds = data.load("synthetic", subset=300)
    torch.manual_seed(0)
    model = models.get_model("resnet20", ds["classes"], 3)
    default, fp32, bf16 = (data.evaluate(model, ds, "test", amp=amp) for amp in (None, False, True))
    assert default == fp32  # the CPU path as it was
    assert bf16 != fp32 and bf16[1] == pytest.approx(fp32[1], rel=0.05)  # rounded logits: near, not equal


def test_report_budget_view_pairs_each_rung_and_shows_convergence(tmp_path):
    """The study's ladder, fabricated: 3 seeds at 5 and 15 epochs (91.4%), and 97.2% at 15 only. Worked by hand:
    AT - LTH at 5 epochs: 1, 2, 3 pp: mean 2, s_d 1, half-width t(0.975, 2) / sqrt(3) = 2.484; at 15: 0, 1, 2 pp."""
    import report

    for seed in (1, 2, 3):
        for epochs, lth, gain in ((5, 80, seed), (15, 85, seed - 1)):
            root = tmp_path / f"e{epochs}"
            fake_run(root, seed, 0.914, (lth + seed - 1) / 100, epochs=epochs)
            fake_run(root, seed, 0.914, (lth + seed - 1 + gain) / 100, epochs=epochs, skip=True, swish=True)
            train_accs = [0.5 + 0.4 * e / epochs for e in range(1, epochs + 1)]  # ends at 90%
            metrics = "epoch,train_acc\n" + "".join(f"{e},{a}\n" for e, a in enumerate(train_accs, 1))
            (root / f"run_0.914_{seed}_epochs" / "metrics.csv").write_text(metrics)
            draw = tmp_path / "draws" / f"d{epochs}_{seed}"  # the rung's dense network, in the draw cache
            (draw / "imp_11").mkdir(parents=True)  # the ticket its spends take: IMP level 11, 91.4%
            (draw / "draw.json").write_text(
                json.dumps(dict(dataset="cifar100", arch="resnet18", seed=seed, epochs=epochs))
            )
            (draw / "imp_00").mkdir()
            (draw / "imp_00" / "results.json").write_text(json.dumps(dict(test_acc=0.9, sparsity=0.0)))
            (draw / "imp_00" / "metrics.csv").write_text(metrics)
        fake_run(tmp_path / "high", seed, 0.972, 0.70, epochs=15)
        fake_run(tmp_path / "high", seed, 0.972, 0.69, epochs=15, skip=True, swish=True)
    report.main([str(tmp_path), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    assert "## The budget: resnet18 on cifar100, imp masks" in md
    dense = "90.00 ± 0.00 (+9.00 [+6.52, +11.48])"  # the draws' dense networks, paired with LTH on their tickets
    assert f"| 91.4%, 5 epochs | {dense} | 81.00 ± 1.00 | 83.00 ± 2.00 (+2.00 [-0.48, +4.48]) | 3 |" in md
    dense = "90.00 ± 0.00 (+4.00 [+1.52, +6.48])"
    assert f"| 91.4%, 15 epochs | {dense} | 86.00 ± 1.00 | 87.00 ± 2.00 (+1.00 [-1.48, +3.48]) | 3 |" in md
    assert "- 91.4%, 15 epochs: dense − LTH: +4.00 [+1.52, +6.48] pp, 3 seeds" in md  # each ticket's own draw's
    assert "| 97.2%, 15 epochs | missing | 70.00 ± 0.00 |" in "\n".join(md)  # no draw holds these tickets
    assert "- 91.4%, 15 epochs: LTH+AT − LTH: +1.00 [-1.48, +3.48] pp, 3 seeds" in md
    assert "- 97.2%, 15 epochs: LTH+AT − LTH: -1.00 [-1.00, -1.00] pp, 3 seeds" in md
    assert not any(line.startswith("- 97.2%, 5 epochs") for line in md)  # that rung has no 97.2% ticket
    convergence = [line for line in md if line.startswith("| 5 epochs |")]  # dense and LTH 91.4%: the last epoch's
    assert convergence == [  # train accuracy 90%, and 8 pp over the last epoch at the final lr (epochs 4 -> 5)
        "| 5 epochs | 90.00 ± 0.00 | 90.00 ± 0.00 | 8.00 ± 0.00 | 81.00 ± 1.00 | 90.00 ± 0.00 | 8.00 ± 0.00 "
        "| missing | missing | missing | 3 |"
    ]
    assert "| 15 epochs | 90.00 ± 0.00 | 90.00 ± 0.00 | 8.00 ± 0.00 |" in "\n".join(md)  # epochs 12 -> 15: 3 x 2.67
    assert "## resnet18 on cifar100, imp masks, 15 epochs" in md  # each rung keeps its own tables and plots
    assert (tmp_path / "rep" / "acc_cifar100_resnet18_imp_e15.png").exists()
    rows = (tmp_path / "rep" / "budget_cifar100_resnet18_imp_s91.4.csv").read_text().splitlines()
    assert rows[0] == "epochs,variant,seed,sparsity_pct,test accuracy (%)"
    assert len(rows) == 1 + 3 * 2 * 3  # dense, LTH, LTH+AT; 2 rungs; 3 seeds
    assert {"5,LTH+AT,3,91.500,85.000", "15,LTH+AT,1,91.500,85.000", "15,LTH,2,91.500,86.000"} <= set(rows)
    high = (tmp_path / "rep" / "acc_cifar100_resnet18_imp_e15.csv").read_text().splitlines()
    assert "0.972,LTH+AT,2,97.300,69.000" in high and "0.914,dense,1,0.000,90.000" in high
    assert not (tmp_path / "rep" / "budget_cifar100_resnet18_imp_s97.2.png").exists()  # one rung: no budget figure
    assert (tmp_path / "rep" / "budget_cifar100_resnet18_imp_s91.4.png").stat().st_size > 10_000


def test_report_explains_a_wrong_folder_writes_inside_the_runs_folder_and_clears_stale_files(tmp_path):
    def report_py(*a):
        return run_script("report.py", *a)

    missing, empty = report_py(tmp_path / "nope"), report_py(tmp_path)
    assert missing.returncode == empty.returncode == 2 and not missing.stdout and not empty.stdout
    assert (
        missing.stderr
        == f"error: {tmp_path / 'nope'}: no such folder; give the folder train.py or run_all.sh wrote its runs to\n"
    )
    assert empty.stderr.startswith(
        f"error: {tmp_path}: no finished train.py run in it (one with config.json and results.json)"
    )
    assert not (tmp_path / "report").exists()  # nothing written for bad input
    help_text = report_py("--help").stdout
    assert "default: <runs>/report" in help_text and "a folder of train.py runs" in help_text
    fake_run(tmp_path, 1, 0.914, 0.8)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / ".tmp-abc123").write_text("half-written by a killed writer")
    assert report_py(str(tmp_path)).returncode == 0
    assert (tmp_path / "report" / "report.md").exists() and not (tmp_path / "report" / ".tmp-abc123").exists()
