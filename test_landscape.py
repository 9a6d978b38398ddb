"""Tests of landscape.py, on CPU, offline: `python -m pytest -q test_landscape.py`."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import landscape
import models
import prune
import tweaks
from conftest import run_script


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread here and in the subprocesses: on 2 cores shared with other jobs, two threads wait on
    each other (measured: the file took 37 s with two, 14 s with one; the same on an idle machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sparse_resnet20(sparsity=0.5):
    """A small random ResNet-20 ticket: (model in eval mode, mask), pruned weights exactly zero."""
    torch.manual_seed(0)
    model = models.get_model("resnet20", 10).eval()
    mask = prune.random_prune(prune.prunable(model), sparsity, seed=0)
    prune.apply_mask(model, mask)
    return model, mask


def snapshot(model):
    return {k: v.clone() for k, v in list(model.named_parameters()) + list(model.named_buffers())}


def assert_unchanged(model, before):
    after = dict(list(model.named_parameters()) + list(model.named_buffers()))
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_filter_normalize_gives_each_filter_the_weights_filter_norm_and_zero_to_1d_params():
    model = models.get_model("resnet20", 10)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    direction = landscape.filter_normalize({n: torch.randn_like(w) * 5 for n, w in weights.items()}, weights)
    assert direction.keys() == weights.keys()
    for n, d in direction.items():
        if d.dim() == 1:
            assert not d.any(), n
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), weights[n].flatten(1).norm(dim=1), rtol=1e-5), n


def test_masked_directions_and_every_grid_point_keep_the_tickets_zeros():
    model, mask = sparse_resnet20()
    weights = {n: p.detach() for n, p in model.named_parameters()}
    d1, d2 = landscape.plane_directions(model, mask, seed=3)
    for n, m in mask.items():
        assert not d1[n][~m].any() and not d2[n][~m].any(), n
        assert d1[n][m].count_nonzero() > 0.9 * m.sum(), n  # and moves the weights the mask keeps
    for a, b in ((1.0, -1.0), (0.3, 0.7), (-0.5, 0.0)):
        point = {n: w + a * d1[n] + b * d2[n] for n, w in weights.items()}
        for n, m in mask.items():
            assert torch.equal(point[n] != 0, m), n


def test_the_model_is_bit_identical_after_a_contour_and_a_line_scan():
    model, mask = sparse_resnet20()
    model.train()  # even a model left in train mode: the scans run in eval mode, BatchNorm statistics untouched
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    before = snapshot(model)
    landscape.loss_plane(model, mask, x, y, grid=3)
    assert_unchanged(model, before)
    direction = landscape.plane_directions(model, mask)[0]
    landscape.losses_along(model, [[(a, direction)] for a in (-1.0, 0.5, 1.0)], x, y)
    assert_unchanged(model, before)
    assert model.training


def test_the_grid_centre_is_the_unperturbed_loss_and_the_plane_is_not_flat():
    model, mask = sparse_resnet20()
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    coords, losses = landscape.loss_plane(model, mask, x, y, grid=5)
    with torch.no_grad():
        unperturbed = float(F.cross_entropy(model(x), y))
    assert coords[2] == 0 and losses.shape == (5, 5)
    assert abs(losses[2, 2] - unperturbed) < 1e-5
    assert losses.std() > 1e-3


def test_activation_sparsity_relu_tens_of_percent_swish_almost_none():
    model, x = models.get_model("resnet20", 10), torch.randn(8, 3, 16, 16)
    for m in model.modules():  # running statistics of x itself, as a trained network has of its data
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    model.eval()
    relu, relu_zeros = landscape.activation_sparsity(model, x), landscape.activation_sparsity(model, x, threshold=0)
    assert list(relu) == ["stem", "layer1", "layer2", "layer3"]
    assert all(0.1 < relu_zeros[k] <= v < 0.9 for k, v in relu.items()), relu
    swish = landscape.activation_sparsity(tweaks.swish(model), x)  # |a| <= 1e-2 as the paper counts: not zero
    assert list(swish) == list(relu) and all(0 < v < 0.05 for v in swish.values()), swish
    assert all(v == 0 for v in landscape.activation_sparsity(model, x, threshold=0).values())  # Swish is never 0
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are gone


@pytest.mark.parametrize("arch", ["vgg16", "mobilenet", "resnet50"])
def test_activation_sparsity_reports_every_stage_of_every_arch_and_restores_train_mode(arch):
    model = models.get_model(arch, 10).train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    stages = landscape.activation_sparsity(model, torch.randn(2, 3, 16, 16))
    assert [s for s in stages if s != "stem"] == [n for n, _ in model.named_children() if n.startswith("layer")]
    assert model.training and all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())


# ---------------------------------------------------------------- the command line, on tiny real runs
def cli(*args):
    return run_script("landscape.py", *args)


def in_process(capsys, *args):
    """landscape.main in this process (no torch start-up): (exit code, stdout, stderr)."""
    try:
        landscape.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A vanilla LTH run and an AT run of one draw: 2 epochs on 180 synthetic images (--subset keeps it quick),
    each keeping its epoch-1 weights (as Fig. 4 keeps epoch 5's)."""
    tmp = tmp_path_factory.mktemp("runs")
    common = "--dataset synthetic --arch resnet20 --epochs 2 --sparsity 0.5 --subset 200 --device cpu --keep-epochs 1"
    for name, extra in (("lth", []), ("at", ["--at"])):
        done = run_script("train.py", *common.split(), "--runs", tmp, "--out", tmp / name, *extra)
        assert done.returncode == 0, done.stderr
    return tmp


