"""The `anomap` command line: train, test, predict, synth, demo, bench, export, serve.

Imports of torch and the models happen inside the commands, so `anomap --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from anomap.errors import AnomapError

app = typer.Typer(
    help="Industrial visual anomaly detection: learn from good images, flag and localise defects.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MODEL_FILE = "model.safetensors"
HISTORY_FILE = "history.json"  # per-epoch losses (and validation, oracle scores) of a training

Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars or tables.")
AsJson = typer.Option(False, "--json", help="Print the result as JSON (for scripts).")
Seed = typer.Option(0, help="Random seed (sampling, coreset start, training).")
Device = typer.Option("auto", help="auto, cpu or cuda[:N].")
Precision = typer.Option(
    None,
    help="Inference arithmetic: fp32, bf16 or fp16 (autocast: faster on CPUs with AVX-512 "
    "BF16 or AMX; scores move slightly). Default: the model's own setting (fp32 unless "
    "trained with --set inference_precision=...).",
)


def _setup(quiet: bool) -> None:
    from anomap.progress import set_enabled

    set_enabled(not quiet)


def _parse_settings(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values parsed as JSON when they can be (numbers, lists)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AnomapError(f"--set expects key=value, got {pair!r}")
        try:
            settings[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.replace("-", "_")] = value
    return settings


def _print(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=float))
    elif text:
        typer.echo(text)


def _model_files(model: Path) -> dict[str, Path]:
    """A model file, or a training run folder holding <category>/model.safetensors files."""
    if model.is_file():
        return {"": model}
    if model.is_dir():
        found = {p.parent.name: p for p in sorted(model.glob(f"*/{MODEL_FILE}"))}
        if (model / MODEL_FILE).is_file():
            found[""] = model / MODEL_FILE
        if found:
            return found
    raise AnomapError(f"no model at {model}: expected a {MODEL_FILE} file or a training run folder")


def _pick_model(files: dict[str, Path], category: str) -> Path:
    if category in files:
        return files[category]
    if len(files) == 1:
        return next(iter(files.values()))
    raise AnomapError(
        f"no model for category {category!r}; this run has: {', '.join(sorted(files))}"
    )


@app.command(short_help="Train a model per category on good images, or one for all (--unified).")
def train(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Dataset root, category folder, or folder of good images."
    ),
    out: Path = typer.Option(
        Path("runs/model"), "--out", "-o", help="Run folder to write models into."
    ),
    method: str = typer.Option(
        "patchcore", help="Method: patchcore, pbas, glass (one model per category) or uniad."
    ),
    category: list[str] = typer.Option(
        None, "--category", "-c", help="Only these categories (repeatable)."
    ),
    layout: str = typer.Option("auto", help="auto, mvtec, mpdd, visa or folder."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone name (timm)."),
    weights: Path = typer.Option(None, help="Local backbone weights (safetensors or state dict)."),
    download: bool = typer.Option(False, "--download", help="Allow downloading backbone weights."),
    val: Path = typer.Option(None, help="Folder of normal images to calibrate the threshold."),
    unified: bool = typer.Option(
        False, "--unified", help="One model for all selected categories together."
    ),
    categories: str = typer.Option(
        None,
        "--categories",
        help="One unified model for these categories: all, or a comma-separated list.",
    ),
    settings: list[str] = typer.Option(
        None, "--set", help="Method setting key=value, e.g. coreset_ratio=0.05."
    ),
    epochs: int = typer.Option(None, help="Training epochs (pbas, glass, uniad)."),
    preset: str = typer.Option(
        None,
        help="paper (the reference procedure; glass's default) or fast (cached features, "
        "fewer repeated computations; pbas's default).",
    ),
    textures: Path = typer.Option(
        None, help="GLASS: folder of texture images (DTD) for local anomaly synthesis."
    ),
    select: str = typer.Option(
        "last",
        help="Epoch kept: last (deployable) or oracle (best on the test set, as the papers "
        "report; labelled oracle in every output).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted training from its checkpoint."
    ),
    seed: int = Seed,
    device: str = Device,
    quiet: bool = Quiet,
    as_json: bool = AsJson,
) -> None:
    """Train one model per category on its good images (or one for all with --unified).

    Examples:
      anomap train --data mvtec_ad --category bottle --out runs/bottle
      anomap train --data mvtec_ad --categories all --out runs/mvtec_unified
      anomap train --method uniad --data mvtec_ad --categories bottle,cable,screw
      anomap train --data ./good_parts --out runs/line3
      anomap train --data data/ball_screw --set coreset_ratio=0.05
      anomap train --method pbas --data ./good_parts --epochs 100 --out runs/pbas
      anomap train --method glass --data mvtec_ad -c screw --textures dtd/images --resume
    """
    import time
    from dataclasses import fields

    from anomap.data.layouts import discover
    from anomap.methods import get_method
    from anomap.report import write_text_atomic
    from anomap.selection import OracleSelection

    _setup(quiet)
    if select not in ("last", "oracle"):
        raise AnomapError(f"--select must be last or oracle, got {select!r}")
    options = dict(_parse_settings(settings or []), backbone=backbone, seed=seed, device=device)
    extra = {"epochs": epochs, "preset": preset, "weights": weights, "textures": textures}
    options.update({k: v if isinstance(v, int) else str(v) for k, v in extra.items() if v})
    if download:
        options["download"] = True
    detector_class = get_method(method)
    accepted = {f.name for f in fields(detector_class.Config)}
    unknown = sorted(
        k for k in ("epochs", "preset", "textures") if k in options and k not in accepted
    )
    if unknown:
        raise AnomapError(f"{method} has no setting {', '.join(unknown)}")
    if categories:
        if category:
            raise AnomapError("use either --category (one model each) or --categories (unified)")
        unified = True
        if categories != "all":
            category = [c.strip() for c in categories.split(",") if c.strip()]
    found = discover(data, layout=layout, categories=category or None)
    groups = {"all": found} if unified else {c.name: [c] for c in found}
    summary = {}
    normals: dict[str, int | None] = {}  # held-out images behind each model's threshold
    for name, group in groups.items():
        folder = out if unified else out / name
        if "checkpoint_dir" in accepted:
            options.update(checkpoint_dir=str(folder / "checkpoint"), resume=resume)
        elif resume:
            raise AnomapError(f"{method} trains in one pass; there is nothing to resume")
        oracle = None
        if select == "oracle" and "epochs" not in accepted:
            raise AnomapError(f"{method} has no epochs to select from; use --select last")
        if select == "oracle":
            oracle = OracleSelection([s for c in group for s in c.test])
        start = time.perf_counter()
        detector = detector_class(**options).fit(group, val=val, select=oracle)
        seconds = time.perf_counter() - start
        path = detector.save(folder / MODEL_FILE)
        images = sum(len(c.train) for c in group)
        summary[name] = {
            "model": str(path),
            "train_images": images,
            "seconds": seconds,
            **detector.training_info,
        }
        if getattr(detector, "history", None):
            epochs = [{"epoch": i + 1, **entry} for i, entry in enumerate(detector.history)]
            history = folder / HISTORY_FILE
            write_text_atomic(json.dumps({"epochs": epochs}, indent=1), history)
            summary[name]["history"] = str(history)
        if not quiet and not as_json:
            note = ""
            if oracle is not None:
                note = f" (oracle: epoch {detector.training_info.get('selected_epoch')} kept)"
            typer.echo(f"{name}: trained on {images} images in {seconds:.1f}s -> {path}{note}")
        normals[name] = None if detector.calibration is None else detector.calibration.num_images
        quantile = detector.config.threshold_quantile
    caution = _few_normals_caution(normals, quantile)
    if caution and not quiet:
        typer.echo(caution, err=True)
    _print(summary, as_json)


FEW_NORMALS = 20  # below this, the threshold's false reject rate scatters widely


def _few_normals_caution(normals: dict[str, int | None], quantile: float) -> str | None:
    """One caution for the models whose threshold rests on few held-out normals, or on none
    (`normals`: model name -> its held-out count, None when uncalibrated)."""
    lines = []
    none = [name for name, count in normals.items() if count is None]
    if none:
        lines.append(
            f"no threshold (no held-out normal images) for {', '.join(none)}: run `anomap "
            "calibrate` with normal images the model was not trained on"
        )
    few = {name: count for name, count in normals.items() if count and count < FEW_NORMALS}
    if few:
        counts = ", ".join(f"{name} {count}" for name, count in few.items())
        lines.append(
            f"threshold from few held-out normal images ({counts}): on new good parts it may "
            f"flag several times the {100 * (1 - quantile):.3g} % it aims at; give it "
            f"{FEW_NORMALS}+ with --val DIR, or later with `anomap calibrate`"
        )
    return "\n".join(lines) or None


@app.command(short_help="Metrics per category and mean, heat-map panels and an HTML report.")
def test(
    model: Path = typer.Option(..., "--model", "-m", help="Model file or training run folder."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset with a labelled test split."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Where to write metrics and pictures (default: <run>/test)."
    ),
    category: list[str] = typer.Option(None, "--category", "-c", help="Only these categories."),
    layout: str = typer.Option("auto", help="auto, mvtec, mpdd, visa or folder."),
    pro: str = typer.Option(
        "standard", help="AUPRO variant: standard, repo (GLASS/PBAS papers) or both."
    ),
    overlays: int = typer.Option(8, help="Heat-map panels to write per category."),
    weights: Path = typer.Option(None, help="Backbone weights file, if it moved since training."),
    device: str = Device,
    precision: str = Precision,
    quiet: bool = Quiet,
    as_json: bool = AsJson,
) -> None:
    """Evaluate on labelled test images: metrics per category and mean (JSON + markdown),
    heat-map panels and an HTML report.

    Examples:
      anomap test --model runs/bottle --data mvtec_ad --category bottle
      anomap test --model runs/model --data synth --pro both --json
    """
    from anomap.artifact import load
    from anomap.data.layouts import discover
    from anomap.evaluation import evaluate_category
    from anomap.report import html_report, metrics_table_markdown, write_text_atomic

    _setup(quiet)
    files = _model_files(model)
    out = out or (model if model.is_dir() else model.parent) / "test"
    results = {}
    training = {}
    histories: dict[str, Any] = {}  # model folder -> its history.json epochs
    thresholds: dict[str, tuple[int, float] | None] = {}  # (normal images, quantile) behind it
    detector = None
    for cat in discover(data, layout=layout, categories=category or None):
        picked = _pick_model(files, cat.name)
        detector = load(picked, weights=weights, device=device, precision=precision)
        if picked.parent.name not in histories:
            epochs = _training_history(picked.parent / HISTORY_FILE)
            if epochs:
                histories[picked.parent.name] = epochs
        training[cat.name] = detector.training_info
        cal = detector.calibration_for(cat.name)
        thresholds[cat.name] = None if cal is None else (cal.num_images, cal.quantile)
        results[cat.name] = evaluate_category(
            detector, cat, pro_variant=pro, overlay_dir=out / "overlays", max_overlays=overlays
        )
    metrics = {name: r.metrics for name, r in results.items()}
    columns = [c for c in _TABLE_COLUMNS if any(c in m for m in metrics.values())]
    notes = [
        "image_f1_max and pixel_f1_max pick their threshold on the test set (oracle).",
        "threshold_* use the threshold learnt from normal images only; its false reject "
        "rate is the share of good test images it flags (`anomap calibrate` moves it).",
    ]
    notes += _training_notes(training)
    notes += _threshold_notes(thresholds)
    table = metrics_table_markdown(metrics, columns, notes=notes)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": str(model),
        "data": str(data),
        "method": detector.method,
        "backbone": detector.config.backbone,
        "pro_variant": pro,
        "training": training,
        "thresholds": {
            name: None if source is None else {"normal_images": source[0], "quantile": source[1]}
            for name, source in thresholds.items()
        },
        "categories": {
            name: dict(r.metrics, seconds_per_image=r.seconds_per_image)
            for name, r in results.items()
        },
        "mean": _mean(metrics),
    }
    write_text_atomic(json.dumps(payload, indent=2, default=float), out / "metrics.json")
    write_text_atomic(table, out / "metrics.md")
    images = [
        (Path(p).stem, str(Path(p).relative_to(out))) for r in results.values() for p in r.overlays
    ]
    html_report(
        out / "report.html",
        title=f"anomap test: {detector.method} on {data.name}",
        summary={
            "method": detector.method,
            "backbone": detector.config.backbone,
            "model": str(model),
            "data": str(data),
            "AUPRO variant": pro,
        },
        metrics=metrics,
        columns=columns,
        images=images,
        notes=notes,
        histories=histories,
    )
    _print(
        payload,
        as_json,
        None
        if quiet
        else f"{table}\nwrote {out}/metrics.json, {out}/metrics.md, {out}/report.html",
    )


def _training_history(path: Path) -> list[dict[str, float]]:
    """The epochs of a `history.json` beside a model, for the report's curves; none when the
    file is missing or unreadable (the report is still written, without curves)."""
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _threshold_notes(thresholds: dict[str, tuple[int, float] | None]) -> list[str]:
    """Where each category's threshold comes from: how many normal images, which quantile
    (the fewer the images, the further its false reject rate strays from 1 − quantile)."""
    groups: dict[str, list[str]] = {}
    for name, source in thresholds.items():
        if source is None:
            key = "no threshold (uncalibrated model)"
        else:
            plural = "s" if source[0] != 1 else ""
            key = f"threshold from {source[0]} normal image{plural} at quantile {source[1]}"
        groups.setdefault(key, []).append(name)
    return [f"{key}: {', '.join(names)}" for key, names in groups.items()]


def _training_notes(training: dict[str, dict[str, Any]]) -> list[str]:
    """Lines that must sit next to the numbers: oracle epoch choice, non-faithful parts."""
    notes = []
    oracle = {c: i["selected_epoch"] for c, i in training.items() if i.get("selection") == "oracle"}
    if oracle:
        epochs = ", ".join(f"{c}: {e}" for c, e in oracle.items())
        notes.append(
            f"ORACLE: the epoch was chosen on this test set, as the papers do ({epochs}); "
            "these numbers overstate what a deployed model achieves."
        )
    for key in ("non_faithful", "resize_exception"):
        for value in sorted({str(i[key]) for i in training.values() if i.get(key)}):
            notes.append(f"{key.replace('_', ' ')}: {value}")
    return notes


_TABLE_COLUMNS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "repo_pro",
    "image_ap",
    "pixel_ap",
    "image_f1_max",
    "threshold_f1",
    "threshold_recall",
    "threshold_false_reject_rate",
)


def _mean(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    import numpy as np

    keys = sorted({k for m in metrics.values() for k in m})
    means = {}
    for key in keys:
        values = [m[key] for m in metrics.values() if key in m and not np.isnan(m[key])]
        means[key] = float(np.mean(values)) if values else float("nan")
    return means


@app.command(short_help="Score images: score, decision and heat-map overlay per image.")
def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    model: Path = typer.Option(..., "--model", "-m", help="Model file or training run folder."),
    category: str = typer.Option(
        "", "--category", "-c", help="Which model of a multi-category run."
    ),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output folder."),
    overlays: bool = typer.Option(True, help="Write heat-map overlay PNGs."),
    weights: Path = typer.Option(None, help="Backbone weights file, if it moved since training."),
    skip_unreadable: bool = typer.Option(
        False,
        "--skip-unreadable",
        help="Record unreadable images (with their error) in the results and score the rest, "
        "instead of stopping before any scoring.",
    ),
    device: str = Device,
    precision: str = Precision,
    quiet: bool = Quiet,
    as_json: bool = AsJson,
) -> None:
    """Score images: CSV and JSON of score and decision per image, plus heat-map overlays.
    A .onnx model (from `anomap export`) runs on onnxruntime's CPU provider. Images are
    scored 64 at a time, so a folder of any size fits in memory; an unreadable file stops
    the run before any scoring, with every bad file named.

    Examples:
      anomap predict --model runs/bottle/model.safetensors photos/*.png
      anomap predict --model runs/model --category carpet incoming/ --out results
      anomap predict --model bottle.onnx photos/*.png
      anomap predict --model runs/model -c carpet line3/ --skip-unreadable
    """
    from anomap.artifact import load
    from anomap.data.images import list_images
    from anomap.predict_files import predict_files

    _setup(quiet)
    paths = []
    for item in inputs:
        paths.extend(list_images(item) if item.is_dir() else [item])
    if not paths:
        raise AnomapError("no images found in the given inputs")
    source = _pick_model(_model_files(model), category)
    if source.suffix == ".onnx":
        from anomap.export import OnnxDetector

        if precision not in (None, "fp32"):
            raise AnomapError("an ONNX model runs in float32; --precision is for .safetensors")
        detector = OnnxDetector(source)
    else:
        detector = load(source, weights=weights, device=device, precision=precision)
    rows = predict_files(
        detector,
        paths,
        out,
        category=category or None,
        overlays=overlays,
        skip_unreadable=skip_unreadable,
    )
    lines = [_prediction_line(row) for row in rows]
    skipped = sum(row["error"] is not None for row in rows)
    if skipped:
        lines.append(f"skipped {skipped} unreadable image(s); their errors are in the results")
    _print(rows, as_json, None if quiet else "\n".join(lines) + f"\nwrote {out}/predictions.csv")


def _prediction_line(row: dict[str, Any]) -> str:
    name = f"{Path(row['path']).parent.name}/{Path(row['path']).name}"
    if row["error"] is not None:
        return f"{name}: UNREADABLE"
    decision = {None: "", True: " ANOMALOUS", False: " normal"}[row["anomalous"]]
    return f"{name}: score {row['score']:.4f}{decision}"


@app.command(short_help="Set a model's decision threshold again from normal images, untrained.")
def calibrate(
    normals: Path = typer.Argument(
        ..., help="Folder of new normal images, or a dataset root of them (per category)."
    ),
    model: Path = typer.Option(..., "--model", "-m", help="Model file or training run folder."),
    category: str = typer.Option(
        "", "--category", "-c", help="Which model of a run, or which category of a unified one."
    ),
    quantile: float = typer.Option(
        None, help="Share of normal images to pass, e.g. 0.995. Default: the model's own."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Write the model here instead of replacing its file."
    ),
    weights: Path = typer.Option(None, help="Backbone weights file, if it moved since training."),
    quiet: bool = Quiet,
    as_json: bool = AsJson,
) -> None:
    """Set the pass/fail threshold again from normal images, without training: when the line
    shows more normal variation than the training images did, or another false-reject rate
    is wanted (`--quantile`). Prints how many of these normals the old and the new
    threshold flag, and writes the model back (atomically) or to `--out`.

    Examples:
      anomap calibrate --model runs/synth -c washer new_good_parts/
      anomap calibrate --model runs/synth -c washer new_good_parts/ --quantile 0.999
      anomap calibrate --model runs/uniad -c bottle line2/bottle_good/

    Use images the model was not trained on: it has learnt those, so they score below new
    normals and the threshold would come out too low.
    """
    from anomap.artifact import load

    _setup(quiet)
    source = _pick_model(_model_files(model), category)
    detector = load(source, weights=weights)
    several = len(detector.categories) > 1
    only = category if category and several else None
    samples = detector.calibration_samples(normals, only)
    before = [detector.calibration_for(only or s.category) for s in samples]
    previous = detector.calibration_for(only)  # the global one when every category changes
    result = detector.calibrate(samples, category=only, quantile=quantile)
    path = detector.save(out or source)
    old_flags = None
    if all(cal is not None for cal in before):
        old_flags = int(sum(bool(c.decide(x)) for c, x in zip(before, result.scores, strict=True)))
    after = detector.calibration_for(only)
    assert after is not None and result.is_anomalous is not None
    name = only or ", ".join(detector.categories)
    summary = {
        "model": str(path),
        "category": name,
        "normal_images": len(samples),
        "quantile": detector.config.threshold_quantile,
        "threshold_before": None if previous is None else previous.image_threshold,
        "threshold": after.image_threshold,
        "flagged_before": old_flags,
        "flagged": int(result.is_anomalous.sum()),
    }
    count = len(samples)
    was = "none (uncalibrated)"
    if old_flags is not None:
        was = f"threshold {summary['threshold_before']:.4g}, flags {_share(old_flags, count)}"
    now = f"threshold {after.image_threshold:.4g}, flags {_share(summary['flagged'], count)}"
    scope = " (the global threshold; each category has its own)" if several and not only else ""
    text = (
        f"{name}: {count} normal images, quantile {summary['quantile']}{scope}\n"
        f"  before: {was}\n  after:  {now}\nwrote {path}"
    )
    _print(summary, as_json, None if quiet else text)


def _share(count: int, total: int) -> str:
    return f"{count} of {total} ({100 * count / total:.1f} %)"


@app.command(short_help="Generate seeded procedural categories with realistic defects and masks.")
def synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset into (MVTec layout)."),
    categories: str = typer.Option("", help="Comma-separated categories (default: all)."),
    size: int = typer.Option(256, help="Image size in pixels."),
    n_train: int = typer.Option(40, help="Good training images per category."),
    n_test_good: int = typer.Option(12, help="Good test images per category."),
    n_test_defect: int = typer.Option(4, help="Test images per defect type."),
    seed: int = Seed,
    quiet: bool = Quiet,
) -> None:
    """Generate procedural benchmark categories (textures and objects with real-looking
    defects and exact masks), seeded and deterministic.

    Examples:
      anomap synth data/synth
      anomap synth data/big --size 512 --n-train 200
    """
    from anomap.data.synth import generate

    folders = generate(
        out,
        [c for c in categories.split(",") if c] or None,
        image_size=size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_defect=n_test_defect,
        seed=seed,
    )
    if not quiet:
        typer.echo("\n".join(f"wrote {f}" for f in folders))


@app.command(short_help="The whole loop on generated data: synth, train, test, predict.")
def demo(
    out: Path = typer.Option(
        Path("demo_out"), "--out", "-o", help="Folder for data, models and results."
    ),
    size: int = typer.Option(256, help="Synthetic image size."),
    device: str = Device,
    quiet: bool = Quiet,
) -> None:
    """The whole loop on generated data: synth -> train -> test -> predict, then print the
    metrics table and where the pictures are."""
    from anomap.data.synth import generate

    _setup(quiet)
    data = out / "data"
    if not quiet:
        typer.echo(f"1/4 generating synthetic categories in {data}")
    generate(data, image_size=size)
    if not quiet:
        typer.echo("2/4 training PatchCore (EfficientNet-Lite0, ImageNet weights) per category")
    train(
        data=data,
        out=out / "run",
        method="patchcore",
        category=None,
        layout="auto",
        backbone="efficientnet_lite0",
        weights=None,
        download=False,
        val=None,
        unified=False,
        categories=None,
        settings=None,
        epochs=None,
        preset=None,
        textures=None,
        select="last",
        resume=False,
        seed=0,
        device=device,
        quiet=quiet,
        as_json=False,
    )
    if not quiet:
        typer.echo("3/4 testing on the labelled test split")
    test(
        model=out / "run",
        data=data,
        out=out / "test",
        category=None,
        layout="auto",
        pro="standard",
        overlays=6,
        weights=None,
        device=device,
        precision=None,
        quiet=quiet,
        as_json=False,
    )
    first = sorted((out / "run").glob(f"*/{MODEL_FILE}"))[0].parent.name
    samples = sorted((data / first / "test").glob("*/*.png"))[::7][:4]
    if not quiet:
        typer.echo(f"4/4 predicting {len(samples)} images of {first}")
    predict(
        inputs=samples,
        model=out / "run",
        category=first,
        out=out / "predict",
        overlays=True,
        weights=None,
        skip_unreadable=False,
        device=device,
        precision=None,
        quiet=quiet,
        as_json=False,
    )
    if not quiet:
        typer.echo(f"\nOpen {out / 'test' / 'report.html'} for the report and heat maps.")


