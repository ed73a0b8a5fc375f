"""Scoring a list of image files into a results folder, as `anomap predict` does.

Images are decoded, scored and written a chunk at a time, so memory stays that of one chunk
however many files a production folder holds (holding every map would take 0.2 MB per image
at 224², 10 GB for 50 000 images), and every file is decoded once for both its score and its
overlay. A corrupt file stops the run before anything is scored, with every bad file named;
`skip_unreadable` instead records each one with its error and scores the rest.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomap.data.dataset import problem_listing, unreadable_images
from anomap.data.images import read_image
from anomap.errors import DataError
from anomap.progress import track
from anomap.report import panel, save_png_atomic, write_text_atomic

CHUNK = 64  # images in memory at once


def predict_files(
    detector: Any,
    paths: Sequence[Path],
    out: Path,
    *,
    category: str | None = None,
    overlays: bool = True,
    skip_unreadable: bool = False,
) -> list[dict[str, Any]]:
    """Score `paths` with `detector` (a fitted Detector or an OnnxDetector); write an overlay
    PNG per image (with `overlays`), then `predictions.csv` and `predictions.json` in `out`.
    Returns the rows, in the order of `paths`: path, score, normalized_score, anomalous
    (None for an uncalibrated model), overlay, and error (None unless the file was skipped).
    A file whose pixels turn out corrupt mid-run (the header was fine) stops the run with
    the rows scored so far written, unless `skip_unreadable`."""
    bad = unreadable_images(paths)
    if bad and not skip_unreadable:
        hint = "\n(--skip-unreadable, or skip_unreadable=True, records them and scores the rest)"
        raise DataError(problem_listing(list(bad.values()), len(paths)) + hint)
    out.mkdir(parents=True, exist_ok=True)
    scorer = _ChunkScorer(detector, out, category, overlays)
    if overlays and scorer.colour_range is None:  # uncalibrated: one scale for the whole run
        scorer.colour_range = _map_range(detector, [p for p in paths if p not in bad], category)
    rows: dict[int, dict[str, Any]] = {}  # by position in `paths`
    for chunk in _chunks(list(enumerate(paths))):
        images: list[tuple[int, Path, Image.Image]] = []
        for index, path in chunk:
            try:
                if path in bad:
                    raise DataError(bad[path])
                images.append((index, path, read_image(path)))
            except DataError as exc:
                if skip_unreadable:
                    rows[index] = _row(path, error=str(exc), overlays=overlays)
                    continue
                rows.update(scorer.score(images))  # everything before it is kept
                if rows:
                    _write_tables([rows[i] for i in sorted(rows)], out)
                kept = f"the {len(rows)} image(s) before it are in {out}/predictions.csv; "
                hint = "--skip-unreadable goes past such files"
                raise DataError(f"{exc}\n{kept if rows else ''}{hint}") from exc
        rows.update(scorer.score(images))
    ordered = [rows[index] for index in range(len(paths))]
    _write_tables(ordered, out)
    return ordered


class _ChunkScorer:
    """Scores decoded images and writes their overlays, on the model's colour scale."""

    def __init__(self, detector: Any, out: Path, category: str | None, overlays: bool) -> None:
        self.detector, self.out, self.category, self.overlays = detector, out, category, overlays
        self.calibration = detector.calibration_for(category)
        self.colour_range = self.calibration.pixel_range if self.calibration else None

    def score(self, images: list[tuple[int, Path, Image.Image]]) -> dict[int, dict[str, Any]]:
        """{position: row} for (position, path, image) triples."""
        if not images:
            return {}
        result = self.detector.predict([image for *_, image in images], category=self.category)
        rows = {}
        for k, (index, path, image) in enumerate(images):
            row = _row(
                path,
                score=float(result.scores[k]),
                normalized=None if result.normalized is None else float(result.normalized[k]),
                anomalous=None if result.is_anomalous is None else bool(result.is_anomalous[k]),
                overlays=self.overlays,
            )
            if self.overlays:
                target = self.out / f"{index:04d}_{path.stem}_overlay.png"  # names repeat
                save_png_atomic(self._panel(image, result.maps[k], row, path.name), target)
                row["overlay"] = str(target)
            rows[index] = row
        return rows

    def _panel(
        self, image: Image.Image, anomaly_map: np.ndarray, row: dict[str, Any], title: str
    ) -> Image.Image:
        assert self.colour_range is not None
        cal = self.calibration
        return panel(
            self.detector.preprocess.geometry(image),
            anomaly_map,
            vmin=float(self.colour_range[0]),
            vmax=float(self.colour_range[1]),
            threshold=cal.pixel_threshold if cal else None,
            title=title,
            score=row["score"],
            decision=row["anomalous"],
        )


def _row(
    path: Path,
    *,
    score: float | None = None,
    normalized: float | None = None,
    anomalous: bool | None = None,
    error: str | None = None,
    overlays: bool,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": str(path),
        "score": score,
        "normalized_score": normalized,
        "anomalous": anomalous,
    }
    if overlays:
        row["overlay"] = None
    row["error"] = error
    return row


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    starts = range(0, len(items), CHUNK)
    for start in track(starts, "predicting", total=len(starts)):
        yield items[start : start + CHUNK]


def _map_range(detector: Any, paths: list[Path], category: str | None) -> tuple[float, float]:
    """The lowest and highest anomaly-map value over `paths`: a first scoring pass, only for
    an uncalibrated model (no held-out normals to set its colour scale). A file that cannot
    be decoded is left to the main pass, which reports or skips it."""
    low, high = np.inf, -np.inf
    for start in range(0, len(paths), CHUNK):
        images = []
        for path in paths[start : start + CHUNK]:
            try:
                images.append(read_image(path))
            except DataError:
                continue
        if images:
            maps = detector.predict(images, category=category).maps
            low, high = min(low, float(maps.min())), max(high, float(maps.max()))
    return low, high


def _write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(buffer.getvalue(), out / "predictions.csv")
    write_text_atomic(json.dumps(rows, indent=2), out / "predictions.json")
