"""Drawing masks: global magnitude pruning (IMP, OMP) and random pruning, and the mask bookkeeping.

A mask is a dict {weight name: bool tensor} over every conv and linear weight (`prunable`), with the names
of `model.state_dict()`. BatchNorm parameters and biases are never pruned. All pruners here are global:
one ranking across all layers, and each keeps an exact number of weights. The IMP loop itself (train,
prune 20%, reset, repeat) lives in train.py's `draw_level`, because it trains.
"""
import math
import sys

import torch

from models import BadInput

IMP_RATE = 0.2  # each IMP level removes 20% of the remaining weights (§4.1): density 0.8^level


def prunable(model):
    """Conv and linear weights: every parameter with more than one dimension."""
    return {n: p for n, p in model.named_parameters() if p.dim() > 1}


def ones_mask(model):
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable(model).items()}


def imp_level(sparsity):
    """The IMP level whose density 0.8^level is closest to 1 - sparsity in log scale (0.91 -> 11, 0.97 -> 16)."""
    return round(math.log(1 - sparsity) / math.log(1 - IMP_RATE))


def keep_top(scores, n_keep):
    """Mask keeping exactly the n_keep highest scores across all layers (ties broken by position)."""
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, n_keep, sorted=False).indices] = True
    mask, start = {}, 0
    for name, s in scores.items():
        mask[name] = keep[start:start + s.numel()].view_as(s)
        start += s.numel()
        if n_keep and not mask[name].any():
            print(f"warning: layer collapse, {name} is pruned entirely (§3.1)", file=sys.stderr)
    return mask


def magnitude_prune(weights, mask, n_keep):
    """Global magnitude pruning: keep the n_keep largest |w| among the weights the mask still keeps."""
    return keep_top({n: torch.where(mask[n], w.detach().abs(), -1.0) for n, w in weights.items()}, n_keep)


def imp_step(weights, mask):
    """One IMP level (Frankle & Carbin 2019; §3): prune 20% of the surviving weights by global magnitude."""
    alive = sum(int(m.sum()) for m in mask.values())
    return magnitude_prune(weights, mask, round(alive * (1 - IMP_RATE)))


def omp(weights, sparsity):
    """One-shot magnitude pruning of the trained dense weights straight to `sparsity` (§A1.4)."""
    total = sum(w.numel() for w in weights.values())
    return magnitude_prune(weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()},
                           round(total * (1 - sparsity)))


def random_prune(weights, sparsity, seed):
    """Random pruning: uniform global density, every weight equally likely to survive."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(w.numel() for w in weights.values())
    return keep_top({n: torch.rand(w.shape, generator=gen) for n, w in weights.items()},
                    round(total * (1 - sparsity)))


def check_mask(mask, model, source):
    """Refuse anything that is not a mask of exactly this model's prunable weights."""
    expected = {n: p.shape for n, p in prunable(model).items()}
    if not isinstance(mask, dict) or not all(isinstance(v, torch.Tensor) for v in mask.values()):
        raise BadInput(f"{source}: not a mask (expected a dict of weight name -> bool tensor)")
    if set(mask) != set(expected):
        missing, extra = sorted(set(expected) - set(mask)), sorted(set(mask) - set(expected))
        raise BadInput(f"{source}: mask is for another model (missing {missing[:3]}, unexpected {extra[:3]})")
    for n, m in mask.items():
        if m.dtype != torch.bool or m.shape != expected[n]:
            raise BadInput(f"{source}: {n} is {m.dtype} {tuple(m.shape)}, expected bool {tuple(expected[n])}")
    return mask


@torch.no_grad()
def apply_mask(model, mask):
    """Zero the pruned weights in place."""
    weights = prunable(model)
    names = list(mask)
    torch._foreach_mul_([weights[n] for n in names], [mask[n].to(weights[n].dtype) for n in names])


def sparsity(model):
    """Fraction of exactly-zero conv/linear weights, measured from the weights themselves."""
    weights = prunable(model).values()
    return 1 - sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)
