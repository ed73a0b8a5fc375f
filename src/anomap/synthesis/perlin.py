"""Perlin noise and the thresholded Perlin masks GLASS uses to place synthetic anomalies
(METHODS.md §2.4.3 step 4)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

Combination = Literal["single", "intersection", "union"]

_THRESHOLD = 0.5


def _fade(t: np.ndarray) -> np.ndarray:
    """6t⁵ − 15t⁴ + 10t³: zero first and second derivatives at cell borders, so no creases."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _cell_coords(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice cell index and position inside the cell (in [0, 1)) of each of `n` pixels,
    `n` being a multiple of `cells`."""
    step = n // cells
    index = np.arange(n)
    return index // step, (index % step) / step


def perlin_noise(
    shape: tuple[int, int], scales: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """2-D gradient Perlin noise of `shape` (H, W) with `scales` (rows, cols) lattice cells,
    scaled by √2 so it spans about [−1, 1]; float32.

    When a side is not a multiple of its lattice count, the noise is made on the next multiple
    and cropped, so every cell stays a whole number of pixels (as in GLASS, which only ever
    uses divisible sizes) at the cost of the last cell being cut short.
    """
    (h, w), (ry, rx) = shape, scales
    if min(h, w, ry, rx) < 1:
        raise ValueError(f"shape {shape} and scales {scales} must be positive")
    ph, pw = -(-h // ry) * ry, -(-w // rx) * rx
    iy, fy = _cell_coords(ph, ry)
    ix, fx = _cell_coords(pw, rx)
    iy, ix = iy[:h], ix[:w]
    fy, fx = fy[:h, None].astype(np.float32), fx[None, :w].astype(np.float32)

    angles = 2.0 * math.pi * rng.random((ry + 1, rx + 1))
    # gradient component y pairs with rows and x with columns
    gy, gx = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    def corner(dy: int, dx: int) -> np.ndarray:
        """Dot product of each pixel's offset from a cell corner with that corner's gradient;
        gathering rows first keeps the indexing on small arrays."""
        return gy[iy + dy][:, ix + dx] * (fy - dy) + gx[iy + dy][:, ix + dx] * (fx - dx)

    n00, n10, n01, n11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
    ty, tx = _fade(fy), _fade(fx)
    top, bottom = n00 + ty * (n10 - n00), n01 + ty * (n11 - n01)
    return (math.sqrt(2.0) * (top + tx * (bottom - top))).astype(np.float32)


def _thresholded_perlin(
    shape: tuple[int, int], rng: np.random.Generator, max_exponent: int
) -> np.ndarray:
    """One binary Perlin map: random 2^a × 2^b lattice, random rotation, noise > 0.5."""
    a, b = rng.integers(0, max_exponent, size=2)
    noise = perlin_noise(shape, (2**a, 2**b), rng)
    angle = rng.uniform(-90.0, 90.0)
    noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return noise > _THRESHOLD


def draw_combination(rng: np.random.Generator) -> Combination:
    """u ~ U(0, 1): above 2/3 union, above 1/3 intersection, otherwise map A alone."""
    u = rng.random()
    if u > 2 / 3:
        return "union"
    if u > 1 / 3:
        return "intersection"
    return "single"


def combine(a: np.ndarray, b: np.ndarray, how: Combination) -> np.ndarray:
    """Merge two binary maps as `draw_combination` decided."""
    if how == "union":
        return a | b
    if how == "intersection":
        return a & b
    return a


def grid_mask(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Max-pool a float32 pixel mask onto the feature grid: a cell is anomalous if any of its
    pixels is. Adaptive pooling equals plain k×k pooling when the sizes divide (288 → 36 is
    8×8); otherwise each cell spans floor(i·H/g) to ceil((i+1)·H/g), so neighbouring cells may
    share a border pixel and no pixel is left out."""
    pooled = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(mask)[None, None], grid)
    return pooled[0, 0].numpy()


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    grid: tuple[int, int],
    foreground: np.ndarray | None = None,
    max_exponent: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """GLASS's anomaly-placement mask: (pixel mask H×W, grid mask), both float32 in {0, 1}.

    Two thresholded Perlin maps are combined (union, intersection or the first alone, each with
    probability 1/3) and restricted to `foreground` (H×W, nonzero = object); the draw repeats
    until the grid mask is not empty. An all-zero `foreground` would never succeed, so it is
    treated as all ones (no restriction) instead of looping forever.
    """
    fg = None
    if foreground is not None:
        if foreground.shape != tuple(shape):
            raise ValueError(f"foreground is {foreground.shape}, expected {tuple(shape)}")
        if foreground.any():
            fg = foreground > 0
    while True:
        a = _thresholded_perlin(shape, rng, max_exponent)
        b = _thresholded_perlin(shape, rng, max_exponent)
        pixels = combine(a, b, draw_combination(rng))
        if fg is not None:
            pixels &= fg
        pixels = pixels.astype(np.float32)
        cells = grid_mask(pixels, grid)
        if cells.any():
            return pixels, cells
