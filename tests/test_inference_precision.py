"""`inference_precision`: reduced precision really runs (the outputs move from float32's), moves
them only a little, returns float32, is validated, saved, overridable on load, and never
leaks into an ONNX graph."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from anomap.artifact import load
from anomap.data.layouts import discover
from anomap.errors import ConfigError
from anomap.features import FoldedLinear
from anomap.methods import get_method
from tests.tiny_models import TINY, TINY_SETTINGS

SETTINGS = {
    **{m: TINY_SETTINGS[m] for m in ("patchcore", "glass", "uniad")},
    "patchcore-faiss": {**TINY, "search": "faiss"},
}


@pytest.fixture(scope="module")
def category(synth_root):
    return discover(synth_root)[0]


@pytest.fixture(scope="module")
def patchcore(category):
    return get_method("patchcore")(**TINY).fit(category)


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def fitted(request, category):
    if request.param == "patchcore":
        return request.getfixturevalue("patchcore")
    settings = SETTINGS[request.param]
    if settings.get("search") == "faiss":
        pytest.importorskip("faiss")
    method = request.param.split("-")[0]
    return get_method(method)(**settings).fit(category)


@contextmanager
def precision(detector, name: str):
    """`detector` at `name` inside the block, float32 again after."""
    detector.config.inference_precision = name
    try:
        yield detector
    finally:
        detector.config.inference_precision = "fp32"


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(candidate - reference) / np.linalg.norm(reference))


def test_bf16_moves_outputs_slightly_and_returns_float32(fitted, category):
    images = [s.path for s in category.test]
    full = fitted.predict(images)
    with precision(fitted, "bf16"):
        scores, maps = fitted.predict_tensor(next(fitted._tensor_batches(images)))
        reduced = fitted.predict(images)
    assert scores.dtype == maps.dtype == torch.float32
    assert reduced.maps.shape == full.maps.shape
    # bfloat16 keeps about 3 significant digits; through a deep backbone the feature maps
    # move by about 4 % (measured at 64², untrained heads), the outputs by well under 10 %
    assert 0 < relative_error(reduced.maps, full.maps) < 0.1
    assert relative_error(reduced.scores, full.scores) < 0.1


def test_only_the_parts_that_gain_run_reduced(fitted, category, monkeypatch):
    """The backbone runs in bf16; PatchCore's search and the PBAS/GLASS heads (small
    products and minima, slower in bf16 on a CPU) see float32; UniAD's transformer runs bf16."""
    if getattr(fitted.config, "search", None) == "faiss":
        pytest.skip("faiss searches float32 rows by construction")
    backbone, heads = [], []
    hook = fitted.backbone.register_forward_hook(
        lambda m, i, out: backbone.extend(x.dtype for x in out)
    )
    original = FoldedLinear.__call__

    def spy(self, layers, outputs=slice(None)):
        out = original(self, layers, outputs)
        heads.append(out.dtype)
        return out

    monkeypatch.setattr(FoldedLinear, "__call__", spy)
    with precision(fitted, "bf16"):
        fitted.predict_tensor(next(fitted._tensor_batches([s.path for s in category.test])))
    hook.remove()
    assert set(backbone) == {torch.bfloat16}
    if fitted.method == "uniad":
        assert not heads
    else:
        assert heads and set(heads) == {torch.float32}


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="inference_precision must be one of fp32, bf16, fp16"):
        get_method("patchcore")(inference_precision="int8")


def test_saved_with_the_model_and_overridable_on_load(patchcore, category, tmp_path):
    with precision(patchcore, "bf16"):
        path = patchcore.save(tmp_path / "model.safetensors")
    assert load(path).config.inference_precision == "bf16"
    reloaded = load(path, precision="fp32")
    assert reloaded.config.inference_precision == "fp32"
    images = [s.path for s in category.test]
    np.testing.assert_array_equal(reloaded.predict(images).maps, patchcore.predict(images).maps)


def test_onnx_graph_is_float32_whatever_the_model_runs_at(patchcore, category, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from anomap.export import OnnxDetector, export_onnx

    with precision(patchcore, "bf16"):
        onnx_model = OnnxDetector(export_onnx(patchcore, tmp_path / "model.onnx"))
    assert onnx_model.config["inference_precision"] == "fp32"
    images = [s.path for s in category.test]
    expected = patchcore.predict(images).maps
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(
        onnx_model.predict(images).maps, expected, rtol=1e-4, atol=1e-4 * scale
    )
