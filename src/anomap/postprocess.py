"""From per-cell scores to maps, image scores and decisions, the same for every method."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

# The per-axis operators are built in NumPy: when `export_onnx` traces the inference path,
# the tracer then sees finished constants, not the index arithmetic that made them.


def _resize_operator(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """n_out×n_in matrix of 1-D linear interpolation with `F.interpolate`'s source positions
    (bilinear resizing applies it along each axis in turn)."""
    out = np.arange(n_out, dtype=np.float64)
    if align_corners:
        source = out * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        source = np.maximum((out + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    weight_high = source - low
    operator = np.zeros((n_out, n_in))
    np.add.at(operator, (np.arange(n_out), low), 1.0 - weight_high)
    np.add.at(operator, (np.arange(n_out), high), weight_high)
    return operator


def _blur_operator(length: int, sigma: float, truncate: float) -> np.ndarray:
    """length×length matrix of `scipy.ndimage.gaussian_filter1d` (mode 'reflect')."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    # scipy's 'reflect' repeats the edge: index -1 reads 0, index n reads n - 1
    source = np.arange(length)[:, None] + offsets.astype(np.int64)[None]
    source = np.remainder(source, 2 * length)
    source = np.where(source >= length, 2 * length - 1 - source, source)
    operator = np.zeros((length, length))
    np.add.at(operator, (np.arange(length)[:, None], source), kernel[None])
    return operator


def _box_operator(length: int, window: int) -> np.ndarray:
    """(length − window + 1)×length matrix of a stride-1 moving mean without padding."""
    starts = np.arange(length - window + 1)[:, None]
    columns = np.arange(length)[None]
    return ((columns >= starts) & (columns < starts + window)) / window


