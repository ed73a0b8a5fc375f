"""ONNX export of a trained detector, and an onnxruntime predictor with the same outputs.

`export_onnx` writes the whole inference path of `Detector.predict_tensor` (backbone,
method head, upsampling to the input size and Gaussian smoothing) as one ONNX graph:

- input `images`: float32 B×3×H×W, RGB scaled to [0, 1] then (x − mean) / std, after the
  detector's resize (bilinear; an int scales the shorter side) and centre crop. H, W, mean,
  std, resize and crop are in the metadata, and `OnnxDetector` applies them itself;
- outputs `scores` (B, image scores) and `maps` (B×H×W, smoothed anomaly maps).

The batch axis is dynamic unless a fixed `batch_size` is asked for. The model's
metadata_props hold what a runtime needs besides the graph, each value a string (JSON where
structured): format, format_version, anomap_version, method, input_size, preprocess,
calibration, category_calibration, categories, config, backbone, training.

onnx and onnxruntime are optional (`pip install 'anomap[onnx]'`) and imported on use.
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from anomap import __version__
from anomap.data.images import read_image
from anomap.data.samples import Sample
from anomap.data.transforms import Preprocess
from anomap.errors import AnomapError, ArtifactError
from anomap.methods.base import Detector, Prediction
from anomap.postprocess import Calibration

FORMAT = "anomap-onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17  # LayerNorm is native from 17; ORT ≥ 1.11 and TensorRT ≥ 8.6 read it
INPUT, OUTPUTS = "images", ("scores", "maps")
GRAPH_DOC = (
    "anomap detector. Input images: float32 B×3×H×W, RGB / 255 then (x - mean) / std after "
    "resize and centre crop (metadata: input_size, preprocess). Outputs: scores (B), image "
    "anomaly scores; maps (B×H×W), smoothed anomaly maps. Thresholds: metadata calibration."
)


def require(name: str) -> ModuleType:
    """Import an optional ONNX package, or say which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise AnomapError(
            f"ONNX export and inference need {name}: pip install 'anomap[onnx]'"
        ) from exc


class _InferenceGraph(nn.Module):
    """`Detector.predict_tensor` as a module. The detector's modules are registered as
    submodules so the tracer stores their weights as initializers; trainable ones (which
    require grad) would otherwise be refused as constants."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector
        for name, value in vars(detector).items():
            if isinstance(value, nn.Module):
                self.add_module(name.lstrip("_"), value)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.predict_tensor(images)


def _metadata(detector: Detector, input_size: tuple[int, int]) -> dict[str, str]:
    cal = detector.calibration
    backbone = detector.backbone
    values: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "anomap_version": __version__,
        "method": detector.method,
        "input_size": list(input_size),
        "preprocess": detector.preprocess.to_dict(),
        "calibration": cal.to_dict() if cal else None,
        "category_calibration": {
            name: c.to_dict() for name, c in detector.category_calibration.items()
        },
        "categories": list(detector.categories),
        # the graph is traced in float32 whatever precision the torch model runs at
        "config": {**detector.config.to_dict(), "inference_precision": "fp32"},
        "backbone": {
            "name": backbone.spec.name,
            "layers": list(backbone.layers),
            "weights_id": backbone.weights_id,
        },
        "training": detector.training_info,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def onnx_bytes(
    module: nn.Module,
    example: torch.Tensor,
    outputs: Sequence[str],
    *,
    dynamic_batch: bool,
    opset: int = DEFAULT_OPSET,
) -> bytes:
    """`module` traced on `example` (input `images`) to a serialized ONNX model, with the
    exporter settings of `export_onnx`; shared so the speed benchmark can export a bare
    backbone exactly as the whole model is exported."""
    dynamic = {name: {0: "batch"} for name in (INPUT, *outputs)}
    buffer = io.BytesIO()
    # The TorchScript exporter (dynamo=False, deprecated since torch 2.9 but present): it
    # exports each method in under a second, where the dynamo exporter gave the same numbers
    # but took 10-30 s per small model here (too slow for a CLI step and the tests) and needs
    # onnxscript. Tracing records one path, so code whose shape depends on the batch takes a
    # loop-free branch under torch.onnx.is_in_onnx_export(); tests run batches other than 2.
    # Its warnings are silenced: tracer notes on shape-derived constants, its deprecation,
    # and negative-index advice (indices here come from argmax/arange, never negative).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT],
            output_names=list(outputs),
            dynamic_axes=dynamic if dynamic_batch else None,
            opset_version=opset,
        )
    return buffer.getvalue()


def export_onnx(
    detector: Detector,
    path: str | Path,
    *,
    batch_size: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write `detector` as one ONNX graph at `path`, atomically (temp file, then rename).

    `batch_size=None` keeps the batch axis dynamic; an int fixes it, for runtimes that want
    static shapes. The input size must not depend on the image's aspect (a crop, or
    `resize=(h, w)`)."""
    onnx = require("onnx")
    from anomap.report import _atomic_write

    if not detector.is_fitted:
        raise AnomapError("cannot export a detector that has not been fitted")
    if batch_size is not None and batch_size < 1:
        raise AnomapError(f"batch_size must be >= 1, got {batch_size}")
    try:
        height, width = detector.preprocess.output_size
    except ValueError:
        raise AnomapError(
            "ONNX export needs a fixed input size: a model trained with a crop or resize=(h, w)"
        ) from None
    graph = _InferenceGraph(detector).eval()
    # an example batch of 2, not 1, so no size-1 broadcast is mistaken for the batch axis
    example = torch.zeros(batch_size or 2, 3, height, width, device=detector._device)
    data = onnx_bytes(graph, example, OUTPUTS, dynamic_batch=batch_size is None, opset=opset)
    model = onnx.load_model_from_string(data)
    model.doc_string = GRAPH_DOC
    for key, value in _metadata(detector, (height, width)).items():
        model.metadata_props.add(key=key, value=value)
    path = Path(path)
    _atomic_write(path, lambda handle: handle.write(model.SerializeToString()))
    return path


