"""The paper's networks (§4.1, Fig. 5, Table A4), CIFAR-style.

    model = models.get_model("resnet18", num_classes=100, in_channels=3)

ResNet-18/34/50 (3x3 stem, no max-pool), ResNet-20/32/56 (6n+2), VGG-16 with BatchNorm, MobileNet v1. Every network
ends in adaptive average pooling, so any input size works. Two seams serve the tweaks: every conv and its BatchNorm form
one `ConvBN` unit (the skip tweak of Fig. 3 sets its `skip`), and every activation is its own `nn.ReLU` module (the
Swish/Mish tweak swaps it). Stages are named layer1, layer2, ... everywhere, so analysis tools can group by stage.
"""

import contextlib
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class BatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d, but in eval mode under autograd (Hessian-vector products) the same affine map written out, whose
    double backward is cheap."""

    def forward(self, x):
        if self.training or not torch.is_grad_enabled():
            return super().forward(x)
        scale = torch.rsqrt(self.running_var + self.eps) * (self.weight if self.affine else 1)
        shift = (self.bias if self.affine else 0) - self.running_mean * scale
        return x * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)


class ConvBN(nn.Module):
    """conv -> BatchNorm, plus skip(input) if `skip` is set (tweaks.skip, §3.1 Fig. 3), before the next activation: a
    parameter-free BatchNorm + shortcut (no weight escapes the mask), or the authors' 1x1 conv + BN (--skip-proj)."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1, skippable=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = BatchNorm(cout)
        self.skippable = skippable and kernel == 3  # the paper adds skips around the 3x3 convs only
        self.skip = None  # tweaks.skip sets a BatchNorm without learned parameters here

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.skip is None:
            return y
        s = self.skip(x)
        return y + (s if s.shape == y.shape else parameter_free_shortcut(s, y.shape[1], self.conv.stride[0]))


def parameter_free_shortcut(x, channels, stride):
    """He et al. 2016's option A: subsample by the stride, zero-pad the missing channels (drop extra ones)."""
    return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, channels - x.shape[1]))


class Block(nn.Module):
    """A ResNet block: two 3x3 ConvBNs (basic), or 1x1, 3x3, 1x1 with 4x the planes out (bottleneck, ResNet-50)."""

    def __init__(self, cin, planes, stride=1, bottleneck=False):
        super().__init__()
        if bottleneck:  # the block's only 3x3 conv carries the stride
            units = [ConvBN(cin, planes, 1), ConvBN(planes, planes, 3, stride), ConvBN(planes, planes * 4, 1)]
        else:
            units = [ConvBN(cin, planes, 3, stride), ConvBN(planes, planes, 3)]
        for i, unit in enumerate(units):
            setattr(self, f"unit{i + 1}", unit)
        self.num_units = len(units)
        cout = units[-1].conv.out_channels
        # the block's own residual: identity where shapes match, else a 1x1 ConvBN (prunable like any conv)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else ConvBN(cin, cout, 1, stride)
        self.act = nn.ReLU()

    def forward(self, x):
        out = x
        for i in range(1, self.num_units):
            out = self.act(getattr(self, f"unit{i}")(out))
        return self.act(getattr(self, f"unit{self.num_units}")(out) + self.shortcut(x))


def resnet(depths, widths, num_classes, in_channels, bottleneck=False):
    """3x3 stem (no max-pool: CIFAR), built first as before (same init for a seed), then one stage per depth."""
    stem, stages, cin = ConvBN(in_channels, widths[0], 3, skippable=False), [], widths[0]
    for i, (depth, width) in enumerate(zip(depths, widths)):
        blocks = []
        for j in range(depth):
            blocks.append(Block(cin, width, 2 if i > 0 and j == 0 else 1, bottleneck))
            cin = width * 4 if bottleneck else width
        stages.append(nn.Sequential(*blocks))
    return network(stages, cin, num_classes, stem)


def network(layers, width, num_classes, stem=None):
    """The network: stages layer1..layerN (after a ResNet's stem + ReLU), average pooling, a linear classifier."""
    head = [("stem", stem), ("act", nn.ReLU())] if stem is not None else []
    named = head + [(f"layer{i + 1}", stage) for i, stage in enumerate(layers)]
    tail = [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(width, num_classes))]
    return nn.Sequential(OrderedDict(named + tail))


def conv_act(cin, cout, kernel, stride=1, groups=1, skippable=True):
    return nn.Sequential(ConvBN(cin, cout, kernel, stride, groups, skippable), nn.ReLU())


def vgg16(num_classes, in_channels):
    """VGG-16 with BatchNorm and one linear classifier (the LTH papers' CIFAR VGG)."""
    stages, cin = [], in_channels
    for widths in ([64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3):
        layers = []
        for w in widths:
            layers.append(conv_act(cin, w, 3, skippable=cin != in_channels))
            cin = w
        layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: small inputs (28x28) survive five pools
        stages.append(nn.Sequential(*layers))
    return network(stages, 512, num_classes)


def mobilenet(num_classes, in_channels):
    """MobileNet v1 (Howard et al. 2017), CIFAR-style: depthwise 3x3 + pointwise 1x1 pairs."""
    plan = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]
    stages, layers, cin = [], [conv_act(in_channels, 32, 3, skippable=False)], 32
    for item in plan:
        cout, stride = item if isinstance(item, tuple) else (item, 1)
        if stride > 1:  # a new stage starts at each downsampling
            stages.append(nn.Sequential(*layers))
            layers = []
        layers += [conv_act(cin, cin, 3, stride, groups=cin), conv_act(cin, cout, 1)]
        cin = cout
    stages.append(nn.Sequential(*layers))
    return network(stages, 1024, num_classes)


ARCHS = {
    "resnet18": lambda k, c: resnet([2, 2, 2, 2], [64, 128, 256, 512], k, c),
    "resnet34": lambda k, c: resnet([3, 4, 6, 3], [64, 128, 256, 512], k, c),
    "resnet50": lambda k, c: resnet([3, 4, 6, 3], [64, 128, 256, 512], k, c, bottleneck=True),
    "resnet20": lambda k, c: resnet([3, 3, 3], [16, 32, 64], k, c),
    "resnet32": lambda k, c: resnet([5, 5, 5], [16, 32, 64], k, c),
    "resnet56": lambda k, c: resnet([9, 9, 9], [16, 32, 64], k, c),
    "vgg16": vgg16,
    "mobilenet": mobilenet,
}


def get_model(arch, num_classes, in_channels=3):
    # channels_last (NHWC), as the batches of data.normalize: faster convs on CPU (oneDNN) and GPU (tensor cores)
    return ARCHS[arch](num_classes, in_channels).to(memory_format=torch.channels_last)


@contextlib.contextmanager
def mode(model, training):
    """model.train(training) for a with-block, then the mode it had back, even on an exception."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)
