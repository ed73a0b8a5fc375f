"""Scoring folders of files (`anomap predict`): chunked, in order, and careful with bad files."""

import csv
import json
import shutil

import numpy as np
import pytest

import anomap.predict_files as predict_files_module
from anomap.data.layouts import discover
from anomap.errors import DataError
from anomap.methods.patchcore import PatchCore
from anomap.predict_files import predict_files

from .conftest import SMALL


@pytest.fixture(scope="module")
def fitted(synth_root):
    category = discover(synth_root)[0]
    return category, PatchCore(**SMALL).fit(category)


@pytest.fixture
def images(fitted, tmp_path, monkeypatch):
    """Seven test images copied into one folder, scored two at a time."""
    monkeypatch.setattr(predict_files_module, "CHUNK", 2)
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for i, sample in enumerate(fitted[0].test[:7]):
        paths.append(folder / f"{i}_{sample.path.name}")
        shutil.copy(sample.path, paths[-1])
    return paths


def _table(out):
    return list(csv.DictReader((out / "predictions.csv").open()))


def test_chunks_give_what_one_predict_gives(fitted, images, tmp_path):
    _, model = fitted
    rows = predict_files(model, images, tmp_path / "out")
    whole = model.predict(images)
    assert [r["path"] for r in rows] == [str(p) for p in images]
    np.testing.assert_allclose([r["score"] for r in rows], whole.scores, rtol=1e-5)  # batching
    assert [r["anomalous"] for r in rows] == whole.is_anomalous.tolist()
    assert all(r["error"] is None and (tmp_path / "out" / r["overlay"]).exists() for r in rows)
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == rows
    assert [float(r["score"]) for r in _table(tmp_path / "out")] == [r["score"] for r in rows]


def test_bad_headers_stop_the_run_before_scoring(fitted, images, tmp_path, monkeypatch):
    _, model = fitted
    for path in (images[1], images[5]):
        path.write_bytes(b"\x89PNG not really")
    scored = []
    monkeypatch.setattr(model, "predict", lambda *a, **k: scored.append(1))
    with pytest.raises(DataError, match="2 of 7") as error:
        predict_files(model, images, tmp_path / "out")
    assert images[1].name in str(error.value) and images[5].name in str(error.value)
    assert not scored and not (tmp_path / "out").exists()


def test_skip_unreadable_records_each_bad_file_and_scores_the_rest(fitted, images, tmp_path):
    _, model = fitted
    images[1].write_bytes(b"\x89PNG not really")
    images[4].write_bytes(images[4].read_bytes()[:300])  # header fine, pixels cut short
    rows = predict_files(model, images, tmp_path / "out", skip_unreadable=True)
    errors = [i for i, r in enumerate(rows) if r["error"] is not None]
    assert errors == [1, 4]
    assert all(rows[i]["score"] is None and rows[i]["overlay"] is None for i in errors)
    good = [p for i, p in enumerate(images) if i not in errors]
    scores = [r["score"] for i, r in enumerate(rows) if i not in errors]
    np.testing.assert_allclose(scores, model.predict(good).scores, rtol=1e-5)
    assert "truncated" in rows[4]["error"] and images[4].name in rows[4]["error"]


def test_pixels_corrupt_mid_run_keep_the_rows_before_them(fitted, images, tmp_path):
    _, model = fitted
    images[3].write_bytes(images[3].read_bytes()[:300])  # found only when decoded
    with pytest.raises(DataError, match="the 3 image.s. before it"):
        predict_files(model, images, tmp_path / "out")
    kept = _table(tmp_path / "out")
    assert [r["path"] for r in kept] == [str(p) for p in images[:3]]
    expected = model.predict(images[:3]).scores
    np.testing.assert_allclose([float(r["score"]) for r in kept], expected, rtol=1e-5)


def test_an_uncalibrated_model_colours_every_overlay_on_one_scale(
    fitted, images, tmp_path, monkeypatch
):
    category, _ = fitted
    model = PatchCore(**SMALL, val_fraction=0.0).fit(category)
    assert model.calibration is None
    scales = []
    real_panel = predict_files_module.panel
    monkeypatch.setattr(
        predict_files_module,
        "panel",
        lambda *a, vmin, vmax, **k: (
            scales.append((vmin, vmax)) or real_panel(*a, vmin=vmin, vmax=vmax, **k)
        ),
    )
    images[2].write_bytes(images[2].read_bytes()[:300])  # skipped in both passes
    rows = predict_files(model, images, tmp_path / "out", skip_unreadable=True)
    maps = model.predict(images[:2] + images[3:]).maps
    assert set(scales) == {(float(maps.min()), float(maps.max()))} and len(scales) == 6
    assert rows[2]["error"] is not None
    assert all(r["anomalous"] is None and r["normalized_score"] is None for r in rows)
