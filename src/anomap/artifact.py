"""Saving and loading trained detectors: one safetensors file, JSON metadata, no pickle.

The file holds the method's tensors and, in the safetensors header, a JSON document with the
method, its config, the backbone and the hash of its weights, the preprocessing, the
calibration, the categories and the anomap version, plus a SHA-256 of the tensor bytes so a
tampered or damaged file is refused rather than silently mis-scoring.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from anomap import __version__
from anomap.errors import ArtifactError

FORMAT = "anomap-model"
FORMAT_VERSION = 1


def _content_hash(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def write_artifact(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write tensors + metadata: a temp file in the same folder, then rename."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = dict(meta, format=FORMAT, format_version=FORMAT_VERSION, anomap_version=__version__)
    header["content_sha256"] = _content_hash(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"anomap": json.dumps(header)})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_artifact(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a model file, verified; ArtifactError says what is wrong."""
    from safetensors import safe_open

    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            names = list(handle.keys())
            tensors = {name: handle.get_tensor(name) for name in names}
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise ArtifactError(
            f"{path} is not a readable anomap model (truncated or not safetensors): {exc}"
        ) from exc
    try:
        meta = json.loads(raw["anomap"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} has no anomap metadata; was it saved by anomap?") from exc
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an anomap model file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} uses model format {meta.get('format_version')} (written by anomap "
            f"{meta.get('anomap_version')}); this anomap {__version__} reads format "
            f"{FORMAT_VERSION}. Retrain, or use the anomap version that wrote it."
        )
    if _content_hash(tensors) != meta.get("content_sha256"):
        raise ArtifactError(f"{path} failed its integrity check: the tensors were modified")
    return tensors, meta


def save_detector(detector: Any, path: Path) -> Path:
    """Write a fitted Detector (see methods.base) to `path`."""
    if not detector.is_fitted:
        raise ArtifactError("cannot save a detector that has not been fitted")
    cal = detector.calibration
    meta = {
        "method": detector.method,
        "config": detector.config.to_dict(),
        "backbone": {
            "name": detector.backbone.spec.name,
            "layers": list(detector.backbone.layers),
            "weights_id": detector.backbone.weights_id,
        },
        "preprocess": detector.preprocess.to_dict(),
        "calibration": cal.to_dict() if cal else None,
        "category_calibration": {
            name: c.to_dict() for name, c in detector.category_calibration.items()
        },
        "categories": list(detector.categories),
        "training": detector.training_info,
    }
    return write_artifact(path, detector.state_tensors(), meta)


def load(
    path: str | Path,
    *,
    weights: str | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> Any:
    """Load a detector saved with `Detector.save`. `weights` points to the backbone's weight
    file when it is not where it was at training time; its hash must match. `device` and
    `precision` (the `inference_precision`) override what the model was saved with."""
    from anomap.methods import get_method
    from anomap.postprocess import Calibration

    path = Path(path)
    tensors, meta = read_artifact(path)
    cls = get_method(meta["method"])
    config = dict(meta["config"])
    if weights is not None:
        config["weights"] = weights
    if device is not None:
        config["device"] = device
    if precision is not None:
        config["inference_precision"] = precision
    detector = cls(**config)
    expected = meta["backbone"]["weights_id"]
    if detector.backbone.weights_id != expected:
        raise ArtifactError(
            f"{path} was trained with backbone weights {expected}, but the weights found now "
            f"are {detector.backbone.weights_id}; pass the original file with --weights"
        )
    detector.load_state_tensors(tensors)
    detector.categories = list(meta.get("categories", []))
    detector.training_info = dict(meta.get("training", {}))
    if meta.get("calibration"):
        detector.calibration = Calibration.from_dict(meta["calibration"])
    detector.category_calibration = {
        name: Calibration.from_dict(c) for name, c in meta.get("category_calibration", {}).items()
    }
    return detector
