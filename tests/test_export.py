"""ONNX export: for every method, onnxruntime gives the scores, maps and decisions of the
torch detector, at any batch size, with everything a runtime needs in the metadata."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from anomap import __version__
from anomap.data.layouts import discover
from anomap.errors import AnomapError, ArtifactError
from anomap.methods import get_method
from tests.tiny_models import TINY, TINY_SETTINGS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from anomap.export import OnnxDetector, export_onnx  # noqa: E402

# float32 with a different operation order: about 1e-6 relative was seen for every method
# (largest map difference 7e-5 on UniAD maps reaching 135), so 1e-4 leaves a wide margin
RTOL = 1e-4


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module")
def categories(synth_root):
    return discover(synth_root)


@pytest.fixture(scope="module")
def fitted(categories, tmp_path_factory):
    """method -> (fitted detector, its ONNX file), each made once; UniAD is one model of both
    categories, the others are fitted on the first."""
    made = {}

    def get(method: str):
        if method not in made:
            data = categories if method == "uniad" else categories[0]
            detector = get_method(method)(**TINY_SETTINGS[method]).fit(data)
            path = export_onnx(detector, tmp_path_factory.mktemp(method) / "model.onnx")
            made[method] = detector, path
        return made[method]

    return get


@pytest.fixture(params=sorted(TINY_SETTINGS))
def exported(request, fitted):
    return fitted(request.param)


def test_onnx_predict_matches_torch(exported, categories):
    detector, path = exported
    onnx_model = OnnxDetector(path)
    images = [s.path for c in categories for s in c.test]
    for category in [None, *onnx_model.category_calibration]:
        expected = detector.predict(images, category=category)
        actual = onnx_model.predict(images, category=category)
        assert actual.maps.shape == expected.maps.shape == (len(images), 64, 64)
        assert_close(actual.scores, expected.scores)
        assert_close(actual.maps, expected.maps)
        assert_close(actual.normalized, expected.normalized)
        np.testing.assert_array_equal(actual.is_anomalous, expected.is_anomalous)


def test_dynamic_batch(exported):
    detector, path = exported
    onnx_model = OnnxDetector(path)
    assert onnx_model.fixed_batch is None
    torch.manual_seed(0)
    for size in (1, 3):
        batch = torch.randn(size, 3, 64, 64)
        scores, maps = onnx_model.predict_batch(batch.numpy())
        expected_scores, expected_maps = detector.predict_tensor(batch)
        assert scores.shape == (size,) and maps.shape == (size, 64, 64)
        assert_close(scores, expected_scores.numpy())
        assert_close(maps, expected_maps.numpy())


def test_metadata_round_trips(exported):
    detector, path = exported
    onnx_model = OnnxDetector(path)
    assert onnx_model.method == detector.method
    assert onnx_model.input_size == (64, 64)
    assert onnx_model.preprocess == detector.preprocess
    assert onnx_model.calibration == detector.calibration is not None
    assert onnx_model.category_calibration == detector.category_calibration
    assert onnx_model.categories == detector.categories
    assert onnx_model.config == detector.config.to_dict()
    assert onnx_model.metadata["anomap_version"] == __version__
    if detector.method == "uniad":
        assert len(onnx_model.category_calibration) == 2


def test_fixed_batch_pads_the_last_chunk(fitted, categories, tmp_path):
    detector, _ = fitted("patchcore")
    onnx_model = OnnxDetector(export_onnx(detector, tmp_path / "fixed.onnx", batch_size=2))
    assert onnx_model.fixed_batch == 2
    images = [s.path for s in categories[0].test[:3]]
    expected, actual = detector.predict(images), onnx_model.predict(images)
    assert_close(actual.scores, expected.scores)
    assert_close(actual.maps, expected.maps)


def test_refusals(tmp_path, monkeypatch):
    with pytest.raises(AnomapError, match="not been fitted"):
        export_onnx(get_method("patchcore")(**TINY), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    (tmp_path / "bad.onnx").write_text("not a model")
    with pytest.raises(ArtifactError, match="not a readable ONNX model"):
        OnnxDetector(tmp_path / "bad.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(AnomapError, match=r"pip install 'anomap\[onnx\]'"):
        OnnxDetector(tmp_path / "bad.onnx")


def test_cli_export_then_predict(fitted, categories, tmp_path):
    detector, _ = fitted("patchcore")
    name = categories[0].name
    detector.save(tmp_path / "run" / name / "model.safetensors")
    cli = [sys.executable, "-m", "anomap"]
    target = tmp_path / "exported.onnx"
    command = ["export", "--model", tmp_path / "run", "--category", name, "--out", target]
    proc = subprocess.run(
        [*cli, *map(str, command), "--json"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["onnx"] == str(target) and summary["input_shape"] == ["batch", 3, 64, 64]
    folder = categories[0].test[0].path.parent
    predict = ["predict", folder, "--model", target, "--out", tmp_path / "pred", "--json"]
    proc = subprocess.run(
        [*cli, *map(str, predict), "--quiet", "--no-overlays"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    expected = detector.predict([r["path"] for r in rows])
    assert_close(np.array([r["score"] for r in rows]), expected.scores)
    assert [r["anomalous"] for r in rows] == expected.is_anomalous.tolist()


def test_bench_onnx_runners_compute_what_they_time(fitted, tmp_path):
    """The onnxruntime model and backbone the speed benchmark times give torch's outputs."""
    from anomap.benchmark import _onnx_runners

    detector, _ = fitted("pbas")
    run_model, run_backbone = _onnx_runners(detector, tmp_path / "model.onnx", threads=1)
    images = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        features = detector.backbone(images)
        scores, maps = detector.predict_tensor(images)
    for actual, expected in zip(run_backbone(images.numpy()), features, strict=True):
        assert_close(actual, expected.numpy())
    onnx_scores, onnx_maps = run_model(images.numpy())
    assert_close(onnx_scores, scores.numpy())
    assert_close(onnx_maps, maps.numpy())


