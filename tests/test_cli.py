"""The CLI as a user runs it: real subprocesses, real files, readable errors."""

import json
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-m", "anomap"]


def run(*args, check=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_is_fast_and_lists_verbs():
    start = time.perf_counter()
    proc = run("--help")
    assert time.perf_counter() - start < 5  # generous: the import itself must not load torch
    for verb in ("train", "test", "predict", "calibrate", "synth", "demo", "bench"):
        assert verb in proc.stdout
    code = "import sys, anomap.cli; print('torch' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run(
        "train",
        "--data",
        synth_root,
        "--out",
        out,
        "--set",
        "resize=96",
        "--set",
        "crop=96",
        "--json",
        "--quiet",
    )
    return out, json.loads(proc.stdout)


def test_train_writes_one_model_per_category(trained, synth_root):
    out, summary = trained
    assert sorted(summary) == sorted(p.name for p in synth_root.iterdir())
    for name in summary:
        assert (out / name / "model.safetensors").is_file()


def test_test_writes_metrics_and_report(trained, synth_root, tmp_path):
    out, _ = trained
    proc = run(
        "test",
        "--model",
        out,
        "--data",
        synth_root,
        "--out",
        tmp_path,
        "--json",
        "--quiet",
        "--overlays",
        "2",
    )
    payload = json.loads(proc.stdout)
    assert set(payload["categories"]) == {p.name for p in synth_root.iterdir()}
    assert 0.5 < payload["mean"]["image_auroc"] <= 1.0
    assert (tmp_path / "metrics.md").read_text().count("|") > 10
    held_out = {t["normal_images"] for t in payload["thresholds"].values()}
    assert held_out == {1}  # 10 % of 12 training images
    text = (tmp_path / "metrics.md").read_text()
    assert "threshold from 1 normal image at quantile 0.99" in text
    assert "<img" in (tmp_path / "report.html").read_text()
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 4


def test_predict_writes_csv_and_overlays(trained, synth_root, tmp_path):
    out, summary = trained
    name = sorted(summary)[0]
    folder = next(p for p in (synth_root / name / "test").iterdir() if p.name != "good")
    proc = run(
        "predict",
        folder,
        "--model",
        out,
        "--category",
        name,
        "--out",
        tmp_path,
        "--json",
        "--quiet",
    )
    rows = json.loads(proc.stdout)
    assert len(rows) == len(list(folder.iterdir()))
    assert {"path", "score", "anomalous", "overlay"} <= set(rows[0])
    assert (tmp_path / "predictions.csv").read_text().startswith("path,score")


def test_predict_at_reduced_precision(trained, synth_root, tmp_path):
    """--precision bf16 scores the same images about as fp32 does; a bad value or an ONNX
    model with it is one clear line."""
    out, summary = trained
    name = sorted(summary)[0]
    folder = synth_root / name / "test" / "good"
    rows = {}
    for precision in ("fp32", "bf16"):
        args = ["predict", folder, "--model", out, "-c", name, "--out", tmp_path / precision]
        proc = run(*args, "--precision", precision, "--no-overlays", "--json", "--quiet")
        rows[precision] = [row["score"] for row in json.loads(proc.stdout)]
    assert rows["bf16"] != rows["fp32"]
    assert rows["bf16"] == pytest.approx(rows["fp32"], rel=0.1)
    proc = run("predict", folder, "--model", out, "-c", name, "--precision", "int8", check=False)
    assert proc.returncode == 2 and "inference_precision must be one of" in proc.stderr


