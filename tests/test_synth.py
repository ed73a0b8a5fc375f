"""The synthetic benchmark generator: layout, exact masks, determinism."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from anomap.data.layouts import discover
from anomap.data.synth import CATEGORIES, DEFECTS, generate
from anomap.errors import DataError


def digest(root):
    files = sorted(p for p in root.rglob("*.png"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, image_size=64, n_train=3, n_test_good=2, n_test_defect=2)
    return root


def test_layout_and_masks(small):
    categories = discover(small)
    assert [c.name for c in categories] == sorted(CATEGORIES)
    for category in categories:
        assert len(category.train) == 3
        types = {s.defect_type for s in category.test}
        assert types == {"good", *DEFECTS[category.name]}
        for sample in category.test:
            if sample.label == 0:
                assert sample.mask_path is None
                continue
            mask = np.asarray(Image.open(sample.mask_path))
            assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}


def test_defects_change_pixels_inside_their_mask(tmp_path):
    """Same seed stream up to the defect: the normal render differs from the defective one
    mostly inside the mask."""
    from anomap.data.synth import _render

    for category in CATEGORIES:
        for defect in DEFECTS[category]:
            clean, _ = _render(category, None, np.random.default_rng(7), 96)
            broken, mask = _render(category, defect, np.random.default_rng(7), 96)
            diff = np.abs(broken.astype(float) - clean.astype(float)).mean(axis=2)
            assert mask.any()
            # outside the mask only the sensor noise differs (its draws shift after the defect)
            assert diff[mask].mean() > 2 * diff[~mask].mean(), (category, defect)


def test_deterministic(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 0), (b, 0), (c, 1)):
        generate(
            root, ["washer"], image_size=48, n_train=2, n_test_good=1, n_test_defect=1, seed=seed
        )
    assert digest(a) == digest(b) != digest(c)


def test_unknown_category(tmp_path):
    with pytest.raises(DataError, match="choose from"):
        generate(tmp_path, ["unicorn"])
