"""Build docs/benchmarks.md from the result files in benchmarks/results/, so every number on
that page comes from a file a benchmark script wrote. Run: `python benchmarks/make_page.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

INTRO = """# Benchmarks

Every table below is copied from a file in `benchmarks/results/`, written by the command shown
with it; `python benchmarks/make_page.py` rebuilds this page from those files.

Machine for all CPU numbers: the project's 2-core x86-64 development machine (no GPU), as
recorded in each JSON file. The accuracy tables were all made on it, so the trained methods
ran far shorter schedules than the papers (epochs are in every table); their numbers are what
a CPU user gets in minutes, not the methods' ceilings. One session had 15 minutes on an H200
GPU: the GPU speed tables and the GLASS GPU table come from it (`benchmarks/gpu_checks.sh`),
and GLASS's 640-epoch run did not fit in it (see that table's note). The full 640 epochs ran
on the CPU instead, on one synthetic category (pill), where a `fast` epoch takes seconds
rather than the minute it takes on ball_screw's 200 frames here.

## Deviations from the papers' protocols

- Backbone: EfficientNet-Lite0 with ImageNet weights (pip package), not WRN-50-2 (PatchCore,
  GLASS, PBAS) or EfficientNet-B4 (UniAD). PatchCore, GLASS and PBAS keep each stage's channel
  count (40 + 112 = 152-d) instead of pooling to 1024/1536-d; UniAD reconstructs 192 channels
  (16 + 24 + 40 + 112) instead of 272.
- Epochs: GLASS and PBAS train 640 epochs in the papers and UniAD 1000; here far fewer (CPU).
- Model selection: anomap keeps the last epoch. The papers pick the best epoch on the test set;
  the rows marked ORACLE reproduce that choice (scored every 5 epochs) and overstate what a
  deployed model achieves.
- GLASS textures: DTD is not available offline here, so GLASS used anomap's procedural
  textures, and generated foreground masks (Otsu + morphology) for object categories: both
  non-faithful, and labelled in each run's `training_info`. ball_screw GLASS rows labelled
  `foreground=generated` got generated masks from GLASS's automatic choice at the time (not
  from a `--set`), which it no longer makes for close-ups like ball_screw (see the anomalib
  notes); the other ball_screw GLASS rows use no mask.
- Thresholds are learnt from normal images only (10 % of train held out, 99th percentile);
  `threshold_f1` measures that deployable decision. Except PatchCore's synth rows, the
  per-category GLASS rows (`accuracy_glass_paper`, `_fast`, `_fast_gasall`) and
  `accuracy_pbas`, the results files here predate the small-sample threshold (commit
  "Threshold: with fewer than 1/(1-q) held-out normals…"): they used the empirical percentile
  of 4 held-out images per synth category. That threshold's normal fit was then made on the
  raw scores, which for GLASS and PBAS (probabilities) could put it above 1, where nothing
  is flagged: a `threshold_f1` of 0.0 in a GLASS row is that. Since commit "Calibration:
  probability scores…" the fit is made on the logit scale; only `accuracy_pbas` and
  `accuracy_glass_fast` were re-run after it. Since commit "Threshold: a Student-t
  prediction bound…" the fit with fewer than 100 held-out normals is a prediction bound
  (mean + t·std·√(1 + 1/n)) instead of the plug-in mean + z·std, which flagged about 5 % of
  good synth parts for a promised 1 % (`calibration.md`, below); every `accuracy_*` file here
  predates it, so its `threshold_f1` is that of the plug-in threshold. These changes move
  only the threshold, so every threshold-free metric (AUROC, AP, AUPRO) stands as it is.
  F1-max columns pick their threshold on the test set and are labelled oracle where they
  appear.
- ball_screw (`../shared/data`, CC BY-SA 4.0) is scored on the whole 1130×460 frame resized to
  256×624: the papers' centre crop would drop two thirds of each strip and its defects.
- The synthetic categories come from `anomap synth` (seed 0, defaults); their defects are drawn
  differently from any method's training-time synthesis.

## Reading training times

