"""PatchCore end to end on generated data: fit, predict, calibration, save and load."""

import numpy as np
import pytest
import torch

import anomap
from anomap.data.images import read_image
from anomap.data.layouts import discover
from anomap.errors import AnomapError, ArtifactError
from anomap.evaluation import evaluate_category
from anomap.methods.patchcore import PatchCore

from .conftest import SMALL


@pytest.fixture(scope="module")
def fitted(synth_root):
    category = discover(synth_root)[0]
    return category, PatchCore(**SMALL).fit(category)


def test_detects_synthetic_defects(fitted):
    category, model = fitted
    result = evaluate_category(model, category)
    assert result.metrics["image_auroc"] > 0.8
    assert result.metrics["pixel_auroc"] > 0.8


def test_predict_outputs(fitted):
    category, model = fitted
    paths = [s.path for s in category.test[:3]]
    result = model.predict(paths)
    assert result.scores.shape == (3,) and result.maps.shape == (3, 96, 96)
    assert result.is_anomalous.dtype == bool and result.normalized.shape == (3,)
    assert model.calibration.num_images >= 1
    # arrays and PIL images give the same scores as paths
    again = model.predict([np.asarray(read_image(p)) for p in paths])
    np.testing.assert_allclose(again.scores, result.scores, rtol=1e-5)


def test_cell_scores_are_exact_nearest_distances(fitted, monkeypatch):
    """The per-layer ranking (`FoldedLinear`) in blocks finds what brute force on the rows
    finds, however the images and the bank are split."""
    category, model = fitted
    images = torch.stack([model.preprocess.image(read_image(s.path)) for s in category.test[:3]])
    rows = model._embed(images).permute(0, 2, 3, 1).reshape(3, -1, model.aggregator.out_dim)
    expected = torch.cdist(rows, model.memory_bank[None].expand(3, -1, -1)).min(dim=2).values
    for block in (1 << 23, 1 << 19, 5000, 1):  # all at once, image chunks, bank blocks
        monkeypatch.setattr("anomap.methods.patchcore._BLOCK_ELEMENTS", block)
        _, cells = model._score(images)
        torch.testing.assert_close(cells.flatten(1), expected, atol=1e-3, rtol=1e-4)


def test_reweighting_matches_paper_formula(fitted):
    _, model = fitted
    bank = model.memory_bank
    query = bank[:1] + 0.5
    cells = torch.cdist(query, bank)
    nearest = cells.argmin(1)
    score = model._reweighted_max(query[None], cells.min(1).values[None])
    anchor = bank[nearest[0]]
    support = torch.cdist(anchor[None], bank)[0].topk(model.config.num_neighbors, largest=False)
    dists = torch.cdist(query, bank[support.indices])[0]
    expected = (1 - torch.exp(dists[0]) / torch.exp(dists).sum()) * cells.min()
    torch.testing.assert_close(score[0], expected, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(fitted, tmp_path):
    category, model = fitted
    path = model.save(tmp_path / "pc.safetensors")
    loaded = anomap.load(path)
    paths = [s.path for s in category.test[:2]]
    np.testing.assert_allclose(loaded.predict(paths).scores, model.predict(paths).scores, rtol=1e-5)
    assert loaded.calibration == model.calibration
    assert loaded.categories == [category.name]


def test_load_with_other_weights_is_refused(fitted, tmp_path):
    from safetensors.torch import save_file

    _, model = fitted
    path = model.save(tmp_path / "pc.safetensors")
    other = tmp_path / "other.safetensors"
    state = {k: v + 1 for k, v in model.backbone.model.state_dict().items()}
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    full.update(state)
    save_file({k: v.contiguous() for k, v in full.items()}, str(other))
    with pytest.raises(ArtifactError, match="trained with backbone weights"):
        anomap.load(path, weights=str(other))


def test_config_validation_and_unfitted():
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(coreset_ratio=0)
    with pytest.raises(TypeError):
        PatchCore(no_such_setting=1)
    with pytest.raises(AnomapError, match="not fitted"):
        PatchCore().predict(torch.zeros(1, 3, 32, 32))


def test_unified_model_keeps_a_threshold_per_category(synth_root, tmp_path):
    categories = discover(synth_root)
    model = PatchCore(**SMALL, val_fraction=0.25).fit(categories)
    names = sorted(c.name for c in categories)
    assert sorted(model.categories) == names == sorted(model.category_calibration)
    first = categories[0]
    own = model.category_calibration[first.name]
    assert model.calibration_for(first.name) is own
    assert model.calibration_for("unknown") is model.calibration  # global fallback
    paths = [s.path for s in first.test]
    result = model.predict(paths, category=first.name)
    np.testing.assert_array_equal(result.is_anomalous, own.decide(result.scores))
    loaded = anomap.load(model.save(tmp_path / "unified.safetensors"))
    assert loaded.category_calibration.keys() == model.category_calibration.keys()
    assert loaded.calibration_for(first.name).to_dict() == own.to_dict()
