"""GLASS image-level anomaly synthesis parts: Perlin noise and masks, textures, blending."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from anomap.errors import DataError
from anomap.synthesis import perlin, textures
from anomap.synthesis.perlin import (
    _fade,
    combine,
    draw_combination,
    grid_mask,
    perlin_mask,
    perlin_noise,
)
from anomap.synthesis.textures import (
    TEXTURE_OPS,
    DirectoryTextures,
    ProceduralTextures,
    augment_texture,
    blend,
    draw_blend_factor,
    draw_texture_ops,
)


def rng(seed=0):
    return np.random.default_rng(seed)


# --- Perlin noise -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(288, 288), (100, 77), (37, 53)])
@pytest.mark.parametrize("scales", [(1, 1), (4, 16), (32, 32), (3, 5)])
def test_noise_shape_dtype_and_range(shape, scales):
    noise = perlin_noise(shape, scales, rng())
    assert noise.shape == shape and noise.dtype == np.float32
    assert np.abs(noise).max() <= 1.0 + 1e-5
    assert noise.std() > 0.05


def test_noise_is_zero_on_lattice_points_and_reaches_the_threshold():
    noise = perlin_noise((288, 288), (8, 4), rng())
    np.testing.assert_allclose(noise[::36, ::72], 0.0, atol=1e-6)
    assert (noise > 0.5).any()


def test_fade_is_flat_at_cell_borders():
    t = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(_fade(t), [0.0, 0.5, 1.0])
    eps = 1e-4
    assert _fade(np.array(eps))[()] < 1e-10 and 1 - _fade(np.array(1 - eps))[()] < 1e-10


def test_noise_is_continuous_including_across_cells():
    noise = perlin_noise((288, 288), (4, 4), rng(3)).astype(np.float64)
    # 72 px cells: gradients are bounded, so neighbours differ by a few hundredths at most
    assert np.abs(np.diff(noise, axis=0)).max() < 0.06
    assert np.abs(np.diff(noise, axis=1)).max() < 0.06
    # second differences straddling a border are as small as inside a cell (smooth fade)
    second = np.abs(np.diff(noise, n=2, axis=1))
    assert second[:, 70:72].max() < 3 * second[:, 30:40].max() + 1e-3


def test_noise_reproducible_from_seed():
    a = perlin_noise((50, 70), (4, 8), rng(5))
    np.testing.assert_array_equal(a, perlin_noise((50, 70), (4, 8), rng(5)))
    assert not np.array_equal(a, perlin_noise((50, 70), (4, 8), rng(6)))


# --- Perlin masks ---------------------------------------------------------------------------


def test_mask_288_has_36x36_grid_equal_to_8x8_max_pool():
    generator = rng(1)
    for _ in range(10):
        pixels, cells = perlin_mask((288, 288), generator, grid=(36, 36))
        assert pixels.shape == (288, 288) and cells.shape == (36, 36)
        assert pixels.dtype == np.float32 and cells.dtype == np.float32
        assert set(np.unique(pixels)) <= {0.0, 1.0} and set(np.unique(cells)) <= {0.0, 1.0}
        np.testing.assert_array_equal(cells, pixels.reshape(36, 8, 36, 8).max(axis=(1, 3)))


def test_grid_mask_covers_each_pixel_block_for_non_divisible_sizes():
    pixels = (rng(2).random((100, 70)) > 0.995).astype(np.float32)
    cells = grid_mask(pixels, (13, 9))
    for i in range(13):
        for j in range(9):
            rows = slice(i * 100 // 13, -(-(i + 1) * 100 // 13))
            cols = slice(j * 70 // 9, -(-(j + 1) * 70 // 9))
            assert cells[i, j] == pixels[rows, cols].max()


def test_mask_is_never_empty():
    generator = rng(4)
    for _ in range(150):
        pixels, cells = perlin_mask((64, 64), generator, grid=(8, 8))
        assert cells.max() == 1.0 and pixels.max() == 1.0


def test_combination_frequencies_are_a_third_each():
    generator = rng(7)
    draws = [draw_combination(generator) for _ in range(30000)]
    for how in ("single", "intersection", "union"):
        assert abs(draws.count(how) / len(draws) - 1 / 3) < 0.015


def test_combine_semantics():
    a = np.array([[True, True], [False, False]])
    b = np.array([[True, False], [True, False]])
    np.testing.assert_array_equal(combine(a, b, "union"), [[1, 1], [1, 0]])
    np.testing.assert_array_equal(combine(a, b, "intersection"), [[1, 0], [0, 0]])
    np.testing.assert_array_equal(combine(a, b, "single"), a)


@pytest.mark.parametrize("how", ["single", "intersection", "union"])
def test_mask_applies_the_drawn_combination(monkeypatch, how):
    a = np.zeros((16, 16), bool)
    a[:, :10] = True
    b = np.zeros((16, 16), bool)
    b[:, 6:] = True
    maps = iter([a, b])
    monkeypatch.setattr(perlin, "_thresholded_perlin", lambda *args: next(maps).copy())
    monkeypatch.setattr(perlin, "draw_combination", lambda generator: how)
    pixels, _ = perlin_mask((16, 16), rng(), grid=(4, 4))
    np.testing.assert_array_equal(pixels, combine(a, b, how))


def test_mask_respects_foreground():
    foreground = np.zeros((96, 96), np.uint8)
    foreground[20:60, 30:90] = 255
    generator = rng(8)
    for _ in range(40):
        pixels, cells = perlin_mask((96, 96), generator, grid=(12, 12), foreground=foreground)
        assert pixels[foreground == 0].max() == 0.0 and pixels.max() == 1.0
        np.testing.assert_array_equal(cells, grid_mask(pixels, (12, 12)))


def test_empty_foreground_falls_back_to_everywhere():
    pixels, cells = perlin_mask((64, 64), rng(), grid=(8, 8), foreground=np.zeros((64, 64)))
    assert cells.max() == 1.0 and pixels.max() == 1.0


def test_foreground_shape_is_checked():
    with pytest.raises(ValueError, match="foreground"):
        perlin_mask((64, 64), rng(), grid=(8, 8), foreground=np.ones((32, 32)))


def test_mask_reproducible_from_seed():
    a = perlin_mask((96, 80), rng(9), grid=(12, 10))
    b = perlin_mask((96, 80), rng(9), grid=(12, 10))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# --- texture sources ------------------------------------------------------------------------


def save(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_directory_textures_reads_dtd_layout(tmp_path):
    dtd = tmp_path / "dtd"
    save(dtd / "images" / "banded" / "banded_0001.jpg", (200, 0, 0))
    save(dtd / "images" / "dotted" / "dotted_0001.jpg", (0, 0, 200))
    save(dtd / "images" / "dotted" / "dotted_0002.PNG", (0, 200, 0))
    (dtd / "labels").mkdir()
    (dtd / "labels" / "train1.txt").write_text("banded/banded_0001.jpg\n")
    for root in (dtd, dtd / "images"):
        source = DirectoryTextures(root)
        assert len(source) == 3 and source.faithful
    generator = rng()
    colours = set()
    for _ in range(40):
        image = source.draw(generator)
        assert image.mode == "RGB" and image.size == (40, 30)
        colours.add(int(np.argmax(np.asarray(image)[0, 0])))
    assert colours == {0, 1, 2}


def test_directory_textures_errors_name_the_folder_or_file(tmp_path):
    (tmp_path / "empty" / "images" / "banded").mkdir(parents=True)
    with pytest.raises(DataError, match="empty.*no images"):
        DirectoryTextures(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        DirectoryTextures(tmp_path / "missing")
    bad = tmp_path / "bad" / "images" / "banded" / "banded_0001.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="banded_0001.jpg"):
        DirectoryTextures(tmp_path / "bad").draw(rng())


def test_procedural_textures_are_varied_and_labelled_non_faithful():
    source = ProceduralTextures()
    assert source.faithful is False and "non-faithful" in source.description
    generator = rng(10)
    images = [np.asarray(source.draw(generator, size=96), dtype=np.float32) for _ in range(12)]
    assert all(im.shape == (96, 96, 3) for im in images)
    means = np.array([im.mean(axis=(0, 1)) for im in images])
    assert len({m.tobytes() for m in means}) == len(images)
    assert means.std(axis=0).min() > 10  # colours differ between draws, not just noise
    assert all(im.std() > 3 for im in images)  # each is textured, not flat
    np.testing.assert_array_equal(np.asarray(source.draw(rng(3))), np.asarray(source.draw(rng(3))))


def test_procedural_textures_are_fast():
    source, generator = ProceduralTextures(), rng(11)
    source.draw(generator)
    start = time.perf_counter()
    for _ in range(20):
        source.draw(generator)
    assert (time.perf_counter() - start) / 20 < 0.05  # target < 20 ms; slack for busy machines


# --- texture augmentation -------------------------------------------------------------------


def test_augment_texture_output_size_and_reproducibility():
    image = ProceduralTextures().draw(rng(12), size=64).resize((120, 80))
    out = augment_texture(image, 48, rng(13))
    assert out.mode == "RGB" and out.size == (48, 48)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(augment_texture(image, 48, rng(13))))
    assert augment_texture(image, (40, 56), rng(13)).size == (56, 40)


def test_augment_texture_applies_three_distinct_drawn_ops(monkeypatch):
    applied = []

    def recorder(name, op):
        def wrapped(image, generator):
            applied.append(name)
            return op(image, generator)

        return wrapped

    ops = {name: recorder(name, op) for name, op in textures._OPS.items()}
    monkeypatch.setattr(textures, "_OPS", ops)
    image = Image.new("RGB", (70, 50), (90, 120, 150))
    for seed in range(30):
        applied.clear()
        augment_texture(image, 32, rng(seed))
        assert len(set(applied)) == 3
        assert applied == draw_texture_ops(rng(seed))


def test_texture_ops_cover_all_nine():
    generator = rng(14)
    seen = {name for _ in range(200) for name in draw_texture_ops(generator)}
    assert seen == set(TEXTURE_OPS) and len(TEXTURE_OPS) == 9


def test_every_op_keeps_an_rgb_image_of_the_same_size():
    image = ProceduralTextures().draw(rng(15), size=40)
    for name, op in textures._OPS.items():
        out = op(image, rng())
        assert out.mode == "RGB" and out.size == image.size, name


# --- blending -------------------------------------------------------------------------------


def test_blend_factor_distribution():
    generator = rng(16)
    betas = np.array([draw_blend_factor(generator) for _ in range(5000)])
    assert betas.min() >= 0.2 and betas.max() <= 0.8
    assert abs(betas.mean() - 0.5) < 0.01 and abs(betas.std() - 0.1) < 0.01


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_blend_equation(beta):
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 8, 8, generator=gen), torch.randn(3, 8, 8, generator=gen)
    mask = torch.zeros(8, 8)
    mask[2:5, 3:7] = 1
    out = blend(x, t, mask, beta)
    inside = mask.bool()
    torch.testing.assert_close(out[:, ~inside], x[:, ~inside])
    torch.testing.assert_close(out[:, inside], (1 - beta) * t[:, inside] + beta * x[:, inside])
    batched = blend(x[None].repeat(2, 1, 1, 1), t[None].repeat(2, 1, 1, 1), mask[None], beta)
    torch.testing.assert_close(batched[1], out)
