"""PBAS (Chen et al., "Progressive Boundary Guided Anomaly Synthesis for Industrial Anomaly
Detection", IEEE TCSVT 2024; github.com/cqylunlun/PBAS), per METHODS.md §3.

Faithful to §3.4: the adaptor P and sigmoid discriminator D of GLASS; one bank of centres (one
per grid cell) built once before epoch 0 by feature-aligned EMA with the fresh P and no
gradient over a shuffled pass (first batch C ← M, then row by row in order: the most
cosine-similar centre moves 10 % towards the row, later rows seeing earlier updates); per
step, each adapted feature t is assigned its most cosine-similar centre c, r = mean ‖t − c‖,
AFS pushes f = t + sg[k·r·(t − c)/‖t − c‖] with k = 0.25, and L = r + BCE(D(t), 0) +
BCE(D(f), 1) with D run once on [t; f] (joint BatchNorm statistics); P steps, then D.
P: Adam(1e-4, wd 1e-5), D: AdamW(2e-4), batch 8, 640 epochs, seed 0. Inference: the sigmoid
cell score, image score = max over cells, bilinear upsampling and Gaussian σ = 4.
PBAS needs no textures and no foreground masks: a folder of good images is enough.

Deviations, all deliberate and named here:
- Default backbone EfficientNet-Lite0 (stride-8/16 stages, 40 + 112 channels) with 152-d
  features (each channel's 3×3 neighbourhood mean; see `simplenet_base`), not WRN-50-2 with
  1536-d. For the paper's setting pass `backbone="wide_resnet50_2", weights=FILE,
  layer_dim=1536, target_dim=1536`.
- Default preset "fast" caches φ(x) once (same algorithm; float16 cache only beyond 2 GiB).
- The last epoch is kept; the reference picks the epoch with the best test-set AUROC.
- `fit` holds out `val_fraction` (10 %) of the training images to calibrate the decision
  threshold, so P and D see 90 %; pass `val_fraction=0` (or `val=`) to train on all of them.
- ‖t − c‖ is floored at 1e-12 in the AFS direction, so a feature exactly on its centre
  gets no push instead of NaN.
- 640 epochs are the default, as in the paper; on a CPU use fewer (`epochs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anomap.methods.base import _check
from anomap.methods.simplenet_base import (
    SynthesisConfig,
    SynthesisDetector,
    TrainingFeatures,
    binary_cross_entropy,
)

CENTRE_MOMENTUM = 0.9  # C_idx ← 0.9·C_idx + 0.1·M_j


@dataclass
class PBASConfig(SynthesisConfig):
    afs_scale: float = 0.25  # k: the push length in units of the mean normal radius r

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.afs_scale > 0, "afs_scale must be > 0")


def align_centres(centres: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Feature-aligned EMA: for each row of `means` in order, move its most cosine-similar
    centre 10 % towards it. Sequential, so later rows see earlier updates and several rows
    may move the same centre. Returns new centres (cells×D)."""
    centres = centres.clone()
    directions = F.normalize(centres, dim=1)
    for row in means:
        # argmax of cos(row, C_r) over r; 1/‖row‖ is a common positive factor
        index = int(torch.mv(directions, row).argmax())
        centres[index] = CENTRE_MOMENTUM * centres[index] + (1 - CENTRE_MOMENTUM) * row
        directions[index] = F.normalize(centres[index], dim=0)
    return centres


@torch.no_grad()
def nearest_centres(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """For each row of `features` (N×D), its most cosine-similar centre (N×D), constant."""
    index = (features @ F.normalize(centres, dim=1).T).argmax(dim=1)
    return centres[index]


def synthesise_anomalies(
    features: torch.Tensor, centres: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """AFS: f = t + sg[k·r·(t − c)/‖t − c‖], each feature pushed outward from its centre by
    k times the mean radius r = mean‖t − c‖. Returns (f, r); r keeps its gradient (it is
    also the ABL loss) while the push is a constant, so ∂f/∂t is the identity."""
    offsets = features - centres
    distances = offsets.norm(dim=1, keepdim=True)
    radius = distances.mean()
    push = scale * radius * offsets / distances.clamp_min(1e-12)
    return features + push.detach(), radius


class PBAS(SynthesisDetector):
    """Progressive boundary-guided anomaly synthesis; see the module docstring."""

    method = "pbas"
    Config = PBASConfig
    config: PBASConfig

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        self.centres: torch.Tensor | None = None

    @torch.no_grad()
    def _initialise(self, features: TrainingFeatures) -> None:
        centres = None
        for batch in features.batches("aligning centres"):
            means = self.adaptor(batch).mean(dim=0)  # cells×D
            centres = means if centres is None else align_centres(centres, means)
        self.centres = centres

    def _losses(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        adapted = self.adaptor(features.reshape(-1, features.shape[-1])).float()
        centres = nearest_centres(adapted, self.centres)
        synthetic, radius = synthesise_anomalies(adapted, centres, self.config.afs_scale)
        scores = self.discriminator(torch.cat([adapted, synthetic]))
        normal, anomalous = scores.split(len(adapted))
        bce = binary_cross_entropy(normal, 0.0) + binary_cross_entropy(anomalous, 1.0)
        return {"svdd": radius, "bce": bce}

    def _method_tensors(self) -> dict[str, torch.Tensor]:
        return {"centres": self.centres}

    def _load_method_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.centres = tensors["centres"].float().to(self._device)