@app.command(short_help="Inference speed of every method against its bare backbone.")
def bench(
    out: Path = typer.Option(Path("benchmarks/results"), "--out", "-o", help="Results folder."),
    batch_sizes: str = typer.Option("1,32", help="Comma-separated batch sizes."),
    size: int = typer.Option(224, help="Input size (after crop)."),
    methods: str = typer.Option(
        "patchcore,pbas,glass,uniad", help="Comma-separated methods to time."
    ),
    device: str = Device,
    precisions: str = typer.Option(
        "fp32",
        help="Comma-separated inference precisions: fp32, bf16, fp16 (autocast; bf16/fp16 "
        "mainly for GPUs).",
    ),
    rounds: int = typer.Option(
        5, min=1, help="Alternating timing rounds per comparison (more: a steadier median)."
    ),
    onnx: bool = typer.Option(
        False,
        "--onnx",
        help="Also time the exported model and backbone on onnxruntime (CPU only; needs "
        "anomap's onnx extra).",
    ),
    quiet: bool = Quiet,
    as_json: bool = AsJson,
) -> None:
    """Inference throughput of each method's full predict path against its bare backbone in
    the same run, and peak memory; writes JSON + markdown. With --onnx, the same on
    onnxruntime, and its speed-up over torch."""
    from anomap.benchmark import run_speed_benchmark

    _setup(quiet)
    result = run_speed_benchmark(
        out,
        batch_sizes=[int(b) for b in batch_sizes.split(",")],
        methods=[m for m in methods.split(",") if m],
        size=size,
        device=device,
        precisions=[p for p in precisions.split(",") if p],
        rounds=rounds,
        onnx=onnx,
    )
    _print(result["json"], as_json, None if quiet else result["markdown"])


