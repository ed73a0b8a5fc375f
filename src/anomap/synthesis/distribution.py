"""GLASS's manifold vs hypersphere decision (METHODS.md §2.4.4).

GLASS picks, per class, how GAS projects its synthetic features: around each normal feature
(manifold) or around the class centre (hypersphere). The published runs read the choice from
shipped tables, transcribed in `PUBLISHED_HYPOTHESIS`; for new data GLASS computes it with a
spectral "judge" on the mean training image, re-implemented in `judge_hypothesis`.

The reference judge runs on OpenCV. OpenCV is not a dependency, so its uint8 steps are
reproduced bit-exactly in numpy: INTER_LINEAR resize (11-bit fixed-point weights and the
rounding of its vectorised vertical pass), BGR2GRAY (15-bit fixed point) and the normalised
box blur (BORDER_REFLECT_101, rounded). These were checked against opencv-python-headless
4.10.0.84 (GLASS's pinned version) on random images of many sizes. The one remaining
difference is the DFT: GLASS uses OpenCV's float32 DFT, we use numpy's float64 FFT, so a
spectrum value within float32 rounding of the 170 threshold could in principle be counted
differently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MANIFOLD = "manifold"
HYPERSPHERE = "hypersphere"

_M, _H = MANIFOLD, HYPERSPHERE

PUBLISHED_HYPOTHESIS: dict[str, dict[str, str]] = {
    "mvtec": {
        "carpet": _M,
        "grid": _M,
        "leather": _M,
        "tile": _M,
        "wood": _M,
        "bottle": _H,
        "cable": _H,
        "capsule": _M,
        "hazelnut": _M,
        "metal_nut": _M,
        "pill": _H,
        "screw": _H,
        "toothbrush": _M,
        "transistor": _H,
        "zipper": _M,
    },
    "visa": {
        "candle": _M,
        "capsules": _M,
        "cashew": _H,
        "chewinggum": _M,
        "fryum": _H,
        "macaroni1": _M,
        "macaroni2": _M,
        "pcb1": _H,
        "pcb2": _H,
        "pcb3": _M,
        "pcb4": _H,
        "pipe_fryum": _H,
    },
    "mpdd": {
        "bracket_black": _M,
        "bracket_brown": _M,
        "bracket_white": _M,
        "connector": _M,
        "metal_plate": _M,
        "tubes": _M,
    },
    "wfdd": {
        "grey_cloth": _M,
        "grid_cloth": _M,
        "yellow_cloth": _M,
        "pink_flower": _M,
    },
}
"""GLASS's `datasets/excel/<dataset>_distribution.xlsx` ("Distribution" column) per class."""

_JUDGE_SIZE = 289
_CENTRE = _JUDGE_SIZE // 2
_BLUR_SIZE = 39
_BRIGHT_DB = 170.0
_DENSITY = 0.21
_MIN_RADIUS = 12.0
_MIN_POINTS = 60
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_GRAY_BITS = 15
_GRAY_RGB = (9798, 19235, 3735)  # round(0.299, 0.587, 0.114 * 2**15), as OpenCV's BGR2GRAY


@dataclass(frozen=True)
class JudgeResult:
    """The judge's decision and the quantities it was made from, so a report can say why."""

    hypersphere: bool
    n: int
    radius: float
    l1_density: float
    l2_density: float

    @property
    def hypothesis(self) -> str:
        return HYPERSPHERE if self.hypersphere else MANIFOLD


def published_hypothesis(dataset: str | None, category: str) -> str | None:
    """The shipped table's choice for a benchmark class, or None when it has none.

    Without a dataset every table is searched; the benchmark class names do not collide, and
    MPDD, which anomap reads with the MVTec layout, is still found by its class names.
    """
    tables = (
        PUBLISHED_HYPOTHESIS.values()
        if dataset is None
        else [PUBLISHED_HYPOTHESIS.get(dataset.lower(), {})]
    )
    return next((t[category] for t in tables if category in t), None)


def mean_training_image(images: Iterable[np.ndarray]) -> np.ndarray:
    """Pixel-wise mean of equally sized uint8 images, truncated to uint8 as GLASS's
    `(img * 255).astype('uint8')` does.

    GLASS averages per-batch means of normalised float32 tensors (the last batch gets equal
    weight); this is the exact mean over images, so a pixel can differ by one where GLASS's
    float32 round trip lands just below an integer.
    """
    total: np.ndarray | None = None
    count = 0
    for image in images:
        image = np.asarray(image, dtype=np.float64)
        if total is not None and image.shape != total.shape:
            raise ValueError(f"image is {image.shape}, expected {total.shape} like the first")
        total = image if total is None else total + image
        count += 1
    if total is None:
        raise ValueError("no images to average")
    return (total / count).astype(np.uint8)


