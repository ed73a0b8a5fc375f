"""Training in float32 against bfloat16 autocast on the CPU, for the `fast` preset of PBAS and
GLASS and for UniAD over several seeds: does bfloat16 change the accuracy, and how much time
does it save?

On CPUs with bfloat16 instructions (AVX512-BF16, AMX) the adaptor's and discriminator's matrix
products, most of a `fast` epoch, run in about half the time; this measures whether the
rounding costs accuracy, paired by seed (both precisions start from the same seed). Each
(method, precision, seed) job trains one model per synth category (UniAD: one for all of
them) in one of `--jobs` worker processes with one torch thread each, alternating precisions
so both see the same load. Metrics are the last epoch's (what anomap deploys).

Writes benchmarks/results/training_precision.json and .md for the default methods (GLASS and
PBAS), training_precision_uniad.* for `--methods uniad`. Examples:
  python benchmarks/training_precision.py --seeds 0 1 2 --jobs 2
  python benchmarks/training_precision.py --seeds 0 1 2 --jobs 2 --methods uniad
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from accuracy_methods import GEOMETRY, ROOT, UNIAD_GEOMETRY, evaluate_groups, geometry_text

from anomap.benchmark import machine_info
from anomap.data.synth import generate
from anomap.methods.base import resolve_device
from anomap.report import write_text_atomic

PRECISIONS = {"float32": "off", "bfloat16": "bf16"}  # name -> mixed_precision setting
EPOCHS = {"pbas": 30, "glass": 10, "uniad": 20}  # the CPU accuracy tables' schedules
DEFAULT_METHODS = ["glass", "pbas"]
KEPT = ("image_auroc", "pixel_auroc", "aupro", "loop_seconds_per_epoch")


def method_settings(method: str) -> tuple[dict[str, Any], bool]:
    """The accuracy tables' synth settings for `method`, and whether it trains one model for
    all categories (UniAD) rather than one per category (the `fast` preset of the others)."""
    if method == "uniad":
        return dict(UNIAD_GEOMETRY["synth"]), True
    return dict(GEOMETRY["synth"], preset="fast"), False


def setup_text(method: str) -> str:
    """`method_settings` in words, for the table's notes."""
    settings, unified = method_settings(method)
    parts = [geometry_text(settings)]
    if "preset" in settings:
        parts.append(f"preset {settings['preset']}")
    parts.append("one model for all categories" if unified else "one model per category")
    return ", ".join(parts)