@app.command(short_help="Export a model to ONNX, thresholds and preprocessing included.")
def export(
    model: Path = typer.Option(..., "--model", "-m", help="Model file or training run folder."),
    category: str = typer.Option(
        "", "--category", "-c", help="Which model of a multi-category run."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="ONNX file to write (default: <model>.onnx beside the model)."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Fix the batch size in the graph (default: dynamic)."
    ),
    opset: int = typer.Option(None, help="ONNX opset version (default 17)."),
    weights: Path = typer.Option(None, help="Backbone weights file, if it moved since training."),
    quiet: bool = Quiet,
    as_json: bool = AsJson,
) -> None:
    """Export a model to ONNX: one graph from a preprocessed image batch to image scores and
    smoothed anomaly maps, with the preprocessing and thresholds in its metadata. Needs
    anomap's onnx extra (onnx, onnxruntime).

    Examples:
      anomap export --model runs/bottle --out bottle.onnx
      anomap export --model runs/model --category carpet --batch-size 8
      anomap predict --model bottle.onnx photos/*.png
    """
    from anomap.artifact import load
    from anomap.export import DEFAULT_OPSET, export_onnx

    _setup(quiet)
    source = _pick_model(_model_files(model), category)
    detector = load(source, weights=weights, device="cpu")
    opset = opset or DEFAULT_OPSET
    path = export_onnx(
        detector, out or source.with_suffix(".onnx"), batch_size=batch_size, opset=opset
    )
    height, width = detector.preprocess.output_size
    summary = {
        "onnx": str(path),
        "model": str(source),
        "method": detector.method,
        "input_shape": [batch_size or "batch", 3, height, width],
        "opset": opset,
    }
    batch = batch_size or "B (dynamic)"
    text = f"wrote {path}: {detector.method}, input float32 {batch}×3×{height}×{width}"
    _print(summary, as_json, None if quiet else text)