def test_cli_contour_writes_a_png_and_its_grid(runs):
    out = runs / "plots" / "c.png"
    done = cli("contour", runs / "lth", runs / "at", "--grid", 5, "--images", 64, "--out", out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid = np.load(runs / "plots" / "c.npz")
    assert grid["losses"].shape == (2, 5, 5) and np.isfinite(grid["losses"]).all()
    assert list(grid["runs"]) == [str(runs / "lth"), str(runs / "at")] and int(grid["images"]) == 64
    assert str(grid["split"]) == "test"  # Fig. 8: images "randomly chosen from CIFAR-100 test dataset"
    assert "2 runs x 25 grid points x 64 images" in str(grid["cost"]) and "cost: 2 runs" in done.stdout


def test_every_run_reports_its_activation_sparsity_per_stage(runs):
    result = json.loads((runs / "lth" / "results.json").read_text())  # Table A1's numbers, measured by train.py
    assert sorted(result["activation_sparsity"]) == ["layer1", "layer2", "layer3", "stem"]
    assert all(0 < v < 1 for v in result["activation_sparsity"].values())
    assert all(0 < v <= result["activation_sparsity"][k] for k, v in result["activation_zeros"].items())


def test_cli_eigen_plots_the_loss_along_the_top_eigenvector(runs, capsys, monkeypatch):
    hessian = pytest.importorskip("hessian")
    few = hessian.fixed_batches  # one small batch instead of 3 x 128 images: this is about the plumbing
    monkeypatch.setattr(hessian, "fixed_batches", lambda ds, seed=0: few(ds, n_batches=1, batch_size=32, seed=seed))
    out = runs / "plots" / "e.png"
    code, stdout, err = in_process(
        capsys,
        "eigen",
        runs / "lth",
        runs / "at",
        "--points",
        5,
        "--images",
        64,
        "--iters",
        3,
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert code == 0, err
    line = np.load(runs / "plots" / "e.npz")
    assert out.read_bytes()[:4] == b"\x89PNG" and line["losses"].shape == (2, 5) and np.isfinite(line["losses"]).all()
    assert abs(line["losses"][0, 2] - line["losses"][0].min()) < 0.5 and "Hessian-vector" in str(line["hessian_cost"])


def test_kept_epoch_weights_are_written_copied_for_lth_and_read_with_weights(runs, capsys):
    for name in ("lth", "at"):  # the vanilla LTH spend copies its draw's kept epochs
        early, final = (torch.load(runs / name / f, weights_only=True) for f in ("epoch1.pt", "model.pt"))
        assert early.keys() == final.keys() and any(not torch.equal(early[k], final[k]) for k in early)
    from runs import load_run

    early, final = (load_run(runs / "at", weights=w)[0].state_dict() for w in ("epoch1.pt", "model.pt"))
    assert any(not torch.equal(early[k], final[k]) for k in early)  # --weights of hessian.py and landscape.py


def test_cli_bad_input_is_one_line_and_exit_code_2(runs, tmp_path, capsys):
    for args in (
        ("eigen", tmp_path / "nope", "--out", tmp_path / "e.png"),
        ("contour", tmp_path / "nope", "--out", tmp_path / "c.png"),
        ("contour", runs / "lth"),
        ("nonsense", runs / "lth"),
        ("contour", runs / "lth", "--grid", 1),
    ):
        code, out, err = in_process(capsys, *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
    other = tmp_path / "other"  # a copy of a run that claims another dataset
    other.mkdir()
    for f in os.listdir(runs / "lth"):
        (other / f).write_bytes((runs / "lth" / f).read_bytes())
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, dataset="cifar10")))
    code, out, err = in_process(capsys, "contour", runs / "lth", other, "--out", tmp_path / "c.png")
    assert code == 2 and "different datasets" in err and err.count("\n") == 1
    assert not (tmp_path / "c.png").exists()


def test_each_command_has_its_own_help_with_its_flags_and_their_defaults():
    """`landscape.py contour --help` shows contour's flags with their defaults, not eigenvalue's; the top level
    names the three commands and the figures they make."""
    top = run_script("landscape.py", "--help")
    assert top.returncode == 0 and "Fig. 4, 8" in top.stdout and "Fig. 2, A13" in top.stdout, top.stderr
    plane = run_script("landscape.py", "contour", "--help")
    assert plane.returncode == 0 and "--grid GRID" in plane.stdout and "--batches" not in plane.stdout
    assert "(default: 0)" in plane.stdout and "(default: 21)" in plane.stdout  # --seed's and --grid's
    top = run_script("landscape.py", "eigenvalue", "--help")
    assert "--tol TOL" in top.stdout and "--images" not in top.stdout and "(default: 100)" in top.stdout
