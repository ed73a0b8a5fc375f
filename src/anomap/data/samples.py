"""The records every layout produces: one image on disk, and one category's train/test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image file. `defect_type` is "good" for normal images; `mask_path` is None when the
    image has no ground truth (normal images, or layouts where masks are optional)."""

    path: Path
    category: str
    defect_type: str = GOOD
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        return 0 if self.defect_type == GOOD else 1


@dataclass(frozen=True)
class Category:
    """One product category: normal training images and a labelled test set."""

    name: str
    layout: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...] = ()

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.test)
