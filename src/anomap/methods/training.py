"""The epoch loop every trained method shares (GLASS, PBAS, UniAD), and its resumable
checkpoints.

A method builds its modules and optimisers and hands `_run_epochs` a function that trains one
epoch; the loop resumes from a checkpoint when asked, records each epoch's losses in
`history`, calls the detector's epoch-end callbacks (validation, model selection) and writes a
checkpoint every `checkpoint_every` epochs and after the last one.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomap.data.samples import Sample
from anomap.errors import AnomapError
from anomap.methods.base import Detector, TrainingConfig
from anomap.progress import duration, log_line

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_KIND = "anomap-training-checkpoint"
# settings that may change between a checkpoint and the run resuming from it
RESUMABLE_CHANGES = frozenset({"epochs", "checkpoint_dir", "checkpoint_every", "resume", "device"})

Optimisers = dict[str, torch.optim.Optimizer]
LOG_SECONDS = 30.0  # without a terminal, an epoch line at most this often (and the last)


class EpochPace:
    """Wall-clock seconds per epoch since this process started (or resumed) the run, callbacks
    such as the oracle's scoring included, and so the time left."""

    def __init__(self, first: int, total: int) -> None:
        self.first, self.total = first, total
        self.started = time.perf_counter()

    def text(self, done: int) -> str:
        """E.g. '19.1 s/epoch, 3:21:05 left', or '..., 3:24:00 in all' after the last epoch;
        empty before this process finished an epoch."""
        if done <= self.first:
            return ""
        elapsed = time.perf_counter() - self.started
        seconds = elapsed / (done - self.first)
        if done >= self.total:
            return f"{seconds:.3g} s/epoch, {duration(elapsed)} in all"
        return f"{seconds:.3g} s/epoch, {duration(seconds * (self.total - done))} left"


class EpochTrainedDetector(Detector):
    """A detector trained for `config.epochs` epochs, with `history` holding every
    completed epoch's mean losses (saved in checkpoints, shown in progress bars)."""

    config: TrainingConfig

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.history: list[dict[str, float]] = []
        self._pace: EpochPace | None = None

    # ---- precision ------------------------------------------------------------------------
    def _auto_mixed_precision(self) -> bool:
        """What `mixed_precision="auto"` means for this method: float32 unless it says."""
        return False

    @property
    def uses_mixed_precision(self) -> bool:
        setting = self.config.mixed_precision
        return self._auto_mixed_precision() if setting == "auto" else setting == "bf16"

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast for the trained modules' forward passes and losses when mixed
        precision is on: matrix products in bfloat16; parameters, optimiser state and the
        frozen backbone's features in float32, as inference computes them (caches are made
        outside autocast). bfloat16 keeps float32's range, so no loss scaling is needed."""
        return torch.autocast(
            self._device.type, dtype=torch.bfloat16, enabled=self.uses_mixed_precision
        )

    def _run_epochs(
        self,
        train: list[Sample],
        optimisers: Optimisers,
        train_epoch: Callable[[int], dict[str, float]],
        *,
        start_fresh: Callable[[], None] | None = None,
    ) -> None:
        """Train epochs `start..epochs-1`, where `start` is 0, or the checkpoint's count when
        resuming; `start_fresh` runs once before epoch 0 of a run that is not resumed."""
        cfg = self.config
        if self.uses_mixed_precision:
            self.training_info["precision"] = "bfloat16 autocast (mixed precision)"
        checkpoint = Checkpoint(Path(cfg.checkpoint_dir), train) if cfg.checkpoint_dir else None
        start = checkpoint.restore(self, optimisers) if checkpoint and cfg.resume else None
        if start is None:
            start, self.history = 0, []
            if start_fresh is not None:
                start_fresh()
        self._pace = EpochPace(start, cfg.epochs)
        logged = float("-inf")
        for epoch in range(start, cfg.epochs):
            self.history.append(train_epoch(epoch))
            for callback in self.epoch_end_callbacks:
                callback(self, epoch, self.history[-1])
            done = epoch + 1
            if checkpoint and (done % cfg.checkpoint_every == 0 or done == cfg.epochs):
                checkpoint.save(self, optimisers, done)
            if time.perf_counter() - logged >= LOG_SECONDS or done == cfg.epochs:
                logged = time.perf_counter()
                log_line(f"epoch {done}/{cfg.epochs} · {self._epoch_status(done)}")

    def _epoch_label(self, epoch: int) -> str:
        """Progress-bar text: the epoch, the previous epoch's losses and the time left."""
        status = self._epoch_status(epoch)
        return f"epoch {epoch + 1}/{self.config.epochs}" + (f" · {status}" if status else "")

    def _epoch_status(self, done: int) -> str:
        """The pace since this process started training, and the last finished epoch's
        losses (with the validation and oracle scores that history.json keeps)."""
        parts = []
        if self._pace is not None and (pace := self._pace.text(done)):
            parts.append(pace)  # first: a narrow terminal cuts the bar's text at its end
        if self.history:
            parts.append(" ".join(f"{k} {v:.4g}" for k, v in self.history[-1].items()))
        return " · ".join(parts)


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies, 0-d tensors (BatchNorm's batch count, Adam's step) as shape (1,):
    the artifact's integrity hash cannot view a 0-d tensor as bytes."""
    return {k: v.detach().cpu().reshape(v.shape or (1,)) for k, v in tensors.items()}


def fingerprint(samples: list[Sample]) -> str:
    """A digest of the samples' paths in order: which images a saved state was made from."""
    return hashlib.sha256("\n".join(str(s.path) for s in samples).encode()).hexdigest()


