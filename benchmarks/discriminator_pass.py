"""The discriminator's training pass, which GLASS makes six times per batch and PBAS twice:
the reference's module sequence (Linear → BatchNorm1d on the batch → LeakyReLU → Linear →
Sigmoid) against anomap's (`Discriminator.batch_scores`: BatchNorm statistics taken in input
space, hidden layer + LeakyReLU + head as one operation), on the same weights and rows, in the
same process, rounds alternating. Two kinds of pass:
- "all rows": score a batch, backward into the rows and every parameter (PBAS's passes,
  GLASS's last and its focal pass);
- "ascent": GLASS's gradient ascent, which scores the synthetic rows g normalised with the
  statistics of [t; g] and needs only g's gradient; the module sequence runs on [t; g].

`--device cuda` runs it on a GPU (bfloat16 autocast always; files named ..._cuda), where a
batch of 8 images is bound by kernel launches rather than memory traffic.

Row counts: a batch of 8 images of the synth tables' geometry (224², 28×28 cells) and of
the real-data tables' (256×624, 32×78 cells); 152 dimensions (Lite0), hidden 1024. float32,
and bfloat16 autocast where the CPU has bfloat16 instructions (what `fast` trains with there).

Writes benchmarks/results/discriminator_pass.json and .md. Example:
  python benchmarks/discriminator_pass.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from anomap.allocator import retain_freed_memory
from anomap.benchmark import machine_info
from anomap.methods.base import native_bf16
from anomap.methods.simplenet_base import Discriminator, RowStatistics
from anomap.report import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
DIM, HIDDEN, IMAGES = 152, 1024, 8
GRIDS = {"synth 224²": (28, 28), "real 256×624": (32, 78)}


def module_pass(disc: Discriminator, rows: torch.Tensor) -> torch.Tensor:
    """The reference's order of modules, BatchNorm on the hidden layer's batch statistics."""
    return disc._activate(disc.norm(disc.hidden(rows)))


def all_rows(module: bool, disc: Discriminator, fixed: torch.Tensor, rows: torch.Tensor) -> None:
    scores = (
        module_pass(disc, rows) if module else disc.batch_scores(RowStatistics.of(rows), rows)[0]
    )
    scores.float().log().mean().backward()


def ascent(module: bool, disc: Discriminator, fixed: torch.Tensor, rows: torch.Tensor) -> None:
    """One ascent pass; t's statistics are taken here, though GLASS takes them once per step."""
    if module:
        scores = module_pass(disc, torch.cat([fixed, rows]))[len(fixed) :]
    else:
        batch = RowStatistics.of(fixed) + RowStatistics.of(rows)
        (scores,) = disc.batch_scores(batch, rows)
    torch.autograd.grad(scores.float().log().mean(), [rows])


PASSES: dict[str, Callable[..., None]] = {"all rows": all_rows, "ascent": ascent}


def timed(kind: str, module: bool, disc: Discriminator, rows: torch.Tensor, bf16: bool) -> float:
    """Seconds for one pass of `kind`, forward and backward (the GPU's queue drained)."""
    device = rows.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        PASSES[kind](module, disc, rows.detach(), rows)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(
    kind: str, cells: int, bf16: bool, rounds: int, device: torch.device
) -> dict[str, float]:
    torch.manual_seed(0)
    disc = Discriminator(DIM, HIDDEN).to(device).train()
    rows = torch.randn(IMAGES * cells, DIM, device=device, requires_grad=True)
    paths = {"module": True, "anomap": False}
    for module in paths.values():  # warm-up: allocator, oneDNN kernels
        timed(kind, module, disc, rows, bf16)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    ratios = []
    for _ in range(rounds):
        times = {name: timed(kind, module, disc, rows, bf16) for name, module in paths.items()}
        for name, value in times.items():
            seconds[name].append(value)
        ratios.append(times["anomap"] / times["module"])
    result = {f"{name}_ms": 1000 * statistics.median(v) for name, v in seconds.items()}
    return {**result, "ratio": statistics.median(ratios)}


def markdown(payload: dict) -> str:
    lines = [
        "# The discriminator's training pass: module sequence against anomap's",
        "",
        f"Command: `{payload['command']}`",
        "",
        "| pass | rows | precision | module ms | anomap ms | anomap ÷ module |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in payload["rows"]:
        lines.append(
            f"| {row['pass']} | {row['rows']} ({row['geometry']}) | {row['precision']} | "
            f"{row['module_ms']:.1f} | {row['anomap_ms']:.1f} | {row['ratio']:.2f} |"
        )
    machine = payload["machine"]
    lines += [
        "",
        f"One pass, forward and backward; {DIM} dimensions, hidden {HIDDEN}, {IMAGES} images "
        "per batch (the ascent's t and g have as many rows each); "
        f"medians of {payload['rounds']} "
        "alternating rounds, the ratio the median of per-round ratios. Same weights and rows "
        "for both; their values and gradients agree up to float rounding "
        "(tests/test_simplenet_base.py, tests/test_leaky_head.py).",
        "",
        f"Machine: {machine.get('gpu', machine['processor'])}, {machine['cpu_count']} CPUs, "
        f"{machine['torch_threads']} torch threads, torch {machine['torch']}, "
        f"bfloat16 instructions: {bool(machine['cpu_bf16'])}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        retain_freed_memory()  # as every detector on a CPU does
    precisions = {"float32": False, **({"bfloat16": True} if native_bf16(device) else {})}
    rows = []
    for kind in PASSES:
        for geometry, (height, width) in GRIDS.items():
            for precision, bf16 in precisions.items():
                result = measure(kind, height * width, bf16, args.rounds, device)
                row = {"pass": kind, "geometry": geometry, "rows": IMAGES * height * width}
                rows.append({**row, "precision": precision, **result})
                print(rows[-1], flush=True)
    command = "python benchmarks/discriminator_pass.py"
    if args.rounds != 15:
        command += f" --rounds {args.rounds}"
    stem = "discriminator_pass"
    if device.type != "cpu":
        command += f" --device {args.device}"
        stem += f"_{device.type}"
    payload = {"command": command, "rounds": args.rounds, "machine": machine_info(device)}
    payload["rows"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(payload, indent=2), args.out / f"{stem}.json")
    write_text_atomic(markdown(payload), args.out / f"{stem}.md")


if __name__ == "__main__":
    main()
