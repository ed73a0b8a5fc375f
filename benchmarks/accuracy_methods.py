"""Accuracy and training time of any method on every `anomap synth` category and on
../shared/data (when present), one model per category or one unified model per dataset.

For trained methods one run gives two rows: the last epoch (what anomap deploys) and the
epoch an oracle picks on the test set (the papers' protocol, METHODS.md §2.4.6), labelled.

`--precisions bf16` also tests each last-epoch model at that inference precision (same model,
float32 threshold), next to its float32 row.

Writes benchmarks/results/accuracy_<method>[_<preset>][_unified][_<precisions>].json and .md
(the preset in the name only when --preset is given; the settings always record it);
re-running one dataset keeps the other datasets' rows. Examples:
  python benchmarks/accuracy_methods.py --method pbas --epochs 100
  python benchmarks/accuracy_methods.py --method glass --preset paper --epochs 20
  python benchmarks/accuracy_methods.py --method uniad --unified --epochs 200
  python benchmarks/accuracy_methods.py --method patchcore --precisions bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from anomap.benchmark import machine_info
from anomap.data.layouts import discover
from anomap.data.synth import generate
from anomap.evaluation import evaluate_category
from anomap.methods import get_method
from anomap.methods.base import resolve_device
from anomap.report import metrics_table_markdown, write_text_atomic
from anomap.selection import OracleSelection

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "threshold_f1")
# the same geometry as accuracy_patchcore.py, so the tables compare like for like
GEOMETRY = {
    "synth": {"resize": 256, "crop": 224},
    "shared": {"resize": (256, 624), "crop": None},
}
UNIAD_GEOMETRY = {  # UniAD resizes straight to a multiple of 16, no crop (§4.2)
    "synth": {"resize": (224, 224), "crop": None},
    "shared": {"resize": (256, 624), "crop": None},
}


def geometry_text(settings: dict[str, Any]) -> str:
    """A geometry's resize/crop settings in words, e.g. 'resize 256, centre crop 224'."""
    resize, crop = settings["resize"], settings["crop"]
    if isinstance(resize, tuple):
        size = f"whole frame resized to {resize[0]}×{resize[1]}"
    else:
        size = f"resize {resize}"
    return f"{size}, centre crop {crop}" if crop else f"{size}, no crop"


def _model_size_mb(detector: Any) -> float:
    return sum(t.numel() * t.element_size() for t in detector.state_tensors().values()) / 2**20


