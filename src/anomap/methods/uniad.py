"""UniAD (You et al., "A Unified Model for Multi-class Anomaly Detection", NeurIPS 2022;
github.com/zhiyuanyou/UniAD), per METHODS.md §4.

One model for all categories, trained on the union of their normal images without labels
(`fit` on a dataset folder or a list of Categories does exactly that). Frozen multi-scale
features are resized to the stride-16 grid (bilinear, align_corners=True) and concatenated;
the 14×14 tokens (at 224²) are jittered during training (f ← f + ε·(‖f‖/C)·20, ε ~ N(0, I)),
projected to 256-d and reconstructed by a post-norm transformer: a neighbour-masked encoder
(attention may not see the 7×7 window around a token, the token included) and a layer-wise
query decoder (each layer's own learned query attends first to the encoder output, then to
the previous decoder output; the same mask in all three attentions), a final LayerNorm and
a projection back to C channels. Learned positional embedding [column ‖ row], U[0, 1) init,
added to queries and keys only. Xavier-uniform Linear weights with zero biases; MHA input
projections, LayerNorms and embeddings keep PyTorch's init. As in the reference, the layers
are deep copies of one built layer before that init, so the decoder queries and the MHA
input projections start out equal across layers (they are separate parameters and diverge
in training). Loss: MSE between the reconstruction and the un-jittered features. AdamW(1e-4,
betas (0.9, 0.999), wd 1e-4), global gradient norm clipped to 0.1, batch 8, shuffled, 1000
epochs, the last kept. Map: per-token L2 reconstruction error, bilinearly upsampled
(align_corners=True) to the input size, no smoothing; image score: max of the 16×16
average-pooled (stride 1) map.

Learning rate: the reference calls `StepLR(800, 0.1).step(epoch)` after each epoch, whose
closed form gives epoch e the rate lr·γ^(max(e − 1, 0) // 800): 1e-4 for epochs 0–800 and
1e-5 after. We set exactly that rate at the start of every epoch, so resuming needs no
scheduler state.

Deviations, all deliberate and named here:
- Default backbone EfficientNet-Lite0 (timm stages 0–3: 16/24/40/112 = 192 channels at
  strides 2/4/8/16), not EfficientNet-b4 (24/32/56/160 = 272 channels, same strides). For
  the paper's channel layout pass `backbone="tf_efficientnet_b4", weights=FILE`: timm's
  TF-ported weights, not the lukemelas port the reference loads, and without its static
  "SAME" padding of block 6 (§4.2), so features differ slightly.
- The backbone is frozen and UniAD has no augmentation, so every training image's features
  are computed once and kept (float32, on the training device); each epoch trains from that
  cache. The same algorithm as re-reading the images every epoch.
- `fit` holds out `val_fraction` (10 %) of the training images to calibrate the decision
  threshold; pass `val_fraction=0` (or `val=`) to train on all of them, as the paper does.
- Seed 0 through `Detector._seed`, not the reference's 133 (numpy 133, torch 133², …).
- Jitter is applied on every training forward pass (the reference's `prob: 1.0`) without
  its Python `random` draw; `jitter_scale=0` turns it off.
- The input size must be fixed (`resize=(h, w)` or a crop) and a multiple of 16, and
  `neighbor_size` odd (the reference widens an even size by one) and smaller than the larger
  grid side: otherwise some token would have every key masked and attend to NaN.
- `_score` returns the map already upsampled with align_corners=True; `Detector.predict`'s
  own bilinear resize to the same size is then an identity.
- `mixed_precision="bf16"` trains under bfloat16 autocast (LayerNorms, softmax and the loss in
  float32, as autocast decides); off by default ("auto" means off here: the reference trains
  in float32). benchmarks/training_precision.py measures what it changes.
- No validation on the test set every 10 epochs (the reference logs it and keeps a "best"
  checkpoint, but evaluates the latest one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomap.data.samples import Sample
from anomap.methods.base import TrainingConfig, _check
from anomap.methods.training import EpochTrainedDetector
from anomap.postprocess import upsample
from anomap.progress import track

FEATURE_STRIDE = 16  # the neck's output stride: 224² input -> 14×14 tokens
IMAGE_POOL = 16  # avg-pool kernel of the "max" image score


@dataclass
class UniADConfig(TrainingConfig):
    resize: int | tuple[int, int] = (224, 224)
    crop: int | None = None
    blur_sigma: float = 0.0
    layers: tuple[int, ...] | None = (0, 1, 2, 3)
    hidden_dim: int = 256
    heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    feedforward_dim: int = 1024
    dropout: float = 0.1
    neighbor_size: int = 7
    jitter_scale: float = 20.0
    epochs: int = 1000
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    lr_step_epoch: int = 800
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.crop is not None or not isinstance(self.resize, int),
            "UniAD needs a fixed input size: resize=(h, w) or a crop",
        )
        height, width = self.input_size
        _check(
            height % FEATURE_STRIDE == 0 and width % FEATURE_STRIDE == 0,
            f"the input size must be a multiple of {FEATURE_STRIDE}, got {height}×{width}",
        )
        _check(self.hidden_dim >= 2 and self.hidden_dim % 2 == 0, "hidden_dim must be even")
        divisible = self.heads >= 1 and self.hidden_dim % self.heads == 0
        _check(divisible, "heads must divide hidden_dim")
        _check(self.encoder_layers >= 1 and self.decoder_layers >= 1, "layer counts must be >= 1")
        _check(self.feedforward_dim >= 1, "feedforward_dim must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(self.neighbor_size >= 1 and self.neighbor_size % 2 == 1, "neighbor_size must be odd")
        _check(
            self.neighbor_size < max(self.feature_size),
            f"neighbor_size {self.neighbor_size} masks every token of the "
            f"{self.feature_size[0]}×{self.feature_size[1]} grid for some query",
        )
        _check(self.jitter_scale >= 0, "jitter_scale must be >= 0")
        _check(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0, weight_decay >= 0")
        _check(self.grad_clip > 0, "grad_clip must be > 0")
        _check(self.lr_step_epoch >= 1, "lr_step_epoch must be >= 1")
        _check(0 < self.lr_gamma <= 1, "lr_gamma must be in (0, 1]")

    @property
    def input_size(self) -> tuple[int, int]:
        if self.crop is not None:
            return (self.crop, self.crop)
        return (int(self.resize[0]), int(self.resize[1]))

    @property
    def feature_size(self) -> tuple[int, int]:
        height, width = self.input_size
        return (height // FEATURE_STRIDE, width // FEATURE_STRIDE)


def neighbour_mask(height: int, width: int, size: int) -> torch.Tensor:
    """(h·w)×(h·w) additive attention mask: −inf where key j lies in the size×size window
    centred on query i (clipped at the borders, i itself included), 0 elsewhere. Tokens are
    row-major. A query with every key blocked would get NaN attention, so that is refused."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    row_gap = (rows[:, None] - rows[None]).abs()
    col_gap = (cols[:, None] - cols[None]).abs()
    near = (row_gap <= size // 2) & (col_gap <= size // 2)
    if near.all(dim=1).any():
        raise ValueError(f"a {size}×{size} window masks every key of a {height}×{width} grid")
    return torch.zeros(near.shape).masked_fill(near, float("-inf"))


def feature_jitter(tokens: torch.Tensor, scale: float) -> torch.Tensor:
    """tokens + ε·(‖f‖/C)·scale per token f ∈ R^C, ε ~ N(0, I): noise proportional to each
    token's norm. The divisor is C, not √C, as in the reference."""
    norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
    return tokens + torch.randn_like(tokens) * norms * scale


class LearnedPosition(nn.Module):
    """pos(h, w) = [col[w] ‖ row[h]], both tables U[0, 1); shared by all layers."""

    def __init__(self, height: int, width: int, dim: int) -> None:
        super().__init__()
        self.row = nn.Embedding(height, dim // 2)
        self.col = nn.Embedding(width, dim // 2)
        nn.init.uniform_(self.row.weight)
        nn.init.uniform_(self.col.weight)

    def forward(self) -> torch.Tensor:
        """(h·w)×dim, row-major."""
        height, width = self.row.num_embeddings, self.col.num_embeddings
        col = self.col.weight[None].expand(height, -1, -1)
        row = self.row.weight[:, None].expand(-1, width, -1)
        return torch.cat([col, row], dim=-1).reshape(height * width, -1)


class FeedForward(nn.Module):
    """W₂·Drop(ReLU(W₁·x)), the FFN of every layer."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Post-norm, neighbour-masked self-attention then FFN; tokens×B×dim."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.ffn = FeedForward(dim, hidden, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = src + pos
        attended = self.attention(q, q, src, attn_mask=mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class DecoderLayer(nn.Module):
    """Post-norm layer with its own learned query (N(0, 1) init): attends to the encoder
    output, then to the previous decoder output, then FFN; tokens×B×dim."""

    def __init__(self, tokens: int, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.query = nn.Embedding(tokens, dim)
        self.memory_attention = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.previous_attention = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.ffn = FeedForward(dim, hidden, dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(
        self, previous: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        query = self.query.weight[:, None].expand(-1, memory.shape[1], -1)
        attended = self.memory_attention(
            query + pos, memory + pos, memory, attn_mask=mask, need_weights=False
        )[0]
        z = self.norm1(query + self.dropout1(attended))
        attended = self.previous_attention(
            z + pos, previous + pos, previous, attn_mask=mask, need_weights=False
        )[0]
        z = self.norm2(z + self.dropout2(attended))
        return self.norm3(z + self.dropout3(self.ffn(z)))


class Reconstructor(nn.Module):
    """UniAD's trainable part: B×C×h×w features -> their B×C×h×w reconstruction; jitters the
    input tokens in training mode only."""

    def __init__(
        self,
        channels: int,
        feature_size: tuple[int, int],
        *,
        hidden_dim: int = 256,
        heads: int = 8,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
        neighbor_size: int = 7,
        jitter_scale: float = 20.0,
    ) -> None:
        super().__init__()
        height, width = feature_size
        self.jitter_scale = jitter_scale
        self.input_proj = nn.Linear(channels, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, channels)
        self.position = LearnedPosition(height, width, hidden_dim)
        encoder = EncoderLayer(hidden_dim, heads, feedforward_dim, dropout)
        decoder = DecoderLayer(height * width, hidden_dim, heads, feedforward_dim, dropout)
        self.encoder = nn.ModuleList(copy.deepcopy(encoder) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(copy.deepcopy(decoder) for _ in range(decoder_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.register_buffer("mask", neighbour_mask(height, width, neighbor_size), persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):  # includes the MHA out_proj
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = features.shape
        tokens = features.flatten(2).permute(2, 0, 1)  # (h·w)×B×C, row-major
        if self.training and self.jitter_scale > 0:
            tokens = feature_jitter(tokens, self.jitter_scale)
        pos = self.position()[:, None]
        memory = self.input_proj(tokens)
        for layer in self.encoder:
            memory = layer(memory, pos, self.mask)
        out = memory
        for layer in self.decoder:
            out = layer(out, memory, pos, self.mask)
        rec = self.output_proj(self.norm(out))
        return rec.permute(1, 2, 0).reshape(batch, channels, height, width)


class UniAD(EpochTrainedDetector):
    """Feature reconstruction by a neighbour-masked transformer; see the module docstring."""

    method = "uniad"
    Config = UniADConfig
    config: UniADConfig

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.model: Reconstructor | None = None

    @property
    def is_fitted(self) -> bool:
        return self.model is not None

    def _build_model(self) -> None:
        cfg = self.config
        self.model = Reconstructor(
            sum(self.backbone.channels),
            cfg.feature_size,
            hidden_dim=cfg.hidden_dim,
            heads=cfg.heads,
            encoder_layers=cfg.encoder_layers,
            decoder_layers=cfg.decoder_layers,
            feedforward_dim=cfg.feedforward_dim,
            dropout=cfg.dropout,
            neighbor_size=cfg.neighbor_size,
            jitter_scale=cfg.jitter_scale,
        ).to(self._device)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W -> B×C×h×w: every stage bilinearly resampled (align_corners=True) to the
        stride-16 grid and concatenated in stage order."""
        size = self.config.feature_size
        maps = [
            F.interpolate(m, size=size, mode="bilinear", align_corners=True)
            for m in self.backbone(images)
        ]
        return torch.cat(maps, dim=1)

    # ---- training -----------------------------------------------------------------------
    def _fit(self, train: list[Sample]) -> None:
        cfg = self.config
        self._build_model()
        features = torch.cat([self._features(x) for x in self._batches(train, "caching features")])
        optimiser = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay
        )
        # a resumed run restores torch's generator after caching: creating a DataLoader
        # iterator draws from it
        self._run_epochs(
            train, {"model": optimiser}, lambda epoch: self._train_epoch(features, optimiser, epoch)
        )

    def _epoch_lr(self, epoch: int) -> float:
        """The reference's `StepLR.step(epoch)` after each epoch, in closed form."""
        cfg = self.config
        return cfg.lr * cfg.lr_gamma ** (max(epoch - 1, 0) // cfg.lr_step_epoch)

    def _train_epoch(
        self, features: torch.Tensor, optimiser: torch.optim.Optimizer, epoch: int
    ) -> dict[str, float]:
        """One shuffled pass over the cached features (order from torch's global generator,
        which checkpoints save); returns the epoch's mean loss and its learning rate."""
        cfg = self.config
        lr = self._epoch_lr(epoch)
        for group in optimiser.param_groups:
            group["lr"] = lr
        self.model.train()
        order = torch.randperm(len(features))
        starts = range(0, len(features), cfg.batch_size)
        total = torch.zeros((), device=features.device)
        for start in track(starts, self._epoch_label(epoch), total=len(starts)):
            batch = features[order[start : start + cfg.batch_size].to(features.device)]
            with self.autocast():
                loss = F.mse_loss(self.model(batch), batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            optimiser.step()
            total += loss.detach() * len(batch)
        return {"loss": float(total) / len(features), "lr": lr}

    # ---- inference and state ------------------------------------------------------------
    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token L2 reconstruction error upsampled to the input size with
        align_corners=True (returned at that size, see the module docstring); image score =
        max of its 16×16 stride-1 average pool."""
        self.model.eval()
        features = self._features(images)
        errors = (self.model(features) - features).pow(2).sum(dim=1).sqrt()
        size = tuple(images.shape[-2:])
        maps = upsample(errors, size, align_corners=True)
        # the moving mean of the upsampled map, taken straight from the token grid
        pooled = upsample(errors, size, align_corners=True, window=IMAGE_POOL)
        return pooled.flatten(1).max(dim=1).values, maps

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load into the existing model (so an optimiser keeps pointing at it), building it
        first when this detector has none yet."""
        if self.model is None:
            self._build_model()
        self.model.load_state_dict(tensors)
