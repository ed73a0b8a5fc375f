"""anomap against anomalib over several seeds (issue 7): is a gap larger than seed noise?

Runs `compare_anomalib.py` once per seed (the seed drives both tools' training, coreset starts
and synthesis draws) with the same forwarded options, and reports each metric per side as
mean ± sd over the seeds, and the paired difference anomap − anomalib with its per-seed
values. Run from the anomalib venv, options after `--` go to compare_anomalib.py:

    .venv-anomalib/bin/python benchmarks/compare_seeds.py --seeds 0 1 2 --jobs 2 \
        -- --datasets synth --methods glass --synth-dir DIR

`--jobs J` runs J seeds at once, each with cpu_count // J torch threads (unless
OMP_NUM_THREADS is set), so their timings are not comparable with a run alone; the costs
columns of a single-seed `compare_anomalib.md` are the ones to read for speed.
Writes OUT/compare_seeds.json and .md; each seed's own files stay in OUT/seed_<n>/.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare_anomalib import ACCURACY, SIDES  # noqa: E402
from compare_anomalib import parse_args as compare_args  # noqa: E402

from anomap.report import write_text_atomic  # noqa: E402

TITLE = "anomap vs anomalib 2.7.0 over seeds: mean ± sd, and the paired difference"


def run_seed(seed: int, forwarded: list[str], out: Path, threads: int | None) -> dict[str, Any]:
    """One compare_anomalib.py run; its JSON (with the rows it kept from an earlier run in
    `out`), or why it wrote none."""
    env = dict(os.environ)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    command = [sys.executable, str(HERE / "compare_anomalib.py"), *forwarded]
    command += ["--seed", str(seed), "--out", str(out)]
    result = out / "compare_anomalib.json"  # merged into when present, so check it was written
    before = result.stat().st_mtime_ns if result.is_file() else None
    with (out.parent / f"seed_{seed}.log").open("w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if not result.is_file() or result.stat().st_mtime_ns == before:
        return {"error": f"no new results; see seed_{seed}.log"}
    return json.loads(result.read_text())


def spread(values: list[float]) -> dict[str, Any]:
    """Mean and sample sd (0 for one value) of some fractions."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "values": values}


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """dataset → category → method → metric → each side's spread and the paired difference,
    over the seeds where both sides produced the metric."""
    summary: dict[str, Any] = {}
    for seed, payload in per_seed.items():
        for dataset, categories in payload.get("results", {}).items():
            for category, methods in categories.items():
                for method, rows in methods.items():
                    slot = summary.setdefault(dataset, {}).setdefault(category, {})
                    slot = slot.setdefault(method, {"seeds": [], "pairs": {}})
                    values = {side: rows.get(side, {}) for side in SIDES}
                    # a skipped method, a failed worker or a side not run (--sides)
                    if "skipped" in rows or any("error" in v or not v for v in values.values()):
                        continue
                    slot["seeds"].append(seed)
                    for key, _ in ACCURACY:
                        pair = [values[side].get(key) for side in SIDES]
                        slot["pairs"].setdefault(key, []).append(pair)
    for methods in (m for cats in summary.values() for m in cats.values()):
        for slot in methods.values():
            for key, pairs in slot.pop("pairs").items():
                sides = {side: spread([p[i] for p in pairs]) for i, side in enumerate(SIDES)}
                sides["difference"] = spread([a - b for a, b in pairs])
                slot[key] = sides
    return summary


def _cell(stats: dict[str, Any], signed: bool = False) -> str:
    mean, sd = 100 * stats["mean"], 100 * stats["sd"]
    return f"{mean:+.1f} ± {sd:.1f}" if signed else f"{mean:.1f} ± {sd:.1f}"


def markdown(payload: dict[str, Any]) -> str:
    lines = [f"# {TITLE}", "", f"Command: `{payload['command']}`", ""]
    if payload.get("note"):
        lines += [f"Note: {payload['note']}", ""]
    for dataset, categories in payload["summary"].items():
        lines += [f"## {dataset}", ""]
        head = ["category", "method", "seeds"]
        for _, label in ACCURACY:
            head += [label, f"{label} Δ"]
        lines += ["| " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * 2 * len(ACCURACY)]
        per_seed_lines = []
        for category, methods in categories.items():
            for method, slot in methods.items():
                cells = [category, method, str(len(slot["seeds"]))]
                for key, _ in ACCURACY:
                    if key not in slot:
                        cells += ["–"] * 2
                        continue
                    stats = slot[key]
                    cells.append(" / ".join(_cell(stats[side]) for side in SIDES))
                    cells.append(_cell(stats["difference"], signed=True))
                    if key == "image_auroc":
                        diffs = ", ".join(f"{100 * d:+.1f}" for d in stats["difference"]["values"])
                        per_seed_lines.append(f"- {category} {method}: {diffs}")
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "I-AUROC Δ (anomap − anomalib) per seed, in seed order:", ""]
        lines += [*per_seed_lines, ""]
    failures = [f"- seed {s}: {e}" for s, e in payload["failures"].items()]
    if failures:
        lines += ["Seeds without results:", "", *failures, ""]
    lines += [
        f"Seeds: {payload['seeds']}. Cells are **anomap / anomalib**, each the mean ± sample sd "
        "over the seeds where both tools produced a result, in points; Δ is the mean and sd "
        "of the per-seed differences (paired: both tools trained with the same seed on the "
        "same data). The protocol, machine and costs of each seed's run are in its own "
        f"`seed_<n>/compare_anomalib.md`; {payload['jobs']} seed(s) ran at once, so those "
        "costs are for reading across tools, not against single runs.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compare_seeds")
    parser.add_argument("--note", default="", help="recorded with the results, e.g. the data")
    parser.add_argument("forwarded", nargs=argparse.REMAINDER, help="-- compare_anomalib options")
    args = parser.parse_args(argv)
    forwarded = args.forwarded[1:] if args.forwarded[:1] == ["--"] else args.forwarded
    if {"--seed", "--out"} & {a.split("=")[0] for a in forwarded}:
        parser.error("--seed and --out are set per seed by this script; do not forward them")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    compare_args(forwarded)  # fail now on an option compare_anomalib.py would reject
    return args, forwarded


def main() -> None:
    args, forwarded = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = pool.map(
            lambda seed: run_seed(seed, forwarded, args.out / f"seed_{seed}", threads), args.seeds
        )
        per_seed = dict(zip(args.seeds, runs, strict=True))
    failures = {s: p["error"] for s, p in per_seed.items() if "error" in p}
    command = shlex.join(["python", "benchmarks/compare_seeds.py", *sys.argv[1:]])
    payload = {
        "benchmark": TITLE,
        "command": command,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "note": args.note,
        "failures": failures,
        "summary": summarise({s: p for s, p in per_seed.items() if s not in failures}),
    }
    write_text_atomic(json.dumps(payload, indent=2), args.out / "compare_seeds.json")
    write_text_atomic(markdown(payload), args.out / "compare_seeds.md")
    print((args.out / "compare_seeds.md").read_text())
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
