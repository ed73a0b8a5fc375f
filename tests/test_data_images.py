"""Reading images and masks: every pixel format to RGB, and every failure as a DataError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from anomap.data.images import IMAGE_SUFFIXES, image_size, list_images, read_image, read_mask
from anomap.errors import DataError


def _gradient(h: int = 16, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_rgb_png_roundtrip(tmp_path):
    arr = _gradient()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.size == (24, 16)
    np.testing.assert_array_equal(np.asarray(out), arr)


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".bmp", ".tif", ".TIFF", ".webp"])
def test_other_formats_and_uppercase_suffixes(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    Image.fromarray(_gradient()).save(path)
    out = read_image(path)
    assert out.mode == "RGB" and out.size == (24, 16)


def test_grayscale_and_bilevel(tmp_path):
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray, mode="L").save(tmp_path / "l.png")
    out = np.asarray(read_image(tmp_path / "l.png"))
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 1], gray)
    Image.fromarray(gray > 127).save(tmp_path / "b.png")
    bilevel = Image.open(tmp_path / "b.png")
    assert bilevel.mode == "1"
    out = np.asarray(read_image(tmp_path / "b.png"))
    assert set(np.unique(out)) == {0, 255}


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 0, 200, 10, 20])
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(read_image(tmp_path / "p.png"))
    assert out.shape == (8, 8, 3)
    assert out[1, 1].tolist() == [200, 10, 20] and out[0, 0].tolist() == [0, 0, 0]


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 100
    rgba[..., 3] = 0  # fully transparent: colour is kept, not composited to black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = np.asarray(read_image(tmp_path / "a.png"))
    assert out[..., 0].min() == 100 and out[..., 1:].max() == 0
    Image.fromarray(np.full((8, 8, 2), 60, np.uint8), mode="LA").save(tmp_path / "la.png")
    assert np.asarray(read_image(tmp_path / "la.png")).max() == 60


@pytest.mark.parametrize("fmt,mode", [("PNG", "I;16"), ("TIFF", "I;16B"), ("TIFF", "I")])
def test_sixteen_bit_scaled_by_dtype_range(tmp_path, fmt, mode):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    if mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    else:
        image = Image.frombytes(mode, (4, 1), values.astype(">u2" if mode == "I;16B" else "<u2"))
    path = tmp_path / f"a.{fmt.lower()}"
    image.save(path, fmt)
    assert Image.open(path).mode == mode
    out = np.asarray(read_image(path))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_sixteen_bit_is_not_clipped_or_stretched(tmp_path):
    # a dim 16-bit image stays dim: no clipping at 255 and no per-image min/max stretch
    Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16)).save(tmp_path / "dim.png")
    assert np.asarray(read_image(tmp_path / "dim.png")).max() == 4


def test_int32_outside_16_bit_range_rejected(tmp_path):
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match=r"wide\.tif.*outside 0\.\.65535"):
        read_image(tmp_path / "wide.tif")


def test_float_image(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert np.asarray(read_image(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 3.0]], dtype=np.float32)).save(tmp_path / "g.tif")
    with pytest.raises(DataError, match=r"g\.tif.*0\.\.1"):
        read_image(tmp_path / "g.tif")


def test_cmyk(tmp_path):
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = np.asarray(read_image(tmp_path / "c.jpg"))
    assert out.shape == (8, 8, 3) and out.min() > 240  # no ink = white
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.tif")
    assert np.asarray(read_image(tmp_path / "red.tif"))[0, 0].tolist() == [255, 0, 0]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"image file not found: .*nope\.png"):
        read_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match=r"dir\.png: it is not a file"):
        read_image(tmp_path / "dir.png")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: the file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("hello, this is text")
    with pytest.raises(DataError, match=r"notes\.png: not a recognised image format"):
        read_image(tmp_path / "notes.png")


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif")])
def test_truncated_file_fails_at_read(tmp_path, fmt, suffix):
    data = _encoded(Image.fromarray(_gradient(32, 32)), fmt)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"cut\.{suffix}: the file is corrupt or truncated"):
        read_image(path)


def test_truncated_png_header_still_reads_size(tmp_path):
    # the header survives truncation, so only a full decode finds the problem
    data = _encoded(Image.fromarray(_gradient(32, 32)), "PNG")
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "cut.png") == (32, 32)


def test_no_pil_exception_escapes_on_garbage(tmp_path):
    data = bytearray(_encoded(Image.fromarray(_gradient(32, 32)), "PNG"))
    data[60:200] = bytes(140)  # corrupt the compressed stream, keep the header
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad\.png"):
        read_image(tmp_path / "bad.png")


def test_image_size_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"mask file not found: .*m\.png"):
        image_size(tmp_path / "m.png", kind="mask")


def test_read_mask_modes(tmp_path):
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[2:4, 3:6] = 1  # value 1, not 255: anything > 0 counts
    Image.fromarray(mask, mode="L").save(tmp_path / "l.png")
    out = read_mask(tmp_path / "l.png")
    assert out.dtype == bool and out.shape == (6, 8) and out.sum() == 6

    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb[0, 0, 2] = 9  # only the blue channel set
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").sum() == 1

    Image.fromarray(mask.astype(bool)).save(tmp_path / "b.png")
    assert read_mask(tmp_path / "b.png").sum() == 6

    Image.fromarray(mask.astype(np.uint16) * 1000).save(tmp_path / "16.png")
    assert read_mask(tmp_path / "16.png").sum() == 6


def test_read_mask_alpha(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere ...
    rgba[0, :, 3] = 255  # ... but only the first row is opaque
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_mask(tmp_path / "a.png")
    assert out[0].all() and not out[1:].any()


def test_read_mask_palette(tmp_path):
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.putpixel((2, 1), 1)
    pal.save(tmp_path / "p.png")
    out = read_mask(tmp_path / "p.png")
    assert out.sum() == 1 and out[1, 2]


def test_read_mask_size_mismatch(tmp_path):
    Image.new("L", (8, 6)).save(tmp_path / "000_mask.png")
    assert read_mask(tmp_path / "000_mask.png", expected_size=(8, 6)).shape == (6, 8)
    with pytest.raises(DataError, match=r"000_mask\.png is 8x6 .* its image is 16x12"):
        read_mask(tmp_path / "000_mask.png", expected_size=(16, 12))


def test_read_mask_errors(tmp_path):
    with pytest.raises(DataError, match=r"mask file not found: .*gone_mask\.png"):
        read_mask(tmp_path / "gone_mask.png")
    data = _encoded(Image.fromarray(_gradient(32, 32)[..., 0]), "PNG")
    (tmp_path / "cut_mask.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read mask .*cut_mask\.png: .*truncated"):
        read_mask(tmp_path / "cut_mask.png")


def test_list_images(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.tiff", ".hidden.png", "._a.jpg", "notes.txt", "d.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff"]
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == IMAGE_SUFFIXES


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"image folder not found: .*absent"):
        list_images(tmp_path / "absent")
