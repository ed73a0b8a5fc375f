"""The model a server answers with: loaded once, scoring one batch at a time.

Torch modules are not safe to call from several threads at once in every case (cached
buffers, cuDNN autotuning), so inference is serialised by a lock; decoding the uploads and
drawing the overlays happen outside it, in the request's own thread.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomap import __version__
from anomap.methods.base import Detector
from anomap.postprocess import Calibration
from anomap.report import overlay
from anomap.serve.uploads import RequestError, Upload


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _colour_range(cal: Calibration | None, anomaly_map: np.ndarray) -> tuple[float, float]:
    """The calibrated heat-map scale, so colours mean the same on every image; an
    uncalibrated model only has the image's own range."""
    if cal is not None:
        return cal.pixel_range
    return float(anomaly_map.min()), float(anomaly_map.max())


def _map_png(anomaly_map: np.ndarray, vmin: float, vmax: float) -> Image.Image:
    """8-bit grayscale: 0 is `vmin`, 255 is `vmax` (values outside are clipped)."""
    span = max(vmax - vmin, 1e-12)
    scaled = np.clip((anomaly_map - vmin) / span, 0.0, 1.0)
    return Image.fromarray((scaled * 255).round().astype(np.uint8))


class ModelService:
    """A fitted detector, the category used when a request names none, and the lock."""

    def __init__(self, detector: Detector, *, category: str | None = None) -> None:
        self.detector = detector
        if category:
            self.default_category: str | None = self._known(category)
        else:  # a model of one category answers for it
            only = detector.categories
            self.default_category = only[0] if len(only) == 1 else None
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        category: str | None = None,
        device: str | None = None,
        weights: str | None = None,
        precision: str | None = None,
    ) -> ModelService:
        from anomap.artifact import load

        detector = load(path, weights=weights, device=device, precision=precision)
        return cls(detector, category=category)

    def category(self, name: str | None) -> str | None:
        """`name` checked against the model's categories; the default when not given."""
        return self._known(name) if name else self.default_category

    def _known(self, name: str) -> str:
        known = self.detector.categories
        if name not in known:
            listed = ", ".join(known) if known else "none"
            raise RequestError(f"unknown category {name!r}; this model's categories: {listed}")
        return name

    def info(self) -> dict[str, Any]:
        detector = self.detector
        preprocess = detector.preprocess
        try:
            size: list[int] | None = list(preprocess.output_size)
        except ValueError:  # no crop: the size follows each image's aspect
            size = None
        cal = detector.calibration
        backbone = detector.backbone
        return {
            "method": detector.method,
            "categories": list(detector.categories),
            "default_category": self.default_category,
            "input": {"resize": preprocess.to_dict()["resize"], "crop": preprocess.crop},
            "input_size": size,
            "backbone": {"name": backbone.spec.name, "layers": list(backbone.layers)},
            "device": str(next(backbone.parameters()).device),
            "inference_precision": detector.config.inference_precision,
            "threshold": cal.image_threshold if cal else None,
            "category_thresholds": {
                name: c.image_threshold for name, c in detector.category_calibration.items()
            },
            "training_info": detector.training_info,
            "anomap_version": __version__,
        }

    def predict(
        self,
        uploads: list[Upload],
        *,
        category: str | None = None,
        with_overlay: bool = False,
        with_map: bool = False,
    ) -> dict[str, Any]:
        """Scores and decisions per upload, with base64 PNG pictures when asked for, and how
        long inference and drawing took."""
        category = self.category(category)
        start = time.perf_counter()
        with self._lock:
            result = self.detector.predict([u.image for u in uploads], category=category)
        inferred = time.perf_counter()
        cal = self.detector.calibration_for(category)
        geometry = self.detector.preprocess.geometry
        rows = []
        for i, upload in enumerate(uploads):
            anomaly_map = result.maps[i]
            row: dict[str, Any] = {
                "filename": upload.filename,
                "score": float(result.scores[i]),
                "normalized": None if cal is None else float(result.normalized[i]),
                "is_anomalous": None if cal is None else bool(result.is_anomalous[i]),
                "threshold": None if cal is None else cal.image_threshold,
                "category": category,
            }
            vmin, vmax = _colour_range(cal, anomaly_map)
            if with_overlay:
                picture = overlay(
                    geometry(upload.image),
                    anomaly_map,
                    vmin=vmin,
                    vmax=vmax,
                    threshold=cal.pixel_threshold if cal else None,
                )
                row["overlay_png"] = _png_base64(picture)
            if with_map:
                row["map_png"] = _png_base64(_map_png(anomaly_map, vmin, vmax))
                row["map_range"] = [vmin, vmax]
            rows.append(row)
        done = time.perf_counter()
        timing = {"inference": (inferred - start) * 1e3, "render": (done - inferred) * 1e3}
        return {"images": rows, "timing_ms": timing}
