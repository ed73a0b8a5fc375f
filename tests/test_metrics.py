"""Metrics against scikit-learn and slow, obviously correct references."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from anomap import metrics


def blobs(n=6, size=24, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for mask in masks:
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(2, size - 6, 2)
            h, w = rng.integers(2, 6, 2)
            mask[y : y + h, x : x + w] = True
    maps = rng.random((n, size, size)).astype(np.float32) + masks * rng.random() * 1.5
    return masks, np.round(maps, 2)  # rounding makes many ties


def pairwise_auroc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_image_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + labels * 0.3, 1)
    assert metrics.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert metrics.image_auroc(labels, scores) == pytest.approx(pairwise_auroc(labels, scores))
    assert metrics.image_ap(labels, scores) == pytest.approx(
        average_precision_score(labels, scores)
    )
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
    assert metrics.f1_max(labels, scores)[0] == pytest.approx(f1)


def test_pixel_metrics_match_sklearn():
    masks, maps = blobs()
    flat_m, flat_s = masks.reshape(-1), maps.reshape(-1)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(flat_m, flat_s))
    assert metrics.pixel_ap(masks, maps) == pytest.approx(average_precision_score(flat_m, flat_s))


def brute_force_aupro(masks, maps, limit=0.3):
    regions = [
        (i, lab == r)
        for i, m in enumerate(masks)
        for lab, n in [ndimage.label(m, structure=np.ones((3, 3)))]
        for r in range(1, n + 1)
    ]
    normal = ~masks
    points = [(0.0, 0.0)]
    for th in np.unique(maps)[::-1]:
        pred = maps >= th
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & region).sum() / region.sum() for i, region in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    inside = fpr <= limit
    x, y = list(fpr[inside]), list(pro[inside])
    if x[-1] < limit:
        j = np.argmax(~inside)
        y.append(np.interp(limit, [fpr[j - 1], fpr[j]], [pro[j - 1], pro[j]]))
        x.append(limit)
    return np.trapezoid(y, x) / limit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_brute_force(seed):
    masks, maps = blobs(seed=seed)
    if not masks.any():
        masks[0, 3:6, 3:6] = True
    assert metrics.aupro(masks, maps) == pytest.approx(brute_force_aupro(masks, maps), abs=1e-6)


def test_aupro_perfect_and_sampled_thresholds():
    masks, _ = blobs(seed=3)
    masks[0, 1:4, 1:4] = True
    perfect = masks.astype(np.float32)
    assert metrics.aupro(masks, perfect) == pytest.approx(1.0)
    _, maps = blobs(seed=3)
    exact = metrics.aupro(masks, maps)
    assert metrics.aupro(masks, maps, num_thresholds=500) == pytest.approx(exact, abs=0.02)


def brute_force_repo_pro(masks, maps):
    """Independent loop in the style of the GLASS/PBAS metric code."""
    low, high = maps.min(), maps.max()
    delta = (high - low) / 200
    rows = []
    for k in range(200):
        th = low + k * delta
        binary = maps > th
        overlaps = []
        for b, m in zip(binary, masks, strict=True):
            dilated = ndimage.binary_dilation(b, structure=np.ones((5, 5)))
            lab, n = ndimage.label(m, structure=np.ones((3, 3)))
            overlaps += [dilated[lab == r].sum() / (lab == r).sum() for r in range(1, n + 1)]
        fpr = (binary & ~masks).sum() / (~masks).sum()
        rows.append((np.mean(overlaps), fpr))
    pro, fpr = np.array(rows).T
    pro, fpr = pro[fpr < 0.3], fpr[fpr < 0.3]
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min() + 1e-10)
    return auc(fpr, pro)


def test_repo_pro_matches_reference_and_dilation_helps():
    masks, maps = blobs(seed=4, n=4, size=20)
    masks[0, 5:9, 5:9] = True
    value = metrics.repo_pro(masks, maps)
    assert value == pytest.approx(brute_force_repo_pro(masks, maps), abs=1e-9)
    assert value >= metrics.aupro(masks, maps) - 0.2


def test_degenerate_inputs_are_nan_and_shapes_checked():
    assert np.isnan(metrics.image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    masks = np.zeros((2, 8, 8), bool)
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert np.isnan(metrics.pixel_auroc(masks, maps))
    assert np.isnan(metrics.aupro(masks, maps))
    with pytest.raises(ValueError, match="N×H×W"):
        metrics.pixel_auroc(masks, maps[:, :4])
    with pytest.raises(ValueError, match="differ in size"):
        metrics.image_auroc([0, 1], [0.5])


def test_evaluate_keys():
    masks, maps = blobs(seed=5)
    masks[0, 2:5, 2:5] = True
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    labels[-1] = 1 - labels[-1] if labels.min() == labels.max() else labels[-1]
    scores = maps.reshape(len(maps), -1).max(1)
    result = metrics.evaluate(labels, scores, masks, maps, pro_variant="both")
    assert set(result) == {
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "aupro",
        "repo_pro",
    }
