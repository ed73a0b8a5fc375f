"""Texture sources, texture augmentation and blending for GLASS's image-level Local Anomaly
Synthesis (METHODS.md §2.4.3 steps 1, 2 and 5).

GLASS paints DTD textures into Perlin-shaped regions. `DirectoryTextures` reads such a folder
and is the faithful source; `ProceduralTextures` is the built-in stand-in for when DTD is not
available (METHODS.md §2.8 fallback b) and is labelled non-faithful.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw, ImageFilter
from torchvision.transforms import InterpolationMode

from anomap.data.images import is_image_file, read_image
from anomap.errors import DataError
from anomap.synthesis.perlin import perlin_noise


class TextureSource(Protocol):
    """What the LAS step needs from a texture source."""

    faithful: bool
    description: str

    def draw(self, rng: np.random.Generator) -> Image.Image: ...


class DirectoryTextures:
    """Every image under `root`, searched recursively, so both the DTD release folder
    (`dtd/` or `dtd/images/`, `<category>/*.jpg` below it) and any similar folder work.
    Faithful to GLASS when `root` is DTD."""

    faithful = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"texture folder not found: {self.root}")
        self.paths = sorted(p for p in self.root.rglob("*") if is_image_file(p))
        if not self.paths:
            raise DataError(
                f"texture folder {self.root} holds no images; GLASS expects the DTD dataset "
                "(dtd/images/<category>/*.jpg)"
            )
        self.description = f"{len(self.paths)} texture images from {self.root}"

    def __len__(self) -> int:
        return len(self.paths)

    def draw(self, rng: np.random.Generator) -> Image.Image:
        """A uniformly chosen texture as 8-bit RGB; unreadable files raise a DataError."""
        return read_image(self.paths[rng.integers(len(self.paths))])


def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates in [0, 1), shaped to broadcast to size×size."""
    c = np.arange(size, dtype=np.float32) / size
    return c[:, None], c[None, :]


def _normalise(t: np.ndarray) -> np.ndarray:
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) / max(hi - lo, 1e-6)


def _fractal(rng: np.random.Generator, size: int, octaves: int, base: int) -> np.ndarray:
    """Sum of Perlin octaves from a 2^base lattice up, halving the amplitude each octave;
    a random aspect stretch gives fibrous as well as cloudy looks."""
    stretch = int(rng.integers(0, 2))
    total = np.zeros((size, size), np.float32)
    for k in range(octaves):
        s = 2 ** (base + k)
        scales = (s, s * 2**stretch) if rng.random() < 0.5 else (s * 2**stretch, s)
        total += 0.5**k * perlin_noise((size, size), scales, rng)
    return total


def _clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    octaves = int(rng.integers(2, 5))
    return _normalise(_fractal(rng, size, octaves, base=int(rng.integers(0, 3))))


def _waves(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes, or a grid/checker when a second orientation is added, with random frequency,
    angle, edge sharpness and a gentle noise warp."""
    y, x = _unit_grid(size)
    warp = rng.uniform(0.0, 0.08) * _fractal(rng, size, 2, base=1)
    sharpness = rng.uniform(1.0, 12.0)

    def wave() -> np.ndarray:
        theta = rng.uniform(0.0, math.pi)
        freq = rng.uniform(3.0, 40.0)
        u = x * math.cos(theta) + y * math.sin(theta) + warp
        return np.tanh(sharpness * np.sin(2 * math.pi * freq * u + rng.uniform(0, 2 * math.pi)))

    t = wave()
    if rng.random() < 0.5:
        t = t * wave() if rng.random() < 0.5 else np.maximum(t, wave())
    return _normalise(t)


def _veins(rng: np.random.Generator, size: int) -> np.ndarray:
    """Marble (turbulent bands) or wood (turbulent rings)."""
    y, x = _unit_grid(size)
    turbulence = rng.uniform(0.5, 4.0) * _fractal(rng, size, 3, base=int(rng.integers(1, 3)))
    if rng.random() < 0.5:
        theta = rng.uniform(0.0, math.pi)
        u = x * math.cos(theta) + y * math.sin(theta)
    else:
        cy, cx = rng.uniform(-0.5, 1.5, size=2)
        u = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    return _normalise(np.sin(2 * math.pi * (rng.uniform(2.0, 20.0) * u + turbulence)))


def _blotches(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dots, bubbles or spots: random ellipses in grey levels, optionally blurred."""
    canvas = Image.new("L", (size, size), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(canvas)
    radius = size * rng.uniform(0.01, 0.12)
    for _ in range(int(rng.integers(10, 300))):
        cy, cx = rng.uniform(0, size, size=2)
        ry, rx = radius * rng.uniform(0.5, 1.5, size=2)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(rng.integers(0, 256)))
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 4.0)))
    return np.asarray(canvas, dtype=np.float32) / 255.0


_FAMILIES: tuple[Callable[[np.random.Generator, int], np.ndarray], ...] = (
    _clouds,
    _waves,
    _veins,
    _blotches,
)


