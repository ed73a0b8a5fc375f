"""GLASS (Chen et al., "A Unified Anomaly Synthesis Strategy with Gradient Ascent for
Industrial Anomaly Detection and Localization", ECCV 2024; github.com/cqylunlun/GLASS), per
METHODS.md §2.

SimpleNet's adaptor P and sigmoid discriminator D (shared with PBAS in `simplenet_base`),
trained on three branches per batch (§2.4.5):
- normal: t = P(φ(x)), label 0;
- GAS: g = t + N(0, 0.015²), 20 normalised gradient-ascent steps of 0.001 on BCE(D(g), 1),
  truncated every 5 steps onto the shell [0.5, 1] around t (manifold) or [r, 2r] around the
  per-epoch centre (hypersphere; r = 0.75-quantile distance to the centre); label 1. Only the
  ascent increments are constants: the projections stay in the graph (pitfall 6). D runs 21
  times in train mode on [t; g], as in the reference, so BatchNorm's batch and running
  statistics match. t is fixed during the ascent, so its BatchNorm statistics are taken once
  per batch and the 20 ascent passes score g only (`Discriminator.batch_scores`, which takes
  the statistics in input space): the same values, a fraction of the work;
- LAS: a texture blended into the image inside a Perlin mask (restricted to the foreground),
  embedded like x; cells inside the mask label 1, outside 0; hypersphere classes project the
  in-mask cells onto [2r, 4r]; loss: focal (γ 2) on the hardest half (OHEM, p = 0.5).
L = BCE(D(t), 0) + BCE(D(g), 1) + focal. P: Adam(1e-4, wd 1e-5), D: AdamW(2e-4); batch 8;
640 epochs; an epoch stops once more than 392 images were seen. The centre is recomputed at
the start of every epoch with the current P (§2.4.2). The manifold/hypersphere choice comes
from the published per-class table (§2.4.4), else from the spectrum judge on the mean
training image (square resize to the crop size).

Deviations, all deliberate and named here (each run also records its own in `training_info`):
- Default backbone EfficientNet-Lite0 with 152-d features, not WRN-50-2 with 1536-d (see
  `simplenet_base`); pass `backbone="wide_resnet50_2", weights=FILE, layer_dim=1536,
  target_dim=1536` for the paper's features.
- Textures: `textures=DIR` (DTD) is faithful; without it a built-in procedural source is used
  and the run is labelled non-faithful.
- Foreground masks: `<data>/fg_mask/<class>/<file>` when present (faithful); MPDD classes use
  none (the reference's fg = 0); otherwise texture classes and close-ups whose object fills
  the frame (`fills_frame`) use none, and objects get an Otsu + morphology mask, labelled
  non-faithful.
- Preset "paper" (default) recomputes everything every epoch, as the reference. Preset "fast"
  caches the clean features once, and LAS views come from a pool of `las_pool` pre-computed
  views per image (a view is drawn at random each epoch) instead of a fresh view every epoch.
- Preset "fast" also evaluates the ascent's gradient once per projection block
  (`steps_per_gradient` = 5) and takes the block's 5 steps of 0.001 along it as one step of
  0.005, where "paper" evaluates it before every step: 4 gradients instead of 20, since the
  ascent is most of an epoch's cost. Within a block g moves at most 0.005, against a shell of
  radius ≥ 0.5 (manifold) or ≥ r (hypersphere), so the gradient barely turns. D then runs 5
  times per batch, so BatchNorm's running statistics take 5 updates, not 21. `gas_fraction`
  (default 1) can further restrict GAS and its two BCE terms to a random share of each
  batch's rows.
- The last epoch is kept; the reference picks the best test-set epoch (`--select oracle`).
- `fit` holds out `val_fraction` (10 %) of the training images to calibrate the threshold.
- Random draws (texture, operations, Perlin scales and angles, β) come from a generator seeded
  by (seed, epoch or view, image index), so runs and resumed runs are reproducible; the
  reference uses global generators and imgaug's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anomap.data.images import read_image, read_mask
from anomap.data.samples import Sample
from anomap.methods.base import _check
from anomap.methods.simplenet_base import (
    RowStatistics,
    SynthesisConfig,
    SynthesisDetector,
    TrainingFeatures,
    binary_cross_entropy,
)
from anomap.progress import track
from anomap.synthesis.distribution import (
    HYPERSPHERE,
    MANIFOLD,
    PUBLISHED_HYPOTHESIS,
    judge_hypothesis,
    mean_training_image,
    published_hypothesis,
)
from anomap.synthesis.foreground import (
    TEXTURE_CLASSES,
    fills_frame,
    foreground_mask,
    load_foreground_masks,
    looks_like_texture,
)
from anomap.synthesis.perlin import perlin_mask
from anomap.synthesis.textures import (
    DirectoryTextures,
    ProceduralTextures,
    augment_texture,
    blend,
    draw_blend_factor,
)

EPS = 1e-10
LABEL_SMOOTHING = 1e-5
VIEW_THREADS = 8  # LAS views made at once (capped by the CPU count)
FOREGROUND_MODES = ("auto", "files", "generated", "none")


@dataclass
class GLASSConfig(SynthesisConfig):
    preset: str = "paper"  # the faithful procedure by default; "fast" is the shortcut
    noise_std: float = 0.015
    ascent_steps: int = 20
    ascent_step_size: float = 0.001
    projection_interval: int = 5
    manifold_band: tuple[float, float] = (0.5, 1.0)
    radius_quantile: float = 0.75
    ohem_quantile: float = 0.5
    focal_gamma: float = 2.0
    sample_limit: int = 392
    hypothesis: str = "auto"  # auto (published table, else judge), manifold, hypersphere
    las: bool = True
    textures: str | None = None
    foreground: str = "auto"
    las_pool: int = 4
    # share of a batch's rows that seed GAS (and enter its two BCE terms)
    gas_fraction: float = 1.0
    # ascent steps taken along each evaluated gradient; None: 1 for "paper", the projection
    # block (gcd of ascent_steps and projection_interval) for "fast"
    steps_per_gradient: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.manifold_band = (float(self.manifold_band[0]), float(self.manifold_band[1]))
        _check(self.noise_std >= 0, "noise_std must be >= 0")
        _check(self.ascent_steps >= 0, "ascent_steps must be >= 0")
        _check(self.projection_interval >= 1, "projection_interval must be >= 1")
        _check(0 < self.manifold_band[0] <= self.manifold_band[1], "manifold_band: 0 < lo <= hi")
        _check(0 < self.radius_quantile < 1, "radius_quantile must be in (0, 1)")
        _check(0 <= self.ohem_quantile < 1, "ohem_quantile must be in [0, 1)")
        _check(self.sample_limit >= 1, "sample_limit must be >= 1")
        _check(
            self.hypothesis in ("auto", MANIFOLD, HYPERSPHERE),
            "hypothesis must be auto, manifold or hypersphere",
        )
        _check(self.foreground in FOREGROUND_MODES, f"foreground must be one of {FOREGROUND_MODES}")
        _check(self.las_pool >= 1, "las_pool must be >= 1")
        _check(0 < self.gas_fraction <= 1, "gas_fraction must be in (0, 1]")
        stride = self.steps_per_gradient
        _check(
            stride is None
            or (
                stride >= 1
                and self.ascent_steps % stride == 0
                and self.projection_interval % stride == 0
            ),
            "steps_per_gradient must divide both ascent_steps and projection_interval",
        )

    @property
    def gradient_stride(self) -> int:
        """Ascent steps per evaluated gradient, with None resolved by the preset."""
        if self.steps_per_gradient is not None:
            return self.steps_per_gradient
        if self.preset == "paper":
            return 1
        return math.gcd(self.ascent_steps, self.projection_interval)


# ---- the equations of §2.4.5, as functions of tensors -----------------------------------------
def truncated_projection(
    points: torch.Tensor,
    anchors: torch.Tensor,
    low: float | torch.Tensor,
    high: float | torch.Tensor,
) -> torch.Tensor:
    """anchor + clamp(‖h‖, low, high)/(‖h‖ + 1e-10)·h with h = point − anchor, row-wise:
    every point moved along its ray from the anchor into the shell [low, high]. Differentiable."""
    offsets = points - anchors
    norms = offsets.norm(dim=1, keepdim=True)
    return anchors + offsets * (norms.clamp(low, high) / (norms + EPS))


def ohem_focal_loss(
    scores: torch.Tensor, targets: torch.Tensor, quantile: float, gamma: float
) -> torch.Tensor:
    """Focal loss (α 1, smoothed one-hot) on the rows whose squared error (s − m)² is at least
    its `quantile`: the hardest part of the batch."""
    scores, targets = scores.reshape(-1).float(), targets.reshape(-1).float()
    errors = (scores - targets).detach() ** 2
    keep = errors >= torch.quantile(errors, quantile)
    s, m = scores[keep], targets[keep]
    # p_t = Σ_k y_k q_k with q = (1 − s, s) and y the smoothed one-hot of m
    high, low = 1 - LABEL_SMOOTHING, LABEL_SMOOTHING
    p_target = torch.where(m > 0.5, high * s + low * (1 - s), high * (1 - s) + low * s)
    p_target = p_target + LABEL_SMOOTHING
    return (-((1 - p_target) ** gamma) * p_target.log()).mean()


# ---- LAS views ---------------------------------------------------------------------------------
@dataclass
class LASView:
    """One training image as (clean x, augmented x_aug, grid mask M_s) tensors."""

    clean: torch.Tensor
    augmented: torch.Tensor
    cells: torch.Tensor


class LocalSynthesis:
    """Makes LAS views (§2.4.3) of training images with the detector's preprocessing: texture
    → 3 random operations → blend inside a Perlin mask restricted to the foreground."""

    def __init__(self, detector: GLASS, samples: list[Sample], grid: tuple[int, int]) -> None:
        cfg = detector.config
        self.detector = detector
        self.samples = samples
        self.grid = grid
        self.textures = DirectoryTextures(cfg.textures) if cfg.textures else ProceduralTextures()
        self.foreground_modes = detector._foreground_modes(samples)
        self.mask_files = [load_foreground_masks(None, s.category, [s.path])[0] for s in samples]
        self._foregrounds: dict[int, np.ndarray | None] = {}
        self._workers: ThreadPoolExecutor | None = None

    def views(self, requests: list[tuple[int, tuple[int, int]]]) -> list[LASView]:
        """`view` for each (index, key), made by a thread pool: decoding, texture warps and
        Perlin noise run on the CPU and release the GIL for much of their time, and on a GPU
        they, not the networks, set the pace of a `paper` epoch. Each view draws from its own
        seeded generator, so the result does not depend on the threads."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max(1, min(VIEW_THREADS, os.cpu_count() or 1)))
        return list(self._workers.map(lambda request: self.view(*request), requests))

    def _foreground(self, index: int, image: np.ndarray) -> np.ndarray | None:
        if index not in self._foregrounds:
            mode = self.foreground_modes[self.samples[index].category]
            pre = self.detector.preprocess
            mask = None
            if mode == "files":
                source = self.mask_files[index]
                if source is not None:
                    size = read_image(self.samples[index].path).size
                    mask = pre.mask(read_mask(source, expected_size=size))[0].numpy() > 0
            elif mode == "generated":
                mask = foreground_mask(image)
            self._foregrounds[index] = mask
        return self._foregrounds[index]

    def view(self, index: int, key: tuple[int, int]) -> LASView:
        """The LAS view of image `index` drawn from the generator seeded by (seed, *key,
        index): key (0, epoch) for "paper" runs, (1, view) for the "fast" pool."""
        cfg, pre = self.detector.config, self.detector.preprocess
        rng = np.random.default_rng([cfg.seed, *key, index])
        pil = pre.geometry(read_image(self.samples[index].path))
        image = np.asarray(pil)
        height, width = image.shape[:2]
        texture_source = self.textures.draw(rng)
        texture = pre.normalize(augment_texture(texture_source, (height, width), rng))
        pixels, cells = perlin_mask(
            (height, width), rng, grid=self.grid, foreground=self._foreground(index, image)
        )
        clean = pre.normalize(pil)
        augmented = blend(clean, texture, torch.from_numpy(pixels), draw_blend_factor(rng))
        return LASView(clean, augmented, torch.from_numpy(cells).flatten())


