"""Speed of the full inference path, measured against the bare backbone in the same run.

The ratio (method img/s ÷ backbone img/s) is the number that matters: it says how close to
the cost of the feature extractor alone a method runs, independent of the machine.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def _throughput(fn: Callable[[], Any], batch: int, min_seconds: float, min_runs: int) -> float:
    """Images per second of `fn` on one batch, after two warm-up calls."""
    for _ in range(2):
        fn()
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_speed_benchmark(
    out: Path,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    coreset_ratios: Sequence[float] = (0.1, 0.01),
    size: int = 224,
    device: str = "auto",
    n_train: int = 100,
    min_seconds: float = 3.0,
) -> dict[str, Any]:
    """Fit PatchCore (once per coreset ratio) on a generated category of `n_train` good
    images, then time `predict_tensor` (features, aggregation, search, re-weighting,
    upsampling, blur) and the backbone alone on the same preprocessed batches.
    Writes speed_patchcore_<device>.json/.md."""
    from anomap.data.synth import generate
    from anomap.methods.base import resolve_device
    from anomap.methods.patchcore import PatchCore

    torch_device = resolve_device(device)
    resize = size + size // 7  # the paper's 256 -> 224 ratio
    detectors = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = generate(
            tmp,
            ["woven_fabric"],
            image_size=resize,
            n_train=n_train,
            n_test_good=1,
            n_test_defect=1,
        )[0]
        for ratio in coreset_ratios:
            detectors[ratio] = PatchCore(
                device=str(torch_device), resize=resize, crop=size, coreset_ratio=ratio
            ).fit(folder)
    backbone = next(iter(detectors.values())).backbone
    rows = []
    for batch in batch_sizes:
        images = torch.randn(batch, 3, size, size, device=torch_device)

        def bare(images=images):
            with torch.inference_mode():
                return backbone(images)

        base = _throughput(bare, batch, min_seconds, 3)
        for ratio, detector in detectors.items():
            method = _throughput(
                lambda d=detector, x=images: d.predict_tensor(x), batch, min_seconds, 3
            )
            rows.append(
                {
                    "batch": batch,
                    "coreset_ratio": ratio,
                    "memory_bank": list(detector.memory_bank.shape),
                    "backbone_img_s": base,
                    "patchcore_img_s": method,
                    "ratio": method / base,
                }
            )
    result = {
        "benchmark": "inference speed: PatchCore predict path vs bare backbone, same run",
        "command": f"anomap bench --batch-sizes {','.join(map(str, batch_sizes))} "
        f"--size {size} --device {device}",
        "backbone": backbone.spec.name,
        "input": [3, size, size],
        "train_images": n_train,
        "rows": rows,
        "peak_memory_mb": _peak_memory_mb(torch_device),
        "machine": machine_info(torch_device),
    }
    lines = [
        f"PatchCore ({backbone.spec.name}, {size}², {n_train} training images) "
        f"on {torch_device.type}",
        "",
        "| batch | coreset | bank | backbone img/s | PatchCore img/s | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['batch']} | {r['coreset_ratio']:g} | {r['memory_bank'][0]} "
            f"| {r['backbone_img_s']:.1f} | {r['patchcore_img_s']:.1f} | {r['ratio']:.2f} |"
            for r in rows
        ),
        "",
        f"Peak memory (process): {result['peak_memory_mb']:.0f} MB. Command: `{result['command']}`",
    ]
    markdown = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"speed_patchcore_{torch_device.type}"
    from anomap.report import write_text_atomic

    write_text_atomic(json.dumps(result, indent=2), stem.with_suffix(".json"))
    write_text_atomic(markdown, stem.with_suffix(".md"))
    return {"json": result, "markdown": markdown}
