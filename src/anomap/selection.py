"""Callbacks that watch training epochs: normal-only validation, and epoch selection on the
test set (the papers' protocol, kept for reproduction only).

GLASS, PBAS and SimpleNet evaluate on the test set after every epoch and report the epoch with
the best image AUROC + pixel AUROC (METHODS.md §2.4.6). That choice peeks at the anomalies the
model is being judged on, so anomap keeps the last epoch by default; `OracleSelection` is the
opt-in reproduction, and a model made with it records `selection: oracle` so that every report
shows it next to the numbers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from anomap.data.samples import Sample
from anomap.errors import DataError
from anomap.methods.training import fingerprint
from anomap.metrics import image_auroc, pixel_auroc


class FixedBatches:
    """Images scored again after many training epochs: decoded once, and their backbone
    features computed once (the backbone is frozen), so each later scoring runs only the
    trained head. Both stay in host memory and go to the detector's device a batch at a
    time, so a GPU holds no more than one batch of them. Gives what `predict_tensor` gives."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self.images: list[torch.Tensor] | None = None
        self.masks: np.ndarray | None = None  # N×H×W booleans, when the samples have masks
        # batch index -> {autocast dtype: that batch's features}, as `remembering` keeps them
        self._features: dict[int, dict[torch.dtype | None, list[torch.Tensor]]] = {}

    def _load(self, detector: Any) -> None:
        from anomap.data.dataset import ImageDataset

        dataset = ImageDataset(self.samples, detector.preprocess)
        items = [dataset[i] for i in range(len(dataset))]
        size = detector.config.batch_size
        self.images = [
            torch.stack([item["image"] for item in items[i : i + size]])
            for i in range(0, len(items), size)
        ]
        if any(s.mask_path is not None for s in self.samples):
            self.masks = np.stack([item["mask"][0].numpy() > 0.5 for item in items])

    def score(self, detector: Any) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (N) and smoothed maps (N×H×W) of the detector as it is now."""
        if self.images is None:
            self._load(detector)
        assert self.images is not None
        device = detector._device
        scores, maps = [], []
        for index, images in enumerate(self.images):
            batch = images.to(device)
            known = self._features.get(index, {})
            memory = {key: [f.to(device) for f in fs] for key, fs in known.items()}
            with detector.backbone.remembering(batch, memory):
                batch_scores, batch_maps = detector.predict_tensor(batch)
            self._features[index] = {key: [f.cpu() for f in fs] for key, fs in memory.items()}
            scores.append(batch_scores.float().cpu().numpy())
            maps.append(batch_maps.float().cpu().numpy())
        return np.concatenate(scores), np.concatenate(maps)


class NormalValidation:
    """Every `every` epochs, score the held-out normal images and add their mean and 99th
    percentile score to that epoch's history entry (`val_mean`, `val_q99`): a convergence
    signal that needs no anomalous image."""

    def __init__(self, held_out: list[Sample], every: int) -> None:
        self.held_out = FixedBatches(held_out)
        self.every = every

    def __call__(self, detector: Any, epoch: int, losses: dict[str, float]) -> None:
        if (epoch + 1) % self.every:
            return
        scores, _ = self.held_out.score(detector)
        losses.update(val_mean=float(np.mean(scores)), val_q99=float(np.quantile(scores, 0.99)))


class OracleSelection:
    """An epoch-end callback that keeps the weights of the epoch with the best
    I-AUROC + P-AUROC on `test` (strictly better replaces, as in the reference code);
    `restore` puts them back after training, and each scored epoch's history entry gets its
    score (`oracle`). Its state goes into training checkpoints, so an interrupted run resumes
    with the choice it had made. The test set's backbone features are computed once and kept
    in host memory for the whole training (about 4 MB per test image with WRN-50 at 288²,
    0.2 MB with Lite0 at 224²)."""

    checkpoint_key = "oracle"

    def __init__(self, test: list[Sample], *, every: int = 1, epochs: int | None = None) -> None:
        """`every` > 1 scores only every `every`-th epoch (and the last of `epochs`), a
        cheaper approximation of the reference's every-epoch choice."""
        labels = np.array([s.label for s in test])
        if len(set(labels.tolist())) < 2:
            raise DataError("oracle selection needs a test split with good and defective images")
        self.test = test
        self.every = every
        self.epochs = epochs
        # spent scoring in this process (not saved in checkpoints), so benchmarks can report
        # training time without it
        self.seconds = 0.0
        self.labels = labels
        self.best_score = -np.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.curve: list[float] = []
        self._batches = FixedBatches(test)

    def __call__(self, detector: Any, epoch: int, losses: dict[str, float]) -> None:
        if (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return
        start = time.perf_counter()
        self._score(detector, epoch)
        self.seconds += time.perf_counter() - start
        losses["oracle"] = self.curve[-1]  # in the epoch's history entry and progress bar

    def _score(self, detector: Any, epoch: int) -> None:
        scores, maps = self._batches.score(detector)
        score = image_auroc(self.labels, scores)
        if self._batches.masks is not None:
            score += pixel_auroc(self._batches.masks, maps)
        self.curve.append(float(score))
        if score > self.best_score:
            self.best_score = float(score)
            self.best_epoch = epoch
            self.best_state = {k: v.clone() for k, v in detector.state_tensors().items()}

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The best epoch's weights, and the choice so far as JSON."""
        meta = {
            "test_fingerprint": fingerprint(self.test),
            "best_score": None if self.best_epoch is None else self.best_score,
            "best_epoch": self.best_epoch,
            "curve": self.curve,
        }
        return dict(self.best_state or {}), meta

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if meta["test_fingerprint"] != fingerprint(self.test):
            raise DataError("its oracle scored other test images than this run's")
        self.best_epoch = meta["best_epoch"]
        self.best_score = -np.inf if self.best_epoch is None else meta["best_score"]
        self.best_state = tensors or None
        self.curve[:] = meta["curve"]  # in place: callers may hold the list

    def restore(self, detector: Any) -> None:
        """Load the best epoch's weights into `detector` and label it as oracle-selected."""
        if self.best_state is None:
            return
        detector.load_state_tensors(self.best_state)
        detector.training_info.update(
            selection="oracle",
            selected_epoch=self.best_epoch + 1,
            selection_metric="image_auroc + pixel_auroc on the test set",
            selection_score=self.best_score,
        )