def onnx_session(
    model: str | bytes, *, providers: list[str] | None = None, threads: int | None = None
) -> Any:
    """An onnxruntime session (CPU provider unless `providers` says otherwise). `threads`
    sets its intra-op thread count (onnxruntime's default ignores torch's setting and
    OMP_NUM_THREADS) for a process that shares its cores, so its threads then also stop
    busy-waiting between runs, which would take those cores from the other work."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])


class OnnxDetector:
    """An exported model run by onnxruntime (CPU by default): `predict` returns the same
    `Prediction` as `Detector.predict`, and only preprocessing uses torch."""

    def __init__(
        self, path: str | Path, *, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"model file not found: {self.path}")
        try:
            self.session = onnx_session(str(self.path), providers=providers, threads=threads)
        except Exception as exc:  # noqa: BLE001 - any load failure means an unusable file
            raise ArtifactError(f"{self.path} is not a readable ONNX model: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"{self.path} was not exported by anomap (no anomap metadata)")
        if int(meta["format_version"]) != FORMAT_VERSION:
            raise ArtifactError(
                f"{self.path} uses export format {meta['format_version']}; this anomap "
                f"{__version__} reads format {FORMAT_VERSION}. Export it again."
            )
        self.metadata = meta
        self.method: str = meta["method"]
        self.input_size = tuple(json.loads(meta["input_size"]))
        self.preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
        cal = json.loads(meta["calibration"])
        self.calibration = Calibration.from_dict(cal) if cal else None
        self.category_calibration = {
            name: Calibration.from_dict(c)
            for name, c in json.loads(meta["category_calibration"]).items()
        }
        self.categories: list[str] = json.loads(meta["categories"])
        self.training_info: dict[str, Any] = json.loads(meta["training"])
        self.config: dict[str, Any] = json.loads(meta["config"])
        size = self.session.get_inputs()[0].shape[0]
        self.fixed_batch: int | None = size if isinstance(size, int) else None
        self.batch_size: int = self.fixed_batch or int(self.config["batch_size"])

    def calibration_for(self, category: str | None) -> Calibration | None:
        """As `Detector.calibration_for`: the category's own threshold, else the global one."""
        return self.category_calibration.get(category or "", self.calibration)

    def _image(self, item: Any) -> torch.Tensor:
        """One image -> 3×H×W, read and converted as `Detector.predict` does."""
        if isinstance(item, Sample):
            item = item.path
        if isinstance(item, (str, Path)):
            return self.preprocess.image(read_image(item))
        pil = item if isinstance(item, Image.Image) else Image.fromarray(item)
        return self.preprocess.image(pil.convert("RGB"))

    def _batches(self, images: Any) -> Iterator[np.ndarray]:
        """Preprocessed float32 batches of at most `batch_size` images."""
        if isinstance(images, torch.Tensor):
            tensor = images if images.dim() == 4 else images[None]
            for start in range(0, len(tensor), self.batch_size):
                yield tensor[start : start + self.batch_size].float().cpu().numpy()
            return
        if isinstance(images, (str, Path, Image.Image, np.ndarray, Sample)):
            images = [images]
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            yield torch.stack([self._image(x) for x in chunk]).numpy()

    def predict_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One preprocessed batch -> (scores, maps); a short batch is zero-padded to a fixed
        batch size and the padding dropped again."""
        count = len(batch)
        if self.fixed_batch is not None and count < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - count, *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, pad])
        scores, maps = self.session.run(
            list(OUTPUTS), {INPUT: np.ascontiguousarray(batch, np.float32)}
        )
        return scores[:count], maps[:count]

    def predict(self, images: Any, *, category: str | None = None) -> Prediction:
        """Score image paths, PIL images, uint8 arrays or a preprocessed tensor batch, as
        `Detector.predict` does; `category` picks its threshold in a unified model."""
        results = [self.predict_batch(batch) for batch in self._batches(images)]
        scores, maps = [s for s, _ in results], [m for _, m in results]
        return Prediction.join(scores, maps, self.calibration_for(category))