def _colourise(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a [0, 1] field through a random 2–4 colour gradient, then add a little grain."""
    n = int(rng.integers(2, 5))
    stops = np.sort(rng.random(n))
    stops[0], stops[-1] = 0.0, 1.0
    colours = rng.random((n, 3))
    vivid = rng.uniform(0.2, 1.0)  # from muted, photo-like colours to saturated ones
    colours = 255.0 * (colours.mean(axis=1, keepdims=True) * (1 - vivid) + colours * vivid)
    levels = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(levels, stops, colours[:, c]) for c in range(3)], axis=-1)
    rgb = lut[np.round(t * 255.0).astype(np.uint8)]
    grain = rng.normal(0.0, rng.uniform(0.0, 12.0), size=(*t.shape, 1))
    return np.clip(rgb + grain, 0, 255).astype(np.uint8)


class ProceduralTextures:
    """Built-in textures made with numpy: coloured fractal noise, stripes and grids, marble and
    wood veins, and blotches, each with random parameters and colours. NOT faithful: GLASS uses
    DTD photographs, and results with these are expected to differ."""

    faithful = False
    description = (
        "procedural textures (fractal noise, stripes/grids, veins, blotches); "
        "a non-faithful stand-in for the DTD textures GLASS uses"
    )

    def draw(self, rng: np.random.Generator, size: int = 288) -> Image.Image:
        """One size×size RGB texture from a uniformly chosen family."""
        field = _FAMILIES[rng.integers(len(_FAMILIES))](rng, size)
        return Image.fromarray(_colourise(field, rng), mode="RGB")


def _saturation_hue(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """ColorJitter(saturation=(0.8, 1.2), hue=(-0.2, 0.2)): both, in a random order."""
    saturation, hue = rng.uniform(0.8, 1.2), rng.uniform(-0.2, 0.2)
    if rng.random() < 0.5:
        return TF.adjust_hue(TF.adjust_saturation(image, saturation), hue)
    return TF.adjust_saturation(TF.adjust_hue(image, hue), saturation)


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RandomAffine(degrees=(-45, 45)) with its defaults: nearest neighbour, black fill."""
    return TF.affine(
        image,
        angle=rng.uniform(-45.0, 45.0),
        translate=[0, 0],
        scale=1.0,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.NEAREST,
        fill=0,
    )


_OPS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "contrast": lambda im, rng: TF.adjust_contrast(im, rng.uniform(0.8, 1.2)),
    "brightness": lambda im, rng: TF.adjust_brightness(im, rng.uniform(0.8, 1.2)),
    "saturation_hue": _saturation_hue,
    "hflip": lambda im, rng: TF.hflip(im),
    "vflip": lambda im, rng: TF.vflip(im),
    "grayscale": lambda im, rng: TF.rgb_to_grayscale(im, num_output_channels=3),
    "autocontrast": lambda im, rng: TF.autocontrast(im),
    "equalize": lambda im, rng: TF.equalize(im),
    "rotate": _rotate,
}
TEXTURE_OPS: tuple[str, ...] = tuple(_OPS)


def draw_texture_ops(rng: np.random.Generator) -> list[str]:
    """Three distinct augmentation names, drawn without replacement, in application order."""
    return [TEXTURE_OPS[i] for i in rng.choice(len(TEXTURE_OPS), 3, replace=False)]


def _cover_size(width: int, height: int, h: int, w: int) -> list[int]:
    """[h', w'] keeping the aspect so the image just covers h×w; for a square target this is
    torchvision's Resize(int): shorter side to the size, longer side truncated."""
    if h * width >= w * height:
        return [h, max(w, int(h * width / height))]
    return [max(h, int(w * height / width)), w]


def augment_texture(
    image: Image.Image, size: int | tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """GLASS's `rand_augmenter`: resize to cover `size` (bilinear; an int is the shorter side),
    three distinct random operations, then a centre crop to `size` (an int or (h, w))."""
    h, w = (size, size) if isinstance(size, int) else size
    out = TF.resize(
        image.convert("RGB"), _cover_size(*image.size, h, w), InterpolationMode.BILINEAR
    )
    for name in draw_texture_ops(rng):
        out = _OPS[name](out, rng)
    return TF.center_crop(out, [h, w])


def draw_blend_factor(rng: np.random.Generator) -> float:
    """β ~ N(0.5, 0.1²) clipped to [0.2, 0.8]: how much of the original shows through."""
    return float(np.clip(rng.normal(0.5, 0.1), 0.2, 0.8))


def blend(
    image: torch.Tensor, texture: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """x ⊙ (1 − M) + (1 − β)·T ⊙ M + β·x ⊙ M on normalised 3×H×W tensors with an H×W mask
    (leading batch dimensions broadcast too)."""
    m = mask.to(image.dtype).unsqueeze(-3)
    return image * (1 - m) + (1 - beta) * texture * m + beta * image * m
