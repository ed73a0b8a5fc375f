"""Reading user images and masks so that every failure is a DataError naming the file.

Images come from cameras and export tools in many pixel formats (16-bit grayscale, palette,
CMYK, alpha); everything is brought to 8-bit RGB here so the rest of anomap sees one format.
Alpha is dropped, not composited: industrial images rarely carry a meaningful alpha channel,
and keeping the colour values unchanged means a fully opaque RGBA file reads exactly like RGB.
EXIF orientation is not applied, so images stay pixel-aligned with their masks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomap.errors import DataError

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_UINT16_MAX = 65535


def is_image_file(path: str | Path) -> bool:
    """True for a visible file whose suffix is one anomap reads (case-insensitive)."""
    path = Path(path)
    return (
        not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted; hidden files (e.g. macOS `._x.png`) skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if is_image_file(p))


@contextmanager
def _open(path: Path, kind: str) -> Iterator[Image.Image]:
    """Open an image file lazily, turning every way it can fail into a DataError about it."""
    if not path.exists():
        raise DataError(f"{kind} file not found: {path}")
    if not path.is_file():
        raise DataError(f"cannot read {kind} {path}: it is not a file")
    with _decoding(path, path, kind) as image:
        yield image


@contextmanager
def _decoding(source: Path | bytes, name: str | Path, kind: str) -> Iterator[Image.Image]:
    """PIL's image of a file or of bytes in memory, every failure a DataError naming it."""
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    if size == 0:
        raise DataError(f"cannot read {kind} {name}: the file is empty (0 bytes)")
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            yield image
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(
            f"cannot read {kind} {name}: not a recognised image format, or its header is corrupt"
        ) from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(
            f"cannot read {kind} {name}: the file is corrupt or truncated ({exc})"
        ) from exc


def image_size(path: str | Path, kind: str = "image") -> tuple[int, int]:
    """PIL (w, h) from the header only; cheap enough to check thousands of files up front."""
    with _open(Path(path), kind) as image:
        return image.size


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(gray, mode="L").convert("RGB")


def _integer_to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """16-bit (and 32-bit "I" holding 16-bit data) -> 8-bit by the dtype range, /257, so
    brightness is comparable across images instead of stretched per image."""
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
        raise DataError(
            f"cannot read image {path}: 32-bit integer pixels outside 0..{_UINT16_MAX} "
            "are not supported; save it as 8- or 16-bit"
        )
    return _gray_to_rgb(np.round(values.astype(np.float32) / 257.0).astype(np.uint8))


def _float_to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Float images are only unambiguous in 0..1; other ranges would need a guess."""
    values = np.asarray(image, dtype=np.float32)
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        raise DataError(
            f"cannot read image {path}: floating-point pixels must lie in 0..1; "
            "save it as 8- or 16-bit"
        )
    return _gray_to_rgb(np.round(values * 255.0).astype(np.uint8))


def to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB from any PIL mode (16-bit and float greys scaled, palettes via RGBA); `path`
    names the source in errors."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return _integer_to_rgb(image, path)
    if mode == "F":
        return _float_to_rgb(image, path)
    if mode == "P":
        # via RGBA so palette transparency is handled without a PIL warning; alpha then dropped
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise DataError(f"cannot read image {path}: unsupported pixel mode {mode!r}") from exc


def read_image(path: str | Path) -> Image.Image:
    """Fully decoded 8-bit RGB image; decoding here makes truncated files fail with their name."""
    path = Path(path)
    with _open(path, "image") as image:
        image.load()
        return to_rgb(image, path)


def decode_image(data: bytes, name: str) -> Image.Image:
    """`read_image` for encoded bytes in memory (an upload), `name` naming it in errors."""
    with _decoding(data, name, "image") as image:
        image.load()
        return to_rgb(image, Path(name))


def _mask_foreground(image: Image.Image) -> np.ndarray:
    """Foreground = any colour channel > 0; with alpha, the pixel must also be non-transparent
    (so both black-on-transparent and colour-with-alpha masks read as drawn)."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in {"1", "L", "I", "F"}:
        return np.asarray(image) > 0
    if image.mode in _ALPHA_MODES or image.mode == "P":
        rgba = np.asarray(image.convert("RGBA"))
        return (rgba[..., :3] > 0).any(axis=-1) & (rgba[..., 3] > 0)
    return (np.asarray(image.convert("RGB")) > 0).any(axis=-1)


def read_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Bool H×W ground-truth mask (value > 0). `expected_size` is its image's PIL (w, h); a
    mismatch is an error rather than a silent resize, since it usually means a wrong pairing."""
    path = Path(path)
    with _open(path, "mask") as image:
        if expected_size is not None and image.size != tuple(expected_size):
            w, h = image.size
            ew, eh = expected_size
            raise DataError(
                f"mask {path} is {w}x{h} (w x h) but its image is {ew}x{eh}; "
                "a mask must have the same size as its image"
            )
        image.load()
        try:
            return _mask_foreground(image)
        except ValueError as exc:
            raise DataError(
                f"cannot read mask {path}: unsupported pixel mode {image.mode!r}"
            ) from exc
