"""PatchCore fit time and peak memory as the training set grows (50, 100, 200, 400 images).

Each size runs in a fresh subprocess so its peak resident memory is its own. Writes
benchmarks/results/scaling.json, scaling.md and scaling.png. Run:
`python benchmarks/scaling.py [--sizes 50 100 200 400] [--coreset 0.1 0.01]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def fit_once(data: Path, count: int, coreset: float) -> dict:
    """In this process: fit PatchCore on the first `count` training images."""
    import torch

    from anomap.data.layouts import discover
    from anomap.methods.patchcore import PatchCore

    samples = list(discover(data)[0].train)[:count]
    start = time.perf_counter()
    model = PatchCore(coreset_ratio=coreset, val_fraction=0.0).fit(samples)
    seconds = time.perf_counter() - start
    return {
        "images": len(samples),
        "coreset_ratio": coreset,
        "fit_seconds": seconds,
        "memory_bank": int(model.memory_bank.shape[0]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


def plot(rows: list[dict], path: Path) -> None:
    """Two panels (fit seconds, peak MB) against images, one line per coreset ratio."""
    width, height, margin = 960, 400, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    ratios = sorted({r["coreset_ratio"] for r in rows}, reverse=True)
    max_images = max(r["images"] for r in rows)
    for panel, (key, title) in enumerate(
        (("fit_seconds", "fit time (s)"), ("peak_rss_mb", "peak memory (MB)"))
    ):
        left = panel * width // 2 + margin
        right, top, bottom = left + width // 2 - 2 * margin, 40, height - margin
        top_value = max(r[key] for r in rows) * 1.1
        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text((left, 12), title + " vs training images", fill="black")
        for k in range(5):
            value = top_value * k / 4
            y = bottom - (bottom - top) * k / 4
            draw.line((left - 4, y, left, y), fill="black")
            draw.text((left - 52, y - 6), f"{value:7.0f}", fill="black")
        for count in sorted({r["images"] for r in rows}):
            x = left + (right - left) * count / max_images
            draw.line((x, bottom, x, bottom + 4), fill="black")
            draw.text((x - 10, bottom + 8), str(count), fill="black")
        for colour, ratio in zip(COLOURS, ratios, strict=False):
            points = [
                (
                    left + (right - left) * r["images"] / max_images,
                    bottom - (bottom - top) * r[key] / top_value,
                )
                for r in sorted(rows, key=lambda r: r["images"])
                if r["coreset_ratio"] == ratio
            ]
            draw.line(points, fill=colour, width=3)
            for x, y in points:
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
            draw.text(
                (right - 110, top + 10 + 16 * ratios.index(ratio)),
                f"coreset {ratio:g}",
                fill=colour,
            )
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--coreset", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--data", type=Path, default=Path("/tmp/anomap_scaling_synth"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", nargs=2, metavar=("COUNT", "CORESET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(fit_once(args.data, int(args.child[0]), float(args.child[1]))))
        return

    from anomap.benchmark import machine_info
    from anomap.data.synth import generate
    from anomap.methods.base import resolve_device
    from anomap.report import write_text_atomic

    generate(args.data, ["woven_fabric"], n_train=max(args.sizes), n_test_good=1, n_test_defect=1)
    rows = []
    for coreset in args.coreset:
        for count in args.sizes:
            child = [sys.executable, __file__, "--data", str(args.data), "--child"]
            output = subprocess.run(
                [*child, str(count), str(coreset)], capture_output=True, text=True, check=True
            ).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    command = "python benchmarks/scaling.py " + " ".join(
        ["--sizes", *map(str, args.sizes), "--coreset", *map(str, args.coreset)]
    )
    payload = {
        "benchmark": "PatchCore fit time and peak memory vs training images",
        "command": command,
        "setup": "anomap synth woven_fabric at 256², resize 256 / crop 224, EfficientNet-Lite0, "
        "torch search, one subprocess per row",
        "rows": rows,
        "machine": machine_info(resolve_device("cpu")),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(payload, indent=2), args.out / "scaling.json")
    plot(rows, args.out / "scaling.png")
    lines = [
        f"{payload['setup']}.",
        "",
        "| images | coreset | memory bank | fit s | peak RSS MB | torch threads |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['images']} | {r['coreset_ratio']:g} | {r['memory_bank']} "
            f"| {r['fit_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['torch_threads']} |"
            for r in rows
        ),
        "",
        "![PatchCore scaling](../benchmarks/results/scaling.png)",
        "",
        f"Command: `{command}`",
    ]
    write_text_atomic("\n".join(lines) + "\n", args.out / "scaling.md")


if __name__ == "__main__":
    main()