Training times in different files are not comparable: jobs shared the 2 cores in varying
numbers, and two changes made CPU training faster. GLASS's gradient ascent normalises and
scores only the synthetic rows (commit "GLASS: the faithful preset 'paper' is the
default…"; same values, about 2× faster GLASS epochs), and every CPU detector now keeps freed
memory in glibc's heap (commit "CPU training keeps freed blocks…"; page faults had doubled
training and batch-32 inference times). The ball_screw rows of `accuracy_glass_paper`,
`accuracy_glass_paper_fggenerated` and `accuracy_glass_fast_fggenerated`, all of
`accuracy_glass_fast` and all of `glass_presets` ran with both; the synth rows of
`accuracy_glass_paper` and `accuracy_glass_fast_gasall` with the first only;
`accuracy_pbas` (re-run with today's code: 352 → 108 s per synth model) ran with the heap
change; the GLASS unified rows and every other method's rows predate both. On ball_screw,
`paper` (254 s/epoch) shared the cores with development work for part of its run, and
today's `fast` (66 s/epoch) ran beside one anomalib comparison job. `glass_presets` times
both presets under the same load, and separates the steady epoch from `fast`'s one-off
set-up (caching features and texture views).

Every CPU training file here ran in float32. Since commit "Training precision: `fast`
trains with bfloat16 autocast on CPUs with bfloat16 instructions…", `mixed_precision="auto"`
gives the `fast` preset of PBAS and GLASS bfloat16 autocast on CPUs with AVX512-BF16 or AMX
too (`training_precision.md`: same accuracy over three seeds, 0.53–0.55× the epoch time), so
a re-run on such a CPU trains faster than these files say; `--set mixed_precision=off`
reproduces their precision. The discriminator's training pass has also changed since most
of these files were written (BatchNorm statistics taken in input space, then the hidden
layer, LeakyReLU and head fused into one operation; `discriminator_pass.md`): the same
values and gradients in less time, in either precision, so their epoch times are upper
bounds for today's code.

## Reading unified against per-category rows

An epoch of a unified model passes over every category's images, so at the same epoch count
it takes about four times as many optimiser steps on synth as each per-category model (GLASS
caps an epoch at 392 images, §2.4.5). At these short CPU schedules that, more than sharing,
explains why unified GLASS and UniAD score higher in image AUROC than their per-category
runs; the models-MB column shows the other side: one model instead of four. The GLASS
unified run predates per-category foreground masks (commit "GLASS: foreground mode chosen per
category"): it used generated foreground masks on the two texture categories too (the
generator returns the whole frame when it finds no separable object), as its `training_info`
records ("foreground masks: generated").
"""

ANOMALIB_NOTES = """### Allocator: what changed on 2026-11-30

Until 2026-11-30 this comparison fixed glibc's mmap threshold at 4 MiB for both tools' workers.
That also switched off anomap's own setting (`anomap.allocator`, which keeps freed blocks up to
1 GiB for reuse and defers to any `MALLOC_*` variable), so every large temporary on both sides
was fresh zero-filled pages from the kernel. anomap now runs as shipped; anomalib keeps the
4 MiB threshold, because with anomap's setting 3 of its 4 synth workers ran out of memory
(24 GiB) in the run recorded in `anomalib_same_allocator/compare_anomalib.md` (2 of 4, other
categories, in an earlier attempt), and with glibc's sliding default its coreset fragments the
heap to about 16 GB. The one anomalib worker that ran with anomap's setting (woven_fabric)
fitted in 6.9 s instead of 45.0 s and predicted 37.6 instead of 14.5 img/s at batch 32: the
4 MiB threshold slows anomalib too, but it is the setting it completes with. PatchCore's
metrics are unchanged by the allocator, bit for bit.

### Where anomalib wins, why, and what would close the gap