def judge_hypothesis(mean_image: np.ndarray) -> JudgeResult:
    """GLASS's `distribution_judge` on the mean training image (uint8 RGB H×W×3, or H×W gray).

    Many bright points packed around the spectrum's centre mean the mean image kept a strong
    coarse structure: the images are aligned and alike, so their normal features cluster
    around one centre (hypersphere); otherwise each feature's own neighbourhood (manifold).
    """
    image = np.asarray(mean_image)
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(f"expected a uint8 H×W×3 or H×W image, got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    small = cv_resize_linear(image, (_JUDGE_SIZE, _JUDGE_SIZE))
    blurred = cv_box_blur(cv_gray(small), _BLUR_SIZE)
    spectrum = np.fft.fftshift(np.fft.fft2(blurred.astype(np.float64)))
    with np.errstate(divide="ignore"):
        magnitude = 20 * np.log(np.abs(spectrum))
    ys, xs = np.nonzero(magnitude > _BRIGHT_DB)
    n = len(xs)
    if n == 0:  # GLASS crashes here (max of an empty array); nothing bright is no structure
        return JudgeResult(False, 0, 0.0, 0.0, 0.0)
    side_x = int(np.abs(xs - _CENTRE).max())
    side_y = int(np.abs(ys - _CENTRE).max())
    radius_sq = int(((xs - _CENTRE) ** 2 + (ys - _CENTRE) ** 2).max())
    radius = float(np.sqrt(radius_sq))
    l1_density = n / (4 * max(side_x, 1) * max(side_y, 1))
    l2_density = n / (disc_grid_count(radius_sq) + 1e-10)
    hypersphere = (
        (l1_density > _DENSITY or l2_density > _DENSITY)
        and radius > _MIN_RADIUS
        and n > _MIN_POINTS
    )
    return JudgeResult(bool(hypersphere), n, radius, float(l1_density), float(l2_density))


def disc_grid_count(radius_sq: int) -> int:
    """Integer points (x, y) with 0 ≤ x, y < 578 within sqrt(radius_sq) of (144, 144).

    GLASS counts on this doubled grid, not on the 289×289 spectrum, so a large disc is clipped
    on two sides only. Squared integer distances make its `<=` comparison exact.
    """
    offsets = (np.arange(2 * _JUDGE_SIZE) - _CENTRE) ** 2
    return int(np.count_nonzero(offsets[:, None] + offsets[None, :] <= radius_sq))


def _linear_taps(
    src: int, dst: int, clamp_weights: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit weights of OpenCV's INTER_LINEAR along one axis.

    OpenCV maps pixel centres (half-pixel offset) in float32. Along x it zeroes the weight
    of a tap that falls outside the image; along y it keeps both weights and only clamps the
    row indices, which rounds differently at the first and last rows.
    """
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = (pos - first).astype(np.float32)
    if clamp_weights:
        outside = (first < 0) | (first >= src - 1)
        frac[outside] = 0
        first = np.clip(first, 0, src - 1)
    one = np.float32(1 << _COEF_BITS)
    w0 = np.rint((np.float32(1) - frac) * one).astype(np.int64)
    w1 = np.rint(frac * one).astype(np.int64)
    return np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1), w0, w1


def cv_resize_linear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`cv2.resize(image, (width, height))` for uint8 H×W×C images, bit-exact.

    Rows are interpolated first in integers; the vertical pass uses the rounding of OpenCV's
    vectorised code ((a >> 4)·w >> 16 per tap, then a rounding shift by 2).
    """
    width, height = size
    pixels = image.astype(np.int64)
    y0, y1, b0, b1 = _linear_taps(pixels.shape[0], height, clamp_weights=False)
    x0, x1, a0, a1 = _linear_taps(pixels.shape[1], width, clamp_weights=True)
    shape = (1, width) + (1,) * (pixels.ndim - 2)
    rows = pixels[:, x0] * a0.reshape(shape) + pixels[:, x1] * a1.reshape(shape)
    shape = (height, 1) + (1,) * (pixels.ndim - 2)
    top = (rows[y0] >> 4) * b0.reshape(shape) >> 16
    bottom = (rows[y1] >> 4) * b1.reshape(shape) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def cv_gray(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's uint8 BGR2GRAY applied to the BGR version of an RGB image, bit-exact."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    wr, wg, wb = _GRAY_RGB
    return ((r * wr + g * wg + b * wb + (1 << (_GRAY_BITS - 1))) >> _GRAY_BITS).astype(np.uint8)


def cv_box_blur(gray: np.ndarray, size: int) -> np.ndarray:
    """`cv2.blur(gray, (size, size))` for uint8 2-D images: mean over the window with
    BORDER_REFLECT_101, rounded half up, computed on exact integer window sums."""
    half = size // 2
    padded = np.pad(gray.astype(np.int64), half, mode="reflect")  # numpy "reflect" is 101
    sums = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    window = sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size] + sums[:-size, :-size]
    area = size * size
    return ((2 * window + area) // (2 * area)).astype(np.uint8)
