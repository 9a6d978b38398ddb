"""The spend-time tweaks (§3): transformations of a built, masked ticket and of its loss. The draw never
sees them. Each is one function; `apply` turns command-line flags into calls.

    AT  (architecture tweaking, §3.1) = skip + swish       TRT (training recipe tweaking, §3.2) = scale_init + ls 0.1
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from models import BatchNorm, ConvBN


def skip(model, projection=False):
    """§3.1, Fig. 3: a new skip connection around every 3x3 conv+BN (not the stem), added before the
    activation. By default the skip carries no weight: identity, or subsample + zero-pad where stride or width
    change, so the ticket gains nothing outside its mask and its sparsity is unchanged. The input is
    batch-normalized first (affine=False: statistics only, no parameters), so the skip enters on the
    conv branch's scale, as the authors' BN-ended skip does; raw identities would double the activations
    at every block (measured: an initial loss of ~150 on ResNet-20).
    projection=True (--skip-proj) builds the authors' skip instead (ToST skip_connection/models/
    resnet_modified.py): a dense 1x1 conv, weights all 1e-4, + BatchNorm, outside the mask."""
    for m in model.modules():
        if isinstance(m, ConvBN) and m.skippable:
            c = m.conv
            if projection:
                conv = nn.Conv2d(c.in_channels, c.out_channels, 1, c.stride, bias=False)
                nn.init.constant_(conv.weight, 1e-4)
                m.skip = nn.Sequential(conv, BatchNorm(c.out_channels))
            else:
                m.skip = BatchNorm(c.in_channels, affine=False)
            m.skip.to(c.weight.device, memory_format=torch.channels_last)
    return model


def replace_relu(model, activation):
    """§3.1: every ReLU, stem included, becomes `activation` (nn.SiLU = Swish, nn.Mish = Mish)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, activation())
    return model


def swish(model):
    return replace_relu(model, nn.SiLU)


def mish(model):
    return replace_relu(model, nn.Mish)


def scale_init(model, mask, batches, iters=200, eta=0.1, gamma=1.0, min_scale=0.01, clip=1.0, lr=5e-3):
    """§3.2 layer-wise scaled initialization, learned as in GradInit (Zhu et al. 2021).

    One scalar per weight tensor (conv, linear, BatchNorm), all starting at 1, is trained with Adam (lr)
    so that one SGD step of size eta along the normalized gradient, taken on one half of a batch,
    lowers the loss on the other half as much as possible. While the gradient norm exceeds gamma the
    scalars minimize that norm instead (GradInit's constraint). Scalars stay >= min_scale and their
    gradient is clipped to norm `clip`. The look-ahead gradient is masked, and the final weights are
    w * scale, so pruned weights stay exactly zero. BatchNorm statistics are left as they were.
    Returns the learned scales {name: float}."""
    params = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    names = [n for n in params if n.endswith("weight")]
    scales = {n: torch.ones((), device=params[n].device, requires_grad=True) for n in names}
    opt = torch.optim.Adam(scales.values(), lr=lr)
    was_training = model.training
    model.train()
    for _ in range(iters):
        x, y = next(batches)
        half = len(x) // 2
        weights = {n: p * scales[n] if n in scales else p for n, p in params.items()}
        loss = F.cross_entropy(functional_call(model, weights, (x[:half],)), y[:half])
        grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
        grads = [g * mask[n] if n in mask else g for n, g in zip(weights, grads)]
        gnorm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        if gnorm > gamma:
            objective = gnorm
        else:
            stepped = {n: w - eta * g / gnorm for (n, w), g in zip(weights.items(), grads)}
            objective = F.cross_entropy(functional_call(model, stepped, (x[half:],)), y[half:])
        opt.zero_grad()
        objective.backward()
        nn.utils.clip_grad_norm_(list(scales.values()), clip)
        opt.step()
        with torch.no_grad():
            for s in scales.values():
                s.clamp_(min=min_scale)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in scales:
                p.mul_(scales[n])
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    model.train(was_training)
    return {n: float(s.detach()) for n, s in scales.items()}


def kd_loss(student_logits, teacher_logits, temp):
    """Hinton et al. 2015: KL(teacher || student) of the softened distributions, scaled by temp^2."""
    return F.kl_div(F.log_softmax(student_logits / temp, 1), F.log_softmax(teacher_logits / temp, 1),
                    reduction="batchmean", log_target=True) * temp ** 2


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
    """The architecture tweaks named by the flags, in place; returns the names of those applied."""
    done = []
    if args.skip or getattr(args, "skip_proj", False):  # runs older than --skip-proj have no such key
        skip(model, projection=getattr(args, "skip_proj", False))
        done.append("skip_proj" if getattr(args, "skip_proj", False) else "skip")
    for flag, tweak in (("swish", swish), ("mish", mish)):
        if getattr(args, flag):
            tweak(model)
            done.append(flag)
    return done
