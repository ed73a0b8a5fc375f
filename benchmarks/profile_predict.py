"""Where a method's predict path spends what its bare backbone does not (issue 7).

`anomap bench` gives each method's throughput as a ratio of its backbone's; this script says
which operators make up the difference. It fits the speed benchmark's variants
(`fit_speed_variants`: same generated data, size and settings), then runs torch's profiler over
`predict_tensor` and over the bare backbone on the same batch, and lists per operator the time
per batch of each and what the method adds. Self time: device time on a GPU (kernels), CPU
time on a CPU. `python benchmarks/profile_predict.py [--methods patchcore] [--batch 32]
[--device cuda] [--steps 10] [--precision bf16] [--out DIR]` writes
DIR/profile_<device>[_<precision>].json and .md; a reduced precision profiles the model at that
`inference_precision` against its backbone under the same autocast, as `anomap bench` times them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from anomap.benchmark import _autocast, _synchronised, fit_speed_variants, machine_info
from anomap.methods.base import PRECISIONS, resolve_device
from anomap.report import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
SHOWN = 15  # operators listed per variant; the rest are summed in one row
WARM_UP = 3


def wall_ms(fn: Callable[[], Any], steps: int) -> float:
    """Milliseconds per call of a synchronised `fn` without the profiler, after warm-up."""
    for _ in range(WARM_UP):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) * 1000 / steps


def operator_ms(fn: Callable[[], Any], steps: int, device: torch.device) -> dict[str, dict]:
    """Per operator: calls and self milliseconds per call of a synchronised `fn`, under
    torch's profiler."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    for _ in range(WARM_UP):
        fn()
    with profile(activities=activities) as recorded:
        for _ in range(steps):
            fn()
    operators = {}
    for event in recorded.key_averages():
        micros = (
            event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        )
        if micros > 0:
            operators[event.key] = {"calls": event.count / steps, "ms": micros / 1000 / steps}
    return operators


def profile_variant(
    detector: Any, batch: int, size: int, steps: int, device: torch.device, precision: str
) -> dict:
    images = torch.randn(batch, 3, size, size, device=device)
    detector.config.inference_precision = precision

    def backbone_only() -> Any:
        with torch.inference_mode():
            return detector.backbone(images)

    bare = _synchronised(_autocast(backbone_only, device, PRECISIONS[precision]), device)
    predict = _synchronised(lambda: detector.predict_tensor(images), device)
    return {
        "backbone_wall_ms": wall_ms(bare, steps),
        "predict_wall_ms": wall_ms(predict, steps),
        "backbone_ops": operator_ms(bare, steps, device),
        "predict_ops": operator_ms(predict, steps, device),
    }


def markdown(payload: dict[str, Any]) -> str:
    unit = "device (kernel)" if payload["device"] == "cuda" else "CPU"
    lines = [
        "# Where the predict path's time goes, against the bare backbone "
        f"({payload['device']}, {payload.get('precision', 'fp32')})",
        "",
        f"Command: `{payload['command']}`",
        "",
        *([f"Note: {payload['note']}", ""] if payload.get("note") else []),
        f"Batch {payload['batch']}, {payload['size']}², {payload['steps']} profiled calls each. "
        f"Self {unit} milliseconds per batch, per operator, summed over its calls; 'added' is "
        "the predict path's time minus the backbone's for that operator. Wall times are "
        "measured without the profiler, which slows small operators.",
        "",
    ]
    for label, run in payload["variants"].items():
        backbone, predict = run["backbone_ops"], run["predict_ops"]
        rows = []
        for name in set(backbone) | set(predict):
            own = predict.get(name, {"ms": 0.0, "calls": 0.0})
            base = backbone.get(name, {"ms": 0.0})
            rows.append((own["ms"] - base["ms"], name, own["calls"], own["ms"], base["ms"]))
        rows.sort(key=lambda r: -abs(r[0]))
        wall_b, wall_p = run["backbone_wall_ms"], run["predict_wall_ms"]
        lines += [
            f"## {label}",
            "",
            f"Wall: predict {wall_p:.2f} ms, backbone {wall_b:.2f} ms per batch "
            f"(ratio {wall_b / wall_p:.2f}). Profiled self time: predict "
            f"{sum(o['ms'] for o in predict.values()):.2f} ms, backbone "
            f"{sum(o['ms'] for o in backbone.values()):.2f} ms.",
            "",
            "| operator | calls | predict ms | backbone ms | added ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for added, name, calls, own, base in rows[:SHOWN]:
            lines.append(f"| `{name}` | {calls:g} | {own:.3f} | {base:.3f} | {added:+.3f} |")
        rest = rows[SHOWN:]
        if rest:
            lines.append(
                f"| {len(rest)} others | – | {sum(r[3] for r in rest):.3f} | "
                f"{sum(r[4] for r in rest):.3f} | {sum(r[0] for r in rest):+.3f} |"
            )
        lines.append("")
    machine = payload["machine"]
    lines.append(
        f"Machine: {machine.get('gpu') or machine['processor']}, torch {machine['torch']}, "
        f"{machine['torch_threads']} torch threads."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["patchcore"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--note", default="", help="recorded with the results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        detectors = fit_speed_variants(args.methods, args.size, device, args.n_train, Path(tmp))
    if not detectors:
        parser.error(f"no speed variant of {args.methods}")
    variants = {
        label: profile_variant(detector, args.batch, args.size, args.steps, device, args.precision)
        for label, detector in detectors.items()
    }
    payload = {
        "benchmark": "per-operator profile of the predict path against the bare backbone",
        "command": shlex.join(["python", "benchmarks/profile_predict.py", *sys.argv[1:]]),
        "device": device.type,
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "precision": args.precision,
        "variants": variants,
        "machine": machine_info(device),
        "note": args.note,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    stem = args.out / f"profile_{device.type}{suffix}"
    write_text_atomic(json.dumps(payload, indent=2), stem.with_suffix(".json"))
    write_text_atomic(markdown(payload), stem.with_suffix(".md"))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