@lru_cache(maxsize=64)
def _axis_operator(
    n_in: int,
    n_out: int,
    sigma: float,
    truncate: float,
    align_corners: bool,
    window: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Resize, then blur, then moving mean, along one axis: one matrix, composed in float64.
    Made outside inference mode, so a cached operator also serves autograd callers."""
    operator = _resize_operator(n_in, n_out, align_corners)
    if sigma > 0:
        operator = _blur_operator(n_out, sigma, truncate) @ operator
    if window > 1:
        operator = _box_operator(n_out, window) @ operator
    with torch.inference_mode(False):
        return torch.from_numpy(operator).to(dtype=dtype, device=device)


def upsample(
    cells: torch.Tensor,
    size: tuple[int, int],
    *,
    sigma: float = 0.0,
    truncate: float = 4.0,
    align_corners: bool = False,
    window: int = 1,
) -> torch.Tensor:
    """B×h×w (or B×1×h×w) cell scores -> B×H×W maps: bilinear resizing to `size`, then (for
    `sigma` > 0) `scipy.ndimage.gaussian_filter(map, sigma)` (mode 'reflect', `truncate`),
    then (for `window` > 1) the stride-1 `window`×`window` moving mean without padding, which
    makes the output (H − window + 1)×(W − window + 1).

    All three are linear and act on each axis separately, so the whole chain is one small
    matrix per axis, R·C·Sᵀ: two matrix products on the cell grid instead of a 33-tap
    convolution over every output pixel (about 50× less time on a CPU at 224²). Equal to
    running the steps one after another up to float rounding (tested against scipy)."""
    maps = cells[:, 0] if cells.dim() == 4 else cells
    # plain ints: the operators are fixed for a shape, also when export traces this
    height, width, out_height, out_width = (int(n) for n in (*maps.shape[-2:], *size))
    if (height, width) == (out_height, out_width) and sigma <= 0 and window <= 1:
        return maps
    settings = (sigma, truncate, align_corners, window, maps.dtype, maps.device)
    rows = _axis_operator(height, out_height, *settings)
    columns = _axis_operator(width, out_width, *settings)
    return torch.matmul(torch.matmul(rows, maps), columns.T)


@dataclass(frozen=True)
class Calibration:
    """What normal images taught us about scores, learnt without any anomalous image.

    `image_threshold` is a high quantile of normal validation scores (see `_score_quantile`:
    the empirical quantile or a normal fit's, whichever is higher); normalised scores map
    the median normal score to 0 and the threshold to 1. `pixel_threshold` is the largest map
    value seen on normal validation images, used to outline suspicious regions; `pixel_low` is
    their median, the bottom of the heat-map colour scale.
    """

    image_threshold: float
    image_center: float
    pixel_threshold: float
    pixel_low: float
    quantile: float
    num_images: int

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        scale = max(self.image_threshold - self.image_center, 1e-12)
        return (np.asarray(scores, dtype=np.float32) - self.image_center) / scale

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.image_threshold

    @property
    def pixel_range(self) -> tuple[float, float]:
        """Colour scale for heat maps: the pixel threshold sits in the middle."""
        span = max(self.pixel_threshold - self.pixel_low, 1e-12)
        return self.pixel_low, self.pixel_threshold + span

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(**data)


PROBABILITY_EPS = 1e-7  # float32 resolution just below 1: a saturated sigmoid reads 1.0


def _score_quantile(scores: np.ndarray, quantile: float, probabilities: bool) -> float:
    """A score that a new normal image exceeds with probability 1 − `quantile`. With enough
    scores (n·(1 − q) ≥ 1) that is their empirical quantile, so a few outlying normals cannot
    inflate it. With fewer (under 100 images for the 99th percentile) the empirical estimate
    is about their maximum, which new good images exceed often; there the higher of it and a
    Gaussian prediction bound is used: mean + t·std·√(1 + 1/n), t the Student-t quantile with
    n − 1 degrees of freedom. Unlike the plug-in mean + z·std it allows for the mean and
    spread being estimated from these few images: with 4 held-out images the plug-in flagged
    far more good test images than the 1 % it promised (benchmarks/results/calibration.md).

    Scores that are probabilities (GLASS, PBAS: a sigmoid's maximum) are fitted on the logit
    scale and mapped back, so the threshold stays below 1: fitted on the raw scale, normals
    near 1 put it above every score the model can give (nothing would ever be flagged)."""
    empirical = float(np.quantile(scores, quantile))
    count = scores.size
    if count < 2 or quantile >= 1.0 or count * (1.0 - quantile) >= 1.0:
        return empirical
    from scipy.special import stdtrit  # Student-t quantile; imported here, off the load path

    factor = float(stdtrit(count - 1, quantile)) * math.sqrt(1.0 + 1.0 / count)
    if probabilities:
        clipped = np.clip(scores, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
        logits = np.log(clipped) - np.log1p(-clipped)
        bound = float(1.0 / (1.0 + np.exp(-(logits.mean() + factor * logits.std(ddof=1)))))
    else:
        bound = float(scores.mean() + factor * scores.std(ddof=1))
    return max(empirical, bound)


def calibrate(
    scores: np.ndarray, maps: np.ndarray, quantile: float = 0.99, *, probabilities: bool = False
) -> Calibration:
    """Fit the decision threshold and colour scale from normal images only; `probabilities`
    says the image scores lie in (0, 1) (see `_score_quantile`)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("calibration needs at least one normal image")
    if not 0.5 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0.5, 1], got {quantile}")
    flat = np.asarray(maps, dtype=np.float32).reshape(-1)
    threshold = _score_quantile(scores, quantile, probabilities)
    center = float(np.median(scores))
    if threshold - center <= 1e-6 * abs(threshold):
        # one held-out image (or equal scores) has no spread to scale by: measure from zero,
        # so normalised scores stay readable (threshold -> 1) instead of dividing by ~0
        center = 0.0 if threshold > 0 else threshold - 1.0
    return Calibration(
        image_threshold=threshold,
        image_center=center,
        pixel_threshold=float(flat.max()),
        pixel_low=float(np.median(flat)),
        quantile=quantile,
        num_images=int(scores.size),
    )
