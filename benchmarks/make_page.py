"""Build docs/benchmarks.md from the result files in benchmarks/results/, so every number on
that page comes from a file a benchmark script wrote. Run: `python benchmarks/make_page.py`."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

INTRO = """# Benchmarks

Every table below is copied from a file in `benchmarks/results/`, written by the command shown
with it; `python benchmarks/make_page.py` rebuilds this page from those files.

Machine for all CPU numbers: the project's 2-core x86-64 development machine (no GPU), as
recorded in each JSON file.

## Deviations from the papers' protocols

- Backbone: EfficientNet-Lite0 with ImageNet weights (pip package), not WRN-50-2; PatchCore
  keeps each stage's channel count (40 + 112 = 152-d) instead of pooling to 1024-d.
- Thresholds are learnt from normal images only (10 % of train held out, 99th percentile);
  `threshold_f1` measures that deployable decision. No number here uses test-set tuning except
  F1-max columns, which are labelled oracle where they appear.
- ball_screw (`../shared/data`, CC BY-SA 4.0) is scored on the whole 1130×460 frame resized to
  256×624: the paper's 256/224 centre crop would drop two thirds of each strip and its defects.
- The synthetic categories come from `anomap synth` (seed 0, defaults); their defects are drawn
  differently from any method's training-time synthesis.
"""

SECTIONS = (
    ("Accuracy: PatchCore", "accuracy_patchcore.md"),
    ("Speed: PatchCore against the bare backbone (CPU)", "speed_patchcore_cpu.md"),
    ("Speed: PatchCore against the bare backbone (GPU)", "speed_patchcore_cuda.md"),
)


def main() -> None:
    parts = [INTRO]
    for title, name in SECTIONS:
        path = RESULTS / name
        if not path.is_file():
            continue
        body = path.read_text(encoding="utf-8")
        body = "\n".join(
            "###" + line.lstrip("#") if line.startswith("## ") else line
            for line in body.splitlines()
            if not line.startswith("# ")
        )
        parts.append(f"## {title}\n\nSource: `benchmarks/results/{name}`\n\n{body.strip()}\n")
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts), encoding="utf-8")


if __name__ == "__main__":
    main()
