"""Speed of the full inference path, measured against the bare backbone in the same run.

The ratio (method img/s ÷ backbone img/s) is the number that matters: it says how close to
the cost of the feature extractor alone a method runs, independent of the machine. With
`onnx=True` the exported model and the exported bare backbone are timed on onnxruntime too,
so the same ratio, and the gain over torch, can be read for the deployed form.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    import numpy as np

    from anomap.methods.base import Detector


ROUNDS = 5  # alternating timing rounds per comparison; medians are reported


def _throughput(fn: Callable[[], Any], batch: int, min_seconds: float) -> float:
    """Images per second of `fn` on one batch: at least one call and `min_seconds`."""
    runs, start = 0, time.perf_counter()
    while runs < 1 or time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def _synchronised(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """`fn` that returns only once the device has finished its work: CUDA kernels run
    asynchronously, so a host clock around an unsynchronised call times only the launches."""
    if device.type != "cuda":
        return fn

    def run() -> Any:
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return run


def _autocast(
    fn: Callable[[], Any], device: torch.device, dtype: torch.dtype | None
) -> Callable[[], Any]:
    """`fn` under autocast to `dtype` (matrix products and convolutions in that type,
    reductions and normalisations in float32, as torch's autocast lists decide); None: as is."""
    if dtype is None:
        return fn

    def run() -> Any:
        with torch.autocast(device.type, dtype=dtype):
            return fn()

    return run


def _relative_error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """‖candidate − reference‖ / ‖reference‖ in float64."""
    reference = reference.double()
    return float((candidate.double() - reference).norm() / reference.norm().clamp_min(1e-30))


class Timing(NamedTuple):
    """Medians of the alternating rounds, and the quartiles of the per-round ratios: how far
    the ratio scattered within one run."""

    reference: float
    candidate: float
    ratio: float
    ratio_quartiles: tuple[float, float]


def _compare(
    reference: Callable[[], Any],
    candidate: Callable[[], Any],
    batch: int,
    min_seconds: float,
    rounds: int = ROUNDS,
) -> Timing:
    """Reference and candidate img/s, each the median over `rounds` alternating rounds of
    `min_seconds` / `rounds` each (at least one call). A shared machine's speed drifts by
    tens of percent within seconds; the ratio of two timings taken side by side drifts much
    less, so the ratio is the median of the per-round ratios."""
    for fn in (reference, candidate, reference, candidate):
        fn()  # warm up both
    seconds = min_seconds / rounds
    pairs = [
        (
            _throughput(reference, batch, seconds),
            _throughput(candidate, batch, seconds),
        )
        for _ in range(rounds)
    ]
    ratios = [c / r for r, c in pairs]
    low, _, high = statistics.quantiles(ratios, n=4) if rounds > 1 else ratios * 3
    return Timing(
        statistics.median(r for r, _ in pairs),
        statistics.median(c for _, c in pairs),
        statistics.median(ratios),
        (low, high),
    )


def _gflop_per_image(fn: Callable[[], Any], batch: int) -> float:
    """Floating-point operations of one call of `fn` per image, in GFLOP, as torch's
    FlopCounterMode counts them: matrix products, convolutions and attention, not element-wise
    work. Dividing a backbone's count by a method's gives the throughput ratio the method would
    reach if time followed arithmetic: where a measured ratio sits below that bound there is
    overhead to remove; where the bound itself is low, the method's own arithmetic is the cost."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch / 1e9


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_bf16_flags() -> list[str]:
    """The CPU's bfloat16 instructions (Linux /proc/cpuinfo): what bf16 inference speed on a
    CPU depends on (without them oneDNN emulates bf16, slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].splitlines()[0].split()
    except (OSError, IndexError):
        return []
    return sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile"))


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": _cpu_bf16_flags(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _onnx_runners(
    detector: Detector, path: Path, threads: int
) -> tuple[Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]]:
    """(whole model, bare backbone) run by onnxruntime on a preprocessed batch: the model as
    `export_onnx` writes it (dynamic batch) through `OnnxDetector.predict_batch`, and the
    backbone exported alone by the same exporter, its outputs the feature maps."""
    from anomap.export import INPUT, OnnxDetector, export_onnx, onnx_bytes, onnx_session

    model = OnnxDetector(export_onnx(detector, path), threads=threads)
    backbone = detector.backbone
    # a batch of 2, as export_onnx uses, so no size-1 broadcast is taken for the batch axis
    example = torch.zeros(2, 3, *detector.preprocess.output_size)
    outputs = [f"features{i}" for i in range(len(backbone.layers))]
    graph = onnx_bytes(backbone, example, outputs, dynamic_batch=True)
    session = onnx_session(graph, threads=threads)
    return model.predict_batch, lambda batch: session.run(None, {INPUT: batch})


