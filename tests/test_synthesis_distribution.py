"""GLASS's manifold/hypersphere tables and judge, and the foreground masks for LAS."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anomap.synthesis.distribution import (
    PUBLISHED_HYPOTHESIS,
    cv_box_blur,
    cv_gray,
    cv_resize_linear,
    disc_grid_count,
    judge_hypothesis,
    mean_training_image,
    published_hypothesis,
)
from anomap.synthesis.foreground import (
    TEXTURE_CLASSES,
    fills_frame,
    foreground_mask,
    load_foreground_masks,
    looks_like_texture,
    otsu_threshold,
)

# ---------------------------------------------------------------- published tables


def test_published_tables_cover_every_benchmark_class() -> None:
    sizes = {name: len(table) for name, table in PUBLISHED_HYPOTHESIS.items()}
    assert sizes == {"mvtec": 15, "visa": 12, "mpdd": 6, "wfdd": 4}
    hyper = {
        name: sorted(c for c, h in table.items() if h == "hypersphere")
        for name, table in PUBLISHED_HYPOTHESIS.items()
    }
    assert hyper["mvtec"] == ["bottle", "cable", "pill", "screw", "transistor"]
    assert hyper["visa"] == ["cashew", "fryum", "pcb1", "pcb2", "pcb4", "pipe_fryum"]
    assert hyper["mpdd"] == hyper["wfdd"] == []


def test_published_hypothesis_lookups() -> None:
    assert published_hypothesis("mvtec", "bottle") == "hypersphere"
    assert published_hypothesis("MVTec", "carpet") == "manifold"
    assert published_hypothesis("visa", "pcb1") == "hypersphere"
    assert all(published_hypothesis("mpdd", c) == "manifold" for c in PUBLISHED_HYPOTHESIS["mpdd"])
    assert published_hypothesis(None, "tubes") == "manifold"  # MPDD read as an MVTec layout
    assert published_hypothesis("mvtec", "pcb1") is None
    assert published_hypothesis("custom", "bottle") is None
    assert published_hypothesis(None, "widget") is None


# ---------------------------------------------------------------- OpenCV-exact steps

# Reference outputs of opencv-python-headless 4.10.0.84 (GLASS's pinned version).
_SRC = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 37 % 256).astype(np.uint8)
_SRC_GRAY = (np.arange(4 * 5).reshape(4, 5) * 37 % 256).astype(np.uint8)
_CV_UP = [  # cv2.resize(_SRC_GRAY, (7, 6))
    [0, 21, 47, 74, 100, 127, 148],
    [93, 114, 103, 39, 65, 91, 113],
    [173, 194, 160, 34, 60, 68, 65],
    [126, 147, 161, 157, 183, 119, 18],
    [79, 100, 126, 153, 179, 150, 99],
    [43, 64, 90, 117, 143, 170, 191],
]
_CV_DOWN = [  # cv2.resize(np.tile(_SRC_GRAY, (3, 2)), (3, 5))
    [143, 114, 55],
    [82, 113, 143],
    [171, 96, 126],
    [47, 78, 109],
    [136, 77, 197],
]
_CV_GRAY = [  # cv2.cvtColor(_SRC[..., ::-1], cv2.COLOR_BGR2GRAY)
    [30, 141, 73, 107, 189],
    [73, 184, 39, 150, 82],
    [116, 198, 82, 193, 48],
    [159, 91, 125, 207, 91],
]
_G = (np.arange(5 * 6).reshape(5, 6) * 53 % 256).astype(np.uint8)
_CV_BLUR = [  # cv2.blur(_G, (3, 3))
    [77, 94, 147, 143, 111, 72],
    [97, 115, 140, 136, 103, 93],
    [159, 149, 145, 112, 108, 98],
    [164, 154, 121, 117, 114, 131],
    [185, 146, 114, 110, 134, 152],
]


def test_opencv_steps_match_recorded_opencv_outputs() -> None:
    assert cv_resize_linear(_SRC_GRAY, (7, 6)).tolist() == _CV_UP
    assert cv_resize_linear(np.tile(_SRC_GRAY, (3, 2)), (3, 5)).tolist() == _CV_DOWN
    colour = np.stack([_SRC_GRAY, _SRC[:, :, 1], _SRC[:, :, 2]], axis=2)
    assert cv_resize_linear(colour, (7, 6))[:, :, 0].tolist() == _CV_UP
    assert cv_gray(_SRC).tolist() == _CV_GRAY
    assert cv_box_blur(_G, 3).tolist() == _CV_BLUR


def test_resize_to_same_size_is_identity() -> None:
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3)).astype(np.uint8)
    assert np.array_equal(cv_resize_linear(image, (11, 9)), image)


# ---------------------------------------------------------------- judge


def _reference_judge(gray: np.ndarray) -> tuple[bool, int, float, float, float]:
    """§2.4.4 steps 3-7 written out directly, for a 289×289 gray input (resize and gray
    conversion are then identities)."""
    blurred = np.floor(ndimage.uniform_filter(gray.astype(np.float64), 39, mode="mirror") + 0.5)
    spectrum = np.fft.fftshift(np.fft.fft2(blurred))
    magnitude = 20 * np.log(np.abs(spectrum) + 1e-300)
    ys, xs = np.where(magnitude > 170)
    n = len(xs)
    side_x, side_y = np.abs(xs - 144).max(), np.abs(ys - 144).max()
    dist = np.sqrt((xs - 144.0) ** 2 + (ys - 144.0) ** 2)
    radius = dist.max()
    y_all, x_all = np.indices((578, 578))
    grid = np.sqrt((x_all - 144.0) ** 2 + (y_all - 144.0) ** 2) <= radius
    l1 = n / (4 * max(side_x, 1) * max(side_y, 1))
    l2 = n / (grid.sum() + 1e-10)
    return (l1 > 0.21 or l2 > 0.21) and radius > 12 and n > 60, n, radius, l1, l2


def _check_against_reference(gray: np.ndarray) -> None:
    result = judge_hypothesis(np.repeat(gray[:, :, None], 3, axis=2))
    hyper, n, radius, l1, l2 = _reference_judge(gray)
    assert result.hypersphere == hyper
    assert result.n == n
    assert result.radius == pytest.approx(radius, rel=1e-12)
    assert result.l1_density == pytest.approx(l1, rel=1e-12)
    assert result.l2_density == pytest.approx(l2, rel=1e-12)


def test_judge_uniform_grey_is_manifold() -> None:
    result = judge_hypothesis(np.full((288, 288, 3), 128, np.uint8))
    assert (result.hypersphere, result.n, result.radius) == (False, 1, 0.0)  # only the DC term
    assert result.hypothesis == "manifold"


def test_judge_black_image_has_no_bright_points() -> None:
    result = judge_hypothesis(np.zeros((288, 288, 3), np.uint8))
    assert result == type(result)(False, 0, 0.0, 0.0, 0.0)


def test_judge_periodic_pattern_matches_direct_computation() -> None:
    y, x = np.mgrid[:289, :289]
    checker = np.where((y // 40 + x // 40) % 2 == 0, 230, 20).astype(np.uint8)
    _check_against_reference(checker)
    result = judge_hypothesis(np.repeat(checker[:, :, None], 3, axis=2))
    assert result.n > 1000 and not result.hypersphere  # many points, but spread: manifold


def test_judge_centred_blob_is_hypersphere() -> None:
    y, x = np.mgrid[:289, :289]
    disc = np.where((y - 144) ** 2 + (x - 144) ** 2 < 60**2, 230, 20).astype(np.uint8)
    _check_against_reference(disc)
    assert judge_hypothesis(np.repeat(disc[:, :, None], 3, axis=2)).hypersphere


def test_judge_accepts_gray_and_any_size() -> None:
    image = np.random.default_rng(1).integers(0, 256, (200, 300)).astype(np.uint8)
    assert judge_hypothesis(image) == judge_hypothesis(np.repeat(image[:, :, None], 3, axis=2))
    with pytest.raises(ValueError):
        judge_hypothesis(image.astype(np.float32))


@pytest.mark.parametrize("radius_sq", [0, 1, 2, 5, 50, 145**2, 200**2, 1000**2])
def test_disc_grid_count_brute_force(radius_sq: int) -> None:
    radius = np.sqrt(radius_sq)
    expected = sum(
        1
        for yy in range(578)
        if abs(yy - 144) <= radius
        for xx in range(578)
        if np.sqrt((xx - 144) ** 2 + (yy - 144) ** 2) <= radius
    )
    assert disc_grid_count(radius_sq) == expected


def test_mean_training_image_truncates() -> None:
    a = np.full((2, 2, 3), 10, np.uint8)
    b = np.full((2, 2, 3), 13, np.uint8)
    assert mean_training_image([a, b]).tolist() == np.full((2, 2, 3), 11).tolist()
    with pytest.raises(ValueError):
        mean_training_image([])
    with pytest.raises(ValueError):
        mean_training_image([a, np.zeros((3, 2, 3), np.uint8)])


# ---------------------------------------------------------------- foreground


def test_otsu_splits_a_bimodal_histogram() -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat([False, True], [5000, 3000])
    values = np.where(truth, rng.normal(190, 10, truth.size), rng.normal(60, 8, truth.size))
    gray = np.clip(values, 0, 255).astype(np.uint8)
    t = otsu_threshold(gray)
    assert np.mean((gray > t) == truth) > 0.999
    assert otsu_threshold(np.array([50, 50, 200, 200], np.uint8)) == 50
    skimage_filters = pytest.importorskip("skimage.filters")
    assert t == skimage_filters.threshold_otsu(gray)


def _disc_image(bright_object: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    y, x = np.mgrid[:160, :200]
    disc = (y - 85) ** 2 + (x - 95) ** 2 < 45**2
    low, high = (30.0, 200.0) if bright_object else (200.0, 30.0)
    gray = np.where(disc, high, low) + rng.normal(0, 12, disc.shape)
    image = np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return image, disc


@pytest.mark.parametrize("bright_object", [True, False])
def test_foreground_mask_finds_the_object(bright_object: bool) -> None:
    image, disc = _disc_image(bright_object)
    mask = foreground_mask(image)
    assert mask.shape == disc.shape and mask.dtype == bool
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.9


def test_foreground_mask_falls_back_to_all_ones() -> None:
    assert foreground_mask(np.full((50, 60, 3), 120, np.uint8)).all()
    assert foreground_mask(np.zeros((50, 60), np.uint8)).all()


def test_texture_classes_and_heuristic() -> None:
    assert TEXTURE_CLASSES["mvtec"] == {"carpet", "grid", "leather", "tile", "wood"}
    assert not TEXTURE_CLASSES["mpdd"] and not TEXTURE_CLASSES["visa"]
    assert len(TEXTURE_CLASSES["wfdd"]) == 4
    rng = np.random.default_rng(3)
    noise = [rng.integers(0, 256, (96, 96, 3)).astype(np.uint8) for _ in range(3)]
    y, x = np.mgrid[:96, :96]
    stripes = [
        np.repeat((((x + 3 * i) // 4) % 2 * 200)[:, :, None], 3, 2).astype(np.uint8)
        for i in range(3)
    ]
    assert looks_like_texture(noise)
    assert looks_like_texture(stripes)
    assert not looks_like_texture([_disc_image(True)[0]] * 2)
    assert not looks_like_texture([_disc_image(False)[0]])


def test_fills_frame_tells_close_ups_from_objects_on_a_background() -> None:
    y = np.mgrid[:96, :96][0]
    # a close-up of a thread: bright and dark bands across the whole frame
    thread = np.repeat(np.where((y // 16) % 2 == 0, 200, 60)[:, :, None], 3, 2).astype(np.uint8)
    assert fills_frame([thread] * 2)
    assert not fills_frame([_disc_image(True)[0], _disc_image(False)[0]])
    with pytest.raises(ValueError):
        fills_frame([])


def test_load_foreground_masks_maps_paths(tmp_path) -> None:
    root = tmp_path / "mvtec"
    train = root / "bottle" / "train" / "good"
    train.mkdir(parents=True)
    images = [train / "000.png", train / "001.png"]
    for image in images:
        image.write_bytes(b"")
    masks = root / "fg_mask" / "bottle"
    masks.mkdir(parents=True)
    (masks / "000.png").write_bytes(b"")
    expected = [masks / "000.png", None]
    assert load_foreground_masks(root, "bottle", images) == expected
    assert load_foreground_masks(None, "bottle", [str(p) for p in images]) == expected
    assert load_foreground_masks(None, "cable", images) == [None, None]
