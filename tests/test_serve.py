"""`anomap serve` as a client sees it: a real server on a free port, spoken to with urllib."""

import base64
import contextlib
import io
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from anomap.data.layouts import discover
from anomap.errors import AnomapError
from anomap.methods.patchcore import PatchCore
from anomap.serve import make_server

from .conftest import SMALL

MAX_BODY = 200_000


@pytest.fixture(scope="module")
def fitted(synth_root):
    category = discover(synth_root)[0]
    return category, PatchCore(**SMALL).fit(category)


@contextlib.contextmanager
def running(model, **options):
    server = make_server(model, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(fitted):
    with running(fitted[1], max_body=MAX_BODY) as server:
        yield server


def call(server, path, data=None, headers=None):
    """(status, headers, body) of one request; error statuses are answers, not exceptions."""
    request = urllib.request.Request(server.url + path.lstrip("/"), data=data)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def call_json(server, path, data=None, headers=None):
    status, _, body = call(server, path, data, headers)
    return status, json.loads(body)


def post_png(server, path, data):
    return call_json(server, path, data, {"Content-Type": "image/png"})


def multipart(files, field="image"):
    boundary = uuid.uuid4().hex
    body = b""
    for name, data in files:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def decode_png(text):
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_health_and_info(server, fitted):
    _, model = fitted
    assert call_json(server, "/health") == (200, {"status": "ok"})
    status, info = call_json(server, "/info")
    assert status == 200
    assert info["method"] == "patchcore" and info["categories"] == model.categories
    assert info["input_size"] == [96, 96] and info["backbone"]["name"] == model.config.backbone
    assert info["threshold"] == pytest.approx(model.calibration.image_threshold)
    assert info["max_body_bytes"] == MAX_BODY and info["anomap_version"]


def test_page_has_an_upload_form_and_no_external_assets(server):
    status, headers, body = call(server, "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<form" in page and 'type="file"' in page and 'name="image"' in page
    assert "http://" not in page and "https://" not in page


def test_raw_png_scores_as_predict_does(server, fitted):
    category, model = fitted
    sample = next(s for s in category.test if s.label == 1)
    expected = model.predict([sample.path])
    status, answer = post_png(server, "/predict?filename=part.png", sample.path.read_bytes())
    assert status == 200
    (row,) = answer["images"]
    assert row["filename"] == "part.png" and row["category"] == category.name
    assert row["score"] == pytest.approx(float(expected.scores[0]), rel=1e-5)
    assert row["normalized"] == pytest.approx(float(expected.normalized[0]), rel=1e-4)
    assert row["is_anomalous"] == bool(expected.is_anomalous[0])
    assert row["threshold"] == pytest.approx(model.calibration.image_threshold)
    assert "overlay_png" not in row and "map_png" not in row
    assert {"inference", "render", "decode", "total"} <= set(answer["timing_ms"])


def test_multipart_with_two_files(server, fitted):
    category, model = fitted
    paths = [category.test[0].path, category.test[-1].path]
    body, headers = multipart([("a.png", paths[0].read_bytes()), ("b.png", paths[1].read_bytes())])
    status, answer = call_json(server, "/predict", body, headers)
    assert status == 200
    assert [r["filename"] for r in answer["images"]] == ["a.png", "b.png"]
    scores = [r["score"] for r in answer["images"]]
    np.testing.assert_allclose(scores, model.predict(paths).scores, rtol=1e-5)


def test_overlay_and_map_are_pngs(server, fitted):
    category, _ = fitted
    data = category.test[-1].path.read_bytes()
    status, answer = post_png(server, "/predict?overlay=1&map=1", data)
    assert status == 200
    row = answer["images"][0]
    picture, anomaly_map = decode_png(row["overlay_png"]), decode_png(row["map_png"])
    assert picture.format == "PNG" and picture.size == (96, 96) and picture.mode == "RGB"
    assert anomaly_map.size == (96, 96) and anomaly_map.mode == "L"
    assert len(row["map_range"]) == 2 and row["map_range"][0] < row["map_range"][1]


def test_bad_inputs_get_clear_errors(server, fitted):
    category, model = fitted
    png = category.test[0].path.read_bytes()
    status, answer = post_png(server, "/predict", b"this is not an image")
    assert status == 400 and "not a recognised image" in answer["error"]
    status, answer = post_png(server, "/predict?filename=cut.png", png[: len(png) // 2])
    assert status == 400 and "cut.png" in answer["error"] and "truncated" in answer["error"]
    status, answer = post_png(server, "/predict?category=nope", png)
    assert status == 400 and "nope" in answer["error"]
    assert all(name in answer["error"] for name in model.categories)
    status, answer = post_png(server, "/predict?overlays=1", png)
    assert status == 400 and "overlays" in answer["error"]
    status, answer = post_png(server, "/predict", b"\0" * (MAX_BODY + 1))
    assert status == 413 and str(MAX_BODY) in answer["error"]
    status, answer = call_json(server, "/predict", *multipart([("a.png", png)], field="file"))
    assert status == 400 and "'image' file field" in answer["error"]
    assert call_json(server, "/nowhere")[0] == 404
    assert call_json(server, "/predict")[0] == 405
    assert call_json(server, "/health")[0] == 200  # still serving


def test_an_internal_error_is_a_500_and_the_server_lives_on(server, fitted, monkeypatch):
    category, model = fitted

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "predict", broken)
    status, answer = post_png(server, "/predict", category.test[0].path.read_bytes())
    assert status == 500 and "boom" in answer["error"]
    monkeypatch.undo()
    assert post_png(server, "/predict", category.test[0].path.read_bytes())[0] == 200


def test_concurrent_requests_get_their_own_answers(server, fitted):
    category, model = fitted
    paths = [s.path for s in category.test[:4]]
    expected = model.predict(paths).scores
    scores = [None] * len(paths)

    def send(i):
        scores[i] = post_png(server, "/predict", paths[i].read_bytes())[1]["images"][0]["score"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_serves_a_saved_model_file(fitted, tmp_path):
    category, model = fitted
    path = model.save(tmp_path / "model.safetensors")
    sample = category.test[-1].path
    with running(path, device="cpu", category=category.name) as server:
        status, answer = post_png(server, "/predict", sample.read_bytes())
    assert status == 200 and answer["images"][0]["category"] == category.name
    assert answer["images"][0]["score"] == pytest.approx(float(model.predict([sample]).scores[0]))


def test_serves_at_the_requested_precision(fitted, tmp_path):
    category, model = fitted
    path = model.save(tmp_path / "model.safetensors")
    with running(path, device="cpu", precision="bf16") as server:
        _, info = call_json(server, "/info")
        status, answer = post_png(server, "/predict", category.test[-1].path.read_bytes())
    assert info["inference_precision"] == "bf16" and status == 200
    expected = float(model.predict([category.test[-1].path]).scores[0])
    assert answer["images"][0]["score"] == pytest.approx(expected, rel=0.1)


def test_a_taken_port_is_a_clear_error(server, fitted):
    _, model = fitted
    with pytest.raises(AnomapError, match="cannot listen"):
        make_server(model, "127.0.0.1", server.server_address[1])


def test_cli_reports_a_missing_model():
    command = [sys.executable, "-m", "anomap", "serve", "--model", "/nonexistent/run"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no model at" in proc.stderr
