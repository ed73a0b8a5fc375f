"""Image and pixel metrics for anomaly detection: AUROC, AP, F1-max, the standard MVTec AD AUPRO
and the "repo-PRO" of the SimpleNet/GLASS/PBAS code (METHODS.md §1.6).

Conventions, shared by every function here:

- Image labels are 0/1 (or bool); image scores are any finite numbers, higher = more anomalous.
- Masks are N×H×W, nonzero = defect (bool, 0/1 or 0/255 all work); maps are N×H×W finite
  scores, compared in float32 (float64 maps are cast once, so values that differ only beyond
  float32 precision tie).
- A metric that is undefined for the input is NaN, never an exception: AUROC needs both
  classes; AP, F1-max and the PRO metrics need at least one positive (and PRO one normal pixel).
- Shape and value problems raise ValueError with the shapes in the message.

Pixel metrics must cope with a whole category at once (~10 M pixels for MVTec at 256², ~100 M
for VisA), so they never argsort or copy maps to float64: each pixel becomes one uint64 key
(float order of its score in the high 32 bits, its defect-region id in the low 32), one in-place
integer sort (about ten times faster than an argsort) groups tied scores, and the curves are
streamed from the highest threshold down in chunks, so memory stays at about 8 bytes a pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = [
    "aupro",
    "evaluate",
    "f1_max",
    "image_ap",
    "image_auroc",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "repo_pro",
]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # skimage.measure.label's default in 2-D
_CHUNK = 1 << 21  # pixels per streamed chunk: bounds the temporaries to ~100 MB
_SIGN = np.uint32(0x80000000)
_SHIFT = np.uint64(32)
_LOW_HALF = np.uint64(0xFFFFFFFF)
_NAN = float("nan")


# ---------------------------------------------------------------------------- input checks


def _image_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels_arr = np.asarray(labels)
    scores_arr = np.asarray(scores, dtype=np.float64)
    if labels_arr.ndim != 1 or scores_arr.ndim != 1 or labels_arr.shape != scores_arr.shape:
        raise ValueError(
            "labels and scores must be 1-D arrays of the same length, got shapes "
            f"{labels_arr.shape} and {scores_arr.shape}"
        )
    if labels_arr.size and not np.isin(labels_arr, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 or bool, got values {np.unique(labels_arr)[:5]}")
    if not np.isfinite(scores_arr).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    return labels_arr.astype(bool), scores_arr


def _pixel_inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    masks_arr = np.asarray(masks)
    maps_arr = np.asarray(maps)
    if maps_arr.ndim != 3 or masks_arr.shape != maps_arr.shape:
        raise ValueError(
            "masks and maps must both be N×H×W arrays of the same shape, got masks "
            f"{masks_arr.shape} and maps {maps_arr.shape}"
        )
    if masks_arr.dtype != bool:
        masks_arr = masks_arr != 0
    maps_arr = maps_arr.astype(np.float32, copy=False)
    if not np.isfinite(maps_arr).all():
        raise ValueError("maps must be finite (found NaN or inf)")
    return masks_arr, maps_arr


def _check_limit(fpr_limit: float) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return float(fpr_limit)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """np.trapezoid, which numpy < 2 lacks."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


# ---------------------------------------------------------------------------- accumulators


class _RankStats:
    """AUROC, AP and F1-max from cumulative (TP, FP) counts at each distinct threshold, fed in
    batches from the highest threshold down, so the full curve never sits in memory.

    AUROC is the trapezoid area of the ROC through every distinct threshold (ties get half
    credit, as in sklearn's roc_auc_score), summed exactly in integers. AP is sklearn's
    Σ (R_n − R_{n−1}) · P_n over distinct thresholds.
    """

    def __init__(self, positives: int, negatives: int, decode: Callable[[object], float]):
        self.positives = positives
        self.negatives = negatives
        self._decode = decode
        self._tp = 0
        self._fp = 0
        self._twice_area = 0  # Python int: exact for any size
        self._ap = 0.0
        self._best_f1 = -1.0
        self._best_threshold = _NAN

    def add(self, tp: np.ndarray, fp: np.ndarray, thresholds: np.ndarray) -> None:
        if tp.size == 0:
            return
        prev_tp = np.concatenate(([self._tp], tp[:-1]))
        prev_fp = np.concatenate(([self._fp], fp[:-1]))
        self._twice_area += int(np.sum((fp - prev_fp) * (tp + prev_tp)))
        if self.positives:
            self._ap += float(np.sum((tp - prev_tp) * (tp / (tp + fp))))
            f1 = 2.0 * tp / (tp + fp + self.positives)
            best = int(np.argmax(f1))
            if f1[best] > self._best_f1:  # strict: on ties keep the higher threshold
                self._best_f1 = float(f1[best])
                self._best_threshold = self._decode(thresholds[best])
        self._tp, self._fp = int(tp[-1]), int(fp[-1])

    def auroc(self) -> float:
        if self.positives == 0 or self.negatives == 0:
            return _NAN
        return self._twice_area / (2 * self.positives * self.negatives)

    def average_precision(self) -> float:
        return self._ap / self.positives if self.positives else _NAN

    def f1_max(self) -> tuple[float, float]:
        if self.positives == 0:
            return _NAN, _NAN
        return self._best_f1, self._best_threshold


