"""Tests of hessian.py against exact Hessians of tiny float64 models: `python -m pytest -q test_hessian.py`."""

import json
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import hessian
from conftest import run_script

EXACT = dict(iters=1000, tol=1e-12)  # converges (~70 iterations) far below the 1e-6 the answers are checked to


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()  # 51 parameters


def tiny_data(n=20):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def exact_hessian(model, loss_fn, x, y):
    """The full Hessian of loss_fn(model(x), y) w.r.t. all parameters, flattened in model.parameters() order."""
    names, params = zip(*model.named_parameters())
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def loss_of_flat(flat):
        weights = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return loss_fn(functional_call(model, weights, (x,)), y)

    return torch.autograd.functional.hessian(loss_of_flat, torch.cat([p.detach().flatten() for p in params]))


def flat_mask(model, masks):
    return torch.cat(
        [
            masks[n].flatten() if n in masks else torch.ones(p.numel(), dtype=torch.bool)
            for n, p in model.named_parameters()
        ]
    )


def half_mask(model):
    gen = torch.Generator().manual_seed(2)
    return {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in model.named_parameters() if p.dim() > 1}


def assert_close(value, expected):
    assert abs(value - expected) <= 1e-6 * abs(expected), (value, expected)


def test_one_batch_matches_the_exact_top_eigenvalue():
    model, (x, y) = tiny_mlp(), tiny_data()
    expected = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, x, y))[-1].item()
    value, vector, _ = hessian.top_eigen(model, F.cross_entropy, [(x, y)], **EXACT)
    assert expected > 0
    assert_close(value, expected)
    assert [v.shape for v in vector] == [p.shape for p in model.parameters()]


def test_unequal_batches_give_the_hessian_of_the_mean_over_all_examples():
    model, (x, y) = tiny_mlp(), tiny_data()
    whole, _, _ = hessian.top_eigen(model, F.cross_entropy, [(x, y)], **EXACT)
    split, _, _ = hessian.top_eigen(model, F.cross_entropy, [(x[:6], y[:6]), (x[6:], y[6:])], **EXACT)
    expected = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, x, y))[-1].item()
    assert_close(split, expected)
    assert_close(split, whole)


def test_a_mask_restricts_the_hessian_to_the_unpruned_weights():
    model, (x, y) = tiny_mlp(), tiny_data()
    masks = half_mask(model)
    alive = flat_mask(model, masks)
    full = exact_hessian(model, F.cross_entropy, x, y)
    expected = torch.linalg.eigvalsh(full[alive][:, alive])[-1].item()
    assert expected < torch.linalg.eigvalsh(full)[-1].item()  # else the test would not see the mask ignored
    value, vector, _ = hessian.top_eigen(model, F.cross_entropy, [(x, y)], masks=masks, **EXACT)
    assert_close(value, expected)
    flat = torch.cat([v.flatten() for v in vector])
    assert torch.all(flat[~alive] == 0) and flat[alive].abs().min() > 0
    assert abs(flat.norm().item() - 1) <= 1e-12
    v = flat.view(-1, 1)
    assert torch.allclose(full[alive][:, alive] @ flat[alive], value * flat[alive], atol=1e-5 * value)  # eigenvector
    assert_close((v.T @ full @ v).item(), expected)


def test_the_largest_algebraic_eigenvalue_wins_over_a_larger_negative_one():
    """loss = 0.5 w^T A w with eigenvalues -5, -2, 0.5, 1: power iteration alone would return -5."""
    eigenvalues = torch.tensor([-5.0, -2.0, 0.5, 1.0], dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    a = rotation @ torch.diag(eigenvalues) @ rotation.T
    model = nn.Linear(4, 1, bias=False).double()

    def quadratic(out, _):
        return 0.5 * (model.weight @ a @ model.weight.T).squeeze() + 0 * out.sum()

    batch = [(torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1))]
    value, vector, _ = hessian.top_eigen(model, quadratic, batch, **EXACT)
    assert_close(value, 1.0)
    assert torch.allclose(vector[0].abs().flatten(), rotation[:, 3].abs(), atol=1e-5)
    value, _, _ = hessian.top_eigen(model, lambda out, y: -quadratic(out, y), batch, **EXACT)
    assert_close(value, 5.0)  # here the top eigenvalue dominates: no shift needed


def test_the_model_is_left_exactly_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).double()
    model.train()  # in training, as train.py's --hessian-every calls it: eval inside, train mode again after
    x, y = torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    value, vector, _ = hessian.top_eigen(model, F.cross_entropy, [(x, y)], iters=20)
    assert value > 0 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats too
    assert all(p.grad is None for p in model.parameters()) and all(v.grad_fn is None for v in vector)


def test_per_batch_is_the_mean_of_each_batchs_own_top_eigenvalue():
    """The paper's figures: each batch's Hessian on its own, then mean and std (not one Hessian of all batches)."""
    model, (x, y) = tiny_mlp(), tiny_data(30)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    exact = [torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, bx, by)).max().item() for bx, by in batches]
    mean, std, values, iters = hessian.per_batch(model, F.cross_entropy, batches, iters=500, tol=1e-10)
    assert values == pytest.approx(exact, rel=1e-5) and mean == pytest.approx(sum(exact) / 2, rel=1e-5)
    assert std == pytest.approx(abs(exact[0] - exact[1]) / 2**0.5, rel=1e-4) and iters >= 2
    pooled = torch.linalg.eigvalsh(exact_hessian(model, F.cross_entropy, x, y)).max().item()
    assert abs(pooled - mean) > 1e-3 * abs(pooled)  # the two modes are different quantities


def test_the_start_vector_is_seeded():
    model, (x, y) = tiny_mlp(), tiny_data()
    a = hessian.top_eigen(model, F.cross_entropy, [(x, y)], iters=3, tol=0)
    b = hessian.top_eigen(model, F.cross_entropy, [(x, y)], iters=3, tol=0)
    assert a[0] == b[0] and a[2] == 3 and all(torch.equal(u, v) for u, v in zip(a[1], b[1]))


def test_cli_on_a_real_run_and_on_bad_input(tmp_path):
    # a random mask trains once (IMP would train every level), on 90 images (10 left to validate: one per class)
    args = "--dataset synthetic --arch resnet20 --epochs 1 --sparsity 0.5 --prune random --subset 100 --batch-size 32"
    train = run_script("train.py", *args.split(), "--device", "cpu", "--runs", tmp_path, "--out", tmp_path / "run")
    assert train.returncode == 0, train.stderr
    args = "--batches 1 --batch-size 32 --iters 20 --device cpu".split()
    out = run_script("landscape.py", "eigenvalue", tmp_path / "run", *args, "--out", tmp_path / "run" / "hessian.json")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "run" / "hessian.json").read_text())
    assert 0 < result["top_eigenvalue"] < float("inf") and 1 <= result["iterations"] <= 40
    assert result["batches"] == 1 and result["images"] == 32 and result["run"] == str(tmp_path / "run")
    assert result["per_batch"] == [result["top_eigenvalue"]] and result["std"] == 0
    shutil.copytree(tmp_path / "run", tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.pt").write_bytes(b"not a checkpoint")
    for args in (
        ["/nonexistent"],
        [str(tmp_path / "corrupt")],
        [str(tmp_path / "run"), "--iters", "0"],
        [str(tmp_path / "run"), str(tmp_path / "corrupt")],
    ):
        bad = run_script("landscape.py", "eigenvalue", *args, "--out", tmp_path / "h.json")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