- **PatchCore, woven_fabric I-AUROC, single seed.** On the default synth set (32 test images,
  12 of them good) anomap reads 80.0 against anomalib's 87.1, and anomalib leads on pill by
  1.6. Over 3 seeds on 160 test images per category (`compare_seeds_patchcore`), every
  category is within 1 point on average: means of the 4, anomap / anomalib, are 93.1 / 93.4
  I-AUROC, 98.2 / 98.3 P-AUROC and 88.5 / 88.9 AUPRO, and pill's difference changes sign
  from seed to seed. On the small set one good image ranked above every defective one costs
  8.3 I-AUROC points, so that 7-point gap was mostly the test set. What is left is
  woven_fabric's −0.8 ± 0.5 I-AUROC and AUPRO, the same sign on all 3 seeds. Both tools see
  bit-identical patch features; they differ in the coreset (anomalib: a sparse random
  projection to ~240 dimensions; anomap: a dense 128-d projection, the reference code's
  choice), in the map (anomalib: nearest upsampling and a 33×33 kernel; anomap: bilinear and
  scipy's Gaussian) and in rounding of the bank size. To close it: a seeded comparison with
  anomap's coreset on the full 152-d features (`projection_dim=152`). anomap fits 6.7–8.5×
  faster and predicts 2.1–3.0× faster at batch 1 and 3.1–4.7× at batch 32 (synth, 2
  threads).
- **GLASS on pill and woven_fabric (synth).** The synth rows run anomap's `paper` preset, both
  tools at 5 epochs with one thread. On the default set (32 test images, one seed) the means,
  anomap / anomalib, are I-AUROC 80.0 / 83.1, P-AUROC 86.4 / 84.0, AUPRO 73.5 / 77.1. Over 4
  seeds on 160 test images per category (`compare_seeds_glass`) they are I-AUROC 77.1 / 78.2,
  P-AUROC 84.6 / 80.6, AUPRO 69.1 / 69.0, and the seeds separate the categories: anomap leads
  on brushed_metal (I-AUROC +5.1 ± 5.4, P-AUROC +10.6 ± 5.8) and on washer's pixel metrics
  (P-AUROC +4.9 ± 6.6); anomalib on pill (I-AUROC −3.5 ± 2.7) and woven_fabric (−7.3 ± 4.7),
  ahead on all 4 seeds in both. The single-seed table's anomap lead on woven_fabric and
  13-point anomalib lead on pill were each one draw. Why they differ: both train GLASS's
  adaptor, discriminator and gradient ascent with the same settings, but the clearest
  difference is their local synthesis (LAS). anomalib uses DRAEM's anomaly generator (3 of its
  own 10 augmentations, β uniform in [0.2, 1], a grey Perlin-noise texture when DTD is absent,
  union-or-single masks, anywhere in the frame); anomap the reference code's (3 of 9
  torchvision operations, β ~ N(0.5, 0.1) in [0.2, 0.8], union, intersection or single masks)
  with its procedural colour textures, restricted to a generated foreground mask on objects
  (pill, washer). At 5 epochs, how much each tool's synthetic anomalies resemble a category's
  test defects decides such gaps, and the seed spread (sd up to 5.6 I-AUROC points) is as
  large as they are. anomap trains 2.3–2.7× faster (73–80 s against 187–201 s on the default
  set) and predicts 2.1–2.2× faster at batch 1 and 3.5–5.3× at batch 32. On ball_screw (the
  same `paper` procedure, 2 epochs each, no foreground mask) anomap leads on every metric:
  I-AUROC 91.4 / 87.8, P-AUROC 98.1 / 94.3, AUPRO 88.4 / 81.1, trained 3.0× faster. To close
  the synth gaps: DTD textures on both sides where they are on disk (anomap's LAS is then the
  reference's), and the papers' 640 epochs on a GPU.
- **Peak memory (PatchCore on ball_screw and 3 of 4 synth categories; GLASS on ball_screw
  and 2 synth categories).** anomap's peak RSS is 4122 MB against anomalib's 3554 for
  PatchCore on ball_screw (1 % coreset), 5427 against 3336 MB for GLASS there, and up to
  96 MB (PatchCore) or 308 MB (GLASS) above anomalib's on synth. The cause is anomap's heap
  policy (`anomap.allocator`): it keeps freed blocks up to 1 GiB in glibc's heap for reuse,
  so one backbone stage's freed activations stay resident while the next allocates blocks of
  other sizes, where anomalib's workers (4 MiB mmap threshold) hand every large block back
  to the kernel when it is freed. `anomap_allocator/` measures it on ball_screw with one
  GLASS epoch, anomap alone, the same code under both settings: as shipped, training takes
  151 s with a peak of 3685 MB once fitting ends and 4945 MB after batch-32 inference
  (11.3 img/s); under anomalib's 4 MiB threshold it takes 348 s, peaks at 2526 and 3333 MB
  (anomalib: 3090 and 3336 MB over its 2 epochs) and runs 7.8 img/s at batch 32, with
  identical metrics. PatchCore shows the same trade: its peak while fitting is already below
  anomalib's (2477 against 3554 MB on ball_screw; 996–1018 against 1160–1454 MB on synth),
  and the rest comes with batch-32 inference, where the 4 MiB threshold gave 3072 MB and
  5.3 img/s instead of 11.5. Handing the heap's free pages back once fitting ends (glibc's
  `malloc_trim`) was tried: it lowered the memory held after fitting but hardly the batch-32
  peak, so it was not adopted. To close it: `MALLOC_MMAP_THRESHOLD_=4194304` in anomap's
  environment (anomap then leaves glibc's settings to it) gives the lower profile measured
  above at the cost of that speed, and scoring large frames in smaller batches lowers the
  peak with the setting kept (anomap's default inference batch is 8).
- **No 10 % coreset row on ball_screw.** anomalib's greedy coreset selection took 18 min for
  the 1 % bank (4,991 picks at about 4.6 picks/s, two threads; 44 min with one thread in an
  earlier run); each pick scans all 499k training patches, so the 10 % bank (49,910 picks)
  would take about 3 hours here. anomap
  fits the 10 % model in 858 s, selection included (`accuracy_patchcore.json`, shared).
  To close it: run the comparison on a GPU, where both selections are fast.
- **GLASS training time.** anomap is faster in every row, 2.3–3.0× (feature caching, the
  reused first Linear in the gradient ascent, and its allocator setting).
"""

METHOD_ORDER = ("patchcore", "pbas", "glass", "uniad")
STANDARD_SETTINGS = frozenset({"resize", "crop", "preset", "epochs"})
SUMMARY_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "threshold_f1")
DATA_LABELS = {"synth": "synth, 4 categories", "shared": "ball_screw"}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _mean_row(rows: dict[str, Any], key: str | None = None) -> list[float]:
    picked = [r[key] if key else r for r in rows.values() if key is None or key in r]
    return [100 * float(np.nanmean([r[c] for r in picked])) for c in SUMMARY_COLUMNS]


def _models_mb(rows: dict[str, Any], *, unified: bool) -> str:
    """What a deployment stores for the whole dataset: the one unified model, or the sum of
    the per-category models; '–' for result files written before sizes were recorded."""
    sizes = [r["model_mb"] for r in rows.values() if "model_mb" in r]
    if len(sizes) < len(rows):
        return "–"
    return f"{sizes[0] if unified else sum(sizes):.1f}"


# the variant each method is shown with in the README's method table, and what it changes
HEADLINE = {
    "patchcore": ("accuracy_patchcore.json", "coreset 0.1"),
    "pbas": ("accuracy_pbas.json", None),
    "glass": ("accuracy_glass_paper.json", None),  # GLASS's default preset
    "uniad": ("accuracy_uniad_unified.json", None),  # UniAD's point: one model
}
DEVIATIONS = {
    "patchcore": "Lite0 152-d features (paper: WRN-50, 1024-d); coreset starts from one "
    "random point; the paper's eq. 7 re-weighting is applied (the reference code omits it)",
    "pbas": "Lite0 152-d features (paper: WRN-50, 1536-d); far fewer than 640 epochs on CPU; "
    "last epoch kept (paper: best test-set epoch)",
    "glass": "Lite0 152-d features; procedural textures instead of DTD and generated "
    "foreground masks (both labelled); far fewer than 640 epochs; last epoch kept",
    "uniad": "Lite0 stages, 192 channels (paper: EfficientNet-B4, 272); far fewer than 1000 "
    "epochs; last epoch kept",
}


def _headline_cell(method: str, dataset: str) -> str:
    name, variant = HEADLINE[method]
    payload = _load(name)
    if payload is None:
        return "–"
    results = payload["results"][variant] if variant else payload["results"]
    rows = results.get(dataset)
    if not rows:
        return "–"
    values = " / ".join(f"{v:.1f}" for v in _mean_row(rows)[:3])
    epochs = payload.get("settings", {}).get(dataset, {}).get("epochs")
    return f"{values}" + (f" ({epochs} ep.)" if epochs else "")


def methods_table() -> str:
    """Each method's default variant (one model per category; UniAD one unified model),
    with its deviations."""
    lines = [
        "| method | synth mean: I-AUROC / P-AUROC / AUPRO | ball_screw | deviations |",
        "|---|---|---|---|",
    ]
    for method in METHOD_ORDER:
        synth, shared = _headline_cell(method, "synth"), _headline_cell(method, "shared")
        lines.append(f"| `{method}` | {synth} | {shared} | {DEVIATIONS[method]} |")
    return "\n".join(lines) + "\n"


def _row_order(path: Path) -> tuple[int, bool, str]:
    """Methods in the README's order, per-category models before unified ones."""
    method = path.stem.removeprefix("accuracy_").split("_")[0]
    order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return order, "unified" in path.stem, path.stem


def summary_table(dataset: str) -> str:
    """Mean over categories of every method and variant on one dataset, in percent."""
    lines = [
        "| method | variant | epochs | I-AUROC | P-AUROC | AUPRO | threshold F1 "
        "| train s/model | models MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    patchcore = _load("accuracy_patchcore.json")
    if patchcore:
        for variant, per_dataset in patchcore["results"].items():
            rows = per_dataset.get(dataset)
            if rows:
                values = " | ".join(f"{v:.1f}" for v in _mean_row(rows))
                fit = np.mean([r["fit_seconds"] for r in rows.values()])
                size = _models_mb(rows, unified=False)
                lines.append(
                    f"| patchcore | {variant}, per category | – | {values} | {fit:.0f} | {size} |"
                )
    for path in sorted(RESULTS.glob("accuracy_*.json"), key=_row_order):
        if path.name == "accuracy_patchcore.json":
            continue
        payload = json.loads(path.read_text(encoding="utf-8"))
        rows = payload["results"].get(dataset)
        if not rows or _tests_precisions(rows):  # those have their own block and test sets
            continue
        method = path.stem.removeprefix("accuracy_").split("_")[0]
        settings = payload["settings"][dataset]
        scope = "unified" if "unified" in path.stem else "per category"
        preset = settings.get("preset", "")
        # settings a run changed beyond geometry, preset and epochs (`--set key=value`)
        changed = [f"{k}={v}" for k, v in settings.items() if k not in STANDARD_SETTINGS]
        variant = ", ".join(v for v in (preset, *changed, scope) if v)
        epochs = settings.get("epochs", "–")
        fit = np.mean([r["fit_seconds"] for r in rows.values()])
        if scope == "unified":
            fit = next(iter(rows.values()))["fit_seconds"]
        values = " | ".join(f"{v:.1f}" for v in _mean_row(rows))
        size = _models_mb(rows, unified=scope == "unified")
        lines.append(f"| {method} | {variant} | {epochs} | {values} | {fit:.0f} | {size} |")
        if any("oracle" in r for r in rows.values()):
            oracle = " | ".join(f"{v:.1f}" for v in _mean_row(rows, "oracle")[:3])
            lines.append(
                f"| {method} | {variant}, ORACLE epoch | ≤ {epochs} | {oracle} | – | – | – |"
            )
    return "\n".join(lines) + "\n"


def _tests_precisions(rows: dict[str, Any]) -> bool:
    """Rows of `accuracy_methods.py --precisions`: each model also tested at reduced precision."""
    return any("precisions" in r for r in rows.values())


def precision_table() -> str:
    """Each method's mean metrics and test speed per inference precision on each dataset,
    from the accuracy files written with `--precisions` (the README's precision block)."""
    lines = [
        "| method | data | precision | I-AUROC | P-AUROC | AUPRO | threshold F1 | test img/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    commands, protocols = [], []
    for path in sorted(RESULTS.glob("accuracy_*.json"), key=_row_order):
        payload = json.loads(path.read_text(encoding="utf-8"))
        method = path.stem.removeprefix("accuracy_").split("_")[0]
        for dataset, rows in payload["results"].items():
            if not _tests_precisions(rows):
                continue
            protocols.append(payload["protocol"][dataset])
            settings = payload["settings"][dataset]
            trained = [
                f"{settings[k]}{suffix}"
                for k, suffix in (("preset", ""), ("epochs", " ep."))
                if k in settings
            ]
            if "unified" in path.stem.split("_"):
                trained.append("unified")
            label = f"{method} ({', '.join(trained)})" if trained else method
            tested = {"fp32": rows}
            for name in next(iter(rows.values()))["precisions"]:
                tested[name] = {c: r["precisions"][name] for c, r in rows.items()}
            for name, got in tested.items():
                values = " | ".join(f"{v:.1f}" for v in _mean_row(got))
                speed = np.mean([r["test_img_s"] for r in got.values()])
                lines.append(
                    f"| {label} | {DATA_LABELS[dataset]} | {name} | {values} | {speed:.1f} |"
                )
            commands.append(f"`{payload['commands'][dataset]}`")
    if not commands:
        return "(no accuracy file with --precisions yet)\n"
    lines += [
        "",
        "Means over categories, each model tested once per precision (its threshold from "
        "float32 scores). Test img/s: the whole test loop (image decoding included, batch 8), "
        "one precision after the other, so it scatters; the speed table is the controlled "
        "comparison. Data: "
        + "; ".join(dict.fromkeys(protocols))
        + ". Commands: "
        + "; ".join(dict.fromkeys(commands))
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _speed_keys(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """The (batch, precision) pairs of speed rows, by batch, fp32 first."""
    order = ("fp32", "bf16", "fp16")
    return sorted(
        {(r["batch"], r.get("precision", "fp32")) for r in rows},
        key=lambda k: (k[0], order.index(k[1])),
    )


def _cpu_bf16_note(machine: dict[str, Any]) -> str:
    """What the CPU offers bf16 arithmetic, for files that recorded it."""
    if "cpu_bf16" not in machine:
        return ""
    flags = ", ".join(machine["cpu_bf16"]) or "none (bf16 is emulated, slower than fp32)"
    return f" The CPU's bf16 instructions: {flags}."


def speed_table() -> str:
    """Each method's torch img/s and ratio to its bare backbone per batch size (and reduced
    precision, when timed), and its onnxruntime img/s, from speed_cpu.json (the README's
    speed block)."""
    payload = _load("speed_cpu.json")
    if payload is None:
        return "(no speed_cpu.json yet: run `anomap bench --onnx`)\n"
    rows = payload["rows"]
    keys = _speed_keys(rows)
    batches = sorted({b for b, _ in keys})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by_key = {(r["variant"], r["batch"], r.get("precision", "fp32")): r for r in rows}
    head = ["method"] + [
        f"batch {b}{'' if p == 'fp32' else ', ' + p}: img/s (÷ backbone)" for b, p in keys
    ]
    head.append(f"arithmetic bound, batch {batches[-1]}")
    onnx = all("onnx_img_s" in r for r in rows if r.get("precision", "fp32") == "fp32")
    if onnx:
        head += [f"ONNX Runtime, batch {b}" for b in batches]
    spreads = all("ratio_quartiles" in r for r in rows)  # files before `--rounds` lack them
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for variant in variants:
        cells = [variant]
        for batch, precision in keys:
            row = by_key[(variant, batch, precision)]
            spread = "; {:.2f}–{:.2f}".format(*row["ratio_quartiles"]) if spreads else ""
            cells.append(f"{row['method_img_s']:.1f} ({row['ratio']:.2f}×{spread})")
        cells.append(f"{by_key[(variant, batches[-1], 'fp32')]['flop_bound']:.2f}×")
        if onnx:
            cells += [f"{by_key[(variant, b, 'fp32')]['onnx_img_s']:.1f}" for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    backbone = {
        precision: [
            r["backbone_img_s"]
            for r in rows
            if (r["batch"], r.get("precision", "fp32")) == (batches[-1], precision)
        ]
        for _, precision in keys
    }
    reduced = [p for p in backbone if p != "fp32"]
    ranges = ", ".join(
        f"{min(v):.0f}–{max(v):.0f}" + (f" in {p}" if reduced else "") for p, v in backbone.items()
    )
    lines += [
        "",
        f"Bare backbone at batch {batches[-1]} (img/s): {ranges}, in the same run. "
        f"Command: `{payload['command']}`; {payload['machine']['torch_threads']} torch "
        "threads. Arithmetic bound: the backbone's floating-point operations ÷ the method's "
        "whole predict path's (matrix products, convolutions, attention), the ratio reached if "
        "time followed arithmetic."
        + (
            " After each ratio: the interquartile range of its per-round ratios, the scatter "
            "within this run."
            if spreads
            else ""
        )
        + (
            f" {', '.join(reduced)}: the model at that `inference_precision`, its backbone "
            "alone under the same autocast, each ratio against that backbone."
            if reduced
            else ""
        )
        + _cpu_bf16_note(payload["machine"]),
    ]
    return "\n".join(lines) + "\n"


def gpu_speed_table() -> str:
    """Each method's ratio to its bare backbone on the GPU per batch size and precision, from
    speed_cuda.json, with rows of speed_cuda_patchcore.json (a later run of PatchCore alone)
    replacing that method's older rows (the README's GPU speed block)."""
    payload = _load("speed_cuda.json")
    if payload is None:
        return "(no speed_cuda.json yet: run `anomap bench --device cuda` on a GPU)\n"
    later = _load("speed_cuda_patchcore.json")
    replaced = {r["variant"] for r in later["rows"]} if later else set()
    rows = [r for r in payload["rows"] if r["variant"] not in replaced]
    rows += later["rows"] if later else []
    keys = _speed_keys(rows)
    by_key = {(r["variant"], r["batch"], r.get("precision", "fp32")): r for r in rows}
    head = ["method"] + [f"batch {b}, {p}: img/s (÷ backbone)" for b, p in keys]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(keys)]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = [variant + (" (later run)" if variant in replaced else "")]
        for batch, precision in keys:
            row = by_key.get((variant, batch, precision))
            cells.append(f"{row['method_img_s']:.0f} ({row['ratio']:.2f}×)" if row else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{payload['machine'].get('gpu', 'GPU')}, torch {payload['machine']['torch']}. "
        f"Command: `{payload['command']}`"
        + (f"; later run: `{later['command']}`" if later else "")
        + ". bf16: the backbone and the whole predict path under torch.autocast.",
    ]
    return "\n".join(lines) + "\n"


ANOMALIB_METRICS = ("image_auroc", "pixel_auroc", "aupro")
SIDES = ("anomap", "anomalib")  # compare_anomalib's order; importing it would pull in torch
SEED_RUNS = {"patchcore": "compare_seeds_patchcore", "glass": "compare_seeds_glass"}


def _sides(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """Mean of `key` over rows, each side."""
    return tuple(float(np.mean([r[side][key] for r in rows])) for side in SIDES)


def _times(rows: list[dict[str, Any]], key: str, *, faster: str) -> str:
    """anomap's advantage per category as a range of factors: time (anomalib ÷ anomap) for
    `faster="lower"`, throughput (anomap ÷ anomalib) for "higher"."""
    factors = [
        r["anomalib"][key] / r["anomap"][key]
        if faster == "lower"
        else r["anomap"][key] / r["anomalib"][key]
        for r in rows
    ]
    low, high = min(factors), max(factors)
    return f"{low:.1f}×" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}–{high:.1f}×"


def _scored_rows(payload: dict[str, Any], dataset: str, method: str) -> list[dict[str, Any]]:
    """A comparison's rows of one method and dataset where both tools produced metrics."""
    categories = payload["results"].get(dataset, {})
    rows = [m[method] for m in categories.values() if method in m]
    return [r for r in rows if all("image_auroc" in r.get(side, {}) for side in SIDES)]


def _label(payload: dict[str, Any], dataset: str, method: str, extra: str = "") -> str:
    """What a comparison row ran on and with: data, test images, and the recorded settings."""
    tests = sorted({r["anomap"]["test_images"] for r in _scored_rows(payload, dataset, method)})
    test = f"{tests[0]}" if len(tests) == 1 else f"{tests[0]}–{tests[-1]}"
    settings = payload["runs"][dataset][method]["settings"]
    if method == "patchcore":
        variant = f"coreset {100 * settings['coreset']:g} %"
    else:
        variant = f"{settings['glass_preset']}, {settings['glass_epochs']} epochs"
    return f"{DATA_LABELS.get(dataset, dataset)}, {test} test images{extra} ({variant})"


def _seed_row(method: str, dataset: str) -> str | None:
    """The seed run's means of one method and dataset (compare_seeds.json), if there is one."""
    seeds = _load(f"{SEED_RUNS[method]}/compare_seeds.json")
    per_category = (seeds or {}).get("summary", {}).get(dataset, {})
    slots = [m[method] for m in per_category.values() if method in m]
    if not slots:
        return None
    first = _load(f"{SEED_RUNS[method]}/seed_{slots[0]['seeds'][0]}/compare_anomalib.json")
    cells = [
        " / ".join(f"{100 * np.mean([s[k][side]['mean'] for s in slots]):.1f}" for side in SIDES)
        for k in ANOMALIB_METRICS
    ]
    label = _label(first, dataset, method, f", mean of {len(slots[0]['seeds'])} seeds")
    return f"| {method} | {label} | " + " | ".join(cells) + " | – | – | – | – |"


def anomalib_table() -> str:
    """anomap against anomalib per method and dataset (the README's comparison block):
    compare_anomalib.json's means and cost factors, and the seed runs' means where present."""
    payload = _load("compare_anomalib.json")
    if payload is None:
        return "(no compare_anomalib.json yet: run `make bench-anomalib`)\n"
    head = "| method | data | I-AUROC | P-AUROC | AUPRO | fit | img/s, batch 1 | batch 32 "
    head += "| peak RSS MB |"
    lines = [head, "|---|---|---|---|---|---:|---:|---:|---|"]
    for method in ("patchcore", "glass"):
        for dataset in payload["results"]:
            rows = _scored_rows(payload, dataset, method)
            if not rows:
                continue
            metrics = [
                " / ".join(f"{100 * v:.1f}" for v in _sides(rows, k)) for k in ANOMALIB_METRICS
            ]
            costs = [
                _times(rows, "fit_seconds", faster="lower"),
                _times(rows, "img_s_batch1", faster="higher"),
                _times(rows, "img_s_batch32", faster="higher"),
                " / ".join(f"{v:.0f}" for v in _sides(rows, "peak_rss_mb")),
            ]
            label = _label(payload, dataset, method)
            lines.append(f"| {method} | {label} | " + " | ".join(metrics + costs) + " |")
            if seed_row := _seed_row(method, dataset):
                lines.append(seed_row)
    lines += [
        "",
        "Cells are anomap / anomalib (metrics, in %) or anomap's speed-up (fit: anomalib's "
        "time ÷ anomap's; img/s: anomap's ÷ anomalib's; a range spans the categories); peak "
        "RSS is the worker process's, fit to batch-32 timing, mean over categories. Same "
        "backbone weights, inputs and metric code on both sides; the protocol, per-category "
        "rows and every gap where anomalib wins, with why: `docs/benchmarks.md`.",
    ]
    return "\n".join(lines) + "\n"


def _section(title: str, name: str) -> str | None:
    path = RESULTS / name
    if not path.is_file():
        return None
    body = path.read_text(encoding="utf-8")
    body = "\n".join(
        "###" + line.lstrip("#") if line.startswith("## ") else line
        for line in body.splitlines()
        if not line.startswith("# ")
    )
    return f"## {title}\n\nSource: `benchmarks/results/{name}`\n\n{body.strip()}\n"


def main() -> None:
    parts = [INTRO]
    for dataset, label in (("synth", "`anomap synth`, mean of 4"), ("shared", "ball_screw")):
        parts.append(f"## Summary: {label}\n\n{summary_table(dataset)}")
    parts.append(f"## Summary: reduced-precision inference\n\n{precision_table()}")
    sections = [("Speed against the bare backbone (CPU)", "speed_cpu.md")]
    sections.append(("Speed against the bare backbone (GPU)", "speed_cuda.md"))
    sections.append(("PatchCore on the GPU after the block change", "speed_cuda_patchcore.md"))
    sections.append(("Where the predict path's time goes (CPU profile)", "profile_cpu.md"))
    sections.append(
        ("Where the predict path's time goes (CPU profile, bf16)", "profile_cpu_bf16.md")
    )
    sections.append(("Where the predict path's time goes (GPU profile)", "profile_cuda.md"))
    sections.append(("GLASS on the GPU: one real category", "glass_gpu.md"))
    sections.append(("GLASS on the CPU: one real category", "glass_cpu.md"))
    sections.append(
        ("GLASS on the CPU: the full 640 epochs on one synth category", "glass_cpu_synth.md")
    )
    sections.append(("anomap against anomalib", "compare_anomalib.md"))
    for method, folder in SEED_RUNS.items():
        title = f"anomap against anomalib over seeds: {method}, larger test sets"
        sections.append((title, f"{folder}/compare_seeds.md"))
    # the notes on where anomalib wins follow the last comparison table present
    last_comparison = [n for _, n in sections if "compare_" in n and (RESULTS / n).is_file()][-1:]
    sections.append(("GLASS presets over seeds: fast against paper", "glass_presets.md"))
    sections.append(
        ("Training precision over seeds: bfloat16 against float32", "training_precision.md")
    )
    sections.append(("Training precision over seeds: UniAD", "training_precision_uniad.md"))
    title = "Training: the discriminator's pass, module sequence against anomap's"
    sections.append((f"{title} (CPU)", "discriminator_pass.md"))
    sections.append((f"{title} (GPU)", "discriminator_pass_cuda.md"))
    sections.append(("PatchCore fit time and memory against training-set size", "scaling.md"))
    sections.append(("The learnt threshold: false rejects against the promise", "calibration.md"))
    sections.append(("The learnt threshold of PBAS (probability scores)", "calibration_pbas.md"))
    sections.append(("Accuracy: PatchCore", "accuracy_patchcore.md"))
    for path in sorted(RESULTS.glob("accuracy_*.md")):
        if path.name != "accuracy_patchcore.md":
            title = path.stem.removeprefix("accuracy_").replace("_", ", ")
            sections.append((f"Accuracy: {title}", path.name))
    for title, name in sections:
        section = _section(title, name)
        if section:
            parts.append(section)
            if [name] == last_comparison:
                parts.append(ANOMALIB_NOTES)
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts), encoding="utf-8")
    update_readme()


def update_readme() -> None:
    """Replace each generated block in the README (between `<!-- results:NAME -->` and the
    next `<!-- /results -->`: the method table and each dataset's summary) with a fresh one,
    so the README's numbers are the results files' numbers."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    end = "<!-- /results -->"
    blocks = {
        "methods": methods_table,
        "synth": lambda: summary_table("synth"),
        "shared": lambda: summary_table("shared"),
        "speed": speed_table,
        "speed_gpu": gpu_speed_table,
        "anomalib": anomalib_table,
        "precision": precision_table,
    }
    for name, make in blocks.items():
        start = f"<!-- results:{name} -->"
        if start not in text:
            continue
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = f"{head}{start}\n{make()}{end}{tail}"
    readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