class _ProArea:
    """Normalised area under PRO(FPR) on [0, limit], fed in batches of increasing FPR.

    The curve starts at (0, 0); the segment that crosses the limit is linearly interpolated at
    the limit (as in the MVTec AD evaluation code), and the area is divided by the limit.
    """

    def __init__(self, limit: float):
        self.limit = limit
        self.done = False
        self._x = 0.0
        self._y = 0.0
        self._area = 0.0

    def add(self, fpr: np.ndarray, pro: np.ndarray) -> None:
        if self.done or fpr.size == 0:
            return
        x = np.concatenate(([self._x], fpr))
        y = np.concatenate(([self._y], pro))
        over = np.flatnonzero(x > self.limit)
        if over.size:
            j = int(over[0])  # x[j - 1] <= limit < x[j]
            y_limit = y[j - 1] + (y[j] - y[j - 1]) * (self.limit - x[j - 1]) / (x[j] - x[j - 1])
            x = np.append(x[:j], self.limit)
            y = np.append(y[:j], y_limit)
            self.done = True
        self._area += _trapezoid(y, x)
        self._x, self._y = float(x[-1]), float(y[-1])

    def value(self) -> float:
        return self._area / self.limit


# ------------------------------------------------------------------------ sorted pixel keys


def _ordered_bits(values: np.ndarray) -> np.ndarray:
    """uint32 whose unsigned order is the float32 order of `values` (−0.0 folded onto +0.0,
    so that equal scores always share a key)."""
    bits = (values + np.float32(0.0)).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _key_score(key: object) -> float:
    """The float32 score held in the high half of a pixel key."""
    ordered = np.uint32(int(key) >> 32)
    bits = ordered ^ _SIGN if ordered & _SIGN else ~ordered
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def _sorted_keys(
    masks: np.ndarray, maps: np.ndarray, with_regions: bool
) -> tuple[np.ndarray, np.ndarray]:
    """All pixels as sorted uint64 keys, and the area of every defect region.

    The low half holds the global id (1..R) of the pixel's connected defect region
    (8-connectivity) when `with_regions`, else 1 for any defect pixel; 0 means normal.
    Returns (keys ascending, areas with areas[0] = 0 and areas[r] the size of region r; without
    regions, areas[1] is simply the number of defect pixels).
    """
    per_image = maps[0].size if maps.shape[0] else 0
    keys = np.empty(maps.size, dtype=np.uint64)
    areas = [np.zeros(1, dtype=np.int64)]
    count = 0
    for i in range(maps.shape[0]):
        block = keys[i * per_image : (i + 1) * per_image]
        np.left_shift(_ordered_bits(maps[i]).reshape(-1).astype(np.uint64), _SHIFT, out=block)
        if with_regions:
            labelled, found = ndimage.label(masks[i], structure=_EIGHT_CONNECTED)
            if found:
                areas.append(np.bincount(labelled.reshape(-1), minlength=found + 1)[1:])
                labelled = np.where(labelled > 0, labelled + count, 0)
                count += found
                block |= labelled.reshape(-1).astype(np.uint64)
        else:
            block |= masks[i].reshape(-1).astype(np.uint64)
    keys.sort()
    if not with_regions:
        areas.append(np.array([int(masks.sum())], dtype=np.int64))
    return keys, np.concatenate(areas)


