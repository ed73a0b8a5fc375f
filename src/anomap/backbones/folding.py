"""Fold a frozen backbone's BatchNorms into the convolutions before them.

A backbone in eval mode normalises with fixed running statistics, so `BN(conv(x))` is one
convolution with a scaled weight and a bias: the same values up to float rounding, one pass
over every activation map fewer (about 9 % of EfficientNet-Lite0's CPU time).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PROBE_SIZE = 64  # side of the random image that checks a folded model against the original


def _foldable(previous: nn.Module | None, norm: nn.Module) -> bool:
    """A BatchNorm2d (or timm's BatchNormAct2d) with running statistics right after a Conv2d
    with as many output channels, among the same parent's children."""
    plain = type(norm) is nn.BatchNorm2d
    with_activation = type(norm).__name__ == "BatchNormAct2d" and hasattr(norm, "act")
    return (
        (plain or with_activation)
        and isinstance(previous, nn.Conv2d)
        and previous.out_channels == norm.num_features
        and norm.running_mean is not None
    )


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(shift, requires_grad=False)


def _remainder(norm: nn.Module) -> nn.Module:
    """What stays in the BatchNorm's place: timm's BatchNormAct2d keeps its dropout and
    activation (applied in that order after normalising), a plain BatchNorm nothing."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(norm.drop, norm.act)


def fold_batch_norms(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm that directly follows a Conv2d among its parent's
    children (the order timm's ResNets and EfficientNets register them); returns how many.
    Registration order is not always execution order, so use `folded_copy`, which checks."""
    count = 0
    for parent in list(model.modules()):
        previous: nn.Module | None = None
        for name, child in list(parent.named_children()):
            if _foldable(previous, child):
                _fold(previous, child)
                setattr(parent, name, _remainder(child))
                count += 1
            previous = child
    return count


@torch.no_grad()
def folded_copy(model: nn.Module, rtol: float = 1e-3) -> tuple[nn.Module, int]:
    """(a copy of `model` with its BatchNorms folded, how many), or (`model`, 0) when none
    folds or the copy's outputs on a random image differ from the original's by more than
    `rtol` of their largest magnitude (a BatchNorm registered beside a convolution it does
    not follow)."""
    model.eval()
    folded = copy.deepcopy(model)
    count = fold_batch_norms(folded)
    if count == 0:
        return model, 0
    parameter = next(model.parameters())
    probe = torch.randn(
        1, 3, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0)
    ).to(parameter)
    for before, after in zip(model(probe), folded(probe), strict=True):
        if (before - after).abs().max() > rtol * before.abs().max():
            return model, 0
    return folded, count
