"""Metrics against scikit-learn and slow, obviously correct references written here."""

import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from anomap import metrics

EIGHT = np.ones((3, 3), dtype=bool)


def blobs(n=6, size=24, seed=0, margin=2):
    """Rectangular defects (some touching, some at the border) and rounded maps (many ties),
    with negative scores and both signed zeros in the mix."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for mask in masks:
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0 if margin == 0 else margin, size - 4, 2)
            h, w = rng.integers(1, 7, 2)
            mask[y : y + h, x : x + w] = True
    maps = rng.normal(size=(n, size, size)) + masks * rng.uniform(0.5, 2.0)
    maps = np.round(maps, 1).astype(np.float32)
    zeros = maps == 0
    maps[zeros] = np.where(rng.random(zeros.sum()) < 0.5, np.float32(-0.0), np.float32(0.0))
    return masks, maps


def pairwise_auroc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def brute_f1(labels, scores):
    best = (-1.0, None)
    for th in np.unique(scores)[::-1]:
        pred = scores >= th
        tp = (pred & (labels == 1)).sum()
        f1 = 2 * tp / (pred.sum() + (labels == 1).sum())
        if f1 > best[0]:
            best = (f1, th)
    return best


# ------------------------------------------------------------------------------ image level


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn_and_pairwise_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + labels * 0.3, 1)  # ~14 distinct values: many ties
    assert metrics.image_auroc(labels, scores) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )
    assert metrics.image_auroc(labels, scores) == pytest.approx(
        pairwise_auroc(labels, scores), abs=1e-12
    )
    assert metrics.image_ap(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    value, threshold = metrics.f1_max(labels, scores)
    ref_value, ref_threshold = brute_f1(labels, scores)
    assert value == pytest.approx(ref_value, abs=1e-12)
    assert threshold == ref_threshold


def test_image_metrics_accept_bool_and_untied_scores():
    rng = np.random.default_rng(3)
    labels = rng.random(57) < 0.4
    scores = rng.normal(size=57)
    assert metrics.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert metrics.image_ap(labels, scores) == pytest.approx(
        average_precision_score(labels, scores)
    )
    assert metrics.image_auroc([0, 1], [0.2, 0.7]) == 1.0
    assert metrics.image_auroc([0, 1], [0.5, 0.5]) == 0.5
    assert isinstance(metrics.image_auroc(labels, scores), float)


# ------------------------------------------------------------------------------ pixel level


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_metrics_match_sklearn(seed):
    masks, maps = blobs(seed=seed)
    masks[0, 3:6, 3:6] = True
    flat_m, flat_s = masks.reshape(-1), maps.reshape(-1).astype(np.float64)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(
        roc_auc_score(flat_m, flat_s), abs=1e-12
    )
    assert metrics.pixel_ap(masks, maps) == pytest.approx(
        average_precision_score(flat_m, flat_s), abs=1e-12
    )
    value, threshold = metrics.pixel_f1_max(masks, maps)
    ref_value, ref_threshold = brute_f1(flat_m.astype(int), flat_s)
    assert value == pytest.approx(ref_value, abs=1e-12)
    assert threshold == ref_threshold
    # uint8 0/255 masks mean the same
    assert metrics.pixel_auroc(masks.astype(np.uint8) * 255, maps) == metrics.pixel_auroc(
        masks, maps
    )


def test_pixel_metrics_stream_across_chunks(monkeypatch):
    """Tied scores that straddle a chunk boundary must still form one threshold."""
    masks, maps = blobs(seed=7, n=8, size=32)
    masks[1, 4:9, 4:9] = True
    maps = np.round(maps, 0)  # a handful of distinct values: huge tie groups
    expected = (
        metrics.pixel_auroc(masks, maps),
        metrics.pixel_ap(masks, maps),
        metrics.aupro(masks, maps),
    )
    monkeypatch.setattr(metrics, "_CHUNK", 97)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected[0], abs=1e-12)
    assert metrics.pixel_ap(masks, maps) == pytest.approx(expected[1], abs=1e-12)
    assert metrics.aupro(masks, maps) == pytest.approx(expected[2], abs=1e-12)
    flat_m, flat_s = masks.reshape(-1), maps.reshape(-1)
    assert expected[0] == pytest.approx(roc_auc_score(flat_m, flat_s), abs=1e-12)


# ------------------------------------------------------------------------------------ AUPRO


def brute_force_aupro(masks, maps, limit=0.3, thresholds=None):
    """Every threshold (default: every distinct score, highest first), PRO and FPR counted
    directly, trapezoid up to the limit with linear interpolation at it."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, found = ndimage.label(mask, structure=EIGHT)
        regions += [(i, labelled == r) for r in range(1, found + 1)]
    normal = ~masks
    if thresholds is None:
        thresholds = np.unique(maps)[::-1]
    points = [(0.0, 0.0)]
    for th in thresholds:
        pred = maps >= th
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & region).sum() / region.sum() for i, region in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(points).T
    inside = fpr <= limit
    x, y = list(fpr[inside]), list(pro[inside])
    if not inside.all():
        j = int(np.argmax(~inside))
        y.append(np.interp(limit, [fpr[j - 1], fpr[j]], [pro[j - 1], pro[j]]))
        x.append(limit)
    x, y = np.array(x), np.array(y)
    return np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / limit


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aupro_matches_brute_force(seed):
    masks, maps = blobs(seed=seed)
    masks[0, 3:6, 3:6] = True
    assert metrics.aupro(masks, maps) == pytest.approx(brute_force_aupro(masks, maps), abs=1e-6)
    assert metrics.aupro(masks, maps, fpr_limit=0.05) == pytest.approx(
        brute_force_aupro(masks, maps, limit=0.05), abs=1e-6
    )


