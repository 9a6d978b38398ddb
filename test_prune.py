"""Tests of the pruning-at-init baselines: `python -m pytest -q test_prune.py`.

Each score has a known-answer test on a tiny float64 net, checked at every possible number of kept weights, so
the whole ranking (and its direction) must match the hand-derived score."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import models
import prune
import runs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These nets are tiny: on a shared 2-core machine, intra-op threads only spin against each other (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batches(n_batches, n, shape, classes, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, *shape, generator=gen, dtype=dtype), torch.randint(0, classes, (n,), generator=gen))
        for _ in range(n_batches)
    ]


def flat_mask(mask):
    return torch.cat([m.flatten() for m in mask.values()])


def assert_ranking(pruner, model, expected):
    """pruner(sparsity) keeps exactly the k weights of highest `expected` score, for every k."""
    expected = torch.cat([e.flatten() for e in expected])
    order = expected.argsort(descending=True)
    assert len(set(expected.tolist())) == len(expected)  # no ties: the top k is unique
    total = len(expected)
    for k in range(1, total):
        want = torch.zeros(total, dtype=torch.bool)
        want[order[:k]] = True
        assert torch.equal(flat_mask(pruner(1 - k / total)), want), f"wrong mask keeping {k} of {total}"


def tiny_mlp(seed, sizes=(4, 5, 3), act=nn.Tanh):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(sizes[0], sizes[1], bias=False), act(), nn.Linear(sizes[1], sizes[2], bias=False)
    ).double()


# ---------------------------------------------------------------- known answers
def test_snip_on_a_linear_model_is_the_hand_derived_sensitivity():
    torch.manual_seed(0)
    model = nn.Linear(5, 3, bias=False).double()
    data = batches(2, 7, (5,), 3, seed=1, dtype=torch.float64)
    w = model.weight.detach()
    # mean cross-entropy of softmax(x W^T): dL/dW = (softmax(x W^T) - onehot(y))^T x / n, summed over the batches
    g = sum((F.softmax(x @ w.T, 1) - F.one_hot(y, 3).double()).T @ x / len(y) for x, y in data)
    assert_ranking(lambda s: prune.snip(model, data, s, linear=True), model, [(g * w).abs()])


def test_grasp_keeps_the_lowest_minus_w_hg_with_the_exact_hessian():
    model = tiny_mlp(2)
    data = batches(2, 6, (4,), 3, seed=3, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(flat):
        params = dict(zip(names, flat.split([s.numel() for s in shapes])))
        params = {n: p.view(s) for (n, p), s in zip(params.items(), shapes)}
        return sum(
            F.cross_entropy(torch.func.functional_call(model, params, (x,)) / prune.GRASP_TEMP, y) for x, y in data
        )

    g = torch.autograd.functional.jacobian(loss, theta)
    hessian = torch.autograd.functional.hessian(loss, theta)
    score = -theta * (hessian @ g)  # GraSP's score; it removes the highest, so the ranking to keep is -score
    assert_ranking(lambda s: prune.grasp(model, data, s, linear=True), model, [-score])


@pytest.mark.parametrize("rounds", [1, 3])
def test_synflow_on_a_two_layer_linear_net_is_the_path_count(rounds):
    # R = 1^T |W2| |W1| 1: dR/d|W1|[i, j] = sum_k |W2|[k, i] and dR/d|W2|[k, i] = sum_j |W1|[i, j]
    model = tiny_mlp(4, sizes=(6, 4, 3), act=nn.Identity)
    a1, a2 = model[0].weight.detach().abs(), model[2].weight.detach().abs()
    total = a1.numel() + a2.numel()

    def by_hand(sparsity):
        m1, m2 = torch.ones_like(a1, dtype=torch.bool), torch.ones_like(a2, dtype=torch.bool)
        for k in range(1, rounds + 1):  # density (1 - sparsity)^(k / rounds), re-scored on the masked net
            w1, w2 = a1 * m1, a2 * m2
            s1, s2 = w1 * w2.sum(0)[:, None], w2 * w1.sum(1)[None, :]
            n_keep = round(total * (1 - sparsity) ** (k / rounds))
            flat = torch.cat([torch.where(m1, s1, -1.0).flatten(), torch.where(m2, s2, -1.0).flatten()])
            keep = torch.zeros(total, dtype=torch.bool)
            keep[flat.argsort(descending=True)[:n_keep]] = True
            m1, m2 = keep[: a1.numel()].view_as(a1), keep[a1.numel() :].view_as(a2)
        return torch.cat([m1.flatten(), m2.flatten()])

    if rounds == 1:
        assert_ranking(
            lambda s: prune.synflow(model, s, rounds=1, input_shape=(6,), linear=True),
            model,
            [a1 * a2.sum(0)[:, None], a2 * a1.sum(1)[None, :]],
        )
    for n_keep in range(1, total):
        s = 1 - n_keep / total
        assert torch.equal(
            flat_mask(prune.synflow(model, s, rounds=rounds, input_shape=(6,), linear=True)), by_hand(s)
        ), n_keep


# ---------------------------------------------------------------- on a real network
@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return models.get_model("resnet20", 10)


PRUNERS = {
    "snip": lambda m, s: prune.snip(m, batches(1, 8, (3, 32, 32), 10, seed=5), s),
    "grasp": lambda m, s: prune.grasp(m, batches(1, 8, (3, 32, 32), 10, seed=5), s),
    "synflow": lambda m, s: prune.synflow(m, s, rounds=20),
}


@pytest.mark.parametrize("method", PRUNERS)
def test_exact_sparsity_and_the_callers_model_is_untouched(method, resnet20):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    mask = runs.check_mask(PRUNERS[method](resnet20, 0.9), resnet20, method)
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(total * 0.1)
    after = resnet20.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, signs and BatchNorm statistics
    assert all(p.grad is None for p in resnet20.parameters()) and resnet20.training


def test_synflow_100_rounds_stays_finite_and_avoids_layer_collapse(resnet20, capsys):
    mask = prune.synflow(resnet20, 0.98)
    kept = [int(m.sum()) for m in mask.values()]
    assert sum(kept) == round(sum(m.numel() for m in mask.values()) * 0.02)
    prune.warn_collapse(mask)
    assert min(kept) > 0 and "layer collapse" not in capsys.readouterr().err


def test_a_collapsed_mask_is_warned_of_once_per_layer_not_once_per_pruning_round(resnet20, capsys):
    """SynFlow ranks weights in each of its 100 rounds and warns of nothing; warn_collapse names an empty layer once."""
    mask = prune.synflow(resnet20, 0.9995)
    assert capsys.readouterr().err == ""
    prune.warn_collapse(mask)
    empty = [n for n, m in mask.items() if not m.any()]
    assert empty and capsys.readouterr().err.splitlines() == [
        f"warning: layer collapse, {n} is pruned entirely (§3.1)" for n in empty
    ]


def test_grasp_and_snip_differ_from_magnitude_and_from_each_other(resnet20):
    data = batches(1, 8, (3, 32, 32), 10, seed=6)
    masks = [
        flat_mask(prune.snip(resnet20, data, 0.9)),
        flat_mask(prune.grasp(resnet20, data, 0.9)),
        flat_mask(prune.omp(prune.prunable(resnet20), 0.9)),
    ]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def test_snip_scores_with_batchnorm_in_eval_mode_as_the_official_code(resnet20):
    """snip-public runs its network with is_train False: BatchNorm uses the running statistics of init (0 and 1)."""
    data_ = batches(1, 8, (3, 32, 32), 10, seed=7)
    net = copy.deepcopy(resnet20).eval()
    weights = prune.prunable(net)
    grads = torch.autograd.grad(F.cross_entropy(net(data_[0][0]), data_[0][1]), list(weights.values()))
    by_hand = prune.keep_top(
        {n: (g * w).abs().detach() for (n, w), g in zip(weights.items(), grads)}, prune.keep_count(weights, 0.9)
    )
    assert torch.equal(flat_mask(prune.snip(resnet20, data_, 0.9)), flat_mask(by_hand))


def test_grasp_keeps_the_classifier_in_hg_when_it_leaves_it_out_of_the_ranking(resnet20, monkeypatch):
    """alecwangcq/GraSP, pruner/GraSP.py takes H g over every conv and linear weight: with the classifier dense (the
    default) the convs' scores are those of --prune-classifier, only the ranking leaves the classifier out."""
    scored = []
    monkeypatch.setattr(prune, "keep_top", lambda scores, n_keep: scored.append(scores) or {})
    data_ = batches(1, 8, (3, 32, 32), 10, seed=8)
    prune.grasp(resnet20, data_, 0.9)
    prune.grasp(resnet20, data_, 0.9, linear=True)
    default, with_classifier = scored
    assert set(default) == set(prune.prunable(resnet20)) and set(with_classifier) == set(prune.prunable(resnet20, True))
    assert all(torch.equal(default[n], with_classifier[n]) for n in default)


def test_grasp_sample_is_class_balanced_and_seeded():
    ds = data.load("synthetic")
    x, y = data.balanced_batch(ds, 10, seed=0)
    assert x.shape[0] == 100 and torch.bincount(y, minlength=10).tolist() == [10] * 10
    assert torch.equal(x, data.balanced_batch(ds, 10, seed=0)[0]) and not torch.equal(
        x, data.balanced_batch(ds, 10, 1)[0]
    )