# (label, method, settings): each fitted briefly; inference cost does not depend on how long
# a model trained, only on its shape
SPEED_VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("patchcore 10%", "patchcore", {"coreset_ratio": 0.1}),
    ("patchcore 1%", "patchcore", {"coreset_ratio": 0.01}),
    ("pbas", "pbas", {"epochs": 1}),
    ("glass", "glass", {"epochs": 1, "ascent_steps": 1, "las_pool": 1}),
    ("uniad", "uniad", {"epochs": 1}),
)


def fit_speed_variants(
    methods: Sequence[str] | None,
    size: int,
    device: torch.device,
    n_train: int,
    folder: Path,
) -> dict[str, Any]:
    """Each variant of `SPEED_VARIANTS` (or those of `methods`), fitted on a generated texture
    category of `n_train` good images written under `folder`, by label."""
    from anomap.data.synth import generate
    from anomap.methods import get_method

    resize = size + size // 7  # the paper's 256 -> 224 ratio
    category = generate(
        folder, ["woven_fabric"], image_size=resize, n_train=n_train, n_test_good=1, n_test_defect=1
    )[0]
    detectors = {}
    for label, method, settings in SPEED_VARIANTS:
        if methods is not None and method not in methods:
            continue
        geometry: dict[str, Any] = {"resize": resize, "crop": size}
        if method == "uniad":  # UniAD resizes straight to a square, no crop (§4.2)
            geometry = {"resize": (size, size), "crop": None}
        detectors[label] = get_method(method)(device=str(device), **geometry, **settings).fit(
            category
        )
    return detectors


