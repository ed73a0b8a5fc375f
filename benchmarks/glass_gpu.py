"""GLASS on one real category for the paper's full schedule (the `fast` preset), with short runs
of `paper` and of `fast` without mixed precision to compare epoch times on the same machine
(issue #4: "run one real category there for the full 640 epochs"). Made for a GPU; on a CPU
(`--device cpu`) it writes glass_cpu.json/.md instead, so the two never overwrite each other,
and `--geometry synth` adds `_synth` to the name. `--checkpoints DIR` makes runs resumable:
a CPU run of the full schedule takes hours, longer than a session, and a later call with the
same arguments continues it from its last checkpoint (the oracle's choice included).

Runs one after another, in the order given, so each has the card to itself; the results file
is rewritten after every run, so a run cut short loses only itself. Rows report the last
epoch (what anomap deploys) and the epoch an oracle picks on the test set (the papers'
protocol), labelled. Writes glass_gpu.json and .md. Example (on a machine with CUDA):
  python benchmarks/glass_gpu.py --data ../shared/data --runs paper:6 fast-fp32:6 fast:640
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from itertools import pairwise
from pathlib import Path
from typing import Any

from accuracy_methods import COLUMNS, GEOMETRY, ROOT, SHARED, evaluate_groups, geometry_text

from anomap.benchmark import machine_info
from anomap.methods.base import resolve_device
from anomap.report import write_text_atomic

# run name -> settings beyond geometry and epochs; mixed precision "auto" is bf16 autocast
# for `fast` where bf16 is native (a GPU, a CPU with AVX512-BF16 or AMX) and off for `paper`
# (the reference procedure runs in float32); `fast-fp32` and `fast-bf16` force either
RUNS: dict[str, dict[str, Any]] = {
    "paper": {"preset": "paper"},
    "fast": {"preset": "fast"},
    "fast-fp32": {"preset": "fast", "mixed_precision": "off"},
    "fast-bf16": {"preset": "fast", "mixed_precision": "bf16"},
}
TIMES = ("fit_seconds", "seconds_per_epoch", "loop_seconds_per_epoch", "setup_seconds")


def _progress(name: str, every: int, log: Path | None):
    """An epoch-end callback printing the epoch, its losses and the time since the first call,
    so a log shows how far a run cut short got and at what speed; with `log`, every epoch end
    is also appended there as a JSON line, the time record of a run resumed across processes."""
    start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def report(detector: Any, epoch: int, losses: dict[str, float]) -> None:
        done = epoch + 1
        if log is not None:
            entry = {"started": started, "categories": detector.categories, "epoch": done}
            entry["seconds"] = round(time.perf_counter() - start, 2)
            with log.open("a") as lines:
                lines.write(json.dumps(entry) + "\n")
        if done == 1 or done % every == 0 or done == detector.config.epochs:
            # `oracle`: test I-AUROC + P-AUROC, on the epochs the oracle scores
            loss = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
            seconds = time.perf_counter() - start
            print(f"{name}: epoch {done} at {seconds:.1f} s; {loss}", flush=True)

    return report


def _segments(log: Path, category: str) -> list[dict[str, Any]]:
    """The processes that trained `category` (more than one when resumed): when each
    started, its first and last epoch, its seconds to that last epoch end, and the median
    time between its epoch ends (robust to a pause or a busy stretch of a shared machine)."""
    ends: dict[str, list[dict[str, Any]]] = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["categories"] == [category]:
            ends.setdefault(entry["started"], []).append(entry)
    segments = []
    for started, entries in ends.items():
        gaps = [b["seconds"] - a["seconds"] for a, b in pairwise(entries)]
        segment = {
            "started": started,
            "first_epoch": entries[0]["epoch"],
            "last_epoch": entries[-1]["epoch"],
            "seconds": entries[-1]["seconds"],
        }
        if gaps:
            segment["median_epoch_seconds"] = statistics.median(gaps)
        segments.append(segment)
    return segments


def run(
    name: str,
    epochs: int,
    data: Path,
    every: int,
    device: str,
    geometry: str,
    checkpoints: Path | None = None,
) -> dict[str, Any]:
    settings = dict(GEOMETRY[geometry], **RUNS[name], epochs=epochs, seed=0, device=device)
    every = min(every, epochs)
    root = log = None
    if checkpoints is not None:
        root = checkpoints / f"{name}_{epochs}"
        root.mkdir(parents=True, exist_ok=True)
        log = root / "progress.jsonl"
    rows = evaluate_groups(
        geometry,
        data,
        "glass",
        settings,
        False,
        every,
        callbacks=(_progress(name, every, log),),
        checkpoint_root=root,
    )
    keep = (*COLUMNS, *TIMES, "test_img_s", "train_images", "resumed_after_epoch", "oracle_curve")
    return {
        "run": name,
        "settings": settings,
        "categories": {
            category: {
                **{k: row[k] for k in keep if k in row},
                "precision": row["training_info"].get("precision", "float32"),
                "oracle": row.get("oracle"),
                **({"segments": _segments(log, category)} if log else {}),
            }
            for category, row in rows.items()
        },
    }


def _segments_text(run: str, category: str, row: dict[str, Any]) -> str:
    """A run resumed across processes, in words: the row's times are its last process's."""
    parts = []
    for segment in row["segments"]:
        median = segment.get("median_epoch_seconds")
        parts.append(
            f"epochs {segment['first_epoch']}–{segment['last_epoch']} in "
            f"{segment['seconds']:.0f} s (started {segment['started']}"
            + (f", median epoch {median:.1f} s)" if median is not None else ")")
        )
    total = sum(s["seconds"] for s in row["segments"])
    return (
        f"{run} on {category} was trained by {len(parts)} processes, each resuming from the "
        f"last checkpoint of the one before: {'; '.join(parts)}. Their wall time sums to "
        f"{total:.0f} s, oracle scoring and epochs redone after a restart included; the row's "
        "times are the last process's.\n"
    )


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    machine = payload["machine"]
    geometry = payload.get("geometry", "shared")  # files before the option: ball_screw
    lines = [
        f"# {payload['benchmark']}\n",
        f"Command: `{payload['command']}`\n",
        *([f"Note: {payload['note']}.\n"] if "note" in payload else []),
        f"Machine: {machine.get('gpu', machine['device'])}, torch {machine['torch']}, "
        f"{machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads.\n",
        "| run | category | precision | epochs | I-AUROC | P-AUROC | AUPRO | oracle I-AUROC "
        "(epoch) | oracle P-AUROC | oracle AUPRO | s/epoch | steady s/epoch | set-up s "
        "| total s | test img/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    steady: dict[str, float] = {}
    precision: dict[str, str] = {}
    resumed: list[str] = []
    for entry in payload["runs"]:
        for category, row in entry["categories"].items():
            oracle = row.get("oracle") or {}
            picked = (
                f"{100 * oracle['image_auroc']:.1f} ({oracle['selected_epoch']})" if oracle else "–"
            )
            others = [f"{100 * oracle[k]:.1f}" if oracle else "–" for k in ("pixel_auroc", "aupro")]
            lines.append(
                f"| {entry['run']} | {category} | {row['precision']} "
                f"| {entry['settings']['epochs']} | {100 * row['image_auroc']:.1f} "
                f"| {100 * row['pixel_auroc']:.1f} | {100 * row['aupro']:.1f} | {picked} "
                f"| {' | '.join(others)} | {row.get('seconds_per_epoch', float('nan')):.2f} "
                f"| {row.get('loop_seconds_per_epoch', float('nan')):.2f} "
                f"| {row.get('setup_seconds', float('nan')):.1f} | {row['fit_seconds']:.0f} "
                f"| {row['test_img_s']:.1f} |"
            )
            if "loop_seconds_per_epoch" in row:
                steady[entry["run"]] = row["loop_seconds_per_epoch"]
                precision[entry["run"]] = row["precision"]
            if len(row.get("segments", [])) > 1:
                resumed.append(_segments_text(entry["run"], category, row))
    lines.append("")
    lines += resumed
    if "paper" in steady and "fast" in steady:
        lines.append(
            f"Steady epoch, fast ÷ paper: {steady['fast'] / steady['paper']:.3f}× "
            f"({steady['fast']:.2f} against {steady['paper']:.2f} s)."
        )
    fast = [run for run in steady if run.startswith("fast")]
    low = [run for run in fast if precision[run] != "float32"]
    full = [run for run in fast if precision[run] == "float32"]
    if low and full:  # which runs these are depends on the device and on "auto"
        lines.append(
            f"Steady epoch, fast with bf16 autocast ({low[0]}) ÷ fast in float32 ({full[0]}): "
            f"{steady[low[0]] / steady[full[0]]:.3f}× ({steady[low[0]]:.2f} against "
            f"{steady[full[0]]:.2f} s)."
        )
    lines += [
        "",
        f"Geometry as the CPU accuracy tables' {geometry} rows "
        f"({geometry_text(GEOMETRY[geometry])}). Metrics of the last epoch (deployable); "
        "oracle columns: the epoch with the best I-AUROC + P-AUROC on the test set, scored "
        "every `--eval-every` epochs, as the papers select. "
        "Steady s/epoch: between the first and last epoch ends, without set-up (feature and "
        "view caches) or oracle scoring. Runs ran one after another on the same machine.",
    ]
    write_text_atomic("\n".join(lines) + "\n", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=SHARED, help="dataset root (MVTec layout)")
    parser.add_argument(
        "--runs", nargs="+", default=["paper:6", "fast-fp32:6", "fast:640"], help="name:epochs"
    )
    parser.add_argument("--eval-every", type=int, default=20, help="oracle scoring interval")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--geometry",
        choices=sorted(GEOMETRY),
        default="shared",
        help="input geometry of the accuracy tables' rows of that dataset",
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="keep each run's checkpoints (and an epoch log) under this folder and resume "
        "from them, so a run longer than one session finishes over several calls",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    plan = [(name, int(epochs)) for name, _, epochs in (r.partition(":") for r in args.runs)]
    unknown = sorted({name for name, _ in plan} - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {sorted(RUNS)}")
    device = resolve_device(args.device)
    where = "a GPU" if device.type == "cuda" else "the CPU"
    stem = "glass_gpu" if device.type == "cuda" else "glass_cpu"
    if args.geometry != "shared":  # the real data's file keeps the plain name
        stem += f"_{args.geometry}"
    payload: dict[str, Any] = {
        "benchmark": f"GLASS on {where}: fast for the full schedule, paper and fast-fp32 timed",
        "command": "python benchmarks/glass_gpu.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(device),
        "geometry": args.geometry,
        "runs": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, epochs in plan:
        try:
            payload["runs"].append(
                run(
                    name,
                    epochs,
                    args.data,
                    args.eval_every,
                    args.device,
                    args.geometry,
                    args.checkpoints,
                )
            )
        except Exception:  # one broken run must not cost the others their time on the card
            traceback.print_exc()
            payload.setdefault("failed", []).append(f"{name}:{epochs}")
            continue
        write_text_atomic(json.dumps(payload, indent=2, default=float), args.out / f"{stem}.json")
        write_markdown(payload, args.out / f"{stem}.md")


if __name__ == "__main__":
    main()
