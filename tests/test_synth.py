"""The synthetic benchmark generator: layout, exact masks, determinism, defects on the part."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from anomap.data.layouts import discover
from anomap.data.synth import CATEGORIES, DEFECTS, _render, generate
from anomap.errors import DataError

SIZE = 64
TEXTURES = ("woven_fabric", "brushed_metal")
OBJECTS = ("washer", "pill")


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def pixels(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    messages = []
    folders = generate(
        root, image_size=SIZE, n_train=3, n_test_good=2, n_test_defect=2, progress=messages.append
    )
    return root, folders, messages


def test_categories_cover_textures_objects_and_all_defect_types():
    assert set(TEXTURES) | set(OBJECTS) <= set(CATEGORIES)
    assert set(DEFECTS) == set(CATEGORIES)
    assert all(len(DEFECTS[c]) >= 3 for c in CATEGORIES)
    every = {d for c in CATEGORIES for d in DEFECTS[c]}
    assert every == {"scratch", "crack", "stain", "missing", "color", "spot"}
    assert all("missing" not in DEFECTS[c] for c in TEXTURES)


def test_layout_names_and_counts(small):
    root, folders, messages = small
    assert folders == [root / c for c in CATEGORIES]
    assert len(messages) == len(CATEGORIES)
    for category in CATEGORIES:
        base = root / category
        train = sorted(p.name for p in (base / "train" / "good").iterdir())
        assert train == ["000.png", "001.png", "002.png"]
        tests = sorted(p.name for p in (base / "test").iterdir())
        assert tests == sorted(["good", *DEFECTS[category]])
        assert sorted(p.name for p in (base / "test" / "good").iterdir()) == ["000.png", "001.png"]
        truths = sorted(p.name for p in (base / "ground_truth").iterdir())
        assert truths == sorted(DEFECTS[category])  # no masks for good images
        for defect in DEFECTS[category]:
            images = sorted(p.name for p in (base / "test" / defect).iterdir())
            masks = sorted(p.name for p in (base / "ground_truth" / defect).iterdir())
            assert images == ["000.png", "001.png"]
            assert masks == ["000_mask.png", "001_mask.png"]


def test_images_and_masks_match(small):
    root, _, _ = small
    categories = discover(root)
    assert [c.name for c in categories] == sorted(CATEGORIES)
    for category in categories:
        assert len(category.train) == 3
        assert {s.defect_type for s in category.test} == {"good", *DEFECTS[category.name]}
        for sample in [*category.train, *category.test]:
            image = pixels(sample.path)
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            if sample.label == 0:
                assert sample.mask_path is None
                continue
            mask = pixels(sample.mask_path)
            assert mask.shape == (SIZE, SIZE)
            assert set(np.unique(mask).tolist()) == {0, 255}  # binary and never empty


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    args = dict(image_size=48, n_train=2, n_test_good=1, n_test_defect=1)
    generate(tmp_path / "a", ["washer", "woven_fabric"], seed=3, **args)
    generate(tmp_path / "b", ["washer", "woven_fabric"], seed=3, **args)
    generate(tmp_path / "c", ["washer", "woven_fabric"], seed=4, **args)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    # a category's images do not depend on which other categories are generated with it
    generate(tmp_path / "d", ["washer"], seed=3, **args)
    assert digest(tmp_path / "a" / "washer") == digest(tmp_path / "d" / "washer")


def test_every_image_has_its_own_stream(tmp_path):
    few, more = tmp_path / "few", tmp_path / "more"
    generate(few, image_size=48, n_train=2, n_test_good=0, n_test_defect=0)
    generate(more, image_size=48, n_train=3, n_test_good=0, n_test_defect=0)
    firsts = []
    for category in CATEGORIES:
        train = few / category / "train" / "good"
        # more images extend the set: the first ones are unchanged
        for name in ("000.png", "001.png"):
            assert (train / name).read_bytes() == (
                more / category / "train" / "good" / name
            ).read_bytes()
        # normal images vary
        assert not np.array_equal(pixels(train / "000.png"), pixels(train / "001.png"))
        firsts.append(pixels(train / "000.png"))
    assert len({a.tobytes() for a in firsts}) == len(CATEGORIES)


@pytest.mark.parametrize("category", CATEGORIES)
def test_defects_change_pixels_inside_their_mask_only(category):
    """The defective image against the same image rendered without its defect (same noise):
    inside the mask the change is clear, outside it nothing moves."""
    for defect in DEFECTS[category]:
        for index in range(4):
            sample = _render(category, defect, np.random.SeedSequence([11, index]), 80)
            assert sample.mask is not None and sample.mask.any(), (category, defect, index)
            diff = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=2)
            assert diff[sample.mask].mean() > 8, (category, defect, index)
            assert (diff[~sample.mask] == 0).all(), (category, defect, index)
            # most of the mask visibly changed (its soft rim may change by less than a level)
            assert (diff[sample.mask] > 2).mean() > 0.5, (category, defect, index)


def test_normal_renders_have_no_mask():
    for category in CATEGORIES:
        sample = _render(category, None, np.random.SeedSequence([0]), SIZE)
        assert sample.mask is None and np.array_equal(sample.image, sample.clean)


@pytest.mark.parametrize("category", OBJECTS)
def test_object_defects_lie_on_the_object(category):
    for defect in DEFECTS[category]:
        for index in range(6):
            sample = _render(category, defect, np.random.SeedSequence([5, index]), 72)
            assert (sample.cover[sample.mask] > 0.25).all(), (category, defect, index)
    # the background is not part of the object
    sample = _render(category, None, np.random.SeedSequence([1]), 72)
    assert sample.cover[0, 0] == 0 and 0.2 < sample.cover.mean() < 0.6


def test_missing_parts_show_the_background():
    for category in OBJECTS:
        for index in range(3):
            sample = _render(category, "missing", np.random.SeedSequence([2, index]), 96)
            luma = sample.image.mean(axis=2)
            background = luma[sample.cover == 0].mean()
            part = luma[sample.cover == 1].mean()
            hole = luma[sample.mask].mean()
            assert abs(hole - background) < abs(hole - part), (category, index)


def test_smallest_size_still_places_every_defect(tmp_path):
    generate(tmp_path, image_size=32, n_train=1, n_test_good=0, n_test_defect=3, seed=7)
    for category in CATEGORIES:
        for defect in DEFECTS[category]:
            masks = list((tmp_path / category / "ground_truth" / defect).iterdir())
            assert len(masks) == 3 and all(pixels(m).max() == 255 for m in masks)


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="choose from") as info:
        generate(tmp_path, ["unicorn"])
    assert all(name in str(info.value) for name in CATEGORIES)
    with pytest.raises(DataError, match="image_size"):
        generate(tmp_path, ["pill"], image_size=8)
    with pytest.raises(DataError, match="seed"):
        generate(tmp_path, ["pill"], seed=-1)
    assert not any(tmp_path.iterdir())
