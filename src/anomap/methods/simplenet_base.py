"""What the SimpleNet family (SimpleNet, GLASS, PBAS; METHODS.md §1–§3) shares, once.

All three train a linear adaptor P and an MLP discriminator D on frozen, locally aware patch
features φ(x), and score a cell as D(P(φ(x))). They differ only in how anomalous features are
synthesised and in the loss, so a method here supplies `_losses` (and optionally the hooks
`_initialise`, `_start_epoch`, `_method_tensors`); this base owns the feature embedding, the
modules and optimisers, one epoch of training, inference and saving; the epoch loop and
resumable checkpoints come from `anomap.methods.training`.

Presets (`preset`):
- "paper": every epoch reads, decodes and embeds the training images again, as the reference
  code does. Needed by methods whose image-level augmentation changes every epoch (GLASS).
- "fast" (PBAS's default; GLASS defaults to "paper"): the backbone is frozen, so φ(x) of
  every training image is computed once and kept in memory on the training device (float32,
  or float16 when float32 would exceed 2 GiB), and each epoch trains P and D from that cache.
  For a method without image-level augmentation (PBAS) this is the same algorithm; runs
  differ from "paper" runs only in float rounding and in the shuffled order the RNG draws,
  not in what is computed.

Feature dimensions: the paper pools WRN-50-2's 512 + 1024 channels to 1536/1536 (each
dimension averages 6 or 12 neighbourhood values). With the default EfficientNet-Lite0
(40 + 112 channels) the defaults `layer_dim=None, target_dim=None` keep each channel's 3×3
neighbourhood mean, 152 dimensions, each averaging 9 values: the same degree of pooling, and
pooling 360/1008 neighbourhood values up to 1536 would only repeat them.

Model selection keeps the last epoch; `fit(..., select=OracleSelection(test))` reproduces the
papers' test-set selection (see `anomap.selection`), and the model is labelled with it.

Preprocessing follows §2.2: shorter side to 288, centre crop 288, except 329 → 288 when every
training category is MVTec's toothbrush or wood, as the reference loaders do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomap.data.samples import Sample
from anomap.features import FoldedLinear, patch_rows
from anomap.methods.base import PatchFeatureDetector, TrainingConfig, _check, native_bf16
from anomap.methods.leaky_head import LEAKY_SLOPE, leaky_relu_head
from anomap.methods.training import EpochTrainedDetector, Optimisers, storable, strip_prefix
from anomap.progress import track

ADAPTOR_WEIGHT_DECAY = 1e-5  # Adam, as in GLASS/PBAS
DISCRIMINATOR_WEIGHT_DECAY = 0.01  # AdamW's default, as in GLASS/PBAS
CACHE_FLOAT32_LIMIT = 2 << 30  # bytes; a larger feature cache is kept as float16
PAPER_SIZE = 288
HEAD_CHUNK_ROWS = 1024
# the reference code resizes MVTec toothbrush and wood to 329 before the 288 crop (§2.2, §3.2)
LARGER_RESIZE_CLASSES = frozenset({"toothbrush", "wood"})
LARGER_RESIZE = 329


class Adaptor(nn.Linear):
    """P: one Linear D→D with bias, Xavier-normal weight, PyTorch's default bias (§1.3)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)
        nn.init.xavier_normal_(self.weight)