class Checkpoint:
    """Resumable training state in `folder/checkpoint.safetensors`, replaced atomically: the
    model tensors, both optimisers, the completed epoch count, the loss history, the RNG
    states (torch, CUDA, numpy, python) and the state of every epoch-end callback that has a
    `checkpoint_key` (the oracle's best epoch so far), as safetensors plus JSON; no pickle. A
    checkpoint is only resumed by a run with the same settings (except `RESUMABLE_CHANGES`)
    on the same training images in the same order."""

    def __init__(self, folder: Path, train: list[Sample]) -> None:
        self.path = folder / CHECKPOINT_FILE
        self.fingerprint = fingerprint(train)

    def save(
        self,
        detector: EpochTrainedDetector,
        optimisers: Optimisers,
        epochs_done: int,
    ) -> None:
        from anomap.artifact import write_artifact

        tensors = {f"model.{k}": v for k, v in detector.state_tensors().items()}
        groups, scalars = {}, []
        for name, optimiser in optimisers.items():
            state = optimiser.state_dict()
            for index, values in state["state"].items():
                for key, value in values.items():
                    value = torch.as_tensor(value)
                    tensors[f"optim.{name}.{index}.{key}"] = value
                    if value.dim() == 0:
                        scalars.append(f"optim.{name}.{index}.{key}")
            groups[name] = state["param_groups"]
        rng_tensors, rng_meta = _rng_state(detector._device)
        tensors.update(rng_tensors)
        callbacks = {}
        for key, callback in _stateful_callbacks(detector).items():
            callback_tensors, callbacks[key] = callback.checkpoint_state()
            tensors.update({f"callback.{key}.{k}": v for k, v in callback_tensors.items()})
        meta = {
            "kind": CHECKPOINT_KIND,
            "method": detector.method,
            "config": _resume_relevant(detector.config.to_dict()),
            "train_fingerprint": self.fingerprint,
            "epochs_done": epochs_done,
            "history": detector.history,
            "param_groups": groups,
            "rng": rng_meta,
            "scalars": scalars,  # saved as shape (1,), see storable
            "callbacks": callbacks,
        }
        write_artifact(self.path, storable(tensors), meta)

    def restore(self, detector: EpochTrainedDetector, optimisers: Optimisers) -> int | None:
        """Load the checkpoint into `detector` and `optimisers`; the number of completed
        epochs, or None when there is no checkpoint yet."""
        from anomap.artifact import read_artifact

        if not self.path.is_file():
            return None
        tensors, meta = read_artifact(self.path)
        self._check_compatible(detector, meta)
        for name in meta["scalars"]:
            tensors[name] = tensors[name].reshape(())
        detector.load_state_tensors(strip_prefix(tensors, "model."))
        for name, optimiser in optimisers.items():
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in strip_prefix(tensors, f"optim.{name}.").items():
                index, _, field = key.partition(".")
                state.setdefault(int(index), {})[field] = value
            optimiser.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
        detector.history = list(meta["history"])
        _set_rng_state(strip_prefix(tensors, "rng."), meta["rng"], detector._device)
        saved = meta.get("callbacks", {})
        for key, callback in _stateful_callbacks(detector).items():
            if key not in saved:
                raise AnomapError(
                    f"checkpoint {self.path} was made without {key} selection, so a resumed "
                    "run could only choose among the epochs after it; train afresh"
                )
            try:
                callback.load_checkpoint_state(
                    strip_prefix(tensors, f"callback.{key}."), saved[key]
                )
            except AnomapError as error:
                raise AnomapError(f"checkpoint {self.path}: {error}") from None
        return int(meta["epochs_done"])

    def _check_compatible(self, detector: EpochTrainedDetector, meta: dict[str, Any]) -> None:
        where = f"checkpoint {self.path}"
        if meta.get("kind") != CHECKPOINT_KIND or meta.get("method") != detector.method:
            raise AnomapError(f"{where} is not a {detector.method} training checkpoint")
        if meta["train_fingerprint"] != self.fingerprint:
            raise AnomapError(f"{where} was trained on other images; use another checkpoint_dir")
        current = _resume_relevant(detector.config.to_dict())
        # a setting added since the checkpoint was made counts as its default then
        saved = _resume_relevant({**type(detector.config)().to_dict(), **meta["config"]})
        changed = sorted(k for k in current.keys() | saved.keys() if current.get(k) != saved.get(k))
        if changed:
            raise AnomapError(f"{where} was made with other settings: {', '.join(changed)}")
        if meta["epochs_done"] > detector.config.epochs:
            raise AnomapError(
                f"{where} has {meta['epochs_done']} epochs done, more than epochs="
                f"{detector.config.epochs}"
            )


def _stateful_callbacks(detector: EpochTrainedDetector) -> dict[str, Any]:
    return {
        c.checkpoint_key: c for c in detector.epoch_end_callbacks if hasattr(c, "checkpoint_key")
    }


def _resume_relevant(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def _rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(keys.astype(np.int64)),
        "rng.python": torch.tensor(internal, dtype=torch.int64),
    }
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {"numpy": [kind, position, has_gauss, cached_gauss], "python": [version, gauss_next]}
    return tensors, meta


def _set_rng_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device
) -> None:
    torch.set_rng_state(tensors["torch"])
    if device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)
    kind, position, has_gauss, cached_gauss = meta["numpy"]
    keys = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, position, has_gauss, cached_gauss))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(tensors["python"].tolist()), gauss_next))