def train_and_test(method: str, precision: str, seed: int, root: str, epochs: int) -> dict:
    """One job in a worker process: one model per category."""
    import torch

    torch.set_num_threads(1)
    settings, unified = method_settings(method)
    settings.update(epochs=epochs, seed=seed, mixed_precision=PRECISIONS[precision])
    # the oracle scores once, at the last epoch, so it adds no selection of its own
    rows = evaluate_groups("synth", Path(root), method, settings, unified, epochs)
    return {
        "method": method,
        "precision": precision,
        "seed": seed,
        "epochs": epochs,
        "machine": machine_info(resolve_device("cpu")),
        "categories": {name: {k: row[k] for k in KEPT} for name, row in rows.items()},
    }


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Per method and precision: category means per seed, their mean and spread; then the
    paired bfloat16 − float32 differences and the steady-epoch time ratio."""
    summary: dict[str, Any] = {}
    for method in sorted({r["method"] for r in runs}):
        means: dict[str, dict[int, dict[str, float]]] = {}
        for precision in PRECISIONS:
            means[precision] = {
                r["seed"]: {
                    k: statistics.fmean(c[k] for c in r["categories"].values()) for k in KEPT
                }
                for r in runs
                if r["method"] == method and r["precision"] == precision
            }
        seeds = sorted(set(means["float32"]) & set(means["bfloat16"]))
        paired = [
            100 * (means["bfloat16"][s]["image_auroc"] - means["float32"][s]["image_auroc"])
            for s in seeds
        ]
        times = {
            p: statistics.fmean(m[s]["loop_seconds_per_epoch"] for s in seeds)
            for p, m in means.items()
        }
        summary[method] = {
            "epochs": next(r["epochs"] for r in runs if r["method"] == method),
            "per_seed": {p: {str(s): m[s] for s in seeds} for p, m in means.items()},
            "mean": {
                p: {k: statistics.fmean(m[s][k] for s in seeds) for k in KEPT}
                for p, m in means.items()
            },
            "paired_image_auroc_pt": paired,
            "paired_mean_pt": statistics.fmean(paired),
            "paired_sd_pt": statistics.stdev(paired) if len(paired) > 1 else 0.0,
            "steady_epoch_ratio": times["bfloat16"] / times["float32"],
        }
    return summary


def _points(difference: float) -> str:
    """A signed difference in points to 0.1, with one that rounds to zero written ±0.0."""
    text = f"{difference:+.1f}"
    return "±0.0" if text in ("+0.0", "-0.0") else text


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    lines = [f"# {payload['benchmark']}", "", f"Command: `{payload['command']}`", ""]
    lines += [
        "| method | epochs | precision | I-AUROC per seed | I-AUROC | P-AUROC | AUPRO "
        "| steady s/epoch |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for method, entry in payload["summary"].items():
        for precision, mean in entry["mean"].items():
            seeds = entry["per_seed"][precision]
            per_seed = ", ".join(f"{100 * v['image_auroc']:.1f}" for v in seeds.values())
            lines.append(
                f"| {method} | {entry['epochs']} | {precision} | {per_seed} "
                f"| {100 * mean['image_auroc']:.1f} | {100 * mean['pixel_auroc']:.1f} "
                f"| {100 * mean['aupro']:.1f} | {mean['loop_seconds_per_epoch']:.2f} |"
            )
    lines.append("")
    for method, entry in payload["summary"].items():
        paired = ", ".join(_points(d) for d in entry["paired_image_auroc_pt"])
        spread = entry["paired_sd_pt"] / len(entry["paired_image_auroc_pt"]) ** 0.5
        low, full = entry["mean"]["bfloat16"], entry["mean"]["float32"]
        lines.append(
            f"- {method}: bfloat16 − float32 = {_points(entry['paired_mean_pt'])} pt I-AUROC "
            f"(per seed {paired}; the mean is known to about ±{spread:.1f} pt), "
            f"{_points(100 * (low['pixel_auroc'] - full['pixel_auroc']))} pt P-AUROC, "
            f"{_points(100 * (low['aupro'] - full['aupro']))} pt AUPRO; a steady epoch takes "
            f"{entry['steady_epoch_ratio']:.2f}× float32's time."
        )
    machine = payload["machine"]
    lines += [
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"bfloat16 instructions: {payload['cpu_bf16']}; {payload['jobs']} job(s) at once, "
        "1 torch thread each. Synth categories (anomap synth defaults); "
        + "; ".join(f"{m}: {setup_text(m)}" for m in payload["summary"])
        + ". Metrics of the last epoch, means over categories (and seeds); steady s/epoch: "
        "between the first and last epoch ends.",
        "",
    ]
    write_text_atomic("\n".join(lines), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=sorted(EPOCHS))
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, 1 thread each")
    parser.add_argument("--synth-dir", type=Path, default=Path("/tmp/anomap_bench_synth"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    methods = sorted(args.methods)
    stem, command = "training_precision", "python benchmarks/training_precision.py --seeds "
    command += f"{' '.join(map(str, args.seeds))} --jobs {args.jobs}"
    if methods != DEFAULT_METHODS:
        stem += "_" + "_".join(methods)
        command += f" --methods {' '.join(methods)}"
    generate(args.synth_dir)
    import torch

    jobs = [
        (method, precision, seed, str(args.synth_dir), EPOCHS[method])
        for method in args.methods
        for seed in args.seeds
        for precision in PRECISIONS
    ]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        runs = list(pool.map(train_and_test, *zip(*jobs, strict=True)))
    payload = {
        "benchmark": "Training precision on the CPU: float32 against bfloat16 autocast",
        "command": command,
        "jobs": args.jobs,
        "cpu_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "summary": summarise(runs),
        "runs": runs,
        "machine": runs[0]["machine"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(payload, indent=2), args.out / f"{stem}.json")
    write_markdown(payload, args.out / f"{stem}.md")


if __name__ == "__main__":
    main()