class Discriminator(nn.Module):
    """D: Linear(D→hidden) → BatchNorm1d → LeakyReLU(0.2) → Linear(hidden→1, no bias) →
    Sigmoid (§2.3); Xavier-normal Linear weights. Output: anomaly probability per row.

    In train mode the batch's BatchNorm statistics are taken in input space (`batch_scores`),
    and the hidden layer, activation and head run as one operation (`leaky_relu_head`), so a
    pass touches the n×hidden values a few times, not once per element-wise step."""

    def __init__(self, dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, 1, bias=False)
        for linear in (self.hidden, self.head):
            nn.init.xavier_normal_(linear.weight)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if self.norm.training:
            return self.batch_scores(RowStatistics.of(rows), rows)[0]
        return self._activate(self.norm(self.hidden(rows)))

    def batch_scores(self, batch: RowStatistics, *row_sets: torch.Tensor) -> list[torch.Tensor]:
        """D's train-mode output for each of `row_sets`, BatchNorm normalising with the
        statistics of `batch` (the rows of one batch, scored here or not) and updating its
        running statistics once, as one pass over that batch does. W₁ is linear, so the
        hidden layer's batch mean is W₁m + b₁ and its variance diag(W₁SW₁ᵀ)/n for the rows'
        mean m and scatter S, and BN(W₁x + b₁) = (x − m)·(s·W₁)ᵀ + β with s = γ/√(var + ε):
        no normalisation pass over the n×hidden values and no concatenation; values and
        gradients equal the module's up to float rounding (tested). b₁ cancels, as in
        BatchNorm, whose gradient for it is zero up to rounding; here it gets none, so AdamW
        leaves it be instead of decaying it (the inference fold subtracts the running mean,
        which tracks b₁ either way)."""
        norm, linear = self.norm, self.hidden
        with torch.autocast(linear.weight.device.type, enabled=False):
            weight = linear.weight
            variance = ((weight @ batch.scatter) * weight).sum(dim=1) / batch.count
            folded = weight * (norm.weight * torch.rsqrt(variance + norm.eps))[:, None]
        if norm.training and norm.track_running_stats:
            with torch.no_grad():
                norm.num_batches_tracked.add_(1)
                momentum = norm.momentum
                if momentum is None:  # a cumulative average, as BatchNorm does then
                    momentum = 1.0 / float(norm.num_batches_tracked)
                mean = weight @ batch.mean + linear.bias
                unbiased = variance * (batch.count / (batch.count - 1))
                norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
                norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)
        head = self.head.weight[0]
        return [
            torch.sigmoid(leaky_relu_head(rows - batch.mean, folded, norm.bias, head))[:, None]
            for rows in row_sets
        ]

    def _activate(self, normalised: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(F.leaky_relu(normalised, LEAKY_SLOPE)))


@dataclass
class RowStatistics:
    """Count, mean and centred scatter Σ(x − m)(x − m)ᵀ of a set of D's input rows, in
    float32; differentiable. D's BatchNorm statistics follow from them (`batch_scores`)."""

    count: int
    mean: torch.Tensor
    scatter: torch.Tensor

    @classmethod
    def of(cls, rows: torch.Tensor) -> RowStatistics:
        with torch.autocast(rows.device.type, enabled=False):
            rows = rows.float()
            mean = rows.mean(dim=0)
            centred = rows - mean
            return cls(len(rows), mean, centred.T @ centred)

    def __add__(self, other: RowStatistics) -> RowStatistics:
        """The statistics of both sets of rows together (Chan et al.'s pairwise update)."""
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        spread = torch.outer(delta, delta) * (self.count * other.count / total)
        return RowStatistics(total, mean, self.scatter + other.scatter + spread)


def binary_cross_entropy(probabilities: torch.Tensor, target: float) -> torch.Tensor:
    """BCE of D's sigmoid outputs against a constant label, in float32 and outside autocast
    (CUDA autocast refuses BCE on probabilities; bfloat16 logs would lose the small losses)."""
    with torch.autocast(probabilities.device.type, enabled=False):
        probabilities = probabilities.float()
        return F.binary_cross_entropy(probabilities, torch.full_like(probabilities, target))


@dataclass
class SynthesisConfig(TrainingConfig):
    resize: int | tuple[int, int] = 288
    crop: int | None = 288
    preset: str = "fast"
    epochs: int = 640
    layer_dim: int | None = None
    target_dim: int | None = None
    discriminator_hidden: int = 1024
    adaptor_lr: float = 1e-4
    discriminator_lr: float = 2e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.preset in ("paper", "fast"), "preset must be 'paper' or 'fast'")
        _check(self.discriminator_hidden >= 1, "discriminator_hidden must be >= 1")
        _check(self.adaptor_lr > 0 and self.discriminator_lr > 0, "learning rates must be > 0")


