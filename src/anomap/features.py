"""Locally aware patch features shared by PatchCore, GLASS and PBAS (METHODS.md §1.2).

Per layer: every cell gets its 3×3 neighbourhood (zero padded), flattened channel-major, and
adaptive-average-pooled to `layer_dim`; deeper layers are bilinearly resized to the first
layer's grid; the concatenated per-layer vectors are adaptive-average-pooled to `target_dim`.

Two exact shortcuts keep this cheap, neither changes a value beyond float rounding:
- pooling along channels commutes with bilinear resizing along space, so we pool at each
  layer's own resolution and resize the small pooled maps, not the 9·C unfolded ones;
- when `layer_dim` equals the channel count C, each bin is exactly one channel's 3×3 block, so
  the unfold-and-pool is a 3×3 average pool (zeros counted), computed without unfolding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PatchAggregator(nn.Module):
    """Turn a list of B×C_l×h_l×w_l maps into one B×D×H×W map on the first layer's grid.

    `layer_dim=None` keeps each layer's channel count (the 3×3 average-pool fast path);
    `target_dim=None` concatenates the per-layer vectors without the final pooling.
    """

    def __init__(
        self,
        channels: Sequence[int],
        *,
        patch_size: int = 3,
        layer_dim: int | None = None,
        target_dim: int | None = None,
    ) -> None:
        super().__init__()
        if patch_size % 2 != 1:
            raise ValueError(f"patch_size must be odd, got {patch_size}")
        self.channels = tuple(channels)
        self.patch_size = patch_size
        self.layer_dim = layer_dim
        self.target_dim = target_dim
        self.layer_dims = tuple(layer_dim or c for c in self.channels)
        self.out_dim = target_dim or sum(self.layer_dims)

    def _pool_layer(self, feature: torch.Tensor, dim: int) -> torch.Tensor:
        """B×C×h×w -> B×dim×h×w: neighbourhood block of each cell, pooled along channels."""
        batch, channels, height, width = feature.shape
        pad = self.patch_size // 2
        if dim == channels:
            return F.avg_pool2d(
                feature, self.patch_size, stride=1, padding=pad, count_include_pad=True
            )
        blocks = F.unfold(feature, self.patch_size, padding=pad)  # B×(C·k·k)×(h·w), C-major
        pooled = F.adaptive_avg_pool1d(blocks.transpose(1, 2), dim)  # B×(h·w)×dim
        return pooled.transpose(1, 2).reshape(batch, dim, height, width)

    def layer_maps(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each layer's pooled B×d_l×h_l×w_l map on its own grid, before any resizing."""
        if len(features) != len(self.channels):
            raise ValueError(f"expected {len(self.channels)} feature maps, got {len(features)}")
        return [self._pool_layer(f, d) for f, d in zip(features, self.layer_dims, strict=True)]

    def combine(self, layers: Sequence[torch.Tensor]) -> torch.Tensor:
        """`layer_maps` -> B×D×H×W: resize to the first layer's grid, concatenate, pool."""
        grid = layers[0].shape[-2:]
        resized = [
            layer
            if layer.shape[-2:] == grid
            else F.interpolate(layer, size=grid, mode="bilinear", align_corners=False)
            for layer in layers
        ]
        stacked = torch.cat(resized, dim=1)
        if self.target_dim is None or self.target_dim == stacked.shape[1]:
            return stacked
        batch, total, height, width = stacked.shape
        flat = stacked.permute(0, 2, 3, 1).reshape(batch, height * width, total)
        reduced = F.adaptive_avg_pool1d(flat, self.target_dim)
        return reduced.reshape(batch, height, width, self.target_dim).permute(0, 3, 1, 2)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.combine(self.layer_maps(features))

    def output_matrix(self) -> torch.Tensor:
        """out_dim × Σd_l float64 matrix of the final pooling along the concatenated vector
        (the identity without it), so a Linear after `combine` can fold it in."""
        total = sum(self.layer_dims)
        identity = torch.eye(total, dtype=torch.float64)
        if self.out_dim == total:
            return identity
        return F.adaptive_avg_pool1d(identity[None], self.out_dim)[0].T


class FoldedLinear:
    """`rows @ weight.T + bias` for the (B·H·W)×D rows of `aggregator.combine(layers)`,
    computed in the cheaper of two exact orders.

    Every step of `combine` (resizing, concatenation, the final pooling) is linear, so the
    product equals Σ_l resize(W_l·p_l) + b: W_l are the columns of weight·`output_matrix()`
    for layer l, applied to each layer's pooled map p_l on its own, coarser grid, and the
    out-wide products are resized instead of the inputs. With Lite0's 40 + 112 channels that
    is 2.2× fewer multiply-adds than the product on the full grid; with WRN-50's pooled
    1536 + 1536 it is more, and the full grid is used. Equal up to float rounding (tested).
    """

    def __init__(
        self,
        aggregator: PatchAggregator,
        weight: torch.Tensor,
        bias: torch.Tensor,
        layers: Sequence[torch.Tensor],
    ) -> None:
        height, width = layers[0].shape[-2:]
        self.aggregator = aggregator
        self.bias = bias
        self.per_layer = sum(x[0].numel() for x in layers) < height * width * aggregator.out_dim
        if not self.per_layer:
            self.weight = weight
            return
        if aggregator.out_dim != sum(aggregator.layer_dims):
            weight = weight @ aggregator.output_matrix().to(weight)
        self.layer_weights = weight.split(aggregator.layer_dims, dim=1)

    def __call__(
        self, layers: Sequence[torch.Tensor], outputs: slice = slice(None)
    ) -> torch.Tensor:
        """`layer_maps` of some images -> their (B·H·W)×out products, or only the `outputs`
        columns (a caller reducing over many outputs keeps its blocks in cache)."""
        bias = self.bias[outputs]
        if not self.per_layer:
            rows = patch_rows(self.aggregator.combine(layers))
            return torch.addmm(bias, rows, self.weight[outputs].T)
        first, *rest = layers
        batch, _, height, width = first.shape
        out = torch.addmm(bias, patch_rows(first), self.layer_weights[0][outputs].T)
        for layer, weight in zip(rest, self.layer_weights[1:], strict=True):
            part = torch.mm(patch_rows(layer), weight[outputs].T)
            if layer.shape[-2:] != (height, width):  # resized channels-last, as `combine` does
                coarse = part.reshape(batch, *layer.shape[-2:], -1).permute(0, 3, 1, 2)
                fine = F.interpolate(coarse, (height, width), mode="bilinear", align_corners=False)
                part = fine.permute(0, 2, 3, 1).reshape(out.shape)
            out.add_(part)
        return out


def patch_rows(feature_map: torch.Tensor) -> torch.Tensor:
    """B×D×H×W -> (B·H·W)×D, image-major then row-major, the order all methods score in."""
    return feature_map.permute(0, 2, 3, 1).reshape(-1, feature_map.shape[1])