@app.command(short_help="Serve a model: web page and JSON API over HTTP.")
def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Model file or training run folder."),
    category: str = typer.Option(
        "",
        "--category",
        "-c",
        help="Which model of a multi-category run; also the category of requests naming none.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: all interfaces)."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free port)."),
    max_body_mb: float = typer.Option(20.0, help="Largest request body accepted, in MiB."),
    weights: Path = typer.Option(None, help="Backbone weights file, if it moved since training."),
    device: str = Device,
    precision: str = Precision,
) -> None:
    """Serve a model: a web page at / to score images by drag and drop, and a JSON API
    (POST /predict, GET /info, GET /health). Runs until Ctrl+C.

    Examples:
      anomap serve --model runs/synth --category washer
      anomap serve --model runs/line3/model.safetensors --host 0.0.0.0 --port 8080
      curl -H "Content-Type: image/png" --data-binary @part.png "localhost:8000/predict"
    """
    from anomap.serve import serve as run_server

    run_server(
        _pick_model(_model_files(model), category),
        host,
        port,
        category=category or None,
        device=device,
        weights=str(weights) if weights else None,
        precision=precision,
        max_body=int(max_body_mb * 1024 * 1024),
    )


def main() -> None:
    """Entry point: user errors print one clear line and exit 2, never a traceback."""
    try:
        app()
    except AnomapError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