class TrainingFeatures:
    """φ(x) of the training images as B×cells×D batches: from a cache computed once ("fast")
    or recomputed from the images on every pass ("paper")."""

    def __init__(self, detector: SynthesisDetector, samples: list[Sample], cache: bool) -> None:
        self.detector = detector
        self.samples = samples
        self.cache = self._compute_cache() if cache else None

    @torch.no_grad()
    def _compute_cache(self) -> torch.Tensor:
        cache: torch.Tensor | None = None
        start = 0
        for images in self.detector._batches(self.samples, "caching features"):
            cells = self.detector._embed_cells(images)
            if cache is None:
                float32_bytes = cells[0].numel() * 4 * len(self.samples)
                dtype = torch.float32 if float32_bytes <= CACHE_FLOAT32_LIMIT else torch.float16
                shape = (len(self.samples), *cells.shape[1:])
                cache = torch.empty(shape, dtype=dtype, device=cells.device)
            cache[start : start + len(cells)] = cells
            start += len(cells)
        return cache

    def batches(self, description: str, *, shuffle: bool = True) -> Iterator[torch.Tensor]:
        """One pass; the shuffled order is drawn from torch's global generator (checkpointed)."""
        if self.cache is None:
            for images in self.detector._batches(self.samples, description, shuffle=shuffle):
                yield self.detector._embed_cells(images)
            return
        count = len(self.cache)
        order = torch.randperm(count) if shuffle else torch.arange(count)
        size = self.detector.config.batch_size
        starts = range(0, count, size)
        for start in track(starts, description, total=len(starts)):
            yield self.cache[order[start : start + size].to(self.cache.device)].float()


