"""Procedural anomaly-detection benchmark categories in the MVTec AD layout.

`generate(out)` writes, per category::

    <out>/<category>/train/good/000.png ...               normal images for training
    <out>/<category>/test/good/000.png ...                normal test images (no masks)
    <out>/<category>/test/<defect>/000.png ...            defective test images
    <out>/<category>/ground_truth/<defect>/000_mask.png   0/255 masks, same size as the image

Categories (textures fill the frame; objects lie on a plain background):

- ``woven_fabric`` (texture): a 2/2 twill of twisted yarns with per-thread colour and
  thickness variation and gentle weave distortion. Defects: ``scratch`` (a pulled thread
  lying across the weave), ``crack`` (a torn, branching cut), ``stain``, ``color`` (a dyed or
  bleached patch), ``spot`` (a fleck of dirt).
- ``brushed_metal`` (texture): anisotropic brushed grain with a broad specular band.
  Defects: ``scratch``, ``crack``, ``stain`` (oil or residue), ``color`` (heat tint), ``spot``
  (a pit or a speck).
- ``washer`` (object): a lathe-turned steel washer with bevelled edges, concentric machining
  marks and a cast shadow on a dark plate. Defects: ``scratch``, ``crack``, ``missing`` (a
  chip bitten out of an edge, or a radial cut through the ring), ``stain``, ``spot``.
- ``pill`` (object): a domed, scored capsule-shaped tablet with a debossed imprint and faint
  natural speckles, on a dark tray. Defects: ``scratch``, ``crack``, ``missing`` (a chipped
  edge), ``color``, ``spot``.

Normal images vary like photographs of one product on one inspection rig: random phase and
offset, slight rotation and scale (objects also move by a few percent, and the pill may lie
either way round), brightness, colour and lighting jitter, and sensor noise. Each defect
draws a severity, so sizes and contrasts range from obvious to subtle, with a floor (relative
to the local texture contrast) so that none is invisible.

Defects are geometric strokes (scratches, branching jagged cracks), blobs from smoothed random
polygons with soft edges, local colour transforms of the image's own content, or removed object
parts showing the background. They are never Perlin-noise masks filled with foreign textures
(what GLASS and similar methods synthesise during training), so scores on this data are not
circular. Each defect's geometry is an alpha map (blurred where the edge should be soft, and
multiplied by the object's coverage for objects); its mask is where that alpha exceeds 0.25,
and the defect is painted with the alpha ramped from 0 at that level, so the mask is exactly
the set of pixels the defect changes. Masks are never empty.

Every image gets its own random stream, seeded from (seed, category, split, defect type,
index), so the same arguments give byte-identical files, a category does not depend on which
others are generated with it, and `n_train=100` starts with the same images as `n_train=40`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from anomap.errors import DataError

CATEGORIES: tuple[str, ...] = ("woven_fabric", "brushed_metal", "washer", "pill")
DEFECTS: dict[str, tuple[str, ...]] = {
    "woven_fabric": ("scratch", "crack", "stain", "color", "spot"),
    "brushed_metal": ("scratch", "crack", "stain", "color", "spot"),
    "washer": ("scratch", "crack", "missing", "stain", "spot"),
    "pill": ("scratch", "crack", "missing", "color", "spot"),
}
_SPLIT_TRAIN, _SPLIT_TEST_GOOD, _SPLIT_TEST_DEFECT = 0, 1, 2
_ALPHA_IN_MASK = 0.25
_MIN_SIZE = 32
_PNG_LEVEL = 1  # fast; noisy images barely compress better at higher levels
# least mean change inside a mask (0..1 scale), absolute and relative to the surrounding
# texture's contrast, so that subtle defects are still there to be found
_MIN_CHANGE, _MIN_CHANGE_VS_TEXTURE = 0.035, 0.45
_TEXTURE_MARGIN = 0.1  # defect centres on textures stay this far (fraction of size) from edges
F32 = np.float32


@dataclass
class _Scene:
    image: np.ndarray  # (H, W, 3) float32 in about [0, 1]
    cover: np.ndarray  # (H, W) float32 object coverage; all ones for textures
    background: np.ndarray | None  # (H, W, 3) what shows through a missing part (objects)
    is_object: bool
    heading: float | None = None  # direction of the threads (radians), for fabric
    period: float | None = None  # thread spacing in px, for fabric
    hub: tuple[float, float] | None = None  # centre of a ring-shaped part
    cache: dict = field(default_factory=dict)


@dataclass
class _Sample:
    clean: np.ndarray  # (H, W, 3) uint8, the same image without the defect (same noise)
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) bool, None for normal images
    cover: np.ndarray  # (H, W) float32 object coverage


# ---------------------------------------------------------------- small helpers


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(F32)
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _upsample(small: np.ndarray, step: float, n_out: int, axis: int) -> np.ndarray:
    """Cubic B-spline upsampling of a coarse grid (`step` px per sample) along one axis."""
    pos = np.arange(n_out, dtype=F32) / step + 1
    base = np.floor(pos).astype(np.int64)
    t = (pos - np.floor(pos))[:, None]
    weights = (
        np.concatenate(  # the four uniform cubic B-spline basis functions
            [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1
        )
        / 6
    )
    moved = np.moveaxis(small, axis, 0)
    shape = (-1,) + (1,) * (moved.ndim - 1)
    out = sum(
        moved[np.minimum(base + k - 1, len(moved) - 1)] * weights[:, k].reshape(shape)
        for k in range(4)
    )
    return np.moveaxis(out, 0, axis)


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth Gaussian-like noise of unit std with correlation length about `sigma` px."""
    if sigma <= 3:
        values = ndimage.gaussian_filter(rng.standard_normal((size, size), F32), sigma)
    else:  # a coarse white grid, spline-upsampled: much cheaper than a wide filter
        n = int(np.ceil(size / sigma)) + 4
        small = rng.standard_normal((n, n), F32)
        values = _upsample(_upsample(small, sigma, size, 0), sigma, size, 1)
    return values / (values.std() + 1e-6)


