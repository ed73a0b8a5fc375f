"""Foreground masks that keep GLASS's synthetic anomalies on the object (METHODS.md §2.4.3
step 3, §2.8).

GLASS loads masks from `<data>/fg_mask/<class>/<file>`, an author release made by
binarisation; `load_foreground_masks` finds such files. Where they are missing, §2.8's
fallback is to make them: `foreground_mask` binarises one object image (Otsu on a blurred
grayscale, morphological clean-up), and texture classes, where every pixel is foreground,
get all-ones masks. `TEXTURE_CLASSES` names the benchmark texture classes and
`looks_like_texture` guesses for other data; `fills_frame` spots close-ups whose object has
no background around it, which get all-ones masks too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

TEXTURE_CLASSES: dict[str, frozenset[str]] = {
    "mvtec": frozenset({"carpet", "grid", "leather", "tile", "wood"}),
    "visa": frozenset(),
    "mpdd": frozenset(),
    "wfdd": frozenset({"grey_cloth", "grid_cloth", "yellow_cloth", "pink_flower"}),
}
"""Benchmark classes whose images are all texture, so the whole frame is foreground."""

_LUMA = np.array([0.299, 0.587, 0.114])
_BLUR_FRACTION = 0.01  # Gaussian sigma and morphology radius, as a fraction of the short side
_MIN_COMPONENT = 0.005  # smallest kept object part, as a fraction of the frame
_FULL = 0.95  # a "foreground" this large is the whole frame
_TEXTURE_SIDE = 128
_TEXTURE_SIGMA = _TEXTURE_SIDE / 16
_TEXTURE_RATIO = 0.3
_FILLS_FRAME_BORDER = 0.15  # share of the image border an object's mask may cover


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return image @ _LUMA if image.ndim == 3 else image


def otsu_threshold(gray: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: `gray > t` is the brighter class.

    Takes the lowest t of maximal between-class variance; an image with a single level gives
    t = 0.
    """
    hist = np.bincount(np.asarray(gray, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    prob = hist / hist.sum()
    weight = np.cumsum(prob)
    mean = np.cumsum(prob * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * weight - mean) ** 2 / (weight * (1 - weight))
    return int(np.argmax(np.nan_to_num(between, nan=-1.0, posinf=-1.0)))


def _border_fraction(mask: np.ndarray) -> float:
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(border.mean())


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _morph(
    op: Callable[[np.ndarray, np.ndarray], np.ndarray], mask: np.ndarray, structure: np.ndarray
) -> np.ndarray:
    """Apply a binary morphology op with the image edge extended, so objects cut by the
    frame are not eroded from outside."""
    pad = structure.shape[0] // 2
    return op(np.pad(mask, pad, mode="edge"), structure)[pad:-pad, pad:-pad]


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Binary H×W mask (bool) of the object in one image (RGB H×W×3 or gray H×W).

    The Otsu class that touches the frame border less is the object: industrial objects sit
    in the middle and the background surrounds them. Closing, opening and hole filling make
    it solid; parts under 0.5 % of the frame are dropped. When nothing is left, or the object
    covers over 95 % of the frame, the image has no separable object and the mask is
    all-ones, i.e. anomalies may go anywhere, as with GLASS's fg = 0.
    """
    gray = _gray(image)
    height, width = gray.shape
    radius = max(1, round(_BLUR_FRACTION * min(height, width)))
    smooth = np.clip(np.rint(ndimage.gaussian_filter(gray, radius)), 0, 255).astype(np.uint8)
    bright = smooth > otsu_threshold(smooth)
    mask = bright if _border_fraction(bright) <= 0.5 else ~bright
    structure = _disk(radius)
    mask = _morph(ndimage.binary_closing, mask, structure)
    mask = _morph(ndimage.binary_opening, mask, structure)
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= _MIN_COMPONENT * mask.size
    keep[0] = False
    mask = keep[labels]
    if not mask.any() or mask.mean() > _FULL:
        return np.ones((height, width), dtype=bool)
    return mask


def looks_like_texture(images: Sequence[np.ndarray]) -> bool:
    """Guess whether a class is texture (foreground everywhere) rather than objects.

    Each image is brought to 128×128 gray. Texture detail is fine and not aligned between
    images, so it vanishes from the mean of the Gaussian-blurred (sigma 8) images, while an
    object keeps its coarse silhouette there. The class is texture when the standard
    deviation of that coarse mean is at most 0.3 times the mean per-image standard deviation.
    Limits: strong uneven lighting can make a texture look like an object, and small objects
    at random positions average away and look like texture (which only costs the mask).
    """
    if not images:
        raise ValueError("no images to judge")
    grays = [
        _gray(
            np.asarray(
                Image.fromarray(np.asarray(im, dtype=np.uint8)).resize(
                    (_TEXTURE_SIDE, _TEXTURE_SIDE), Image.BILINEAR
                )
            )
        )
        for im in images
    ]
    detail = float(np.mean([g.std() for g in grays]))
    coarse = np.mean([ndimage.gaussian_filter(g, _TEXTURE_SIGMA) for g in grays], axis=0)
    return bool(coarse.std() <= _TEXTURE_RATIO * detail)


def fills_frame(images: Sequence[np.ndarray]) -> bool:
    """Guess whether the object fills the frame (a close-up, such as a screw thread), so that
    no background surrounds it: then `foreground_mask`'s Otsu split separates bright parts of
    the object from dark ones, not object from background, and would keep synthetic anomalies
    off most of the part. True when the masks cover on average more than 15 % of the image
    border; an object on a background leaves its border to the background (0 % on the
    synthetic objects, about 23 % on ball_screw's thread at 128×128)."""
    if not images:
        raise ValueError("no images to judge")
    fractions = [_border_fraction(foreground_mask(np.asarray(image))) for image in images]
    return float(np.mean(fractions)) > _FILLS_FRAME_BORDER


def load_foreground_masks(
    data_root: str | Path | None, category: str, sample_paths: Sequence[str | Path]
) -> list[Path | None]:
    """GLASS's mask file for each image, `<data_root>/fg_mask/<category>/<file name>`, or
    None where it does not exist.

    GLASS keeps only the file name (train/good/000.png → fg_mask/bottle/000.png). With
    `data_root` None the root is found as GLASS does, by cutting each image path at the
    category; we cut at the last folder named exactly `category`, where GLASS cuts at the
    first occurrence of the name anywhere in the path string.
    """
    found: list[Path | None] = []
    for sample in map(Path, sample_paths):
        root = Path(data_root) if data_root is not None else _root_above(sample, category)
        candidate = None if root is None else root / "fg_mask" / category / sample.name
        found.append(candidate if candidate is not None and candidate.is_file() else None)
    return found


def _root_above(path: Path, category: str) -> Path | None:
    return next((p.parent for p in path.parents if p.name == category), None)