class SynthesisDetector(EpochTrainedDetector, PatchFeatureDetector):
    """Adaptor + discriminator on frozen patch features, trained on synthesised anomalies.
    See the module docstring for presets, dimensions, checkpoints and model selection."""

    Config = SynthesisConfig
    config: SynthesisConfig
    probability_scores = True  # the largest sigmoid output of D

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.adaptor: Adaptor | None = None
        self.discriminator: Discriminator | None = None
        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- what methods implement -------------------------------------------------------
    def _losses(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch of φ(x), B×cells×D; their sum is minimised."""
        raise NotImplementedError

    def _initialise(self, features: TrainingFeatures) -> None:
        """Once before epoch 0 of a fresh (not resumed) run, e.g. PBAS's centres."""

    def _start_epoch(self, features: TrainingFeatures, epoch: int) -> None:
        """Before every epoch, e.g. GLASS's per-epoch centre from the current adaptor."""

    def _method_tensors(self) -> dict[str, torch.Tensor]:
        """Method state saved with P and D in models and checkpoints."""
        return {}

    def _load_method_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `_method_tensors` saved."""

    # ---- features and modules -----------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.discriminator is not None

    @torch.no_grad()
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """φ(x); the backbone never needs gradients."""
        return super()._embed(images)

    def _embed_cells(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W -> B×cells×D, cells in row-major grid order."""
        return patch_rows(self._embed(images)).reshape(len(images), -1, self.aggregator.out_dim)

    def _build_modules(self) -> None:
        dim = self.aggregator.out_dim
        self.adaptor = Adaptor(dim).to(self._device)
        self.discriminator = Discriminator(dim, self.config.discriminator_hidden).to(self._device)
        self._folded = None

    def _optimisers(self) -> Optimisers:
        """P: Adam(lr, wd 1e-5); D: AdamW(lr, wd 0.01); stepped in this order (P, then D)."""
        cfg = self.config
        return {
            "adaptor": torch.optim.Adam(
                self.adaptor.parameters(), lr=cfg.adaptor_lr, weight_decay=ADAPTOR_WEIGHT_DECAY
            ),
            "discriminator": torch.optim.AdamW(
                self.discriminator.parameters(),
                lr=cfg.discriminator_lr,
                weight_decay=DISCRIMINATOR_WEIGHT_DECAY,
            ),
        }

    # ---- training -----------------------------------------------------------------------
    def _auto_mixed_precision(self) -> bool:
        """bfloat16 autocast for "fast" where bfloat16 is native (a CUDA GPU, a CPU with
        AVX512-BF16 or AMX); "paper" trains in float32, as the reference does."""
        return self.config.preset == "fast" and native_bf16(self._device)

    def _training_features(self, train: list[Sample]) -> TrainingFeatures:
        """What each epoch iterates; a method with image-level synthesis (GLASS) returns a
        source whose batches also carry its augmented views."""
        return TrainingFeatures(self, train, cache=self.config.preset == "fast")

    def _fit(self, train: list[Sample]) -> None:
        cfg = self.config
        if (
            cfg.resize == PAPER_SIZE
            and cfg.crop == PAPER_SIZE
            and self.categories
            and set(self.categories) <= LARGER_RESIZE_CLASSES
        ):
            cfg.resize = LARGER_RESIZE
            self.training_info["resize_exception"] = f"{LARGER_RESIZE} for {self.categories}"
        self._build_modules()
        optimisers = self._optimisers()
        features = self._training_features(train)

        def train_epoch(epoch: int) -> dict[str, float]:
            self._start_epoch(features, epoch)
            return self._train_epoch(features, optimisers, epoch)

        self._run_epochs(
            train, optimisers, train_epoch, start_fresh=lambda: self._initialise(features)
        )

    def _train_epoch(
        self, features: TrainingFeatures, optimisers: Optimisers, epoch: int
    ) -> dict[str, float]:
        """One pass: per batch, zero both optimisers, back-propagate the summed losses, step P
        then D. Returns the epoch's mean of every loss term and of their total ("loss")."""
        self.adaptor.train()
        self.discriminator.train()
        self._folded = None  # the weights are about to change
        sums: dict[str, float] = {}
        steps = 0
        for batch in features.batches(self._epoch_label(epoch)):
            for optimiser in optimisers.values():
                optimiser.zero_grad(set_to_none=True)
            with self.autocast():
                terms = self._losses(batch)
            total = sum(terms.values())
            total.backward()
            for optimiser in optimisers.values():
                optimiser.step()
            for name, value in {**terms, "loss": total}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            steps += 1
        return {name: value / steps for name, value in sums.items()}

    # ---- inference and state ------------------------------------------------------------
    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell score D(P(φ(x))) in (0, 1) with BatchNorm's running statistics; image score
        = the largest raw cell score (§2.5, §3.5). P, D's first Linear and its BatchNorm fold
        into one Linear (`_folded_hidden_layer`), evaluated on the per-layer maps by
        `FoldedLinear`, in float32 (`_float32_head`: bf16 would round probabilities near 1
        into ties)."""
        self.adaptor.eval()
        self.discriminator.eval()
        with self._float32_head(images) as layers:
            batch, _, height, width = layers[0].shape
            hidden_layer = FoldedLinear(self.aggregator, *self._folded_hidden_layer(), layers)
            head = self.discriminator.head.weight.T
            # on a CPU, image chunks keep the 1024-wide hidden layer in cache (≈1.6× faster
            # head); one chunk on a GPU and when exporting (a traced loop would freeze the
            # batch size)
            chunks = [layers]
            if not (images.is_cuda or torch.onnx.is_in_onnx_export()):
                step = max(1, HEAD_CHUNK_ROWS // (height * width))
                chunks = [[x[i : i + step] for x in layers] for i in range(0, batch, step)]
            scores = [torch.mm(F.leaky_relu_(hidden_layer(c), LEAKY_SLOPE), head) for c in chunks]
            cells = torch.cat(scores).sigmoid_().reshape(batch, height, width)
        return cells.flatten(1).max(dim=1).values, cells

    def _folded_hidden_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """P, D's first Linear and D's BatchNorm (running statistics) are all affine at
        inference, so they fold into one Linear: BN(W₁(Ax + a) + b₁) = W'x + b'. One matmul
        instead of two plus a normalisation pass over B·cells×1024 values; equal to the
        unfolded modules up to float rounding (tested). Folded once per set of weights, in
        float32 even under autocast: every training epoch, module build and load clears it
        (folding on every call cost 5 % of a batch-1 prediction's operations with Lite0)."""
        if self._folded is None:
            norm, hidden = self.discriminator.norm, self.discriminator.hidden
            with torch.autocast(self._device.type, enabled=False):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                weight = (hidden.weight @ self.adaptor.weight) * scale[:, None]
                bias = (hidden.weight @ self.adaptor.bias + hidden.bias - norm.running_mean) * scale
            self._folded = weight.detach(), (bias + norm.bias).detach()
        return self._folded

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"adaptor.{k}": v for k, v in self.adaptor.state_dict().items()}
        tensors.update(
            {f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()}
        )
        tensors.update(self._method_tensors())
        return storable(tensors)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load into the existing modules (so optimisers keep pointing at them), building
        them first when this detector has none yet."""
        if self.adaptor is None:
            self._build_modules()
        for name, module in (("adaptor", self.adaptor), ("discriminator", self.discriminator)):
            own = module.state_dict()
            saved = strip_prefix(tensors, f"{name}.")
            module.load_state_dict(
                {k: v.reshape(own[k].shape) if k in own else v for k, v in saved.items()}
            )
        self._folded = None
        self._load_method_tensors(tensors)