# the speed benchmark at its smallest: one method, tiny images, a token fit and timing
TINY_BENCHMARK = {
    "methods": ["pbas"],
    "size": 64,
    "device": "cpu",
    "n_train": 4,
    "min_seconds": 0.01,
}


@pytest.mark.parametrize("onnx", [False, True])
def test_speed_benchmark_onnx_columns(tmp_path, onnx):
    """`onnx=True` adds the onnxruntime fields and columns; without it the output is as
    before."""
    from anomap.benchmark import run_speed_benchmark

    result = run_speed_benchmark(tmp_path, batch_sizes=(1,), onnx=onnx, **TINY_BENCHMARK)
    (row,) = result["json"]["rows"]
    markdown = result["markdown"]
    assert json.loads((tmp_path / "speed_cpu.json").read_text()) == result["json"]
    assert (tmp_path / "speed_cpu.md").read_text() == markdown
    # the head, upsampling and blur add arithmetic to the backbone's, never remove it
    assert 0 < row["backbone_gflop"] < row["method_gflop"]
    assert row["flop_bound"] == pytest.approx(row["backbone_gflop"] / row["method_gflop"])
    low, high = row["ratio_quartiles"]  # the median ratio lies between its quartiles
    assert 0 < low <= row["ratio"] <= high
    assert f"| {row['ratio']:.2f} | {low:.2f}–{high:.2f} |" in markdown
    if not onnx:
        assert not [key for key in (*row, *result["json"]) if "onnx" in key]
        assert "| method img/s | ratio | ratio IQR | GFLOP/img | bound |\n" in markdown
        assert "ORT" not in markdown and "--onnx" not in markdown
        return
    for key in ("onnx_img_s", "onnx_backbone_img_s", "onnx_ratio", "onnx_vs_torch"):
        assert row[key] > 0
    assert result["json"]["onnxruntime"]["intra_op_num_threads"] == torch.get_num_threads()
    assert result["json"]["command"].endswith("--onnx")
    assert "| ORT backbone img/s | ORT method img/s | ORT ratio | ORT ÷ torch |" in markdown
    assert f"| {row['onnx_img_s']:.1f} | {row['onnx_ratio']:.2f} |" in markdown


def test_speed_benchmark_reduced_precision_rows(tmp_path):
    """Each precision gets its own row; reduced precision records how far it moves the outputs
    from float32's, and an unknown precision is refused before anything is fitted."""
    from anomap.benchmark import run_speed_benchmark

    with pytest.raises(ValueError, match="unknown precision"):
        run_speed_benchmark(tmp_path, methods=["pbas"], precisions=("fp8",), device="cpu")
    result = run_speed_benchmark(
        tmp_path, batch_sizes=(2,), precisions=("fp32", "bf16"), **TINY_BENCHMARK
    )
    full, reduced = result["json"]["rows"]
    assert (full["precision"], reduced["precision"]) == ("fp32", "bf16")
    assert "map_error" not in full
    # bfloat16 keeps about 3 significant digits: the outputs move, but by well under 10 %
    assert 0 < reduced["map_error"] < 0.1 and 0 <= reduced["score_error"] < 0.1
    assert "| batch | method | precision |" in result["markdown"]
    assert "--precisions fp32,bf16" in result["json"]["command"]
