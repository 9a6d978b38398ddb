"""The top eigenvalue of the loss Hessian and its eigenvector (§3.3 Fig. 2, §4.6 Fig. 10, §A1.2 Fig. A11), by
power iteration on Hessian-vector products, as PyHessian (Yao et al. 2020), which the paper uses, computes it.

    python landscape.py eigenvalue RUN --out RUN/hessian.json     # Fig. 2, A13 on a finished run (this module's CLI)
    value, vector, iterations = hessian.top_eigen(model, F.cross_entropy, hessian.fixed_batches(ds), masks=mask)

The paper's figures average each batch's own top eigenvalue (`per_batch`; Fig. 2, A13: "mean across 10 random
batches", Fig. A11: 3); `top_eigen` of several batches is one Hessian of their mean loss (Fig. 10's eigenvector). Both
leave out pruned weights and put BatchNorm in eval mode as PyHessian (the trained network's loss), model and .grad kept.
"""

import itertools
import statistics

import torch

import data
import models


def project(vector, keep):  # zero the pruned coordinates: the sparse network's Hessian has none
    return [v if k is None else v * k for v, k in zip(vector, keep)]


def dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def hessian_operator(model, loss_fn, batches, params, keep):
    """v -> H v, H the Hessian of the mean loss over all examples of `batches`, .grad untouched. Each batch's gradient,
    weighted by its share, is built once with its graph, as PyHessian does for one batch: a product is then one double
    backward through each graph (d(g.v)/dw = H v), not a forward and two backwards. All graphs are held at once."""
    n = sum(len(y) for _, y in batches)
    grads = [torch.autograd.grad(loss_fn(model(x), y) * (len(y) / n), params, create_graph=True) for x, y in batches]

    def matvec(
        v,
    ):  # summed into zeros laid out as the parameters (channels_last): autograd's strides reorder dot's sums
        v, out = project(v, keep), [torch.zeros_like(p) for p in params]
        for g in grads:
            hv = torch.autograd.grad(dot(g, v), params, retain_graph=True, materialize_grads=True)
            out = [o + h for o, h in zip(out, hv)]
        return project(out, keep)

    return matvec


def power_iteration(matvec, v, iters, tol, shift=0.0):
    """(eigenvalue, unit eigenvector, iterations) for the eigenvalue of largest magnitude of H - shift*I, plus shift.
    Stops once H's Rayleigh quotient changes by at most tol, relatively. Exact norms: PyHessian's + 1e-6 biases."""
    norm = torch.sqrt(dot(v, v))
    v, value = [vi / norm for vi in v], None
    for i in range(1, iters + 1):
        hv = [h - shift * vi for h, vi in zip(matvec(v), v)]
        new, norm = float(dot(v, hv)), torch.sqrt(dot(hv, hv))  # v^T H v is the Rayleigh quotient: |v| = 1
        if norm == 0:  # v lies in the null space: its eigenvalue 0 is exact
            return shift, v, i
        v = [h / norm for h in hv]
        if value is not None and abs(new - value) <= tol * abs(value + shift):  # relative to H's own quotient
            return new + shift, v, i
        value = new
    return value + shift, v, iters


def top_eigen(model, loss_fn, batches, iters=100, tol=1e-4, masks=None, seed=0):
    """The largest (algebraic) eigenvalue of the Hessian of the mean loss_fn(model(x), y) over `batches`, its unit
    eigenvector (tensors in model.parameters() order, those requiring grad, zero where masks {name: bool tensor} prune)
    from a start vector seeded by `seed`, and the power iterations done (each stage <= iters)."""
    batches = list(batches)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    keep = [masks[n].to(p.device, p.dtype) if masks and n in masks else None for n, p in zip(names, params)]
    gen = torch.Generator().manual_seed(seed)

    def start():
        return project([torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params], keep)

    with models.mode(model, False), torch.enable_grad():  # eval: running statistics read, never updated
        matvec = hessian_operator(model, loss_fn, batches, params, keep)
        value, vector, done = power_iteration(matvec, start(), iters, tol)
        if value < 0:  # the most negative eigenvalue dominates; in H - value*I (all >= ~0) the top one does
            value, vector, more = power_iteration(matvec, start(), iters, tol, shift=value)
            done += more
    return value, vector, done


def per_batch(model, loss_fn, batches, iters=100, tol=1e-4, masks=None):
    """The paper's way: the top eigenvalue of each batch's own Hessian. (mean, std, [values], power iterations)."""
    values, _, done = zip(*[top_eigen(model, loss_fn, [b], iters, tol, masks) for b in batches])
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, list(values), sum(done)


def fixed_batches(ds, n_batches=3, batch_size=128, seed=0):
    """The first n_batches of a seeded shuffle of the training split, not augmented: the same images every time."""
    return list(itertools.islice(data.batches(ds, "train", batch_size, seed=seed), n_batches))
