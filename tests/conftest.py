"""Shared fixtures: small generated datasets, made once per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Two categories (a texture and an object) at 96², enough for end-to-end checks."""
    from anomap.data.synth import CATEGORIES, generate

    root = tmp_path_factory.mktemp("synth")
    generate(
        root,
        [CATEGORIES[0], CATEGORIES[-1]],
        image_size=96,
        n_train=12,
        n_test_good=4,
        n_test_defect=2,
        seed=0,
    )
    return root


SMALL = {"resize": 96, "crop": 96, "batch_size": 4}