def test_aupro_untied_scores_matches_brute_force():
    masks, maps = blobs(seed=11, n=3, size=16)
    masks[1, 2:5, 2:9] = True
    maps = maps + np.random.default_rng(0).random(maps.shape).astype(np.float32) * 1e-3
    assert metrics.aupro(masks, maps) == pytest.approx(brute_force_aupro(masks, maps), abs=1e-6)


def test_aupro_binned_matches_brute_force_on_the_same_thresholds():
    masks, maps = blobs(seed=5)
    masks[2, 8:12, 8:15] = True
    thresholds = np.linspace(maps.min(), maps.max(), 50)[::-1]
    assert metrics.aupro(masks, maps, num_thresholds=50) == pytest.approx(
        brute_force_aupro(masks, maps, thresholds=thresholds), abs=1e-6
    )
    exact = metrics.aupro(masks, maps)
    assert metrics.aupro(masks, maps, num_thresholds=2000) == pytest.approx(exact, abs=0.01)


def test_aupro_perfect_and_hand_computed():
    masks, _ = blobs(seed=3)
    masks[0, 1:4, 1:4] = True
    assert metrics.aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert metrics.aupro(masks, masks.astype(np.float32), num_thresholds=10) == pytest.approx(1.0)
    # image A: one 2-pixel region; image B: one 1-pixel region scored below everything.
    # R = 2, 9 normal pixels. Curve (FPR, PRO): (0,0) (0,.25) (1/9,.25) (1/9,.5) (2/9,.5)
    # (3/9,.5) ... so the area to 0.3 is 1/9·.25 + (0.3 − 1/9)·.5 = 11/90, normalised 11/27.
    masks = np.array([[[1, 1, 0, 0, 0, 0]], [[0, 0, 0, 0, 0, 1]]], dtype=bool)
    maps = np.array(
        [[[0.9, 0.5, 0.8, 0.4, 0.3, 0.2]], [[0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]], dtype=np.float32
    )
    assert metrics.aupro(masks, maps) == pytest.approx(11 / 27)
    assert metrics.aupro(masks[:1], maps[:1]) == pytest.approx(0.175 / 0.3)


# ---------------------------------------------------------------------------------- repo-PRO


def brute_force_repo_pro(masks, maps, rescale="minmax", dilate=True):
    """Independent per-threshold loop in the style of the GLASS/PBAS metric code."""
    low, high = float(maps.min()), float(maps.max())
    delta = (high - low) / 200
    rows = []
    for k in range(200):
        binary = maps > low + k * delta
        overlaps = []
        for b, m in zip(binary, masks, strict=True):
            if dilate:  # border_value=0: nothing enters from outside, like cv2.dilate
                b = ndimage.binary_dilation(b, structure=np.ones((5, 5)))
            lab, n = ndimage.label(m, structure=EIGHT)
            overlaps += [b[lab == r].sum() / (lab == r).sum() for r in range(1, n + 1)]
        fpr = (binary & ~masks).sum() / (~masks).sum()
        rows.append((np.mean(overlaps), fpr))
    pro, fpr = np.array(rows).T
    pro, fpr = pro[fpr < 0.3], fpr[fpr < 0.3]
    if rescale == "minmax":
        fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min() + 1e-10)
    else:
        fpr = fpr / fpr.max()
    return auc(fpr, pro)


