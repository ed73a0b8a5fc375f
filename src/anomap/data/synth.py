"""Procedural benchmark categories in the MVTec AD layout, seeded and deterministic.

Categories:
- `woven_fabric` (texture): a twill-like weave with thread noise; defects crack (cut thread),
  stain, color, spot.
- `brushed_metal` (texture): anisotropic brushed grain under a lighting gradient; defects
  scratch, crack, stain, spot.
- `washer` (object): a metal ring on a dark plate with pose jitter; defects scratch, missing
  (a bite out of the ring), stain, spot.
- `pill` (object): a scored tablet on a blue tray with pose jitter; defects crack, color,
  missing (a chipped edge), spot.

Normal images vary in pose (objects), phase, orientation, lighting and sensor noise. Defects are
drawn as strokes, blobs from smoothed random polygons, local colour transforms of the image's
own content, or removed object parts, never as Perlin-noise masks filled with foreign textures
(what GLASS synthesises in training), so scores on this data are not circular. Each mask is
exactly the set of pixels the defect changed noticeably (painted alpha > 0.25, on the object).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from anomap.errors import DataError

CATEGORIES: tuple[str, ...] = ("woven_fabric", "brushed_metal", "washer", "pill")
DEFECTS: dict[str, tuple[str, ...]] = {
    "woven_fabric": ("crack", "stain", "color", "spot"),
    "brushed_metal": ("scratch", "crack", "stain", "spot"),
    "washer": ("scratch", "missing", "stain", "spot"),
    "pill": ("crack", "color", "missing", "spot"),
}
_SPLITS = {"train": 0, "test_good": 1, "test_defect": 2}
_ALPHA_IN_MASK = 0.25


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _noise(rng: np.random.Generator, size: int, sigma: float | tuple[float, float]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return field / (field.std() + 1e-6)


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y) / size
    return 1.0 + rng.uniform(0.05, 0.15) * (ramp - ramp.mean())


# ---------------------------------------------------------------- normal scenes


def _woven_fabric(rng, size):
    y, x = _grid(size)
    theta = np.deg2rad(rng.uniform(-4, 4))
    period = size / rng.uniform(22, 26)
    u = (x * np.cos(theta) + y * np.sin(theta)) / period
    v = (-x * np.sin(theta) + y * np.cos(theta)) / period
    phase = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(2 * np.pi * u + phase[0])
    weft = np.sin(2 * np.pi * v + phase[1])
    twill = np.sin(2 * np.pi * (u + v) / 2 + phase[0])
    pattern = 0.55 + 0.18 * warp * weft + 0.08 * twill + 0.04 * _noise(rng, size, 1.0)
    base = np.array([0.55, 0.42, 0.30]) * rng.uniform(0.92, 1.08, 3)
    image = pattern[..., None] * base * 1.5 * _lighting(rng, size)[..., None]
    return image, np.ones((size, size), bool)


def _brushed_metal(rng, size):
    angle = rng.uniform(-3, 3)
    grain = _noise(rng, size, (0.6, size / 12))
    grain = ndimage.rotate(grain, angle, reshape=False, mode="reflect", order=1)
    level = rng.uniform(0.55, 0.65)
    gray = level + 0.06 * grain + 0.015 * _noise(rng, size, 0.7)
    image = gray[..., None] * np.array([1.0, 1.0, 1.04]) * _lighting(rng, size)[..., None]
    return image, np.ones((size, size), bool)


def _pose(rng, size):
    centre = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
    return centre, rng.uniform(0.95, 1.05), rng.uniform(0, np.pi)


def _washer(rng, size):
    y, x = _grid(size)
    (cy, cx), scale, _ = _pose(rng, size)
    r = np.hypot(y - cy, x - cx)
    outer, inner = 0.34 * size * scale, 0.15 * size * scale
    ring = (r <= outer) & (r >= inner)
    soft = np.clip(np.minimum(outer - r, r - inner) + 0.5, 0, 1)
    angle = np.arctan2(y - cy, x - cx)
    shade = (
        0.62 + 0.12 * np.cos(angle - rng.uniform(0, 2 * np.pi)) + 0.03 * _noise(rng, size, (0.7, 3))
    )
    metal = shade[..., None] * np.array([0.95, 0.96, 1.0])
    plate = (0.16 + 0.02 * _noise(rng, size, 2.0))[..., None] * np.array([1.0, 1.0, 1.1])
    image = soft[..., None] * metal + (1 - soft[..., None]) * plate
    return image * _lighting(rng, size)[..., None], ring


def _pill(rng, size):
    y, x = _grid(size)
    (cy, cx), scale, angle = _pose(rng, size)
    dy, dx = y - cy, x - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    a, b = 0.36 * size * scale, 0.2 * size * scale
    ellipse = (u / a) ** 2 + (v / b) ** 2
    body = ellipse <= 1.0
    soft = np.clip((1.0 - ellipse) * a / 2 + 0.5, 0, 1)
    dome = 0.8 + 0.15 * np.sqrt(np.clip(1 - ellipse, 0, 1))
    groove = 1 - 0.25 * np.exp(-((u / 1.2) ** 2)) * (np.abs(v) < 0.8 * b)
    tablet = (dome * groove + 0.015 * _noise(rng, size, 1.0))[..., None] * np.array(
        [0.97, 0.95, 0.88]
    )
    tray = (0.35 + 0.02 * _noise(rng, size, 3.0))[..., None] * np.array([0.45, 0.6, 0.9])
    image = soft[..., None] * tablet + (1 - soft[..., None]) * tray
    return image * _lighting(rng, size)[..., None], body


_SCENES: dict[str, Callable] = {
    "woven_fabric": _woven_fabric,
    "brushed_metal": _brushed_metal,
    "washer": _washer,
    "pill": _pill,
}


# ---------------------------------------------------------------- defects


def _point_on(rng, foreground, margin):
    ys, xs = np.nonzero(
        ndimage.binary_erosion(foreground, iterations=margin) if margin else foreground
    )
    if ys.size == 0:
        ys, xs = np.nonzero(foreground)
    i = rng.integers(ys.size)
    return float(ys[i]), float(xs[i])


def _stroke_alpha(size, points, width, blur):
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([(x, y) for y, x in points], fill=255, width=width, joint="curve")
    return ndimage.gaussian_filter(np.asarray(canvas, np.float32) / 255, blur)


def _curve(rng, start, length, bend):
    """A smooth arc of `length` px from `start` (y, x)."""
    heading = rng.uniform(0, 2 * np.pi)
    steps = max(8, int(length / 3))
    turn = rng.normal(0, bend, steps).cumsum() / steps
    angles = heading + turn
    ys = start[0] + np.cumsum(np.sin(angles)) * length / steps
    xs = start[1] + np.cumsum(np.cos(angles)) * length / steps
    return list(zip(ys, xs, strict=True))


def _blob_alpha(rng, size, centre, radius, blur):
    count = 12
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    radii = radius * np.exp(ndimage.gaussian_filter1d(rng.normal(0, 0.35, count), 1.2, mode="wrap"))
    polygon = [
        (centre[1] + r * np.cos(t), centre[0] + r * np.sin(t))
        for r, t in zip(radii, angles, strict=True)
    ]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=255)
    return ndimage.gaussian_filter(np.asarray(canvas, np.float32) / 255, blur)


def _scratch(rng, image, fg, size):
    alpha = _stroke_alpha(
        size,
        _curve(rng, _point_on(rng, fg, 3), rng.uniform(0.15, 0.4) * size, 1.5),
        1 + int(rng.integers(0, 2)),
        0.6,
    )
    sign = rng.choice([-1.0, 1.0])
    target = np.clip(image + sign * rng.uniform(0.15, 0.35), 0, 1)
    return target, alpha


def _crack(rng, image, fg, size):
    start = _point_on(rng, fg, 3)
    points = _curve(rng, start, rng.uniform(0.12, 0.3) * size, 6.0)
    jitter = rng.normal(0, 0.8, (len(points), 2))
    points = [(y + j[0], x + j[1]) for (y, x), j in zip(points, jitter, strict=True)]
    alpha = _stroke_alpha(size, points, 2, 0.5)
    branch_at = points[len(points) // 2]
    alpha = np.maximum(alpha, _stroke_alpha(size, _curve(rng, branch_at, 0.08 * size, 4.0), 1, 0.5))
    return image * rng.uniform(0.25, 0.5), alpha


def _stain(rng, image, fg, size):
    alpha = _blob_alpha(rng, size, _point_on(rng, fg, 4), rng.uniform(0.03, 0.08) * size, 2.0)
    tint = np.array([0.45, 0.32, 0.18]) * rng.uniform(0.6, 1.2)
    strength = rng.uniform(0.4, 0.8)
    return (1 - strength) * image + strength * tint * image.mean(axis=2, keepdims=True) * 2, alpha


def _color(rng, image, fg, size):
    alpha = _blob_alpha(rng, size, _point_on(rng, fg, 6), rng.uniform(0.05, 0.1) * size, 3.0)
    gains = np.array([1.0, 1.0, 1.0]) + rng.uniform(0.15, 0.3) * rng.choice([-1, 1], 3)
    return np.clip(image * gains, 0, 1), alpha


def _spot(rng, image, fg, size):
    centre = _point_on(rng, fg, 3)
    radius = rng.uniform(1.5, max(2.0, 0.02 * size))
    y, x = _grid(size)
    alpha = np.clip(radius + 0.5 - np.hypot(y - centre[0], x - centre[1]), 0, 1)
    level = rng.choice([0.08, 0.92])
    return np.full_like(image, level), alpha


def _missing(rng, image, fg, size, background):
    edge = fg & ~ndimage.binary_erosion(fg, iterations=2)
    alpha = _blob_alpha(rng, size, _point_on(rng, edge, 0), rng.uniform(0.05, 0.09) * size, 1.0)
    return background, alpha * fg


_DEFECTS: dict[str, Callable] = {
    "scratch": _scratch,
    "crack": _crack,
    "stain": _stain,
    "color": _color,
    "spot": _spot,
}


def _background(category, rng, size):
    """What shows through where part of an object is missing."""
    if category == "washer":
        return (0.16 + 0.02 * _noise(rng, size, 2.0))[..., None] * np.array([1.0, 1.0, 1.1])
    return (0.35 + 0.02 * _noise(rng, size, 3.0))[..., None] * np.array([0.45, 0.6, 0.9])


def _render(category, defect, rng, size):
    """(uint8 image, bool mask or None)."""
    image, fg = _SCENES[category](rng, size)
    mask = None
    if defect is not None:
        for _ in range(20):
            if defect == "missing":
                target, alpha = _missing(rng, image, fg, size, _background(category, rng, size))
            else:
                target, alpha = _DEFECTS[defect](rng, image, fg, size)
                alpha = alpha * fg
            mask = alpha > _ALPHA_IN_MASK
            if mask.any():
                break
        image = alpha[..., None] * target + (1 - alpha[..., None]) * image
    image = image + 0.01 * rng.standard_normal(image.shape)
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return pixels, mask


def generate(
    out: str | Path,
    categories: Sequence[str] | None = None,
    *,
    image_size: int = 256,
    n_train: int = 40,
    n_test_good: int = 12,
    n_test_defect: int = 4,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the categories under `out` (MVTec layout) and return their folders. The same
    arguments give byte-identical files; each image has its own seeded random stream."""
    names = list(categories) if categories else list(CATEGORIES)
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise DataError(
            f"unknown synthetic categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}; choose from {', '.join(CATEGORIES)}"
        )
    if image_size < 32:
        raise DataError(f"image_size must be at least 32, got {image_size}")
    folders = []
    for name in names:
        index = CATEGORIES.index(name)
        root = Path(out) / name
        jobs = [("train/good", None, i, "train") for i in range(n_train)]
        jobs += [("test/good", None, i, "test_good") for i in range(n_test_good)]
        jobs += [
            (f"test/{d}", d, k * n_test_defect + i, "test_defect")
            for k, d in enumerate(DEFECTS[name])
            for i in range(n_test_defect)
        ]
        for folder, defect, number, split in jobs:
            rng = np.random.default_rng(
                np.random.SeedSequence([seed, index, _SPLITS[split], number])
            )
            pixels, mask = _render(name, defect, rng, image_size)
            target = root / folder
            target.mkdir(parents=True, exist_ok=True)
            stem = f"{number % n_test_defect if defect else number:03d}"
            Image.fromarray(pixels).save(target / f"{stem}.png")
            if mask is not None:
                gt = root / "ground_truth" / defect
                gt.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"{stem}_mask.png")
        if progress is not None:
            progress(name)
        folders.append(root)
    return folders
