"""Torch dataset over discovered samples, and an up-front check that every file is readable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from anomap.data.images import image_size, read_image, read_mask
from anomap.data.samples import Sample
from anomap.data.transforms import Preprocess
from anomap.errors import DataError

_MAX_NAMED = 20


class ImageDataset(Dataset):
    """Samples -> dict(image 3×H×W float, mask 1×H×W uint8, label, index). Masks are checked
    against their image's size when read, so a mismatched pair fails naming both files."""

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess) -> None:
        self.samples = tuple(samples)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        index = range(len(self.samples))[index]  # IndexError and non-negative, like a list
        sample = self.samples[index]
        pil = read_image(sample.path)
        image = self.preprocess.image(pil)
        if sample.mask_path is None:
            mask = torch.zeros((1, *image.shape[1:]), dtype=torch.uint8)
        else:
            mask = self.preprocess.mask(read_mask(sample.mask_path, expected_size=pil.size))
        return {"image": image, "mask": mask, "label": sample.label, "index": index}


def _problem(sample: Sample, check_masks: bool) -> str | None:
    try:
        size = image_size(sample.path)
        if check_masks and sample.mask_path is not None:
            mask_size = image_size(sample.mask_path, kind="mask")
            if mask_size != size:
                return (
                    f"mask {sample.mask_path} is {mask_size[0]}x{mask_size[1]} (w x h) but its "
                    f"image {sample.path} is {size[0]}x{size[1]}"
                )
    except DataError as exc:
        return str(exc)
    return None


def unreadable_images(paths: Sequence[Path]) -> dict[Path, str]:
    """Each of `paths` whose image header cannot be read, with the error that names it."""
    return {path: error for path in paths if (error := _problem(Sample(path, ""), False))}


def validate_samples(samples: Sequence[Sample], check_masks: bool = True) -> None:
    """Read every header (not the pixels) and raise one DataError listing all bad files, so a
    long training does not die hours in on the one corrupt image. Truncated pixel data is
    only caught when the image is decoded (`read_image`)."""
    problems = [p for s in samples if (p := _problem(s, check_masks)) is not None]
    if problems:
        raise DataError(problem_listing(problems, len(samples)))


def problem_listing(problems: Sequence[str], total: int) -> str:
    """'k of n sample(s) have problems:' and the first few of them, one a line."""
    lines = "\n".join(f"  - {p}" for p in problems[:_MAX_NAMED])
    more = len(problems) - _MAX_NAMED
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return f"{len(problems)} of {total} sample(s) have problems:\n{lines}{tail}"