def _scan(
    keys: np.ndarray,
    positives: int,
    ranks: _RankStats | None,
    pro: _ProArea | None,
    weights: np.ndarray | None,
) -> None:
    """Stream sorted keys from the highest score down, in chunks, feeding the cumulative TP/FP
    counts (and PRO, Σ weights[region]) at every distinct score into the accumulators.

    Stops early once only the PRO area is wanted and the FPR limit has been passed.
    """
    total = keys.size
    negatives = total - positives
    done = 0  # pixels already consumed from the top
    tp_before = 0
    pro_before = 0.0
    while done < total:
        stop = total - done
        start = max(0, stop - _CHUNK)
        chunk = keys[start:stop][::-1]
        scores = chunk >> _SHIFT
        regions = chunk & _LOW_HALF
        is_end = np.empty(chunk.size, dtype=bool)
        np.not_equal(scores[:-1], scores[1:], out=is_end[:-1])
        is_end[-1] = start == 0 or (int(keys[start - 1]) >> 32) != int(scores[-1])
        ends = np.flatnonzero(is_end)
        del scores, is_end
        tp_running = np.cumsum(regions != 0, dtype=np.int64)
        tp_running += tp_before
        tp = tp_running[ends]
        fp = done + 1 + ends - tp
        if ranks is not None:
            ranks.add(tp, fp, chunk[ends])
        if pro is not None and weights is not None and not pro.done:
            pro_running = np.cumsum(weights[regions])
            pro_running += pro_before
            pro.add(fp / negatives, pro_running[ends])
            pro_before = float(pro_running[-1])
        tp_before = int(tp_running[-1])
        done = total - start
        if ranks is None and (pro is None or pro.done):
            break


def _region_weights(areas: np.ndarray) -> np.ndarray:
    """Each defect pixel adds 1 / (area of its region · number of regions) to PRO."""
    weights = np.zeros(areas.size, dtype=np.float64)
    weights[1:] = 1.0 / (areas[1:] * (areas.size - 1))
    return weights


# ------------------------------------------------------------------------------ image level


def _image_ranks(labels: ArrayLike, scores: ArrayLike) -> _RankStats:
    labels_arr, scores_arr = _image_inputs(labels, scores)
    positives = int(labels_arr.sum())
    ranks = _RankStats(positives, labels_arr.size - positives, float)
    if scores_arr.size:
        order = np.argsort(scores_arr)[::-1]
        sorted_scores = scores_arr[order]
        ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
        tp = np.cumsum(labels_arr[order], dtype=np.int64)[ends]
        ranks.add(tp, ends + 1 - tp, sorted_scores[ends])
    return ranks


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level ROC AUC, equal to sklearn's roc_auc_score; NaN unless both classes occur."""
    return _image_ranks(labels, scores).auroc()


