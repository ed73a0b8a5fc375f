"""Setting a trained model's threshold again from normal images, without training."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import anomap
from anomap.data.layouts import discover
from anomap.errors import AnomapError
from anomap.methods.patchcore import PatchCore
from anomap.postprocess import calibrate

from .conftest import SMALL


@pytest.fixture(scope="module")
def categories(synth_root):
    return discover(synth_root)


def _normals(category):
    return [s.path for s in category.test if s.label == 0]


def test_only_the_threshold_changes(categories, tmp_path):
    category = categories[0]
    model = PatchCore(**SMALL).fit(category)
    tensors = {k: v.clone() for k, v in model.state_tensors().items()}
    normals = _normals(category)
    result = model.calibrate(normals, quantile=0.9)
    expected = calibrate(model.predict(normals).scores, result.maps, 0.9)
    assert model.calibration == expected and model.calibration.num_images == len(normals)
    assert model.config.threshold_quantile == 0.9
    np.testing.assert_array_equal(result.is_anomalous, model.predict(normals).is_anomalous)
    for name, tensor in model.state_tensors().items():
        assert torch.equal(tensor, tensors[name]), name
    loaded = anomap.load(model.save(tmp_path / "model.safetensors"))
    assert loaded.calibration == expected and loaded.config.threshold_quantile == 0.9


def test_an_uncalibrated_model_gets_a_threshold(categories):
    model = PatchCore(**SMALL, val_fraction=0.0).fit(categories[0])
    assert model.calibration is None
    result = model.calibrate(_normals(categories[0]))
    assert model.calibration is not None and result.normalized is not None


def test_one_category_of_a_unified_model_or_all_of_them(categories, synth_root):
    model = PatchCore(**SMALL).fit(categories)
    first, second = (c.name for c in categories)
    global_before = model.calibration
    second_before = model.category_calibration[second]
    model.calibrate(_normals(categories[0]), category=first, quantile=0.95)
    assert model.category_calibration[first].num_images == len(_normals(categories[0]))
    assert model.calibration == global_before
    assert model.category_calibration[second] == second_before
    with pytest.raises(AnomapError, match="name the one category"):
        model.calibrate(_normals(categories[0]))  # plain paths: whose threshold?
    model.calibrate(synth_root)  # a dataset root: each category's train/good (mechanics only)
    for category in categories:
        cal = model.category_calibration[category.name]
        assert cal.num_images == len(category.train) and cal.quantile == 0.95
    assert model.calibration.num_images == sum(len(c.train) for c in categories)


def test_clear_errors(categories):
    with pytest.raises(AnomapError, match="not fitted"):
        PatchCore(**SMALL).calibrate(_normals(categories[0]))
    model = PatchCore(**SMALL).fit(categories[0])
    with pytest.raises(AnomapError, match="no category 'bottle'"):
        model.calibrate(_normals(categories[0]), category="bottle")
    with pytest.raises(ValueError, match="threshold_quantile"):
        model.calibrate(_normals(categories[0]), quantile=1.5)


def test_a_dataset_root_gives_each_model_only_its_own_category(categories, synth_root):
    first, second = categories
    model = PatchCore(**SMALL).fit(first)
    model.calibrate(synth_root)  # both categories on disk; the model knows one
    assert model.calibration.num_images == len(first.train)
    foreign = [replace(s, category=name) for s, name in zip(second.train[:4], "abab", strict=True)]
    with pytest.raises(AnomapError, match="of categories a, b"):
        model.calibrate(foreign)
