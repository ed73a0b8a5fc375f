"""The Detector contract every method implements, and the work all methods share.

A method supplies its config dataclass, `_fit` (learn from normal images) and
`_score` (cell scores and image scores for a batch of preprocessed images); this base class
does the rest: input handling, the validation split, post-processing, calibration, saving.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from anomap.allocator import retain_freed_memory
from anomap.backbones import DEFAULT_BACKBONE, FeatureExtractor, load_backbone
from anomap.data.samples import Category, Sample
from anomap.data.transforms import Preprocess
from anomap.errors import AnomapError, ConfigError, DataError
from anomap.features import PatchAggregator
from anomap.postprocess import Calibration, calibrate, upsample
from anomap.progress import track

ImageInput = str | Path | Image.Image | np.ndarray

# inference arithmetic (`inference_precision`): None runs float32; the others run scoring
# under torch.autocast to that type, in the parts that gain (each method's `_score` decides)
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass
class DetectorConfig:
    """Settings every method shares. Methods subclass this and add their own fields."""

    backbone: str = DEFAULT_BACKBONE
    layers: tuple[int, ...] | None = None
    weights: str | None = None
    download: bool = False
    resize: int | tuple[int, int] = 256
    crop: int | None = 224
    blur_sigma: float = 4.0
    batch_size: int = 8
    val_fraction: float = 0.1
    threshold_quantile: float = 0.99
    device: str = "auto"
    # fp32, or bf16/fp16: the backbone's convolutions (and UniAD's transformer) in predict
    # and calibration run in that type under autocast; faster on CPUs with AVX-512 BF16 or AMX
    inference_precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)
        if isinstance(self.resize, list):
            self.resize = (int(self.resize[0]), int(self.resize[1]))
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")
        _check(0.5 <= self.threshold_quantile <= 1.0, "threshold_quantile must be in [0.5, 1]")
        _check(self.blur_sigma >= 0, "blur_sigma must be >= 0")
        _check(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}",
        )
        _check(
            self.inference_precision in PRECISIONS,
            f"inference_precision must be one of {', '.join(PRECISIONS)}, "
            f"got {self.inference_precision!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AnomapError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
        return cls(**data)


@dataclass
class TrainingConfig(DetectorConfig):
    """Settings of every method with a training loop (GLASS, PBAS, UniAD)."""

    epochs: int = 1
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10
    validate_every: int = 0  # >0: score the held-out normal images every N epochs
    resume: bool = False
    # training under bfloat16 autocast: "bf16", "off", or "auto" (the method decides: the
    # SimpleNet family's "fast" preset where bfloat16 is native, UniAD never)
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.epochs >= 1, "epochs must be >= 1")
        _check(
            self.mixed_precision in ("auto", "bf16", "off"),
            "mixed_precision must be 'auto', 'bf16' or 'off'",
        )
        _check(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        _check(self.validate_every >= 0, "validate_every must be >= 0")
        _check(not self.resume or self.checkpoint_dir, "resume needs a checkpoint_dir")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class Prediction:
    """Per-image results. `maps` are at the model's input resolution (after crop);
    `normalized` and `is_anomalous` are None until the detector is calibrated."""

    scores: np.ndarray
    maps: np.ndarray
    normalized: np.ndarray | None = None
    is_anomalous: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def join(
        cls, scores: list[np.ndarray], maps: list[np.ndarray], calibration: Calibration | None
    ) -> Prediction:
        """Per-batch scores and maps in one Prediction, normalised and decided by
        `calibration` when there is one."""
        score_array = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        map_array = np.concatenate(maps) if maps else np.zeros((0, 0, 0), np.float32)
        return cls(
            scores=score_array,
            maps=map_array,
            normalized=calibration.normalize(score_array) if calibration else None,
            is_anomalous=calibration.decide(score_array) if calibration else None,
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AnomapError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matrix products natively: a CUDA GPU, or a CPU with
    AVX512-BF16 or AMX (without them oneDNN emulates bfloat16, slower than float32)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def train_samples(data: Any) -> tuple[list[Sample], list[str]]:
    """Normal training samples and category names from a path, Category, or list of them."""
    from anomap.data.layouts import discover

    if isinstance(data, (str, Path)):
        data = discover(data)
    if isinstance(data, Category):
        data = [data]
    if isinstance(data, Sequence) and data and all(isinstance(c, Category) for c in data):
        samples = [s for category in data for s in category.train]
        return samples, [c.name for c in data]
    if isinstance(data, Sequence) and data and all(isinstance(s, Sample) for s in data):
        return list(data), sorted({s.category for s in data})
    if isinstance(data, Sequence) and data and all(isinstance(p, (str, Path)) for p in data):
        return [Sample(Path(p), category="") for p in data], []
    raise DataError("training data must be a dataset folder, a Category, or a list of image paths")


class Detector:
    """Base class: `fit` on normal images, `predict` scores, maps and decisions, `save`."""

    method: ClassVar[str]
    Config: ClassVar[type[DetectorConfig]] = DetectorConfig
    # image scores are probabilities in (0, 1), which calibration must respect
    probability_scores: ClassVar[bool] = False

    def __init__(self, **settings: Any) -> None:
        self.config = self.Config(**settings)
        self.calibration: Calibration | None = None
        # per-category thresholds of a unified model, where the category is known
        self.category_calibration: dict[str, Calibration] = {}
        self.categories: list[str] = []
        # how the model was made, saved with it and shown next to its numbers (e.g. the
        # epoch-selection rule, or a non-faithful texture source)
        self.training_info: dict[str, Any] = {}
        # called as callback(detector, epoch, losses) after every epoch by trained methods
        self.epoch_end_callbacks: list[Any] = []
        self._backbone: FeatureExtractor | None = None
        self._device = resolve_device(self.config.device)
        if self._device.type == "cpu":
            retain_freed_memory()  # large CPU batches reuse memory; see anomap.allocator

    # ---- what methods implement -------------------------------------------------------
    def _fit(self, train: list[Sample]) -> None:
        """Learn from normal samples; `self._batches(train, ...)` streams them as often as
        needed (one pass for memory-bank methods, many epochs for trained ones)."""
        raise NotImplementedError

    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed B×3×H×W -> (image scores B, cell scores B×h×w)."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # ---- shared machinery ---------------------------------------------------------------
    @property
    def backbone(self) -> FeatureExtractor:
        if self._backbone is None:
            cfg = self.config
            self._backbone = load_backbone(
                cfg.backbone, cfg.layers, weights=cfg.weights, download=cfg.download
            ).to(self._device)
        return self._backbone

    @property
    def preprocess(self) -> Preprocess:
        spec = self.backbone.spec
        return Preprocess(self.config.resize, self.config.crop, spec.mean, spec.std)

    @property
    def is_fitted(self) -> bool:
        raise NotImplementedError

    def _seed(self) -> None:
        random.seed(self.config.seed)
        np.random.seed(self.config.seed)
        torch.manual_seed(self.config.seed)

    def _split(self, samples: list[Sample], val: Any) -> tuple[list[Sample], list[Sample]]:
        if val is not None:
            return samples, train_samples(val)[0]
        n_val = int(round(len(samples) * self.config.val_fraction))
        if self.config.val_fraction > 0 and len(samples) >= 5:
            n_val = max(n_val, 1)
        if n_val == 0:
            return samples, []
        order = np.random.default_rng(self.config.seed).permutation(len(samples))
        held = set(order[:n_val].tolist())
        return (
            [s for i, s in enumerate(samples) if i not in held],
            [s for i, s in enumerate(samples) if i in held],
        )

    def _batches(
        self, samples: Sequence[Sample], description: str, *, shuffle: bool = False
    ) -> Iterator[torch.Tensor]:
        """Preprocessed image batches on the detector's device; `shuffle` draws the order from
        torch's global generator, which `fit` seeds."""
        from anomap.data.dataset import ImageDataset

        dataset = ImageDataset(samples, self.preprocess)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.config.batch_size, shuffle=shuffle, num_workers=0
        )
        for batch in track(loader, description, total=len(loader)):
            yield batch["image"].to(self._device)

    def fit(self, data: Any, *, val: Any = None, select: Any = None) -> Detector:
        """Learn from normal images. A slice of them (`val_fraction`), or `val` when given,
        is held out to calibrate the decision threshold without any anomalous image.
        `select` (e.g. `anomap.selection.OracleSelection`) sees every epoch of a trained
        method and restores the epoch it prefers before calibration."""
        samples, categories = train_samples(data)
        if not samples:
            raise DataError("no training images")
        _ = self.backbone  # built first: building draws random numbers after the seed otherwise
        self._seed()
        train, held_out = self._split(samples, val)
        from anomap.data.dataset import validate_samples

        validate_samples(train + held_out, check_masks=False)
        self.categories = categories
        from anomap.selection import NormalValidation

        every = self.config.validate_every if isinstance(self.config, TrainingConfig) else 0
        callbacks = [select] if select is not None else []
        if every and held_out:
            callbacks.append(NormalValidation(held_out, every))
        self.epoch_end_callbacks.extend(callbacks)
        try:
            self._fit(train)
        finally:
            for callback in callbacks:
                self.epoch_end_callbacks.remove(callback)
        if select is not None:
            select.restore(self)
        self.calibration, self.category_calibration = None, {}
        if held_out:
            self._calibrate(held_out)
        return self

    def calibration_samples(self, normals: Any, category: str | None = None) -> list[Sample]:
        """The images of `normals` that set the threshold of `category` (or of every category
        of this model): from a dataset root, only the categories concerned; a plain folder
        counts as that category's. Refuses what would leave a category's threshold unset."""
        if not self.is_fitted:
            raise AnomapError(f"{type(self).__name__} is not fitted: call fit() first")
        if category is not None and category not in self.categories:
            known = ", ".join(self.categories) or "(none)"
            raise AnomapError(f"this model has no category {category!r}; it has: {known}")
        samples, _ = train_samples(normals)
        wanted = {category} if category is not None else set(self.categories)
        names = {s.category for s in samples}
        if names & wanted:
            samples = [s for s in samples if s.category in wanted]
        elif len(names) > 1:
            raise AnomapError(
                f"the normal images are of categories {', '.join(sorted(names))}; this model's "
                f"are {', '.join(self.categories)}"
            )
        if not samples:
            raise DataError("no normal images to calibrate with")
        missing = wanted - {s.category for s in samples}
        if category is None and len(self.categories) > 1 and missing:
            raise AnomapError(
                f"this model has a threshold per category; the normal images cover none of "
                f"{', '.join(sorted(missing))}: name the one category they show, or give a "
                "dataset root with normals of every category"
            )
        return samples

    def calibrate(
        self, normals: Any, *, category: str | None = None, quantile: float | None = None
    ) -> Prediction:
        """Set the decision threshold again from normal images, without training: more
        normals from the line, or another `quantile` (the share of normals to pass). With
        `category`, only that category's threshold of a model of several changes; otherwise
        every threshold is set as `fit` sets them from its held-out images (a dataset root
        gives each category its own). `normals` must be images the model was not trained on,
        which it has learnt to score low. Returns the normals' prediction under the new
        threshold."""
        samples = self.calibration_samples(normals, category)
        from anomap.data.dataset import validate_samples

        validate_samples(samples, check_masks=False)
        if quantile is not None:
            self.config = dataclasses.replace(self.config, threshold_quantile=quantile)
        return self._calibrate(samples, only=category)

    def _calibrate(self, held_out: list[Sample], only: str | None = None) -> Prediction:
        """A global threshold, plus one per category for a model of several categories
        (their score scales differ) from that category's held-out images; with `only`, just
        that category's (the global one in a model of one). Returns the held-out images'
        prediction under the new thresholds."""
        result = self.predict(held_out)
        scores = result.scores

        def fitted(rows: Any = slice(None)) -> Calibration:
            return calibrate(
                scores[rows],
                result.maps[rows],
                self.config.threshold_quantile,
                probabilities=self.probability_scores,
            )

        several = len(self.categories) > 1
        if only is not None and several:
            self.category_calibration[only] = fitted()
        else:
            self.calibration, self.category_calibration = fitted(), {}
            for name in self.categories if several else ():
                rows = [i for i, s in enumerate(held_out) if s.category == name]
                if rows:
                    self.category_calibration[name] = fitted(rows)
        pairs = [
            (self.calibration_for(only or s.category), x)
            for s, x in zip(held_out, scores, strict=True)
        ]
        return Prediction(
            scores,
            result.maps,
            np.array([cal.normalize(x) for cal, x in pairs], np.float32),
            np.array([bool(cal.decide(x)) for cal, x in pairs]),
        )

    def calibration_for(self, category: str | None) -> Calibration | None:
        """The threshold for images of `category`: its own when this model has one, else
        the global one."""
        return self.category_calibration.get(category or "", self.calibration)

    def _tensor_batches(self, images: Any) -> Iterator[torch.Tensor]:
        if isinstance(images, torch.Tensor):
            tensor = images if images.dim() == 4 else images[None]
            for start in range(0, len(tensor), self.config.batch_size):
                yield tensor[start : start + self.config.batch_size].to(self._device)
            return
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        if all(isinstance(x, (str, Path, Sample)) for x in images):
            samples = [x if isinstance(x, Sample) else Sample(Path(x), "") for x in images]
            yield from self._batches(samples, "predicting")
            return
        pre = self.preprocess
        for start in range(0, len(images), self.config.batch_size):
            chunk = images[start : start + self.config.batch_size]
            pils = [x if isinstance(x, Image.Image) else Image.fromarray(x) for x in chunk]
            yield torch.stack([pre.image(p.convert("RGB")) for p in pils]).to(self._device)

    @torch.inference_mode()
    def predict_tensor(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole inference path on a preprocessed batch: (image scores, smoothed maps).
        A reduced `inference_precision` runs the scoring under autocast (a method's `_score`
        turns it off for a head that would not gain); scores, upsampling and blur stay
        float32. ONNX export always traces float32."""
        dtype = PRECISIONS[self.config.inference_precision]
        if dtype is None or torch.onnx.is_in_onnx_export():
            image_scores, cells = self._score(images)
        else:
            with torch.autocast(self._device.type, dtype=dtype):
                image_scores, cells = self._score(images)
            image_scores, cells = image_scores.float(), cells.float()
        return image_scores, upsample(cells, tuple(images.shape[-2:]), sigma=self.config.blur_sigma)

    def predict(self, images: Any, *, category: str | None = None) -> Prediction:
        """Score image paths, PIL images, uint8 arrays or a preprocessed tensor batch;
        `category` picks its own threshold in a model trained on several."""
        if not self.is_fitted:
            raise AnomapError(f"{type(self).__name__} is not fitted: call fit() first")
        scores, maps = [], []
        for batch in self._tensor_batches(images):
            batch_scores, batch_maps = self.predict_tensor(batch)
            scores.append(batch_scores.float().cpu().numpy())
            maps.append(batch_maps.float().cpu().numpy())
        return Prediction.join(scores, maps, self.calibration_for(category))

    def save(self, path: str | Path) -> Path:
        """Write the model as one safetensors file with JSON metadata (no pickle)."""
        from anomap.artifact import save_detector

        return save_detector(self, Path(path))


class PatchFeatureDetector(Detector):
    """A method scoring PatchCore-style locally aware patch features (§1.2): PatchCore, and
    the SimpleNet family. Its config has `layer_dim` and `target_dim`."""

    @cached_property
    def aggregator(self) -> PatchAggregator:
        cfg = self.config
        return PatchAggregator(
            self.backbone.channels, layer_dim=cfg.layer_dim, target_dim=cfg.target_dim
        )

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W -> B×D×h×w locally aware patch features."""
        return self.aggregator(self.backbone(images))

    @contextmanager
    def _float32_head(self, images: torch.Tensor) -> Iterator[list[torch.Tensor]]:
        """The backbone's pooled `layer_maps` of `images`, in float32, for a block that scores
        them with autocast off. A reduced `inference_precision` thus runs only the backbone at
        it: these heads (PatchCore's search, the SimpleNet family's discriminator) are small
        products, resizing and minima, which bf16 slows down on a CPU (casts, bf16
        reductions) while rounding distances and probabilities."""
        features = self.backbone(images)
        with torch.autocast(images.device.type, enabled=False):
            yield self.aggregator.layer_maps([f.float() for f in features])
