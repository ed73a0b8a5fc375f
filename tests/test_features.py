"""The patch-feature aggregation of METHODS.md §1.2 and its exact shortcuts."""

import pytest
import torch
import torch.nn.functional as F

from anomap.features import FoldedLinear, PatchAggregator, patch_rows


def reference_layer(feature, grid, dim):
    """Literal reference order for one layer: unfold, resize every unfolded map, then pool."""
    b, c, h, w = feature.shape
    blocks = F.unfold(feature, 3, padding=1).reshape(b, c * 9, h, w)
    if (h, w) != tuple(grid):
        blocks = F.interpolate(blocks, size=grid, mode="bilinear", align_corners=False)
    rows = blocks.permute(0, 2, 3, 1).reshape(-1, c * 9)
    return F.adaptive_avg_pool1d(rows[:, None], dim)[:, 0]


def reference_aggregate(features, layer_dim, target_dim):
    grid = features[0].shape[-2:]
    per_layer = [reference_layer(f, grid, layer_dim) for f in features]
    stacked = torch.stack(per_layer, dim=1).reshape(len(per_layer[0]), -1)
    return F.adaptive_avg_pool1d(stacked[:, None], target_dim)[:, 0]


def test_wrn_shapes_and_reference_equality():
    torch.manual_seed(0)
    layer2 = torch.randn(1, 512, 36, 36)
    layer3 = torch.randn(1, 1024, 18, 18)
    agg = PatchAggregator([512, 1024], layer_dim=1536, target_dim=1536)
    rows = patch_rows(agg([layer2, layer3]))
    assert rows.shape == (1296, 1536)
    expected = reference_aggregate([layer2, layer3], 1536, 1536)
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-4)


def test_closed_form_768_plus_768():
    """METHODS §1.2.6: final vector = [pool(layer2 block → 768) ‖ pool(layer3 block → 768)]."""
    torch.manual_seed(1)
    layer2 = torch.randn(1, 512, 6, 6)
    layer3 = torch.randn(1, 1024, 3, 3)
    agg = PatchAggregator([512, 1024], layer_dim=1536, target_dim=1536)
    rows = patch_rows(agg([layer2, layer3]))
    b2 = F.unfold(layer2, 3, padding=1).transpose(1, 2).reshape(-1, 4608)
    l3 = F.interpolate(
        F.unfold(layer3, 3, padding=1).reshape(1, 9216, 3, 3), size=(6, 6), mode="bilinear"
    )
    b3 = l3.permute(0, 2, 3, 1).reshape(-1, 9216)
    closed = torch.cat([b2.reshape(-1, 768, 6).mean(2), b3.reshape(-1, 768, 12).mean(2)], 1)
    torch.testing.assert_close(rows, closed, atol=1e-5, rtol=1e-4)


def test_channel_dim_fast_path_equals_unfold_pooling():
    torch.manual_seed(2)
    feats = [torch.randn(2, 40, 8, 8), torch.randn(2, 112, 4, 4)]
    fast = PatchAggregator([40, 112])
    assert fast.out_dim == 152
    rows = patch_rows(fast(feats))
    expected = torch.cat([reference_layer(f, (8, 8), f.shape[1]) for f in feats], dim=1)
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-4)


def test_patch_rows_order_is_image_then_row_major():
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    rows = patch_rows(fmap)
    assert rows.shape == (8, 3)
    torch.testing.assert_close(rows[5], fmap[1, :, 0, 1])


@pytest.mark.parametrize(
    ("dims", "per_layer"),
    [
        ({}, True),  # Lite0's 40 + 112 channels kept
        ({"target_dim": 96}, True),  # the final pooling folded into the per-layer weights
        ({"target_dim": 24}, False),  # the full grid is cheaper
        ({"layer_dim": 200, "target_dim": 300}, True),
        ({"layer_dim": 1536, "target_dim": 1536}, False),  # the paper's WRN-50 pooling
    ],
)
def test_folded_linear_equals_the_linear_on_combined_rows(dims, per_layer):
    torch.manual_seed(2)
    layers = [torch.randn(3, 40, 8, 10), torch.randn(3, 112, 4, 5)]
    agg = PatchAggregator([40, 112], **dims)
    weight, bias = torch.randn(64, agg.out_dim), torch.randn(64)
    pooled = agg.layer_maps(layers)
    linear = FoldedLinear(agg, weight, bias, pooled)
    assert linear.per_layer == per_layer
    expected = torch.addmm(bias, patch_rows(agg(layers)), weight.T)
    torch.testing.assert_close(linear(pooled), expected, atol=1e-4, rtol=1e-4)
    # image chunks give the rows of those images, output slices those columns
    torch.testing.assert_close(
        linear(pooled, slice(5, 20)), expected[:, 5:20], atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(linear([x[1:] for x in pooled]), expected[80:], atol=1e-4, rtol=1e-4)