def evaluate_groups(
    dataset: str,
    root: Path,
    method: str,
    settings: dict[str, Any],
    unified: bool,
    every: int,
    callbacks: tuple[Any, ...] = (),
    precisions: tuple[str, ...] = (),
    checkpoint_root: Path | None = None,
) -> dict[str, Any]:
    """Train and test one model per category (or one for all with `unified`); `callbacks` are
    called at every epoch end, after the oracle's, like the detector's own. Each of
    `precisions` re-tests the last epoch's model at that `inference_precision`. With
    `checkpoint_root`, each model keeps checkpoints (the oracle's choice included) in a folder
    of its own there and resumes from them, so a run longer than a session can finish."""
    categories = discover(root)
    groups = [categories] if unified else [[c] for c in categories]
    detector_class = get_method(method)
    trained = "epochs" in detector_class.Config.__dataclass_fields__
    rows: dict[str, Any] = {}
    for group in groups:
        resumable = {}
        if checkpoint_root is not None and trained:
            folder = checkpoint_root / (group[0].name if len(group) == 1 else "unified")
            resumable = {"checkpoint_dir": str(folder), "resume": True}
        detector = detector_class(**settings, **resumable)
        oracle = None
        epoch_ends: list[float] = []  # when each epoch ended, less the oracle's scoring time
        if trained:
            test = [s for c in group for s in c.test]
            oracle = OracleSelection(test, every=every, epochs=detector.config.epochs)
            detector.epoch_end_callbacks += [
                oracle,
                lambda *_, ends=epoch_ends, o=oracle: ends.append(time.perf_counter() - o.seconds),
                *callbacks,
            ]
        start = time.perf_counter()
        detector.fit(group)
        fit_seconds = time.perf_counter() - start - (oracle.seconds if oracle else 0.0)
        shared = {
            "fit_seconds": fit_seconds,
            "train_images": sum(len(c.train) for c in group),
            "model_mb": _model_size_mb(detector),
            "training_info": dict(detector.training_info),
        }
        if trained:
            ran = len(epoch_ends)  # fewer than the schedule's epochs when resumed
            if ran < detector.config.epochs:
                shared["resumed_after_epoch"] = detector.config.epochs - ran
            if ran:
                shared["seconds_per_epoch"] = fit_seconds / ran
                fitted = round(shared["train_images"] * (1 - detector.config.val_fraction))
                steps = -(-fitted // detector.config.batch_size)
                shared["iterations_per_second"] = steps / shared["seconds_per_epoch"]
            if ran > 1:  # the steady epoch, without set-up (caches, pools)
                loop = (epoch_ends[-1] - epoch_ends[0]) / (ran - 1)
                shared["loop_seconds_per_epoch"] = loop
                shared["setup_seconds"] = fit_seconds - loop * ran
            shared["final_loss"] = detector.history[-1]
            # [epoch, I-AUROC + P-AUROC] at each scored epoch: how the run got where it ended
            shared["oracle_curve"] = [
                [epoch, entry["oracle"]]
                for epoch, entry in enumerate(detector.history, 1)
                if "oracle" in entry
            ]
        for category in group:
            result = evaluate_category(detector, category)
            rows[category.name] = dict(
                result.metrics, **shared, test_img_s=1.0 / result.seconds_per_image
            )
        trained_at = detector.config.inference_precision
        for precision in precisions:  # the same model, its threshold calibrated in float32
            detector.config.inference_precision = precision
            for category in group:
                result = evaluate_category(detector, category)
                rows[category.name].setdefault("precisions", {})[precision] = dict(
                    result.metrics, test_img_s=1.0 / result.seconds_per_image
                )
        detector.config.inference_precision = trained_at  # for the oracle rows below
        if oracle is not None and oracle.best_state is not None:
            oracle.restore(detector)
            for category in group:
                metrics = evaluate_category(detector, category).metrics
                rows[category.name]["oracle"] = dict(
                    metrics, selected_epoch=detector.training_info["selected_epoch"]
                )
        for category in group:
            row = rows[category.name]
            print(dataset, category.name, {k: round(row[k], 4) for k in COLUMNS}, flush=True)
    return rows


def _table(rows: dict[str, Any], oracle: bool) -> str:
    metrics = {
        name: {k: v for k, v in (row["oracle"] if oracle else row).items() if k in COLUMNS}
        for name, row in rows.items()
        if not oracle or "oracle" in row
    }
    return metrics_table_markdown(metrics, COLUMNS)


def _precision_table(rows: dict[str, Any]) -> str:
    """Each category's last-epoch metrics and test speed per inference precision, and means."""
    names = ["fp32", *next(iter(rows.values()))["precisions"]]
    keys = ("image_auroc", "pixel_auroc", "aupro", "threshold_f1")
    lines = [
        "| category | precision | I-AUROC | P-AUROC | AUPRO | threshold F1 | test img/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    per_precision = {
        name: {c: (row if name == "fp32" else row["precisions"][name]) for c, row in rows.items()}
        for name in names
    }
    for category in [*rows, "mean"] if len(rows) > 1 else rows:
        for name in names:
            got = per_precision[name]
            values = [
                np.mean([r[k] for r in got.values()]) if category == "mean" else got[category][k]
                for k in (*keys, "test_img_s")
            ]
            cells = " | ".join(f"{100 * v:.1f}" for v in values[:-1])
            lines.append(f"| {category} | {name} | {cells} | {values[-1]:.1f} |")
    return "\n".join(lines) + "\n"


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    sections = [f"# {payload['benchmark']}\n"]
    sections += [f"Command for {n}: `{c}`\n" for n, c in sorted(payload["commands"].items())]
    if "note" in payload:  # what was learnt about the file after it was written
        sections.append(f"Note: {payload['note']}.\n")
    for name, rows in payload["results"].items():
        first = next(iter(rows.values()))
        fit = np.mean([r["fit_seconds"] for r in rows.values()])
        speed = np.mean([r["test_img_s"] for r in rows.values()])
        timing = f"Training {fit:.0f} s per model"
        if "seconds_per_epoch" in first:
            epochs = payload["settings"][name].get("epochs")
            timing += f" ({first['seconds_per_epoch']:.2f} s per epoch, {epochs} epochs"
            if "iterations_per_second" in first:  # rows from before it was recorded lack it
                timing += f", {first['iterations_per_second']:.2g} it/s"
            timing += ")"
        timing += f"; model {first['model_mb']:.1f} MB; test {speed:.1f} img/s (batch 8, CPU)."
        sections.append(f"## {name}: last epoch (deployable)\n\n{_table(rows, False)}\n{timing}\n")
        if any("oracle" in r for r in rows.values()):
            picked = ", ".join(
                f"{c} {r['oracle']['selected_epoch']}" for c, r in rows.items() if "oracle" in r
            )
            sections.append(
                f"## {name}: ORACLE epoch (chosen on the test set, as the papers do)\n\n"
                f"{_table(rows, True)}\nEpochs picked: {picked}.\n"
            )
        if "precisions" in first:
            sections.append(
                f"## {name}: inference precision (the last epoch's model, threshold from "
                f"float32 scores)\n\n{_precision_table(rows)}\nTest img/s: the whole test "
                "loop (image decoding, batch 8), run one precision after another.\n"
            )
        notes = sorted({str(r["training_info"].get("non_faithful", "")) for r in rows.values()})
        notes = [n for n in notes if n]
        if notes:
            sections.append("Non-faithful parts of these runs: " + " | ".join(notes) + "\n")
        machine = payload["machines"][name]
        sections.append(
            f"Machine for {name}: {machine['processor']}, {machine['cpu_count']} CPUs, "
            f"torch {machine['torch']}, {machine['torch_threads']} torch threads.\n"
        )
    sections.append("Protocol: " + "; ".join(f"{k}: {v}" for k, v in payload["protocol"].items()))
    sections.append(
        "\nTraining and test times move with the host this shared 2-core machine lands on and "
        "with other jobs on its cores; compare them within a table, not across tables.\n"
    )
    write_text_atomic("\n".join(sections), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True)
    parser.add_argument("--preset", default=None, help="paper or fast (pbas, glass)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--unified", action="store_true", help="one model per dataset")
    parser.add_argument("--eval-every", type=int, default=5, help="oracle scoring interval")
    parser.add_argument("--set", nargs="*", default=[], help="extra settings key=json")
    parser.add_argument("--synth-dir", type=Path, default=Path("/tmp/anomap_bench_synth"))
    parser.add_argument(
        "--synth-test",
        type=int,
        nargs=2,
        default=(12, 4),
        metavar=("GOOD", "PER_DEFECT"),
        help="synth test images (anomap synth's defaults: 12 good, 4 per defect type); use "
        "a --synth-dir of its own for other counts",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--datasets", nargs="+", default=["synth", "shared"])
    parser.add_argument(
        "--precisions",
        nargs="*",
        default=[],
        help="also test the last epoch at these inference precisions (bf16, fp16); the file "
        "name gets them",
    )
    args = parser.parse_args()

    stem = "_".join(
        [f"accuracy_{args.method}"]
        + ([args.preset] if args.preset else [])
        + (["unified"] if args.unified else [])
        + args.precisions
    )
    previous_file = args.out / f"{stem}.json"
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
    results: dict = previous.get("results", {})
    commands: dict = previous.get("commands", {})
    used: dict = previous.get("settings", {})
    # files written before machines were kept per dataset have one "machine" for all
    machines: dict = previous.get("machines") or {n: previous["machine"] for n in results}
    command = "python benchmarks/accuracy_methods.py " + " ".join(sys.argv[1:])
    geometry = UNIAD_GEOMETRY if args.method == "uniad" else GEOMETRY
    good, defect = args.synth_test  # 256², 40 train images either way
    test_counts = "" if (good, defect) == (12, 4) else f", {good} good + {defect} per defect type"
    for name in args.datasets:
        if name == "synth":
            generate(args.synth_dir, n_test_good=good, n_test_defect=defect)
            root = args.synth_dir
        elif name == "shared" and SHARED.is_dir():
            root = SHARED
        else:
            continue
        settings: dict[str, Any] = dict(geometry[name])
        settings.update({k: v for k, v in (("preset", args.preset), ("epochs", args.epochs)) if v})
        for pair in args.set:
            key, _, value = pair.partition("=")
            settings[key] = json.loads(value)
        config_fields = get_method(args.method).Config.__dataclass_fields__
        if "preset" in config_fields:  # the tables name the preset even when it is the default
            settings.setdefault("preset", config_fields["preset"].default)
        results[name] = evaluate_groups(
            name,
            root,
            args.method,
            settings,
            args.unified,
            args.eval_every,
            precisions=tuple(args.precisions),
        )
        commands[name] = command
        used[name] = settings
        machines[name] = machine_info(resolve_device("cpu"))
    payload = {
        "benchmark": f"{args.method} accuracy"
        + (f" (preset {args.preset})" if args.preset else "")
        + (", ONE unified model per dataset" if args.unified else ", one model per category")
        + " (EfficientNet-Lite0, ImageNet weights)",
        "commands": commands,
        "settings": used,
        "protocol": {
            "synth": f"anomap synth defaults (seed 0){test_counts}; resize 256, centre crop 224 "
            "(UniAD: 224²)",
            "shared": "ball_screw: whole frame resized to 256×624, no crop",
            "threshold": "99th percentile of scores on 10 % of train held out (normal only)",
            "aupro": "standard MVTec AUPRO, FPR limit 0.3",
            "oracle": f"I-AUROC + P-AUROC on the test set every {args.eval_every} epochs",
        },
        "results": results,
        "machines": machines,
    }
    if "note" in previous:  # a note on the file's older rows stays with them
        payload["note"] = previous["note"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(payload, indent=2, default=float), args.out / f"{stem}.json")
    write_markdown(payload, args.out / f"{stem}.md")


if __name__ == "__main__":
    main()
