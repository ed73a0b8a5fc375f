"""PatchCore accuracy on every `anomap synth` category and on ../shared/data (when present).

Writes benchmarks/results/accuracy_patchcore.json and .md. Run: `make bench-accuracy`, or
`python benchmarks/accuracy_patchcore.py [--coreset 0.1 0.01] [--synth-dir DIR]`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from anomap.benchmark import machine_info
from anomap.data.layouts import discover
from anomap.data.synth import generate
from anomap.evaluation import evaluate_category
from anomap.methods.base import resolve_device
from anomap.methods.patchcore import PatchCore
from anomap.report import metrics_table_markdown, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "threshold_f1")

# Wide strips (1130×460): the paper's 256/224 centre crop would drop two thirds of each image
# and the defects in it, so real data is scored on the whole frame, aspect kept.
REAL_PREPROCESS = {"ball_screw": {"resize": (256, 624), "crop": None}}


def run(dataset: str, root: Path, coreset: float, preprocess: dict) -> dict:
    rows = {}
    for category in discover(root):
        settings = dict(preprocess.get(category.name, {}))
        start = time.perf_counter()
        model = PatchCore(coreset_ratio=coreset, **settings).fit(category)
        fit_seconds = time.perf_counter() - start
        result = evaluate_category(model, category)
        rows[category.name] = dict(
            result.metrics,
            fit_seconds=fit_seconds,
            test_img_s=1.0 / result.seconds_per_image,
            memory_bank=int(model.memory_bank.shape[0]),
            model_mb=model.memory_bank.numel() * model.memory_bank.element_size() / 2**20,
            train_images=len(category.train),
            test_images=len(category.test),
            input=list(model.preprocess.output_size)
            if model.preprocess.crop or not isinstance(model.preprocess.resize, int)
            else None,
        )
        print(
            dataset, category.name, coreset, {k: round(rows[category.name][k], 4) for k in COLUMNS}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--coreset", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--synth-dir", type=Path, default=Path("/tmp/anomap_bench_synth"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["synth", "shared"],
        choices=["synth", "shared"],
        help="Re-run only these; the others keep their rows from the existing results file.",
    )
    args = parser.parse_args()

    command = "python benchmarks/accuracy_patchcore.py " + " ".join(
        ["--coreset", *map(str, args.coreset), "--datasets", *args.datasets]
    )
    previous_file = args.out / "accuracy_patchcore.json"
    previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
    results: dict = previous.get("results", {})
    commands: dict = previous.get("commands", {})
    machines: dict = previous.get("machines", {})
    datasets = {}
    if "synth" in args.datasets:
        generate(args.synth_dir)  # defaults: 256², 40 train, 12 good + 4 per defect type
        datasets["synth"] = (args.synth_dir, {})
    if "shared" in args.datasets and SHARED.is_dir():
        datasets["shared"] = (SHARED, REAL_PREPROCESS)
    for coreset in args.coreset:
        for name, (root, preprocess) in datasets.items():
            results.setdefault(f"coreset {coreset:g}", {})[name] = run(
                name, root, coreset, preprocess
            )
            commands[name] = command
            machines[name] = machine_info(resolve_device("cpu"))

    payload = {
        "benchmark": "PatchCore accuracy (EfficientNet-Lite0, ImageNet weights)",
        "commands": commands,
        "protocol": {
            "synth": "anomap synth defaults (seed 0); resize 256, centre crop 224",
            "shared": "ball_screw: whole frame resized to 256×624, no crop",
            "threshold": "99th percentile of scores on 10 % of train held out (normal only)",
            "aupro": "standard MVTec AUPRO, FPR limit 0.3",
        },
        "results": results,
        "machines": machines,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        json.dumps(payload, indent=2, default=float), args.out / "accuracy_patchcore.json"
    )
    write_markdown(payload, args.out / "accuracy_patchcore.md")


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    sections = [f"# {payload['benchmark']}\n"]
    commands = payload["commands"]
    sections += [f"Command for {name}: `{cmd}`\n" for name, cmd in sorted(commands.items())]
    for variant, per_dataset in payload["results"].items():
        for name, rows in per_dataset.items():
            metrics = {c: {k: v for k, v in r.items() if k in COLUMNS} for c, r in rows.items()}
            fit = np.mean([r["fit_seconds"] for r in rows.values()])
            speed = np.mean([r["test_img_s"] for r in rows.values()])
            sections.append(
                f"## {name}, {variant}\n\n"
                + metrics_table_markdown(metrics, COLUMNS)
                + f"\nMean fit time {fit:.1f} s per category; test {speed:.1f} img/s "
                "(batch 8, CPU, image decoding included).\n"
            )
    sections.append("Protocol: " + "; ".join(f"{k}: {v}" for k, v in payload["protocol"].items()))
    for name, machine in sorted(payload["machines"].items()):
        sections.append(
            f"Machine for {name}: {machine['processor']}, {machine['cpu_count']} CPUs, "
            f"torch {machine['torch']}, torch threads: {machine['torch_threads']}.\n"
        )
    write_text_atomic("\n".join(sections), path)


if __name__ == "__main__":
    main()