class GLASSFeatures(TrainingFeatures):
    """Batches of (φ(x), φ(x_aug), M_s) for GLASS, B×cells×D twice and B×cells.

    "paper": fresh LAS views every epoch, everything embedded again. "fast": φ(x) cached, and
    `las_pool` views per image embedded once; each epoch draws one view per image."""

    def __init__(self, detector: GLASS, samples: list[Sample], cache: bool) -> None:
        super().__init__(detector, samples, cache)
        self.synthesis = (
            LocalSynthesis(detector, samples, detector._grid()) if detector.config.las else None
        )
        self.pool: tuple[torch.Tensor, torch.Tensor] | None = None
        if cache and self.synthesis is not None:
            self.pool = self._compute_pool()
        self.epoch = 0

    @torch.no_grad()
    def _compute_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.detector.config
        count, cells, dim = self.cache.shape
        shape = (cfg.las_pool, count, cells, dim)
        # on a GPU the pool stays there when it fits in half the free memory: gathering a
        # batch on the CPU and copying it over cost more than the training step itself
        device = torch.device("cpu")
        if self.cache.is_cuda:
            free, _ = torch.cuda.mem_get_info(self.cache.device)
            if 2 * math.prod(shape) <= free // 2:  # float16: 2 bytes per value
                device = self.cache.device
        features = torch.empty(shape, dtype=torch.float16, device=device)
        masks = torch.empty((cfg.las_pool, count, cells), dtype=torch.uint8, device=device)
        jobs = [(v, i) for v in range(cfg.las_pool) for i in range(count)]
        size = cfg.batch_size
        for start in track(
            range(0, len(jobs), size), "synthesising LAS views", total=-(-len(jobs) // size)
        ):
            chunk = jobs[start : start + size]
            views = self.synthesis.views([(i, (1, v)) for v, i in chunk])
            embedded = self.detector._embed_cells(
                torch.stack([v.augmented for v in views]).to(self.detector._device)
            )
            for (v, i), view, row in zip(chunk, views, embedded, strict=True):
                features[v, i] = row.to(device, torch.float16)
                masks[v, i] = view.cells.to(device, torch.uint8)
        return features, masks

    def clean_batches(self, description: str) -> Iterator[torch.Tensor]:
        """φ(x) of every training image once, unshuffled (for the per-epoch centre)."""
        yield from super().batches(description, shuffle=False)

    def batches(self, description: str, *, shuffle: bool = True) -> Iterator[Any]:
        """One epoch of (φ(x), φ(x_aug) or None, M_s or None) batches, stopping once more
        than `sample_limit` images were seen (§2.4.5 step 7)."""
        detector, cfg = self.detector, self.detector.config
        count = len(self.samples)
        order = torch.randperm(count) if shuffle else torch.arange(count)
        if self.pool is not None:
            variants = torch.randint(cfg.las_pool, (count,))
        seen = 0
        starts = list(range(0, count, cfg.batch_size))
        for start in track(starts, description, total=len(starts)):
            index = order[start : start + cfg.batch_size]
            if self.cache is not None:
                clean = self.cache[index.to(self.cache.device)].float()
            if self.synthesis is None:
                augmented = cells = None
                if self.cache is None:
                    clean = detector._embed_cells(self._images(index))
            elif self.pool is not None:
                pick, rows = (x.to(self.pool[0].device) for x in (variants[index], index))
                augmented = self.pool[0][pick, rows].to(detector._device).float()
                cells = self.pool[1][pick, rows].to(detector._device).float()
            else:
                views = self.synthesis.views([(int(i), (0, self.epoch)) for i in index])
                images = torch.stack([v.clean for v in views] + [v.augmented for v in views])
                embedded = detector._embed_cells(images.to(detector._device))
                clean, augmented = embedded.split(len(views))
                cells = torch.stack([v.cells for v in views]).to(detector._device)
            yield clean, augmented, cells
            seen += len(index)
            if seen > cfg.sample_limit:
                break

    def _images(self, index: torch.Tensor) -> torch.Tensor:
        pre = self.detector.preprocess
        images = [pre.image(read_image(self.samples[int(i)].path)) for i in index]
        return torch.stack(images).to(self.detector._device)


class GLASS(SynthesisDetector):
    """Global and local anomaly co-synthesis; see the module docstring."""

    method = "glass"
    Config = GLASSConfig
    config: GLASSConfig

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.centres: torch.Tensor | None = None
        self.hypersphere = False

    # ---- decisions made once per training run ---------------------------------------------------
    def _grid(self) -> tuple[int, int]:
        height, width = self.preprocess.output_size
        with torch.no_grad():
            probe = self._embed(torch.zeros(1, 3, height, width, device=self._device))
        return tuple(probe.shape[-2:])

    def _foreground_modes(self, samples: list[Sample]) -> dict[str, str]:
        """Per category, where LAS masks may go: "files" (the authors' fg_mask folder,
        faithful), "none" (all pixels; faithful for MPDD, whose reference runs use fg = 0) or
        "generated". Decided per category, so a unified model over textures and objects
        treats each as its own run would."""
        groups: dict[str, list[Sample]] = {}
        for sample in samples:
            groups.setdefault(sample.category, []).append(sample)
        modes = {name: self._foreground_mode(name, group) for name, group in groups.items()}
        distinct = sorted(set(modes.values()))
        self.training_info["foreground"] = distinct[0] if len(distinct) == 1 else modes
        return modes

    def _foreground_mode(self, category: str, samples: list[Sample]) -> str:
        mode = self.config.foreground
        mpdd = category in PUBLISHED_HYPOTHESIS["mpdd"]
        if mode == "auto":
            if load_foreground_masks(None, category, [samples[0].path])[0]:
                mode = "files"
            elif mpdd or category in set().union(*TEXTURE_CLASSES.values()):
                mode = "none"
            else:
                preview = [np.asarray(read_image(s.path).resize((128, 128))) for s in samples[:16]]
                texture_or_close_up = looks_like_texture(preview) or fills_frame(preview)
                mode = "none" if texture_or_close_up else "generated"
        if mode == "generated" or (mode == "none" and not mpdd):
            self._non_faithful(f"foreground masks: {mode} instead of the authors' fg_mask files")
        return mode

    def _choose_hypothesis(self, train: list[Sample]) -> None:
        cfg = self.config
        if cfg.hypothesis != "auto":
            choice, source = cfg.hypothesis, "forced by the hypothesis setting"
        else:
            published = {published_hypothesis(None, name) for name in self.categories}
            if len(published) == 1 and None not in published:
                choice, source = published.pop(), "published per-class table"
            else:
                size = self.preprocess.output_size
                images = (np.asarray(read_image(s.path).resize(size[::-1])) for s in train)
                result = judge_hypothesis(mean_training_image(images))
                choice = result.hypothesis
                source = (
                    f"spectrum judge (n={result.n}, radius={result.radius:.1f}, "
                    f"l1={result.l1_density:.3f}, l2={result.l2_density:.3f})"
                )
        self.hypersphere = choice == HYPERSPHERE
        self.training_info.update(hypothesis=choice, hypothesis_source=source)

    def _non_faithful(self, what: str) -> None:
        notes = [n for n in self.training_info.get("non_faithful", "").split("; ") if n]
        if what not in notes:
            self.training_info["non_faithful"] = "; ".join([*notes, what])

    # ---- training hooks -------------------------------------------------------------------------
    def _training_features(self, train: list[Sample]) -> TrainingFeatures:
        cfg = self.config
        self._choose_hypothesis(train)
        if cfg.las and not cfg.textures:
            self._non_faithful(ProceduralTextures.description)
        if not cfg.las:
            self._non_faithful("LAS off (GAS only)")
        self.training_info["ascent"] = (
            f"{cfg.ascent_steps} steps of {cfg.ascent_step_size:g}, a gradient every "
            f"{cfg.gradient_stride}, on {cfg.gas_fraction:.0%} of the rows"
        )
        return GLASSFeatures(self, train, cache=cfg.preset == "fast")

    @torch.no_grad()
    def _start_epoch(self, features: TrainingFeatures, epoch: int) -> None:
        """c: the mean of per-batch means of P(φ(x)) over the training set (§2.4.2)."""
        assert isinstance(features, GLASSFeatures)
        features.epoch = epoch
        means = [self.adaptor(batch).mean(dim=0) for batch in features.clean_batches("centre")]
        self.centres = torch.stack(means).mean(dim=0)

    def _losses(self, batch: Any) -> dict[str, torch.Tensor]:
        cfg = self.config
        clean, augmented, cells = batch
        dim = clean.shape[-1]
        # float32 rows even under autocast: the ascent adds steps of 0.001 to them
        true_features = self.adaptor(clean.reshape(-1, dim)).float()
        centres = self.centres.repeat(len(clean), 1)
        fake = mask = None
        if augmented is not None:
            fake = self.adaptor(augmented.reshape(-1, dim)).float()
            mask = cells.reshape(-1)
        radius = self._radius(true_features, fake, mask, centres)
        terms = self._gas_losses(true_features, centres, radius)
        if fake is not None:
            if self.hypersphere:
                inside = (mask > 0.5)[:, None]
                projected = truncated_projection(fake, centres, 2 * radius, 4 * radius)
                fake = torch.where(inside, projected, fake)
            scores = self.discriminator(fake)
            terms["focal"] = ohem_focal_loss(scores, mask, cfg.ohem_quantile, cfg.focal_gamma)
        return terms

    @torch.no_grad()
    def _radius(
        self,
        true_features: torch.Tensor,
        fake: torch.Tensor | None,
        mask: torch.Tensor | None,
        centres: torch.Tensor,
    ) -> torch.Tensor:
        """r_t: the 0.75-quantile distance to the centre over the normal rows of both views."""
        distances = [(true_features - centres).norm(dim=1)]
        if fake is not None:
            outside = mask < 0.5
            distances.append((fake[outside] - centres[outside]).norm(dim=1))
        return torch.quantile(torch.cat(distances), self.config.radius_quantile)

    def _gas_losses(
        self, true_features: torch.Tensor, centres: torch.Tensor, radius: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Global anomaly synthesis and the two BCE terms, the last of 21 D passes (§2.4.5);
        "fast" makes 4 ascent passes of 5 steps each."""
        cfg = self.config
        if cfg.gas_fraction < 1:  # GAS and its two BCE terms on a random share of rows
            keep = torch.randperm(len(true_features), device=true_features.device)
            keep = keep[: max(2, round(cfg.gas_fraction * len(keep)))]
            true_features, centres = true_features[keep], centres[keep]
        disc = self.discriminator
        # t is fixed during the ascent: its BatchNorm statistics are taken once, and each
        # ascent pass scores only g, normalised with the statistics of [t; g] (§2.4.5)
        true_statistics = RowStatistics.of(true_features.detach())
        synthetic = true_features + cfg.noise_std * torch.randn_like(true_features)
        stride = cfg.gradient_stride
        for step in range(0, cfg.ascent_steps + 1, stride):
            if step == cfg.ascent_steps:
                both = RowStatistics.of(true_features) + RowStatistics.of(synthetic)
                normal, anomalous = disc.batch_scores(both, true_features, synthetic)
                normal_loss = binary_cross_entropy(normal, 0.0)
                synthetic_loss = binary_cross_entropy(anomalous, 1.0)
                break
            batch = true_statistics + RowStatistics.of(synthetic)
            (scores,) = disc.batch_scores(batch, synthetic)
            (gradient,) = torch.autograd.grad(binary_cross_entropy(scores, 1.0), [synthetic])
            gradient = gradient / (gradient.norm(dim=1, keepdim=True) + EPS)
            synthetic = synthetic + stride * cfg.ascent_step_size * gradient
            if (step + stride) % cfg.projection_interval == 0:
                if self.hypersphere:
                    synthetic = truncated_projection(synthetic, centres, radius, 2 * radius)
                else:
                    low, high = cfg.manifold_band
                    synthetic = truncated_projection(synthetic, true_features, low, high)
        return {"normal": normal_loss, "gas": synthetic_loss}
