"""Image and pixel metrics for anomaly detection: AUROC, AP, F1-max, AUPRO (standard and the
GLASS/PBAS "repo-PRO" variant of METHODS.md §1.6).

Pixel metrics sort the scores once (float32, int64 order) and work on cumulative counts, so a
full MVTec category (~10 M pixels) needs a few hundred MB, not float64 copies of everything.
Degenerate inputs (one class only, no defect pixel) give NaN, never an exception.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_pair(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in size")
    return labels, scores


def _check_maps(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be N×H×W")
    return masks.astype(bool), maps.astype(np.float32, copy=False)


class _Curve:
    """Cumulative true/false positives at every distinct score, highest threshold first."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(-scores, kind="stable")
        sorted_scores = scores[order]
        sorted_labels = labels[order]
        del order
        ends = np.flatnonzero(np.diff(sorted_scores)).astype(np.int64)
        ends = np.append(ends, sorted_scores.size - 1)
        tps = np.cumsum(sorted_labels, dtype=np.int64)[ends]
        self.tps = tps.astype(np.float64)
        self.fps = (ends + 1 - tps).astype(np.float64)
        self.thresholds = sorted_scores[ends]
        self.positives = self.tps[-1] if self.tps.size else 0.0
        self.negatives = self.fps[-1] if self.fps.size else 0.0

    def auroc(self) -> float:
        if self.positives == 0 or self.negatives == 0:
            return float("nan")
        tpr = np.concatenate([[0.0], self.tps / self.positives])
        fpr = np.concatenate([[0.0], self.fps / self.negatives])
        return float(np.trapezoid(tpr, fpr))

    def average_precision(self) -> float:
        """sklearn's definition: Σ (R_n − R_{n−1}) · P_n over distinct thresholds."""
        if self.positives == 0:
            return float("nan")
        precision = self.tps / (self.tps + self.fps)
        recall = self.tps / self.positives
        return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))

    def f1_max(self) -> tuple[float, float]:
        if self.positives == 0:
            return float("nan"), float("nan")
        f1 = 2 * self.tps / (self.tps + self.fps + self.positives)
        best = int(np.argmax(f1))
        return float(f1[best]), float(self.thresholds[best])


def image_auroc(labels, scores) -> float:
    return _Curve(*_check_pair(labels, scores)).auroc()


def image_ap(labels, scores) -> float:
    return _Curve(*_check_pair(labels, scores)).average_precision()


def f1_max(labels, scores) -> tuple[float, float]:
    """(best F1, its threshold). An oracle figure: the threshold is chosen on the test set
    itself, which a deployment cannot do; report it as such."""
    return _Curve(*_check_pair(labels, scores)).f1_max()


def pixel_auroc(masks, maps) -> float:
    masks, maps = _check_maps(masks, maps)
    return _Curve(masks.reshape(-1), maps.reshape(-1)).auroc()


def pixel_ap(masks, maps) -> float:
    masks, maps = _check_maps(masks, maps)
    return _Curve(masks.reshape(-1), maps.reshape(-1)).average_precision()


def pixel_f1_max(masks, maps) -> tuple[float, float]:
    """Pixel-level F1-max; an oracle figure like `f1_max`."""
    masks, maps = _check_maps(masks, maps)
    return _Curve(masks.reshape(-1), maps.reshape(-1)).f1_max()


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected defect regions (8-connectivity) of every image, numbered 1..R across the set;
    0 is normal."""
    regions = np.zeros(masks.shape, dtype=np.int32)
    count = 0
    for i, mask in enumerate(masks):
        labelled, found = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        regions[i] = np.where(labelled > 0, labelled + count, 0)
        count += found
    return regions, count


def _integrate_to_limit(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Area under PRO(FPR) on [0, limit], interpolating at the limit, divided by the limit."""
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < limit and keep.size > x.size:
        nxt = int(np.argmax(~keep))
        x0, x1, y0, y1 = fpr[nxt - 1], fpr[nxt], pro[nxt - 1], pro[nxt]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
        x, y = np.append(x, limit), np.append(y, y_limit)
    return float(np.trapezoid(y, x) / limit)