def image_ap(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level average precision, equal to sklearn's average_precision_score; NaN without
    anomalous images."""
    return _image_ranks(labels, scores).average_precision()


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """(best F1 over all thresholds, that threshold; an image is anomalous if score >= it).

    An *oracle* figure: the threshold is chosen on the test set itself, which no deployment
    can do, so it flatters the detector; report it as such. NaN without anomalous images.
    """
    return _image_ranks(labels, scores).f1_max()


# ------------------------------------------------------------------------------ pixel level


def _pixel_ranks(masks: ArrayLike, maps: ArrayLike) -> _RankStats:
    masks_arr, maps_arr = _pixel_inputs(masks, maps)
    keys, areas = _sorted_keys(masks_arr, maps_arr, with_regions=False)
    positives = int(areas.sum())
    ranks = _RankStats(positives, keys.size - positives, _key_score)
    _scan(keys, positives, ranks, None, None)
    return ranks


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """ROC AUC over all pixels of all images (sklearn's value on the flattened arrays);
    NaN unless both defect and normal pixels occur."""
    return _pixel_ranks(masks, maps).auroc()


def pixel_ap(masks: ArrayLike, maps: ArrayLike) -> float:
    """Average precision over all pixels (sklearn's value); NaN without defect pixels."""
    return _pixel_ranks(masks, maps).average_precision()


def pixel_f1_max(masks: ArrayLike, maps: ArrayLike) -> tuple[float, float]:
    """(best pixel F1, its threshold; a pixel is defective if score >= it). An oracle figure,
    like `f1_max`. NaN without defect pixels."""
    return _pixel_ranks(masks, maps).f1_max()


def aupro(
    masks: ArrayLike,
    maps: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Standard MVTec AD AUPRO (Bergmann et al.), normalised to [0, 1].

    Defect regions are the 8-connected components of each mask. At a threshold t (pixel
    positive if score >= t), PRO is the mean over all regions of all images of the fraction of
    the region predicted positive, and FPR the positive fraction of all normal pixels. The
    area under PRO(FPR) from 0 to `fpr_limit` (interpolated at the limit) is divided by it.

    Exact by default: every distinct score is a threshold. After one sort each defect pixel
    adds 1/(area · R) to PRO and each normal pixel 1/N_normal to FPR, so both curves are
    cumulative sums and only the pixels above the limit's threshold are visited.
    `num_thresholds=K` uses K evenly spaced thresholds from min to max instead (as anomalib's
    binned mode does): a histogram, no sort, a close approximation.
    NaN without defect pixels or without normal pixels.
    """
    limit = _check_limit(fpr_limit)
    if num_thresholds is not None and num_thresholds < 1:
        raise ValueError(f"num_thresholds must be a positive integer or None, got {num_thresholds}")
    masks_arr, maps_arr = _pixel_inputs(masks, maps)
    positives = int(masks_arr.sum())
    if positives == 0 or positives == masks_arr.size:
        return _NAN
    if num_thresholds is not None:
        return _binned_aupro(masks_arr, maps_arr, limit, num_thresholds)
    keys, areas = _sorted_keys(masks_arr, maps_arr, with_regions=True)
    pro = _ProArea(limit)
    _scan(keys, positives, None, pro, _region_weights(areas))
    return pro.value()


def _binned_aupro(masks: np.ndarray, maps: np.ndarray, limit: float, num: int) -> float:
    thresholds = np.linspace(float(maps.min()), float(maps.max()), num)
    fp_hist = np.zeros(num + 1, dtype=np.int64)
    pro_hist = np.zeros(num + 1, dtype=np.float64)
    regions = 0
    for mask, amap in zip(masks, maps, strict=True):
        # number of thresholds <= score: the pixel is positive at thresholds[:passed]
        passed = np.searchsorted(thresholds, amap.reshape(-1), side="right")
        flat_mask = mask.reshape(-1)
        fp_hist += np.bincount(passed[~flat_mask], minlength=num + 1)
        labelled, found = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        if found:
            ids = labelled.reshape(-1)[flat_mask]
            inverse_area = 1.0 / np.bincount(ids, minlength=found + 1)[ids]
            pro_hist += np.bincount(passed[flat_mask], weights=inverse_area, minlength=num + 1)
            regions += found
    # from the highest threshold down: positives are the pixels that passed more than k
    fp_desc = np.cumsum(fp_hist[::-1])[:num]
    pro_desc = np.cumsum(pro_hist[::-1])[:num] / regions
    pro = _ProArea(limit)
    pro.add(fp_desc / (masks.size - int(masks.sum())), pro_desc)
    return pro.value()


def repo_pro(
    masks: ArrayLike,
    maps: ArrayLike,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
    rescale: str = "minmax",
) -> float:
    """The PRO of the SimpleNet/GLASS/PBAS code (METHODS.md §1.6), to compare with their
    published numbers; it is *not* the standard AUPRO and runs higher.

    Thresholds th_k = min + k·(max − min)/num_thresholds, k = 0..num_thresholds−1, over all
    maps; positive = map > th_k. The overlap of each 8-connected region uses the prediction
    dilated with a 5×5 square within its image (cv2.dilate: nothing enters from outside the
    image); the FPR uses the undilated prediction. Thresholds with FPR < `fpr_limit` are kept,
    FPR is rescaled ("minmax": (fpr − min)/(max − min + 1e−10), GLASS/PBAS; "max": fpr/max,
    SimpleNet) and the trapezoid area of PRO over it is returned (sklearn.metrics.auc).

    Dilating a threshold map equals thresholding the 5×5 maximum-filtered map, so each pixel is
    binned once instead of dilating 200 binary stacks. Masks are binary here: the repos'
    fractional-edge quirk (§1.6) comes from how they resize masks, not from this metric.
    NaN without defect or normal pixels, or with fewer than two kept thresholds.
    """
    if rescale not in ("minmax", "max"):
        raise ValueError(f"rescale must be 'minmax' or 'max', got {rescale!r}")
    limit = _check_limit(fpr_limit)
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be a positive integer, got {num_thresholds}")
    masks_arr, maps_arr = _pixel_inputs(masks, maps)
    positives = int(masks_arr.sum())
    normal_total = masks_arr.size - positives
    if positives == 0 or normal_total == 0:
        return _NAN
    low, high = float(maps_arr.min()), float(maps_arr.max())
    thresholds = low + np.arange(num_thresholds) * ((high - low) / num_thresholds)
    fp_hist = np.zeros(num_thresholds + 1, dtype=np.int64)
    overlap_sum = np.zeros(num_thresholds, dtype=np.float64)
    regions = 0
    for mask, amap in zip(masks_arr, maps_arr, strict=True):
        # number of thresholds < score: the pixel is positive at thresholds[:passed]
        fp_hist += np.bincount(
            np.searchsorted(thresholds, amap[~mask], side="left"), minlength=num_thresholds + 1
        )
        labelled, found = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        if not found:
            continue
        # 'nearest' padding only repeats pixels already inside the window: same as no padding
        dilated = ndimage.maximum_filter(amap, size=5, mode="nearest")
        ids = labelled[mask]
        passed = np.searchsorted(thresholds, dilated[mask], side="left")
        hist = np.bincount(
            ids * (num_thresholds + 1) + passed, minlength=(found + 1) * (num_thresholds + 1)
        ).reshape(found + 1, num_thresholds + 1)[1:]
        hits = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # hits[r, k]: passed > k
        overlap_sum += (hits / hist.sum(axis=1, keepdims=True)).sum(axis=0)
        regions += found
    fp = np.cumsum(fp_hist[::-1])[::-1][1:]  # fp[k]: normal pixels with passed > k
    fpr = fp / normal_total
    pro = overlap_sum / regions
    keep = fpr < limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size < 2:
        return _NAN
    if rescale == "minmax":
        fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min() + 1e-10)
    elif fpr.max() > 0:
        fpr = fpr / fpr.max()
    else:
        return _NAN  # the repos divide 0 by 0 here
    # FPR never rises with k; sklearn's auc integrates in the given order and flips the sign
    return abs(_trapezoid(pro, fpr))


# --------------------------------------------------------------------------------- together


def evaluate(
    labels: ArrayLike,
    scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    *,
    pro_variant: str = "standard",
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All metrics of one category, as plain floats.

    Always image_auroc, image_ap and image_f1_max (an oracle figure, see `f1_max`); with masks
    and maps also pixel_auroc, pixel_ap, pixel_f1_max and, by `pro_variant` ("standard",
    "repo" or "both"), aupro and/or repo_pro. The pixel metrics and the exact AUPRO share one
    sort. Undefined metrics are NaN (see the module docstring).
    """
    if pro_variant not in ("standard", "repo", "both"):
        raise ValueError(f"pro_variant must be 'standard', 'repo' or 'both', got {pro_variant!r}")
    limit = _check_limit(fpr_limit)
    image = _image_ranks(labels, scores)
    results = {
        "image_auroc": image.auroc(),
        "image_ap": image.average_precision(),
        "image_f1_max": image.f1_max()[0],
    }
    if masks is None and maps is None:
        return results
    if masks is None or maps is None:
        raise ValueError("give both masks and maps, or neither")
    masks_arr, maps_arr = _pixel_inputs(masks, maps)
    if masks_arr.shape[0] != image.positives + image.negatives:
        raise ValueError(
            f"{image.positives + image.negatives} labels but {masks_arr.shape[0]} masks/maps"
        )
    keys, areas = _sorted_keys(masks_arr, maps_arr, with_regions=True)
    positives = int(areas.sum())
    negatives = keys.size - positives
    pixels = _RankStats(positives, negatives, _key_score)
    standard = pro_variant in ("standard", "both") and positives > 0 and negatives > 0
    pro = _ProArea(limit) if standard else None
    _scan(keys, positives, pixels, pro, _region_weights(areas) if standard else None)
    del keys
    results.update(
        pixel_auroc=pixels.auroc(),
        pixel_ap=pixels.average_precision(),
        pixel_f1_max=pixels.f1_max()[0],
    )
    if pro_variant in ("standard", "both"):
        results["aupro"] = pro.value() if pro is not None else _NAN
    if pro_variant in ("repo", "both"):
        results["repo_pro"] = repo_pro(masks_arr, maps_arr, fpr_limit=limit)
    return results