def test_calibrate_writes_a_new_threshold_and_keeps_the_original(trained, synth_root, tmp_path):
    out, summary = trained
    name = sorted(summary)[0]
    folder = synth_root / name / "test" / "good"
    target = tmp_path / "recalibrated.safetensors"
    args = ["calibrate", folder, "--model", out, "-c", name, "--quantile", "0.9", "-o", target]
    result = json.loads(run(*args, "--json", "--quiet").stdout)
    assert result["normal_images"] == len(list(folder.iterdir())) and result["quantile"] == 0.9
    assert result["flagged_before"] is not None and result["threshold_before"] is not None
    code = "import sys, anomap; print(*[anomap.load(p).calibration.quantile for p in sys.argv[1:]])"
    model = summary[name]["model"]
    printed = subprocess.check_output([sys.executable, "-c", code, target, model], text=True)
    assert printed.split() == ["0.9", "0.99"]  # the new file, and the original untouched
    text = run("calibrate", folder, "--model", target).stdout
    assert "before: threshold" in text and "after:  threshold" in text and "quantile 0.9" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/nonexistent/dir"], "/nonexistent/dir"),
        (["test", "--model", "/nonexistent/m", "--data", "."], "no model at"),
        (["train", "--data", ".", "--set", "oops"], "key=value"),
    ],
)
def test_user_errors_are_one_clear_line(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_unified_model_serves_every_category(synth_root, tmp_path):
    run(
        "train",
        "--data",
        synth_root,
        "--out",
        tmp_path,
        "--unified",
        "--quiet",
        "--set",
        "resize=96",
        "--set",
        "crop=96",
    )
    assert (tmp_path / "model.safetensors").is_file()
    proc = run(
        "test", "--model", tmp_path, "--data", synth_root, "--json", "--quiet", "--overlays", "0"
    )
    assert set(json.loads(proc.stdout)["categories"]) == {p.name for p in synth_root.iterdir()}


def test_pbas_trains_on_a_plain_folder_and_resumes(synth_root, tmp_path):
    """PBAS needs nothing but good images: a bare folder is enough."""
    folder = synth_root / "pill" / "train" / "good"
    common = ["--method", "pbas", "--data", folder, "--out", tmp_path, "--quiet", "--json"]
    small = ["--set", "resize=64", "--set", "crop=64", "--set", "discriminator_hidden=32"]
    first = json.loads(run("train", *common, *small, "--epochs", "1").stdout)
    (name,) = first
    assert (tmp_path / name / "checkpoint" / "checkpoint.safetensors").is_file()
    resumed = json.loads(run("train", *common, *small, "--epochs", "2", "--resume").stdout)
    assert (tmp_path / name / "model.safetensors").is_file() and resumed[name]["train_images"]
    bad = run("train", *common, "--preset", "turbo", check=False)
    assert bad.returncode == 2 and "preset" in bad.stderr


def test_glass_oracle_selection_is_labelled(synth_root, tmp_path):
    args = ["--data", synth_root, "--category", "pill", "--quiet"]
    small = ["--set", "resize=64", "--set", "crop=64", "--set", "ascent_steps=2"]
    run(
        "train",
        "--method",
        "glass",
        *args,
        *small,
        "--epochs",
        "2",
        "--select",
        "oracle",
        "--out",
        tmp_path,
    )
    history = json.loads((tmp_path / "pill" / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2]
    assert all({"loss", "oracle"} <= set(e) for e in history)  # oracle: I-AUROC + P-AUROC
    assert all(0 < e["oracle"] <= 2 for e in history)
    run("test", "--model", tmp_path, *args, "--out", tmp_path / "test")
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["training"]["pill"]["selection"] == "oracle"
    assert "ORACLE" in (tmp_path / "test" / "metrics.md").read_text()
    page = (tmp_path / "test" / "report.html").read_text()
    assert "procedural textures" in page
    assert "<h2>Training</h2>" in page and "oracle: " in page  # from history.json
    (tmp_path / "pill" / "history.json").write_text("{not json")
    run("test", "--model", tmp_path, *args, "--out", tmp_path / "test2", "--overlays", "0")
    assert "<h2>Training</h2>" not in (tmp_path / "test2" / "report.html").read_text()
    bad = run(
        "train",
        "--method",
        "patchcore",
        *args,
        "--select",
        "oracle",
        "--out",
        tmp_path,
        check=False,
    )
    assert bad.returncode == 2 and "no epochs" in bad.stderr


def test_uniad_unified_over_all_categories(synth_root, tmp_path):
    small = ["--set", "resize=[64,64]", "--set", "hidden_dim=32", "--set", "heads=4"]
    small += ["--set", "encoder_layers=1", "--set", "decoder_layers=1", "--set", "neighbor_size=3"]
    summary = json.loads(
        run(
            "train",
            "--method",
            "uniad",
            "--data",
            synth_root,
            "--categories",
            "all",
            "--epochs",
            "1",
            "--out",
            tmp_path,
            "--quiet",
            "--json",
            *small,
        ).stdout
    )
    assert list(summary) == ["all"] and (tmp_path / "model.safetensors").is_file()
    run("test", "--model", tmp_path, "--data", synth_root, "--quiet")
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert sorted(metrics["categories"]) == sorted(p.name for p in synth_root.iterdir())

    import anomap

    model = anomap.load(tmp_path / "model.safetensors")
    assert sorted(model.category_calibration) == sorted(metrics["categories"])
    assert sorted(model.categories) == sorted(metrics["categories"])


def test_demo_passes_every_option_of_the_verbs_it_calls():
    """demo calls train/test/predict as functions: an option it omits would arrive as typer's
    OptionInfo placeholder instead of a value."""
    import ast
    import inspect
    import textwrap

    import anomap.cli as cli

    tree = ast.parse(textwrap.dedent(inspect.getsource(cli.demo)))
    calls = {
        node.func.id: {keyword.arg for keyword in node.keywords}
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    for verb in (cli.train, cli.test, cli.predict):
        expected = set(inspect.signature(verb).parameters)
        assert calls[verb.__name__] == expected, f"demo's {verb.__name__}(...) call differs"


def test_train_cautions_when_the_threshold_rests_on_few_normals():
    from anomap import cli

    caution = cli._few_normals_caution({"pill": 4, "washer": 4, "tile": 40, "wood": None}, 0.99)
    first, second = caution.splitlines()
    assert "no threshold" in first and "wood" in first
    assert "(pill 4, washer 4)" in second and "the 1 % it aims at" in second
    assert cli._few_normals_caution({"tile": cli.FEW_NORMALS}, 0.99) is None
    assert "the 0.1 % it aims at" in cli._few_normals_caution({"pill": 4}, 0.999)


def test_demo_runs_end_to_end(tmp_path):
    """`make demo` is one of the README's two commands: the whole loop must run."""
    proc = run("demo", "--out", tmp_path, "--size", "64")
    assert "4/4 predicting" in proc.stdout and "Open " in proc.stdout
    assert "threshold_false_reject_rate" in (tmp_path / "test" / "metrics.md").read_text()
    assert (tmp_path / "test" / "report.html").is_file()
    assert (tmp_path / "predict" / "predictions.csv").read_text().startswith("path,score")
