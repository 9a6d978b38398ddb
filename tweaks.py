"""The spend-time tweaks (§3): transformations of a built, masked ticket and of its loss. The draw never
sees them. Each is one function; `apply` turns command-line flags into calls.

    AT  (architecture tweaking, §3.1) = skip + swish       TRT (training recipe tweaking, §3.2) = scale_init + ls 0.1
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import models

FLAGS = ["skip", "skip_proj", "swish", "mish", "scale_init", "ls", "kd"]  # train.py's flags of the tweaks


def skip(model, projection=False):
    """§3.1, Fig. 3: a new skip connection around every 3x3 conv+BN (not the stem), added before the activation. By
    default it has no weight (`models.ConvBN`): the ticket keeps its sparsity. Its input is batch-normalized to enter on
    the conv branch's scale, as the authors' BN-ended skip does; raw identities would double the activations at every
    block. projection (--skip-proj): the authors' skip (ToST skip_connection/models/resnet_modified.py), unmasked."""
    for m in model.modules():
        if isinstance(m, models.ConvBN) and m.skippable:
            c = m.conv
            if projection:
                conv = nn.Conv2d(c.in_channels, c.out_channels, 1, c.stride, bias=False)
                nn.init.constant_(conv.weight, 1e-4)
                m.skip = nn.Sequential(conv, models.BatchNorm(c.out_channels))
            else:
                m.skip = models.BatchNorm(c.in_channels, affine=False)
            m.skip.to(c.weight.device, memory_format=torch.channels_last)
    return model


def replace_relu(model, activation):
    """§3.1: every ReLU, stem included, becomes `activation` (nn.SiLU = Swish, nn.Mish = Mish)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, activation())
    return model


swish = functools.partial(replace_relu, activation=nn.SiLU)  # Swish (SiLU), Mish: the two of §3.1
mish = functools.partial(replace_relu, activation=nn.Mish)


def scale_init(model, mask, batches, iters=180, lr=1e-2, eta=0.1, gamma=1.0, min_scale=0.01, clip=1.0):
    """§3.2 layer-wise scaled initialization, learned as GradInit's own code (Zhu et al. 2021; zhuchen03/gradinit:
    gradinit_utils.py, gradinit_optimizers.py) does, with the authors' settings (ToST LRsI) as defaults. One scale per
    nonzero parameter tensor, from 1 (w = scale * w0: pruned weights stay zero). Each iteration minimizes
    `gradinit_objective` with the reference's RescaleAdam: a first moment per branch (objective, constraint), one shared
    second moment. BatchNorm uses batch statistics, its running ones restored. Returns {name: scale}."""
    params = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # restored at the end
    scales = {n: p.new_ones((), requires_grad=True) for n, p in params.items() if p.norm() > 0}
    floor = {n: min_scale if n.endswith("weight") else 0.0 for n in scales}
    moments = {n: [torch.zeros_like(s) for _ in range(3)] for n, s in scales.items()}  # objective, constraint, squared
    steps = [0, 0]
    with models.mode(model, True):  # BatchNorm on batch statistics
        for _ in range(iters):
            first, second = next(batches), next(batches)
            fresh = functools.partial(next, batches)  # a third batch, drawn only if the objective needs one
            objective, branch = gradinit_objective(model, params, scales, mask, first, second, fresh, eta, gamma)
            grads = torch.autograd.grad(objective, list(scales.values()))
            steps[branch] += 1
            corrections = 1 - 0.9 ** steps[branch], 1 - 0.999 ** sum(steps)  # Adam's, of each moment
            with torch.no_grad():
                for (n, s), g in zip(scales.items(), grads):
                    g, m = g.clamp(-clip, clip), moments[n]
                    m[branch].lerp_(g, 0.1)  # beta1 = 0.9
                    m[2].lerp_(g * g, 0.001)  # beta2 = 0.999, over both branches
                    update = m[branch] / corrections[0] / ((m[2] / corrections[1]).sqrt() + 1e-8)
                    s.sub_(lr * update).clamp_(min=floor[n])
    with torch.no_grad():
        for n, s in scales.items():
            params[n].mul_(s)  # in place: params[n] shares the parameter's storage
    model.load_state_dict(buffers, strict=False)  # BatchNorm's running statistics as they were
    return {n: float(s.detach()) for n, s in scales.items()}


def gradinit_objective(model, params, scales, mask, first, second, fresh, eta, gamma):
    """One GradInit iteration's objective as a function of the scales: (objective, 1 if the constraint else 0). g is
    the (masked) gradient of the loss on S = first + second batch at w = scale * w0. If |g| > gamma the objective is
    |g| itself, differentiated through g. Else it is the loss on S~ = first + fresh() batch after one step of eta along
    g/|g|, over eta, the step held constant (first order, as the reference detaches it): only w's scales move it."""
    weights = {n: p * scales[n] if n in scales else p for n, p in params.items()}
    x, y = map(torch.cat, zip(first, second))
    loss = F.cross_entropy(functional_call(model, weights, (x,)), y)
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    grads = [g * mask[n] if n in mask else g for n, g in zip(weights, grads)]
    gnorm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    if gnorm > gamma:
        return gnorm, 1
    x, y = map(torch.cat, zip(first, fresh()))
    stepped = {n: w - (eta * g / gnorm).detach() for (n, w), g in zip(weights.items(), grads)}
    return F.cross_entropy(functional_call(model, stepped, (x,)), y) / eta, 0


def kd_loss(student_logits, teacher_logits, temp):
    """Hinton et al. 2015: KL(teacher || student) of the softened distributions, scaled by temp^2."""
    student = F.log_softmax(student_logits / temp, 1)
    teacher = F.log_softmax(teacher_logits / temp, 1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temp**2


def make_loss(ls=0.0, teacher=None, kd_temp=4.0, kd_alpha=0.9):
    """The spend's loss(logits, x, y). ls: label smoothing, target y(1-ls) + ls/K (§3.2, torch's formula
    is exactly the paper's). With a teacher (§4.6 KD): (1-kd_alpha) * hard loss + kd_alpha * kd_loss."""

    def loss(logits, x, y):
        hard = F.cross_entropy(logits, y, label_smoothing=ls)
        if teacher is None:
            return hard
        with torch.no_grad():
            soft = teacher(x)
        return (1 - kd_alpha) * hard + kd_alpha * kd_loss(logits, soft, kd_temp)

    return loss


def apply(model, args):
    """The architecture tweaks named by the flags, in place (the loss's are `make_loss`; GradInit runs in train.py)."""
    proj = getattr(args, "skip_proj", False)  # runs older than --skip-proj have no such key
    if args.skip or proj:
        skip(model, projection=proj)
    if args.swish:
        swish(model)
    if args.mish:
        mish(model)
    return model
