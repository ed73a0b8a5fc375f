"""From per-cell scores to maps, image scores and decisions, the same for every method."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F


def upsample(cell_scores: torch.Tensor, size: tuple[int, int], *, align_corners: bool = False):
    """B×h×w (or B×1×h×w) cell scores -> B×H×W maps by bilinear interpolation."""
    maps = cell_scores if cell_scores.dim() == 4 else cell_scores[:, None]
    out = F.interpolate(maps, size=size, mode="bilinear", align_corners=align_corners)
    return out[:, 0]


def _gaussian_kernel(sigma: float, truncate: float, dtype: torch.dtype) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def _symmetric_index(length: int, radius: int) -> torch.Tensor:
    """Indices padding a length-n axis by `radius` with scipy's 'reflect' (edge repeated)."""
    index = torch.arange(-radius, length + radius)
    period = 2 * length
    index = torch.remainder(index, period)
    return torch.where(index >= length, period - 1 - index, index)


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0) -> torch.Tensor:
    """Batched separable Gaussian filter equal to `scipy.ndimage.gaussian_filter(map, sigma)`
    per image (mode 'reflect', truncate 4), but on tensors, so it runs where the model runs."""
    if sigma <= 0:
        return maps
    kernel = _gaussian_kernel(sigma, truncate, maps.dtype).to(maps.device)
    radius = kernel.numel() // 2
    batch, height, width = maps.shape
    rows = _symmetric_index(height, radius).to(maps.device)
    cols = _symmetric_index(width, radius).to(maps.device)
    x = maps[:, None]
    x = F.conv2d(x.index_select(3, cols), kernel.view(1, 1, 1, -1))
    x = F.conv2d(x.index_select(2, rows), kernel.view(1, 1, -1, 1))
    return x[:, 0]


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


def _score_quantile(scores: np.ndarray, quantile: float) -> float:
    """The `quantile` of normal scores. When there are too few scores for it to lie inside
    their range (n·(1 − q) < 1: under 100 images for the 99th percentile), the empirical
    estimate is about their maximum, which new good images exceed often (4 held-out images of
    a 40-image training set: about one in five); there the higher of it and a normal fit's
    quantile, mean + z·std, is used. With enough scores the empirical quantile stands, so a
    few outlying normals cannot inflate the threshold."""
    empirical = float(np.quantile(scores, quantile))
    if scores.size < 2 or quantile >= 1.0 or scores.size * (1.0 - quantile) >= 1.0:
        return empirical
    fitted = float(scores.mean() + NormalDist().inv_cdf(quantile) * scores.std(ddof=1))
    return max(empirical, fitted)


def calibrate(scores: np.ndarray, maps: np.ndarray, quantile: float = 0.99) -> Calibration:
    """Fit the decision threshold and colour scale from normal images only."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("calibration needs at least one normal image")
    if not 0.5 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0.5, 1], got {quantile}")
    flat = np.asarray(maps, dtype=np.float32).reshape(-1)
    threshold, center = _score_quantile(scores, quantile), float(np.median(scores))
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