def _noise_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    pad = 4 * int(sigma + 1)
    values = ndimage.gaussian_filter1d(rng.standard_normal(n + 2 * pad), sigma)[pad : pad + n]
    return (values / (values.std() + 1e-6)).astype(F32)


def _ramp(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    """A gentle linear lighting gradient around 1."""
    y, x = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (float(np.cos(angle)) * x + float(np.sin(angle)) * y) / size
    return (1.0 + amount * (ramp - ramp.mean())).astype(F32)


def _shade(height: np.ndarray, azimuth: float, elevation: float, shininess: float):
    """Lambert and Blinn-Phong terms for a height field lit from (azimuth, elevation)."""
    gy, gx = np.gradient(height)
    norm = np.sqrt(gx * gx + gy * gy + 1)
    light = np.array(
        [
            np.cos(azimuth) * np.cos(elevation),
            np.sin(azimuth) * np.cos(elevation),
            np.sin(elevation),
        ]
    )
    half = light + np.array([0, 0, 1.0])
    lx, ly, lz = light.tolist()
    hx, hy, hz = (half / np.linalg.norm(half)).tolist()
    lambert = (-gx * lx - gy * ly + lz) / norm
    spec = np.clip((-gx * hx - gy * hy + hz) / norm, 0, 1) ** shininess
    return np.clip(lambert, 0, 1).astype(F32), spec.astype(F32)


def _pose(rng: np.random.Generator, size: int, max_angle: float):
    """((cy, cx), scale, angle): a few % of translation, +-5 % of scale, some rotation."""
    cy, cx = (size / 2 + rng.uniform(-0.04, 0.04, 2) * size).tolist()
    return (cy, cx), rng.uniform(0.95, 1.05), rng.uniform(-max_angle, max_angle)


def _jitter(rng: np.random.Generator, amount: float) -> np.ndarray:
    """Per-channel gains around 1 (the colour balance of one shot)."""
    return rng.uniform(1 - amount, 1 + amount, 3).astype(F32)


def _plate(rng: np.random.Generator, size: int, level: float, tint) -> np.ndarray:
    """A matte background: fine grain, slow mottling, lighting gradient."""
    gray = level * (1 + 0.07 * _noise(rng, size, 0.8) + 0.05 * _noise(rng, size, size / 10))
    return gray[..., None] * np.asarray(tint, F32) * _ramp(rng, size, 0.25)[..., None]


def _canvas_alpha(size: int, draw: Callable[[ImageDraw.ImageDraw], None], blur: float):
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    alpha = np.asarray(canvas, F32) / 255
    return ndimage.gaussian_filter(alpha, blur) if blur > 0 else alpha


# ---------------------------------------------------------------- normal scenes


def _woven_fabric(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    period = size / rng.uniform(21, 23)
    theta = float(np.deg2rad(rng.uniform(-3, 3)))
    ct, st = float(np.cos(theta)) / period, float(np.sin(theta)) / period
    warp_u = 0.12 * _noise(rng, size, size / 5)
    warp_v = 0.12 * _noise(rng, size, size / 5)
    u = x * ct + y * st + rng.uniform(0, 64) + warp_u
    v = -x * st + y * ct + rng.uniform(0, 64) + warp_v
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    k = np.mod(j - i, 4).astype(np.int8)
    warp_on_top = k < 2
    # position along the floating thread (0..1 over two cells) and across it (0..1)
    along = np.where(warp_on_top, (k + fv) / 2, (3 - k + fu) / 2)
    across = np.where(warp_on_top, fu, fv)
    index = np.where(warp_on_top, i, j).astype(np.int64) % 256
    thickness_w = 1 + 0.12 * _noise_1d(rng, 256, 1.0)
    thickness_f = 1 + 0.12 * _noise_1d(rng, 256, 1.0)
    thick = np.where(warp_on_top, thickness_w[index], thickness_f[index])
    profile = np.clip(np.sin(np.pi * across) * thick, 0, 1) ** 0.7
    taper = np.clip(np.sin(np.pi * along), 0, 1) ** 0.35
    twist = 0.07 * np.cos(2 * np.pi * (4 * along + 1.3 * across))
    level = (0.22 + 0.78 * profile * (0.55 + 0.45 * taper)) * (1 + twist)
    hue_w = np.array([0.62, 0.52, 0.38], F32) * _jitter(rng, 0.025)
    hue_f = np.array([0.54, 0.43, 0.31], F32) * _jitter(rng, 0.025)
    shade_w = 1 + 0.07 * _noise_1d(rng, 256, 0.7)
    shade_f = 1 + 0.07 * _noise_1d(rng, 256, 0.7)
    shade = np.where(warp_on_top, shade_w[index], shade_f[index])
    colour = np.where(warp_on_top[..., None], hue_w, hue_f)
    fuzz = 1 + 0.05 * _noise(rng, size, 0.6)
    gain = rng.uniform(0.95, 1.05) * 1.25
    image = (level * shade * fuzz * gain)[..., None] * colour
    image = image * _ramp(rng, size, 0.12)[..., None]
    cover = np.ones((size, size), F32)
    return _Scene(image.astype(F32), cover, None, False, heading=theta, period=period)


def _brushed_metal(rng: np.random.Generator, size: int) -> _Scene:
    pad = int(size * 0.1) + 2
    big = size + 2 * pad
    grain = np.zeros((big, big), F32)
    for along, weight in ((size / 6, 1.0), (size / 30, 0.6)):  # streak lengths
        n = int(np.ceil(big / along)) + 4
        rows = ndimage.gaussian_filter1d(rng.standard_normal((big, n), F32), 0.5, axis=0)
        streaks = _upsample(rows, along, big, 1)
        grain += weight * streaks / (streaks.std() + 1e-6)
    angle = float(np.deg2rad(rng.uniform(-4, 4)))
    ca, sa = float(np.cos(angle)), float(np.sin(angle))
    y, x = _grid(size)
    c = size / 2
    yy = c + (y - c) * ca - (x - c) * sa + pad
    xx = c + (y - c) * sa + (x - c) * ca + pad
    grain = ndimage.map_coordinates(grain, [yy, xx], order=1, prefilter=False)
    grain /= grain.std() + 1e-6
    across = (yy - pad) / size
    band = np.exp(-(((across - rng.uniform(0.1, 0.9)) / rng.uniform(0.2, 0.35)) ** 2))
    level = rng.uniform(0.5, 0.58)
    gray = level * (1 + 0.055 * grain + 0.18 * band) + 0.01 * _noise(rng, size, 0.6)
    tint = np.array([0.98, 1.0, 1.04], F32) * _jitter(rng, 0.015)
    image = gray[..., None] * tint * _ramp(rng, size, 0.15)[..., None]
    return _Scene(image.astype(F32), np.ones((size, size), F32), None, False)


def _washer(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    (cy, cx), scale, rot = _pose(rng, size, np.pi)
    outer, inner = 0.36 * size * scale, 0.165 * size * scale
    bevel = 0.03 * size * scale
    r = np.hypot(y - cy, x - cx)
    phi = np.arctan2(y - cy, x - cx)
    cover = (np.clip(outer - r + 0.5, 0, 1) * np.clip(r - inner + 0.5, 0, 1)).astype(F32)
    # height: a flat face with rounded bevels at both edges
    t_out = np.clip((r - (outer - bevel)) / bevel, 0, 1)
    t_in = np.clip(((inner + bevel) - r) / bevel, 0, 1)
    height = 0.045 * size * (1 - 0.6 * (t_out**2 + t_in**2)) * (cover > 0)
    height = ndimage.gaussian_filter(height.astype(F32), 0.7)
    azimuth = float(np.deg2rad(-135 + rng.uniform(-12, 12)))
    lambert, spec = _shade(height, azimuth, float(np.deg2rad(55)), 30)
    # concentric lathe marks and the anisotropic sheen of turned metal
    rings = _noise_1d(rng, size, 0.6)[np.clip(r, 0, size - 1).astype(np.int64)]
    marks = _noise_1d(rng, 720, 6.0)[((phi + rot) / (2 * np.pi) * 720).astype(np.int64) % 720]
    sheen = np.cos(phi - azimuth - np.pi / 2) ** 2
    gray = (
        0.2
        + 0.36 * lambert
        + 0.2 * sheen * (r < outer - bevel) * (r > inner + bevel)
        + 0.3 * spec
        + 0.025 * rings
        + 0.012 * marks
        + 0.012 * _noise(rng, size, 0.7)
    ) * rng.uniform(0.92, 1.08)
    metal = gray[..., None] * (np.array([0.96, 0.98, 1.0], F32) * _jitter(rng, 0.02))
    background = _plate(rng, size, rng.uniform(0.14, 0.18), (0.95, 0.97, 1.0))
    offset = 0.025 * size
    sy, sx = cy - offset * float(np.sin(azimuth)), cx - offset * float(np.cos(azimuth))
    rs = np.hypot(y - sy, x - sx)
    shadow = ndimage.gaussian_filter(((rs <= outer) & (rs >= inner)).astype(F32), 0.02 * size)
    shown = background * (1 - 0.55 * shadow)[..., None]
    image = cover[..., None] * metal + (1 - cover[..., None]) * shown
    # where a part is missing the plate is less shaded than under the whole part
    through = background * (1 - 0.3 * shadow)[..., None]
    return _Scene(image.astype(F32), cover, through.astype(F32), True, hub=(cy, cx))


_STROKE_FONT: dict[str, list[list[tuple[float, float]]]] = {
    "A": [[(0, 1), (0.5, 0), (1, 1)], [(0.22, 0.62), (0.78, 0.62)]],
    "K": [[(0, 0), (0, 1)], [(0.95, 0), (0, 0.58)], [(0.32, 0.4), (1, 1)]],
    "7": [[(0, 0), (1, 0), (0.35, 1)]],
}
_IMPRINT = "AK7"


def _stadium(u: np.ndarray, v: np.ndarray, half_length: float, half_width: float):
    """Signed distance to a capsule (stadium) along u."""
    return np.hypot(np.maximum(np.abs(u) - (half_length - half_width), 0), v) - half_width


def _pill(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    (cy, cx), scale, angle = _pose(rng, size, float(np.deg2rad(12)))
    angle += float(np.pi * rng.integers(0, 2))  # either end first
    ca, sa = float(np.cos(angle)), float(np.sin(angle))
    u = (x - cx) * ca + (y - cy) * sa
    v = -(x - cx) * sa + (y - cy) * ca
    half_length, half_width = 0.37 * size * scale, 0.2 * size * scale
    dist = _stadium(u, v, half_length, half_width)
    cover = np.clip(0.5 - dist, 0, 1).astype(F32)
    depth = np.clip(-dist / half_width, 0, 1)
    height = 0.35 * half_width * np.sqrt(1 - (1 - depth) ** 2)
    groove = np.exp(-((u / (0.012 * size)) ** 2)) * (np.abs(v) < 0.85 * half_width)
    height = height - 0.02 * size * groove

    # debossed imprint: stroke letters along the long axis on one half
    letter_h, letter_w = 0.5 * half_width, 0.32 * half_width
    start = 0.18 * half_length

    def to_image(px: float, py: float) -> tuple[float, float]:
        lu, lv = start + px, (py - 0.5) * letter_h
        return cx + lu * ca - lv * sa, cy + lu * sa + lv * ca

    def draw(d: ImageDraw.ImageDraw) -> None:
        width = max(1, round(0.012 * size))
        for n, char in enumerate(_IMPRINT):
            for line in _STROKE_FONT[char]:
                points = [to_image(n * 1.45 * letter_w + a * letter_w, b) for a, b in line]
                d.line(points, fill=255, width=width, joint="curve")

    imprint = _canvas_alpha(size, draw, 0.5 * size / 256 + 0.3)
    height = height - 0.012 * size * imprint
    azimuth = float(np.deg2rad(-120 + rng.uniform(-10, 10)))
    lambert, spec = _shade(ndimage.gaussian_filter(height.astype(F32), 0.6), azimuth, 1.0, 20)
    gray = (0.5 + 0.45 * lambert + 0.12 * spec) * (1 + 0.012 * _noise(rng, size, 0.8))
    gray = gray * (1 - 0.12 * imprint) * rng.uniform(0.94, 1.04)
    tablet = gray[..., None] * (np.array([0.97, 0.95, 0.88], F32) * _jitter(rng, 0.01))
    # faint natural speckles in the tablet mass
    count = rng.poisson(14)
    speckle = np.zeros((size, size), F32)
    inside = np.argwhere(dist < -0.1 * half_width)
    picks = inside[rng.integers(0, len(inside), count)]
    speckle[picks[:, 0], picks[:, 1]] = rng.uniform(0.6, 1.0, count)
    speckle = np.clip(ndimage.gaussian_filter(speckle, 0.6 * max(1.0, size / 256)) * 4, 0, 1)
    tablet = tablet * (1 - 0.25 * speckle[..., None] * np.array([0.2, 0.8, 0.9], F32))
    background = _plate(rng, size, rng.uniform(0.1, 0.13), (0.82, 0.9, 1.0))
    offset = 0.02 * size
    su = u + offset * float(np.cos(azimuth - angle))
    sv = v + offset * float(np.sin(azimuth - angle))
    shadow = ndimage.gaussian_filter(
        (_stadium(su, sv, half_length, half_width) < 0).astype(F32), 0.02 * size
    )
    shown = background * (1 - 0.6 * shadow)[..., None]
    image = cover[..., None] * tablet + (1 - cover[..., None]) * shown
    through = background * (1 - 0.3 * shadow)[..., None]
    return _Scene(image.astype(F32), cover, through.astype(F32), True)


_SCENES: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "woven_fabric": _woven_fabric,
    "brushed_metal": _brushed_metal,
    "washer": _washer,
    "pill": _pill,
}


# ---------------------------------------------------------------- defect geometry


def _pick(rng: np.random.Generator, allowed: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(allowed)
    n = rng.integers(ys.size)
    return float(ys[n]) + rng.uniform(-0.5, 0.5), float(xs[n]) + rng.uniform(-0.5, 0.5)


def _inside(scene: _Scene, margin: float) -> np.ndarray:
    """Where a defect may be centred: at least `margin` px inside the object (or frame)."""
    size = scene.cover.shape[0]
    solid = scene.cover > 0.5
    if scene.is_object:
        if "depth" not in scene.cache:
            scene.cache["depth"] = ndimage.distance_transform_edt(solid)
        solid = scene.cache["depth"] > margin
    else:  # textures: keep clear of the border, which centre-cropping methods cut away
        m = int(min(max(margin, _TEXTURE_MARGIN * size), size / 4))
        solid = np.zeros_like(solid)
        solid[m : size - m, m : size - m] = True
    return solid if solid.any() else scene.cover > 0.5


def _smoothed(scene: _Scene) -> np.ndarray:
    """The image with its weave averaged out (fabric); the image itself otherwise."""
    if scene.period is None:
        return scene.image
    if "smooth" not in scene.cache:
        sigma = 0.7 * scene.period
        scene.cache["smooth"] = ndimage.gaussian_filter(scene.image, (sigma, sigma, 0))
    return scene.cache["smooth"]


def _path(rng, start, heading, length, step, wiggle, drift) -> np.ndarray:
    """(n, 2) points (y, x): a walk with per-step jitter `wiggle` and slow turn `drift`."""
    steps = max(3, int(np.ceil(length / step)))
    turn = np.cumsum(rng.normal(0, drift, steps)) + rng.normal(0, wiggle, steps)
    angles = heading + turn
    ys = start[0] + np.concatenate([[0], np.cumsum(np.sin(angles) * length / steps)])
    xs = start[1] + np.concatenate([[0], np.cumsum(np.cos(angles) * length / steps)])
    return np.stack([ys, xs], axis=1)


def _draw_strokes(size: int, strokes, blur: float) -> np.ndarray:
    """Strokes are (points, widths, levels): per-segment width (px) and intensity (0..1)."""

    def draw(d: ImageDraw.ImageDraw) -> None:
        for points, widths, levels in strokes:
            for a, b, level, w in zip(points[:-1], points[1:], levels, widths, strict=True):
                fill = int(255 * level)
                d.line([(a[1], a[0]), (b[1], b[0])], fill=fill, width=int(w))
                if w >= 3:  # round joints
                    r = w / 2 - 0.5
                    d.ellipse([b[1] - r, b[0] - r, b[1] + r, b[0] + r], fill=fill)

    return _canvas_alpha(size, draw, blur)


def _blob(rng, size: int, centre, radius: float, elongation: float, blur: float) -> np.ndarray:
    """A soft irregular blob: a smoothed random polygon, stretched and rotated."""
    count = 28
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    wobble = ndimage.gaussian_filter1d(rng.normal(0, 0.45, count), 1.5, mode="wrap")
    radii = radius * np.exp(wobble - wobble.mean())
    turn = rng.uniform(0, np.pi)
    px = radii * np.cos(angles) * elongation
    py = radii * np.sin(angles) / elongation
    xs = centre[1] + px * np.cos(turn) - py * np.sin(turn)
    ys = centre[0] + px * np.sin(turn) + py * np.cos(turn)
    polygon = list(zip(xs.tolist(), ys.tolist(), strict=True))
    return _canvas_alpha(size, lambda d: d.polygon(polygon, fill=255), blur)


def _lerp(a, b, t):
    return a + (b - a) * t


def _local_luma(scene: _Scene, alpha: np.ndarray) -> float:
    weight = alpha * scene.cover
    return float((scene.image.mean(axis=2) * weight).sum() / (weight.sum() + 1e-6))


# ---------------------------------------------------------------- defects
# Each returns (target, alpha): the image becomes image + alpha' * (target - image), with
# alpha' the alpha ramped from 0 at the mask level. `s` in [0, 1] is the severity.


def _scratch(rng, scene: _Scene, size: int, s: float):
    k = size / 256
    length = _lerp(0.08, 0.4, rng.uniform(0.3, 1.0) * (0.4 + 0.6 * s)) * size
    start = _pick(rng, _inside(scene, 0.04 * size))
    contrast = _lerp(0.06, 0.4, s)
    if scene.period is not None:  # fabric: a pulled thread lying straight across the weave
        heading = scene.heading + np.pi / 2 * rng.integers(0, 4) + rng.normal(0, 0.03)
        points = _path(rng, start, heading, 1.5 * length, 4 * k, 0.01, 0.01)
        n = len(points) - 1
        width = np.full(n, max(1, round(scene.period * rng.uniform(0.3, 0.45))))
        levels = np.clip(np.sin(np.pi * np.linspace(0, 1, n)) * 3, 0, 1)
        alpha = _draw_strokes(size, [(points, width, levels)], 0.5 * max(k, 1))
        # one smooth thread, lighter than the weave around it, hiding the pattern under it
        thread = _smoothed(scene) * (1.3 + 1.5 * contrast)
        return thread, alpha
    points = _path(rng, start, rng.uniform(0, 2 * np.pi), length, 4 * k, 0.02, 0.08)
    n = len(points) - 1
    levels = np.clip(np.sin(np.pi * np.linspace(0, 1, n)) * 2.5, 0, 1) * rng.uniform(0.8, 1.0)
    width = np.full(n, max(1, round(k * rng.uniform(1, 2.2))))
    alpha = _draw_strokes(size, [(points, width, levels)], 0.45 * max(k, 1))
    # bright (fresh metal) on darker surfaces, dark on bright ones
    if rng.random() < np.clip((0.8 - _local_luma(scene, alpha)) / 0.3, 0.1, 0.9):
        target = scene.image + contrast * (1.1 - scene.image)
    else:
        target = scene.image * (1 - contrast)
    return target, alpha


def _crack(rng, scene: _Scene, size: int, s: float):
    k = size / 256
    length = _lerp(0.1, 0.35, rng.uniform(0.3, 1.0) * (0.4 + 0.6 * s)) * size
    start = _pick(rng, _inside(scene, 0.05 * size))
    heading = rng.uniform(0, 2 * np.pi)
    main = _path(rng, start, heading, length, 5 * k, 0.45, 0.1)
    n = len(main) - 1
    taper = np.clip(np.sin(np.pi * np.linspace(0.05, 0.95, n)) * 1.6, 0.45, 1)
    base_width = _lerp(1.0, 3.0, rng.uniform(0.3, 1.0) * (0.5 + 0.5 * s)) * max(k, 0.8)
    if scene.period is not None:  # a tear in fabric gapes over a few threads
        base_width = max(base_width, scene.period * rng.uniform(0.25, 0.45))
    strokes = [(main, np.maximum(1, np.round(base_width * taper)), np.ones(n))]
    for _ in range(rng.integers(1, 4)):
        at = main[rng.integers(1, n)]
        turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        branch = _path(rng, at, heading + turn, length * rng.uniform(0.2, 0.45), 4 * k, 0.45, 0.1)
        m = len(branch) - 1
        width = np.maximum(1, np.round(base_width * 0.7 * np.linspace(1, 0.4, m)))
        strokes.append((branch, width, np.linspace(1, 0.6, m)))
    alpha = _draw_strokes(size, strokes, 0.4 * max(k, 1))
    return scene.image * _lerp(0.85, 0.15, s), alpha


def _stain(rng, scene: _Scene, size: int, s: float):
    radius = _lerp(0.035, 0.11, rng.uniform(0.2, 1.0) * (0.5 + 0.5 * s)) * size
    centre = _pick(rng, _inside(scene, 0.5 * radius))
    blur = rng.uniform(0.15, 0.35) * radius
    core = _blob(rng, size, centre, radius, rng.uniform(1.0, 1.8), blur)
    # dried edge: the rim is a little darker than the middle
    rim = np.clip(core * (1 - core) * 4, 0, 1)
    strength = _lerp(0.25, 0.8, s) * (0.75 + 0.5 * rim)
    tint = _STAIN_TINTS[rng.integers(len(_STAIN_TINTS))]
    # soaked in, the stain also dulls the texture under it
    stained = _lerp(scene.image, _smoothed(scene), 0.8) * tint
    return scene.image + strength[..., None] * (stained - scene.image), core


_STAIN_TINTS = np.array(  # coffee / rust, grease, oil with a green-grey cast, ink
    [[0.72, 0.5, 0.28], [0.5, 0.48, 0.45], [0.55, 0.62, 0.5], [0.45, 0.5, 0.78]], F32
)
_TINTS = np.array(  # heat tints and discolouration of grey or white material
    [
        [1.12, 0.97, 0.7],
        [1.1, 0.82, 0.62],
        [0.78, 0.86, 1.16],
        [1.12, 0.82, 0.9],
        [1.06, 1.04, 0.68],
    ],
    F32,
)


def _color(rng, scene: _Scene, size: int, s: float):
    radius = _lerp(0.04, 0.11, rng.uniform(0.2, 1.0)) * size
    centre = _pick(rng, _inside(scene, 0.6 * radius))
    alpha = _blob(rng, size, centre, radius, rng.uniform(1.0, 1.6), rng.uniform(0.1, 0.3) * radius)
    image = scene.image
    luma = image.mean(axis=2, keepdims=True)
    amount = _lerp(0.15, 0.6, s)
    chroma = float(np.mean(np.abs(image - luma)) / (np.mean(luma) + 1e-6))
    mode = rng.integers(3) if chroma > 0.08 else 3
    if mode == 0:  # the image's own colours with channels rotated
        target = _lerp(image, image[..., np.roll([0, 1, 2], rng.integers(1, 3))], amount * 1.5)
    elif mode == 1:  # bleached / faded toward grey
        target = _lerp(image, 0.3 + 0.8 * luma, amount)
    elif mode == 2:  # dyed darker with a colour cast
        gains = np.clip(1 + amount * rng.normal(0, 0.9, 3), 0.3, 1.7).astype(F32)
        target = image * gains * (1 - 0.3 * amount)
    else:  # grey or white material: heat tint, discolouration
        target = image * _lerp(1.0, _TINTS[rng.integers(len(_TINTS))], amount * 1.6)
    return np.clip(target, 0, 1.1), alpha


def _spot(rng, scene: _Scene, size: int, s: float):
    k = size / 256
    # radius from about 1 px to about 1 % of the area, small ones more often
    rmax = np.sqrt(0.01 * size * size / np.pi)
    radius = float(np.exp(_lerp(np.log(max(1.0, 1.2 * k)), np.log(rmax), rng.uniform(0, 1) ** 1.2)))
    centre = _pick(rng, _inside(scene, radius + 2))
    y, x = _grid(size)
    d = np.hypot((y - centre[0]) * rng.uniform(0.75, 1.0), x - centre[1])
    alpha = np.clip(radius + 0.5 - d, 0, 1).astype(F32)
    if radius > 3:
        alpha = ndimage.gaussian_filter(alpha, 0.12 * radius)
    luma = scene.image.mean(axis=2, keepdims=True)
    contrast = _lerp(0.2, 0.85, s)
    kind = rng.integers(3)
    if kind == 0:  # dark dirt / pit
        target = scene.image * (1 - contrast)
    elif kind == 1:  # bright speck
        target = scene.image + contrast * (1.05 - scene.image)
    else:  # rust-brown fleck
        target = _lerp(scene.image, luma * np.array([1.2, 0.6, 0.3], F32), contrast)
    return target, alpha


def _missing(rng, scene: _Scene, size: int, s: float):
    solid = scene.cover > 0.5
    edge = solid & ~ndimage.binary_erosion(solid)
    if scene.hub is not None and rng.random() < 0.3:  # a ring cut through: a radial slot
        half_w = _lerp(0.012, 0.04, s) * size
        turn = rng.uniform(0, 2 * np.pi)
        ct, st = float(np.cos(turn)), float(np.sin(turn))
        skew = rng.uniform(-0.3, 0.3) * half_w  # a slightly slanted cut
        corners = [(0, -half_w), (size, -half_w + skew), (size, half_w + skew), (0, half_w)]
        cy, cx = scene.hub
        polygon = [(cx + a * ct - b * st, cy + a * st + b * ct) for a, b in corners]
        hole = _canvas_alpha(size, lambda d: d.polygon(polygon, fill=255), 0.5)
    else:  # a chip bitten out of an edge
        radius = _lerp(0.03, 0.09, rng.uniform(0.2, 1.0) * (0.5 + 0.5 * s)) * size
        hole = _blob(rng, size, _pick(rng, edge), radius, rng.uniform(1.0, 1.6), 0.6)
    return scene.background, hole


_DEFECT_PAINTERS: dict[str, Callable] = {
    "scratch": _scratch,
    "crack": _crack,
    "stain": _stain,
    "color": _color,
    "spot": _spot,
    "missing": _missing,
}


# ---------------------------------------------------------------- rendering


def _quantise(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _render(category: str, defect: str | None, seed: np.random.SeedSequence, size: int) -> _Sample:
    """One image, plus the same image without its defect (identical sensor noise)."""
    scene_seed, defect_seed, noise_seed = seed.spawn(3)
    scene = _SCENES[category](np.random.default_rng(scene_seed), size)
    noise_rng = np.random.default_rng(noise_seed)
    sigma = noise_rng.uniform(0.006, 0.014)
    noise = sigma * noise_rng.standard_normal(scene.image.shape, F32)
    clean = _quantise(scene.image + noise)
    if defect is None:
        return _Sample(clean, clean, None, scene.cover)
    rng = np.random.default_rng(defect_seed)
    severity = rng.uniform(0, 1)
    for _ in range(50):
        target, alpha = _DEFECT_PAINTERS[defect](rng, scene, size, severity)
        alpha = (alpha * scene.cover).astype(F32)
        mask = alpha > _ALPHA_IN_MASK
        if mask.any():
            break
    else:  # pragma: no cover - every painter draws around a pixel it picked on the part
        raise RuntimeError(f"could not place a {defect} defect on {category}")
    # Paint with the alpha ramped from 0 at the mask level: still soft-edged, and the mask is
    # exactly the set of pixels the defect touches (nothing changes outside it).
    alpha = np.clip((alpha - _ALPHA_IN_MASK) / (1 - _ALPHA_IN_MASK), 0, 1)
    # too faint to see against the texture around it: strengthen it, keeping its shape
    base = np.clip(scene.image, 0, 1)
    change = alpha[..., None] * (np.clip(target, 0, 1) - base)
    mean_change = float(np.abs(change[mask]).mean())
    rows, cols = np.nonzero(ndimage.binary_dilation(mask, iterations=max(2, size // 32)))
    around = base[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].mean(axis=2)
    floor = max(_MIN_CHANGE, _MIN_CHANGE_VS_TEXTURE * float(around.std()))
    if mean_change < floor:
        target = scene.image + (target - scene.image) * min(4.0, floor / (mean_change + 1e-6))
    image = scene.image + alpha[..., None] * (target - scene.image)
    return _Sample(clean, _quantise(image + noise), mask, scene.cover)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=_PNG_LEVEL)


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
    """Write the categories under `out` in the MVTec AD layout and return their folders.

    `n_test_defect` is per defect type. The same arguments give byte-identical files.
    Existing files of the same names are overwritten; others are left alone.
    `progress`, if given, is called with a short message after each category.
    """
    names = list(CATEGORIES) if categories is None else list(categories)
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names:
        raise DataError(
            f"unknown synthetic categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(CATEGORIES)}"
        )
    if image_size < _MIN_SIZE:
        raise DataError(f"image_size must be at least {_MIN_SIZE}, got {image_size}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise DataError("n_train must be at least 1 and the test counts at least 0")
    if seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")
    workers = max(1, min(4, os.cpu_count() or 1))
    folders = []
    for name in dict.fromkeys(names):
        index = CATEGORIES.index(name)
        root = Path(out) / name
        jobs: list[tuple[str, str | None, list[int]]] = []
        jobs += [("train/good", None, [_SPLIT_TRAIN, i]) for i in range(n_train)]
        jobs += [("test/good", None, [_SPLIT_TEST_GOOD, i]) for i in range(n_test_good)]
        jobs += [
            (f"test/{defect}", defect, [_SPLIT_TEST_DEFECT, k, i])
            for k, defect in enumerate(DEFECTS[name])
            for i in range(n_test_defect)
        ]
        for folder, defect, _ in jobs:
            (root / folder).mkdir(parents=True, exist_ok=True)
            if defect is not None:
                (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)

        def write(job, name=name, index=index, root=root) -> None:
            folder, defect, key = job
            sample = _render(name, defect, np.random.SeedSequence([seed, index, *key]), image_size)
            stem = f"{key[-1]:03d}"
            _save_png(sample.image, root / folder / f"{stem}.png")
            if sample.mask is not None:
                path = root / "ground_truth" / defect / f"{stem}_mask.png"
                _save_png(sample.mask.astype(np.uint8) * 255, path)

        if workers == 1:
            for job in jobs:
                write(job)
        else:  # numpy, scipy and zlib release the GIL for most of the work
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(write, jobs):
                    pass
        if progress is not None:
            progress(f"{name}: {len(jobs)} images in {root}")
        folders.append(root)
    return folders
