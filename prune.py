"""Drawing masks: global magnitude pruning (IMP, OMP), random pruning, the pruning-at-init baselines of
Table A4 (SNIP, GraSP, SynFlow), and the mask bookkeeping.

A mask is a dict {weight name: bool tensor} over the weights `prunable` returns, named as in `model.state_dict()`;
BatchNorm parameters and biases are never pruned. All pruners here are global (one ranking across all layers) and keep
an exact number of weights. The IMP loop (train, prune 20%, reset, repeat) trains, so train.py's `draw` runs it.
"""

import copy
import math
import sys

import torch
import torch.nn.functional as F

IMP_RATE = 0.2  # each IMP level removes 20% of the remaining weights (§4.1): density 0.8^level
GRASP_TEMP = 200  # GraSP's code divides the logits by T = 200 so the softmax is not saturated at init


def prunable(model, linear=False):
    """The weights a mask covers: every conv weight, globally, as ToST's LRsI/cifar_prune.py (which leaves the
    classifier dense); with linear=True the linear weights too (--prune-classifier)."""
    return {n: p for n, p in model.named_parameters() if p.dim() == 4 or (linear and p.dim() == 2)}


def ones_mask(model, linear=False):
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable(model, linear).items()}


def imp_level(sparsity):
    """The IMP level whose density 0.8^level is closest to 1 - sparsity in log scale (0.91 -> 11, 0.97 -> 16)."""
    return round(math.log(1 - sparsity) / math.log(1 - IMP_RATE))


def keep_top(scores, n_keep):
    """Mask keeping exactly the n_keep highest scores across all layers (ties: as torch.topk picks, not by position)."""
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, n_keep, sorted=False).indices] = True
    sizes = [s.numel() for s in scores.values()]
    return {n: k.view_as(s) for (n, s), k in zip(scores.items(), keep.split(sizes))}


def warn_collapse(mask):
    """Layer collapse (§3.1): a layer the mask prunes entirely is warned of, one line each, as a ticket's training
    starts (train.train_ticket: drawn and given masks alike); training goes on."""
    for name in (n for n, m in mask.items() if not m.any()):
        print(f"warning: layer collapse, {name} is pruned entirely (§3.1)", file=sys.stderr)


def keep_count(weights, sparsity):
    return round(sum(w.numel() for w in weights.values()) * (1 - sparsity))


def imp_step(weights, mask):
    """One IMP level (Frankle & Carbin 2019; §3): prune 20% of the surviving weights by global magnitude."""
    alive = sum(int(m.sum()) for m in mask.values())  # global magnitude: the largest |w| the mask still keeps
    scores = {n: torch.where(mask[n], w.detach().abs(), -1.0) for n, w in weights.items()}
    return keep_top(scores, round(alive * (1 - IMP_RATE)))


def omp(weights, sparsity):
    """One-shot magnitude pruning of the trained dense weights straight to `sparsity` (§A1.4)."""
    return keep_top({n: w.detach().abs() for n, w in weights.items()}, keep_count(weights, sparsity))


def random_prune(weights, sparsity, seed):
    """Random pruning: uniform global density, every weight equally likely to survive."""
    gen = torch.Generator().manual_seed(seed)
    return keep_top({n: torch.rand(w.shape, generator=gen) for n, w in weights.items()}, keep_count(weights, sparsity))


def loss_grad(net, weights, batches, temp=1.0, times=None):
    """Gradient g of the cross-entropy of logits / temp summed over batches w.r.t. the weights (.grad untouched);
    with times=g, the Hessian-gradient product H g, a batch at a time (all their double-backprop graphs may not fit)."""
    weights = list(weights.values())
    total = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(net(x) / temp, y), weights, create_graph=times is not None)
        if times is not None:  # g (held fixed) . grad: its gradient is H g
            grads = torch.autograd.grad(sum((t * gr).sum() for t, gr in zip(times, grads)), weights)
        total = [t + g for t, g in zip(total, grads)]
    return total


def snip(model, batches, sparsity, linear=False):
    """SNIP (Lee et al. 2019): keep the highest connection sensitivity |g * w| at init, g the cross-entropy's gradient
    summed over `batches` [(x, y), ...]; BatchNorm in eval mode, on init statistics (snip-public: is_train False)."""
    net = copy.deepcopy(model).eval().requires_grad_(True)
    weights = prunable(net, linear)
    g = loss_grad(net, weights, batches)
    scores = {n: (gi * w).abs().detach() for (n, w), gi in zip(weights.items(), g)}
    return keep_top(scores, keep_count(weights, sparsity))


def grasp(model, batches, sparsity, linear=False):
    """GraSP (Wang et al. 2020): score -w * Hg, with g the gradient of the cross-entropy (logits / T) summed over
    `batches` and H its Hessian. A high score means removing the weight reduces the gradient flow least, so GraSP
    prunes the highest scores (its code keeps score <= threshold): we keep the top of w * Hg."""
    net = copy.deepcopy(model).train().requires_grad_(True)  # batch statistics, as the official code; on a copy
    weights, ranked = prunable(net, linear=True), prunable(net, linear)  # H g over every weight, as the official code
    hg = loss_grad(net, weights, batches, GRASP_TEMP, times=loss_grad(net, weights, batches, GRASP_TEMP))
    scores = {n: (w * h).detach() for (n, w), h in zip(weights.items(), hg) if n in ranked}  # only the mask's layers
    return keep_top(scores, keep_count(ranked, sparsity))


def synflow(model, sparsity, rounds=100, input_shape=(3, 32, 32), linear=False):
    """SynFlow (Tanaka et al. 2020), data-free: with every parameter and buffer replaced by its absolute value,
    BatchNorm in eval mode and an all-ones input, R = 1^T (prod |W|) 1 is the summed output; score |dR/dw * w|.
    Over `rounds` rounds the density falls as (1 - sparsity)^(k / rounds), re-scoring the masked net each time."""
    net = copy.deepcopy(model).double().eval().requires_grad_(True)  # float64: R, a product, may overflow fp32
    for t in net.state_dict().values():  # state_dict() shares the storage of the parameters and buffers
        t.abs_()
    weights = prunable(net, linear)
    mask = ones_mask(net, linear)
    x = torch.ones(1, *input_shape, dtype=torch.float64, device=next(net.parameters()).device)
    for k in range(1, rounds + 1):
        apply_mask(net, mask)  # masks only shrink, so this is |w0| * mask
        grads = torch.autograd.grad(net(x).sum(), list(weights.values()))
        scores = {n: (g * w).abs().detach() for (n, w), g in zip(weights.items(), grads)}
        top = max(float(s.max()) for s in scores.values()) or 1.0  # keep_top ranks in fp32: rescale to [0, 1]
        alive = {n: torch.where(mask[n], s / top, -1.0) for n, s in scores.items()}
        mask = keep_top(alive, keep_count(weights, 1 - (1 - sparsity) ** (k / rounds)))
    return mask


@torch.no_grad()
def apply_mask(model, mask):
    """Zero the pruned weights in place."""
    weights = dict(model.named_parameters())
    torch._foreach_mul_([weights[n] for n in mask], [m.to(weights[n].dtype) for n, m in mask.items()])


def sparsity(weights):
    """Fraction of exactly-zero entries of the given weight tensors, measured from the weights themselves."""
    return 1 - sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)