@pytest.mark.parametrize(("seed", "offset"), [(4, 0.0), (6, 0.0), (9, -10.0)])
@pytest.mark.parametrize("rescale", ["minmax", "max"])
def test_repo_pro_matches_reference(seed, offset, rescale):
    """Defects touch the border; all-negative maps catch padding that adds fake positives."""
    masks, maps = blobs(seed=seed, n=4, size=20, margin=0)
    masks[0, 0:4, 16:20] = True
    maps = maps + np.float32(offset)
    value = metrics.repo_pro(masks, maps, rescale=rescale)
    assert value == pytest.approx(brute_force_repo_pro(masks, maps, rescale), abs=1e-9)


def test_repo_pro_dilation_only_helps():
    masks, maps = blobs(seed=8, n=4, size=20)
    masks[1, 5:9, 5:9] = True
    dilated = metrics.repo_pro(masks, maps)
    assert dilated >= brute_force_repo_pro(masks, maps, dilate=False) - 1e-12
    assert dilated == pytest.approx(brute_force_repo_pro(masks, maps), abs=1e-9)


# ----------------------------------------------------------------------- degenerate, errors


def test_degenerate_inputs_are_nan_without_warnings():
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 8, 8), bool)
    maps = rng.random((2, 8, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
        assert np.isnan(metrics.image_auroc([1, 1, 1], [0.1, 0.2, 0.3]))
        assert np.isnan(metrics.image_ap([0, 0, 0], [0.1, 0.2, 0.3]))
        assert np.isnan(metrics.f1_max([0, 0], [0.1, 0.2])[0])
        assert metrics.image_ap([1, 1], [0.1, 0.2]) == 1.0  # sklearn's value too
        assert np.isnan(metrics.image_auroc([], []))
        for value in (
            metrics.pixel_auroc(masks, maps),
            metrics.pixel_ap(masks, maps),
            metrics.pixel_f1_max(masks, maps)[0],
            metrics.aupro(masks, maps),
            metrics.aupro(masks, maps, num_thresholds=20),
            metrics.repo_pro(masks, maps),
            metrics.aupro(~masks, maps),
            metrics.repo_pro(~masks, maps),
        ):
            assert np.isnan(value)
        result = metrics.evaluate([0, 0], [0.1, 0.2], masks, maps, pro_variant="both")
        assert np.isnan(result["image_auroc"]) and np.isnan(result["aupro"])
        assert np.isnan(result["pixel_auroc"]) and np.isnan(result["repo_pro"])


def test_shape_and_value_errors():
    masks = np.zeros((2, 8, 8), bool)
    maps = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="N×H×W"):
        metrics.pixel_auroc(masks, maps[:, :4])
    with pytest.raises(ValueError, match="N×H×W"):
        metrics.aupro(masks[0], maps[0])
    with pytest.raises(ValueError, match="same length"):
        metrics.image_auroc([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        metrics.image_auroc([-1, 1], [0.5, 0.6])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        metrics.repo_pro(masks, bad)
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro(masks, maps, fpr_limit=0)
    with pytest.raises(ValueError, match="rescale"):
        metrics.repo_pro(masks, maps, rescale="mean")
    with pytest.raises(ValueError, match="pro_variant"):
        metrics.evaluate([0, 1], [0.1, 0.2], masks, maps, pro_variant="nope")
    with pytest.raises(ValueError, match="labels but"):
        metrics.evaluate([0, 1, 1], [0.1, 0.2, 0.3], masks, maps)
    with pytest.raises(ValueError, match="both masks and maps"):
        metrics.evaluate([0, 1], [0.1, 0.2], masks, None)


# ------------------------------------------------------------------------------- evaluate


def test_evaluate_agrees_with_the_single_metrics():
    masks, maps = blobs(seed=5)
    masks[0, 2:5, 2:5] = True
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    labels[-1] = 1 - labels[-1] if labels.min() == labels.max() else labels[-1]
    scores = maps.reshape(len(maps), -1).max(1)
    result = metrics.evaluate(labels, scores, masks, maps, pro_variant="both")
    assert result == {
        "image_auroc": pytest.approx(metrics.image_auroc(labels, scores), abs=1e-12),
        "image_ap": pytest.approx(metrics.image_ap(labels, scores), abs=1e-12),
        "image_f1_max": pytest.approx(metrics.f1_max(labels, scores)[0], abs=1e-12),
        "pixel_auroc": pytest.approx(metrics.pixel_auroc(masks, maps), abs=1e-12),
        "pixel_ap": pytest.approx(metrics.pixel_ap(masks, maps), abs=1e-12),
        "pixel_f1_max": pytest.approx(metrics.pixel_f1_max(masks, maps)[0], abs=1e-12),
        "aupro": pytest.approx(metrics.aupro(masks, maps), abs=1e-12),
        "repo_pro": pytest.approx(metrics.repo_pro(masks, maps), abs=1e-12),
    }
    assert all(type(v) is float for v in result.values())
    assert set(metrics.evaluate(labels, scores)) == {"image_auroc", "image_ap", "image_f1_max"}
    assert "repo_pro" not in metrics.evaluate(labels, scores, masks, maps)
    assert "aupro" not in metrics.evaluate(labels, scores, masks, maps, pro_variant="repo")


def test_full_category_size_runs():
    """150 × 256² (one MVTec category): every pixel metric on ~10 M pixels."""
    rng = np.random.default_rng(0)
    masks = np.zeros((150, 256, 256), bool)
    for mask in masks[:100]:
        y, x = rng.integers(0, 200, 2)
        mask[y : y + rng.integers(3, 50), x : x + rng.integers(3, 50)] = True
    maps = rng.random(masks.shape, dtype=np.float32) + masks * np.float32(0.5)
    labels = masks.reshape(150, -1).any(1)
    result = metrics.evaluate(labels, maps.max((1, 2)), masks, maps, pro_variant="both")
    assert 0.5 < result["pixel_auroc"] < 1 and 0 < result["aupro"] < result["repo_pro"] <= 1
    assert metrics.aupro(masks, maps, num_thresholds=200) == pytest.approx(
        result["aupro"], abs=1e-3
    )


def test_decision_metrics_at_the_deployed_threshold_by_hand():
    from anomap.evaluation import _decision_metrics

    labels = np.array([0, 0, 0, 0, 1, 1])
    decisions = np.array([True, False, False, False, True, False])
    got = _decision_metrics(labels, decisions)
    assert got["threshold_false_reject_rate"] == 0.25  # 1 of 4 good parts flagged
    assert got["threshold_recall"] == 0.5 and got["threshold_precision"] == 0.5
    assert got["threshold_accuracy"] == 4 / 6 and got["threshold_f1"] == 0.5
    assert np.isnan(_decision_metrics(labels[4:], decisions[4:])["threshold_false_reject_rate"])