def aupro(masks, maps, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Standard MVTec AD AUPRO (Bergmann et al.): per-region overlap averaged over all defect
    regions, integrated over the false-positive rate up to `fpr_limit` and normalised.

    Exact by default: every distinct score is a threshold. Sorting once, each defect pixel adds
    1/(area · R) to PRO and each normal pixel 1/N_normal to FPR, so both curves are cumulative
    sums. `num_thresholds=K` samples K evenly spaced thresholds instead (as anomalib does).
    """
    masks, maps = _check_maps(masks, maps)
    regions, count = _label_regions(masks)
    normal_total = int((regions == 0).sum())
    if count == 0 or normal_total == 0:
        return float("nan")
    areas = np.bincount(regions.reshape(-1), minlength=count + 1).astype(np.float64)
    weight_per_region = np.zeros(count + 1)
    weight_per_region[1:] = 1.0 / (areas[1:] * count)
    flat_scores = maps.reshape(-1)
    order = np.argsort(-flat_scores, kind="stable")
    sorted_regions = regions.reshape(-1)[order]
    sorted_scores = flat_scores[order]
    del order
    pro = np.cumsum(weight_per_region[sorted_regions])
    fpr = np.cumsum(sorted_regions == 0, dtype=np.int64) / normal_total
    if num_thresholds is None:
        ends = np.append(np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1)
    else:
        thresholds = np.linspace(sorted_scores[0], sorted_scores[-1], num_thresholds)
        # pixels with score >= threshold are the first (count) entries of the descending list
        counts = np.searchsorted(-sorted_scores, -thresholds, side="right")
        ends = np.unique(counts[counts > 0] - 1)
    curve_fpr = np.concatenate([[0.0], fpr[ends]])
    curve_pro = np.concatenate([[0.0], pro[ends]])
    return _integrate_to_limit(curve_fpr, curve_pro, fpr_limit)


def repo_pro(
    masks,
    maps,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
    rescale: str = "minmax",
) -> float:
    """The PRO of the SimpleNet/GLASS/PBAS code (METHODS.md §1.6), to compare with their
    published numbers: 200 thresholds from the global min in steps of (max − min)/200;
    predictions dilated with a 5×5 square for the overlap (not for the FPR); thresholds with
    FPR < limit kept; FPR rescaled ("minmax" for GLASS/PBAS, "max" for SimpleNet); trapezoid
    area. Masks are binary here: the fractional-edge quirk of those repos comes from how they
    resize masks, not from this function.
    """
    if rescale not in ("minmax", "max"):
        raise ValueError(f"rescale must be 'minmax' or 'max', got {rescale!r}")
    masks, maps = _check_maps(masks, maps)
    regions, count = _label_regions(masks)
    normal = ~masks
    normal_total = float(normal.sum())
    if count == 0 or normal_total == 0:
        return float("nan")
    areas = np.bincount(regions.reshape(-1), minlength=count + 1)[1:].astype(np.float64)
    low, high = float(maps.min()), float(maps.max())
    step = (high - low) / num_thresholds
    square = np.ones((1, 5, 5), dtype=bool)  # dilate within each image, never across images
    pros, fprs = [], []
    for k in range(num_thresholds):
        predicted = maps > low + k * step
        dilated = ndimage.binary_dilation(predicted, structure=square)
        hits = np.bincount(regions[dilated], minlength=count + 1)[1:]
        pros.append(float(np.mean(hits / areas)))
        fprs.append(float(np.logical_and(predicted, normal).sum()) / normal_total)
    fpr, pro = np.array(fprs), np.array(pros)
    keep = fpr < fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size < 2:
        return float("nan")
    if rescale == "minmax":
        fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min() + 1e-10)
    else:
        fpr = fpr / fpr.max()
    # thresholds rise with k, so FPR never increases: integrate in that order, as sklearn's
    # auc does, so points of equal FPR pair up the same way as in the reference code
    return float(-np.trapezoid(pro, fpr))


def evaluate(
    labels,
    scores,
    masks=None,
    maps=None,
    *,
    pro_variant: str = "standard",
) -> dict[str, float]:
    """All metrics of one category. `pro_variant`: "standard", "repo" or "both"."""
    if pro_variant not in ("standard", "repo", "both"):
        raise ValueError(f"pro_variant must be standard, repo or both, got {pro_variant!r}")
    curve = _Curve(*_check_pair(labels, scores))
    results = {
        "image_auroc": curve.auroc(),
        "image_ap": curve.average_precision(),
        "image_f1_max": curve.f1_max()[0],
    }
    if masks is None or maps is None:
        return results
    masks, maps = _check_maps(masks, maps)
    pixels = _Curve(masks.reshape(-1), maps.reshape(-1))
    results.update(
        pixel_auroc=pixels.auroc(),
        pixel_ap=pixels.average_precision(),
        pixel_f1_max=pixels.f1_max()[0],
    )
    del pixels
    if pro_variant in ("standard", "both"):
        results["aupro"] = aupro(masks, maps)
    if pro_variant in ("repo", "both"):
        results["repo_pro"] = repo_pro(masks, maps)
    return results
