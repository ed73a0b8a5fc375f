"""Run a fitted detector over a category's test set and score it with the standard metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomap.data.samples import Category
from anomap.errors import DataError
from anomap.progress import track


@dataclass
class CategoryResult:
    """Metrics and per-image outputs for one category."""

    category: str
    metrics: dict[str, float]
    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    decisions: np.ndarray | None
    seconds_per_image: float
    overlays: list[str] = field(default_factory=list)


def _decision_metrics(labels: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
    """Quality of the normal-only threshold a deployment would use (not tuned on the test)."""
    tp = float(np.sum(decisions & (labels == 1)))
    fp = float(np.sum(decisions & (labels == 0)))
    fn = float(np.sum(~decisions & (labels == 1)))
    tn = float(np.sum(~decisions & (labels == 0)))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {
        "threshold_f1": f1,
        "threshold_precision": precision,
        "threshold_recall": recall,
        "threshold_accuracy": (tp + tn) / max(1.0, tp + tn + fp + fn),
        # good parts rejected: what the line pays for every point of recall
        "threshold_false_reject_rate": fp / (fp + tn) if fp + tn else float("nan"),
    }


def evaluate_category(
    detector: Any,
    category: Category,
    *,
    pro_variant: str = "standard",
    overlay_dir: Path | None = None,
    max_overlays: int = 8,
) -> CategoryResult:
    """Predict every test image of `category`, compute image and pixel metrics, and write
    heat-map panels for up to `max_overlays` images (the most anomalous-scored first)."""
    from anomap.data.dataset import ImageDataset
    from anomap.metrics import evaluate

    if not category.test:
        raise DataError(f"category {category.name!r} has no test images to evaluate on")
    dataset = ImageDataset(category.test, detector.preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=detector.config.batch_size)
    scores, maps, masks = [], [], []
    start = time.perf_counter()
    for batch in track(loader, f"testing {category.name}", total=len(loader)):
        batch_scores, batch_maps = detector.predict_tensor(batch["image"].to(detector._device))
        scores.append(batch_scores.float().cpu().numpy())
        maps.append(batch_maps.float().cpu().numpy())
        masks.append(batch["mask"][:, 0].numpy().astype(bool))
    elapsed = time.perf_counter() - start
    score_array = np.concatenate(scores)
    map_array = np.concatenate(maps)
    labels = np.array([s.label for s in category.test])
    with_masks = category.has_masks
    metrics = evaluate(
        labels,
        score_array,
        np.concatenate(masks) if with_masks else None,
        map_array if with_masks else None,
        pro_variant=pro_variant,
    )
    decisions = None
    cal = detector.calibration_for(category.name)
    if cal is not None:
        decisions = cal.decide(score_array)
        metrics.update(_decision_metrics(labels, decisions))
    result = CategoryResult(
        category=category.name,
        metrics=metrics,
        paths=[str(s.path) for s in category.test],
        labels=labels,
        scores=score_array,
        decisions=decisions,
        seconds_per_image=elapsed / len(category.test),
    )
    if overlay_dir is not None and max_overlays > 0:
        result.overlays = _write_panels(
            detector, category, score_array, map_array, decisions, overlay_dir, max_overlays
        )
    return result


def _write_panels(detector, category, scores, maps, decisions, out_dir, limit) -> list[str]:
    """Panels for a readable sample: the top-scored images of each kind (normal, defective)."""
    from anomap.data.images import read_image, read_mask
    from anomap.report import panel, save_png_atomic

    pre = detector.preprocess
    cal = detector.calibration_for(category.name)
    vmin, vmax = cal.pixel_range if cal else (float(maps.min()), float(maps.max()))
    order = np.argsort(-scores)
    defective = [i for i in order if category.test[i].label == 1][: (limit + 1) // 2]
    normal = [i for i in order if category.test[i].label == 0][: limit - len(defective)]
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for index in defective + normal:
        sample = category.test[index]
        image = read_image(sample.path)
        mask = np.zeros(maps[index].shape, bool) if category.has_masks else None
        if sample.mask_path is not None:
            mask = pre.mask(read_mask(sample.mask_path, image.size))[0].numpy().astype(bool)
        picture = panel(
            np.asarray(pre.geometry(image)),
            maps[index],
            vmin=vmin,
            vmax=vmax,
            threshold=cal.pixel_threshold if cal else None,
            mask=mask,
            title=f"{category.name}/{sample.defect_type}/{sample.path.name}",
            score=float(scores[index]),
            decision=None if decisions is None else bool(decisions[index]),
        )
        target = out_dir / f"{category.name}_{sample.defect_type}_{sample.path.stem}.png"
        save_png_atomic(picture, target)
        written.append(str(target))
    return written