def run_speed_benchmark(
    out: Path,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    methods: Sequence[str] | None = None,
    size: int = 224,
    device: str = "auto",
    precisions: Sequence[str] = ("fp32",),
    n_train: int = 100,
    min_seconds: float = 3.0,
    rounds: int = ROUNDS,
    onnx: bool = False,
) -> dict[str, Any]:
    """Fit every variant of `SPEED_VARIANTS` (or those of `methods`) on a generated category of
    `n_train` good images, then time `predict_tensor` (the whole inference path: features,
    the method's head, upsampling, blur) and that detector's bare backbone on the same
    preprocessed batches, interleaved so both see the same machine state: `rounds`
    alternating rounds sharing `min_seconds` per comparison. Each of
    `precisions` (`PRECISIONS`) other than fp32 times the backbone under autocast and the
    method at that `inference_precision`, and records how far the maps and scores move from
    fp32's on the timed batch. `onnx` adds the
    exported model and exported backbone on onnxruntime, timed on the same batches (CPU only:
    `OnnxDetector` uses onnxruntime's CPU provider). Writes speed_<device>.json/.md."""
    from anomap.errors import ConfigError
    from anomap.methods.base import PRECISIONS, resolve_device

    torch_device = resolve_device(device)
    mixed = tuple(precisions) != ("fp32",)  # the tables get precision and error columns
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ConfigError(f"unknown precision {unknown}: choose from {sorted(PRECISIONS)}")
    measure_onnx = onnx and torch_device.type == "cpu"
    threads = torch.get_num_threads()
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        detectors = fit_speed_variants(methods, size, torch_device, n_train, Path(tmp))
        if measure_onnx:
            for index, (label, detector) in enumerate(detectors.items()):
                path = Path(tmp) / f"{index}_{detector.method}.onnx"
                runners[label] = _onnx_runners(detector, path, threads)
    rows = []
    for batch in batch_sizes:
        images = torch.randn(batch, 3, size, size, device=torch_device)
        for label, detector in detectors.items():
            backbone = detector.backbone

            def bare(images=images, backbone=backbone):
                with torch.inference_mode():
                    return backbone(images)

            def predict(detector=detector, images=images):
                return detector.predict_tensor(images)

            detector.config.inference_precision = "fp32"  # the counts and the reference
            backbone_gflop = _gflop_per_image(bare, batch)
            method_gflop = _gflop_per_image(predict, batch)
            reference_scores, reference_maps = predict()
            for precision in precisions:
                dtype = PRECISIONS[precision]
                # the method path runs as users run it: its own inference_precision setting
                detector.config.inference_precision = precision
                timed_bare = _synchronised(_autocast(bare, torch_device, dtype), torch_device)
                timed_predict = _synchronised(predict, torch_device)
                timing = _compare(timed_bare, timed_predict, batch, min_seconds, rounds)
                row = {
                    "batch": batch,
                    "variant": label,
                    "precision": precision,
                    "layers": list(backbone.layers),
                    "backbone_img_s": timing.reference,
                    "method_img_s": timing.candidate,
                    "ratio": timing.ratio,
                    "ratio_quartiles": list(timing.ratio_quartiles),
                    "backbone_gflop": backbone_gflop,
                    "method_gflop": method_gflop,
                    "flop_bound": backbone_gflop / method_gflop,
                }
                if dtype is not None:
                    scores, maps = timed_predict()
                    row["map_error"] = _relative_error(maps, reference_maps)
                    row["score_error"] = _relative_error(scores, reference_scores)
                if label in runners and dtype is None:
                    run_model, run_backbone = runners[label]
                    array = images.numpy()
                    ort = _compare(
                        lambda f=run_backbone, x=array: f(x),
                        lambda f=run_model, x=array: f(x),
                        batch,
                        min_seconds,
                        rounds,
                    )
                    versus_torch = _compare(
                        predict, lambda f=run_model, x=array: f(x), batch, min_seconds, rounds
                    )
                    row.update(
                        onnx_backbone_img_s=ort.reference,
                        onnx_img_s=ort.candidate,
                        onnx_ratio=ort.ratio,
                        onnx_vs_torch=versus_torch.ratio,
                    )
                rows.append(row)
    name = next(iter(detectors.values())).backbone.spec.name
    result = {
        "benchmark": "inference speed: each method's predict path vs its bare backbone, same run",
        "command": f"anomap bench --batch-sizes {','.join(map(str, batch_sizes))} "
        f"--size {size} --device {device}"
        + (f" --rounds {rounds}" if rounds != ROUNDS else "")
        + (f" --precisions {','.join(precisions)}" if mixed else "")
        + (" --onnx" if onnx else ""),
        "backbone": name,
        "input": [3, size, size],
        "train_images": n_train,
        "rows": rows,
        "peak_memory_mb": _peak_memory_mb(torch_device),
        "machine": machine_info(torch_device),
    }
    columns = ["batch", "method", "backbone img/s", "method img/s", "ratio", "ratio IQR"]
    columns += ["GFLOP/img", "bound"]
    if mixed:
        columns[2:2] = ["precision"]
        columns += ["map error", "score error"]
    notes = [
        "GFLOP/img: the method's whole predict path per image, counted by torch's "
        "FlopCounterMode (matrix products, convolutions, attention; not element-wise work). "
        "bound: the backbone's count ÷ the method's, the ratio the method would reach if time "
        "followed arithmetic. A ratio well below its bound is overhead; a low bound is the "
        "method's own arithmetic."
    ]
    if mixed:
        notes.append(
            "precision: fp32, or the bare backbone under torch.autocast to bf16/fp16 and the "
            "predict path with that `inference_precision` (its backbone under autocast, and "
            "UniAD's transformer; the other heads, upsampling and blur in float32). "
            "map/score error: ‖x − x_fp32‖ / ‖x_fp32‖ on "
            "the timed batch (random inputs), how far reduced precision moves the outputs."
        )
    if measure_onnx:
        from anomap.export import require

        version = require("onnxruntime").__version__
        result["onnxruntime"] = {"version": version, "intra_op_num_threads": threads}
        columns += ["ORT backbone img/s", "ORT method img/s", "ORT ratio", "ORT ÷ torch"]
        notes.append(
            f"ORT columns: onnxruntime {version}, CPU provider, intra_op_num_threads = {threads} "
            "(torch's thread count, so both run on the same cores), timed on the same batches: "
            "the model as `anomap export` writes it (dynamic batch) through "
            "`OnnxDetector.predict_batch`, and the backbone exported alone by the same "
            "exporter. ORT ÷ torch: the exported model against the torch predict path, timed "
            "side by side in the same rounds. Peak memory "
            "includes the onnxruntime sessions."
        )
    elif onnx:
        result["onnx_skipped"] = "onnxruntime is timed on CPU only (OnnxDetector's provider)"
        notes.append(f"`--onnx` ignored: {result['onnx_skipped']}.")

    def cells(r: dict[str, Any]) -> str:
        precision = f" {r['precision']} |" if mixed else ""
        text = (
            f"| {r['batch']} | {r['variant']} |{precision} {r['backbone_img_s']:.1f} "
            f"| {r['method_img_s']:.1f} | {r['ratio']:.2f} "
            f"| {r['ratio_quartiles'][0]:.2f}–{r['ratio_quartiles'][1]:.2f} "
            f"| {r['method_gflop']:.2f} "
            f"| {r['flop_bound']:.2f} |"
        )
        if mixed:
            text += "".join(
                f" {r[k]:.1e} |" if k in r else " – |" for k in ("map_error", "score_error")
            )
        if measure_onnx and "onnx_img_s" not in r:  # reduced-precision rows: torch only
            text += " – |" * 4
        if "onnx_img_s" in r:
            text += (
                f" {r['onnx_backbone_img_s']:.1f} | {r['onnx_img_s']:.1f} "
                f"| {r['onnx_ratio']:.2f} | {r['onnx_vs_torch']:.2f} |"
            )
        return text

    lines = [
        f"Inference ({name}, {size}², fitted on {n_train} images) on {torch_device.type}; "
        "the backbone column is each method's own feature extractor alone. Each img/s is "
        f"the median of {rounds} rounds alternating with its reference, each ratio the "
        "median of the per-round ratios (a shared machine drifts; side-by-side ratios less), "
        "ratio IQR their quartiles: the scatter within this run.",
        "",
        f"| {' | '.join(columns)} |",
        "|---:|---|" + ("---|" if mixed else "") + "---:|" * (len(columns) - 2 - mixed),
        *(cells(r) for r in rows),
        "",
        *(f"{note}\n" for note in notes),
        f"Peak memory (process): {result['peak_memory_mb']:.0f} MB. Command: `{result['command']}`",
    ]
    markdown = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"speed_{torch_device.type}"
    from anomap.report import write_text_atomic

    write_text_atomic(json.dumps(result, indent=2), stem.with_suffix(".json"))
    write_text_atomic(markdown, stem.with_suffix(".md"))
    return {"json": result, "markdown": markdown}
