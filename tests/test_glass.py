"""GLASS (METHODS.md §2.4): projection, focal loss, GAS gradient path, LAS views, end to end."""

import numpy as np
import pytest
import torch
from PIL import Image

import anomap.artifact
from anomap.data.layouts import discover
from anomap.errors import AnomapError
from anomap.methods.glass import GLASS, GLASSFeatures, ohem_focal_loss, truncated_projection
from anomap.methods.simplenet_base import Adaptor, Discriminator

TINY = {
    "resize": 64,
    "crop": 64,
    "batch_size": 4,
    "device": "cpu",
    "val_fraction": 0.0,
    "discriminator_hidden": 64,
}


def test_truncated_projection_lands_in_the_shell_along_the_ray():
    torch.manual_seed(0)
    anchors = torch.randn(500, 16)
    offsets = torch.randn(500, 16) * torch.logspace(-2, 1, 500)[:, None]
    points = anchors + offsets
    projected = truncated_projection(points, anchors, 0.5, 1.0)
    distances = (projected - anchors).norm(dim=1)
    assert distances.min() >= 0.5 - 1e-5 and distances.max() <= 1.0 + 1e-5
    cosine = torch.nn.functional.cosine_similarity(projected - anchors, offsets, dim=1)
    torch.testing.assert_close(cosine, torch.ones(500))
    inside = (offsets.norm(dim=1) >= 0.5) & (offsets.norm(dim=1) <= 1.0)
    torch.testing.assert_close(projected[inside], points[inside])  # already in the shell
    radius = torch.tensor(0.3)
    hyper = truncated_projection(points, anchors, radius, 2 * radius)
    assert ((hyper - anchors).norm(dim=1) <= 0.6 + 1e-5).all()
    assert ((hyper - anchors).norm(dim=1) >= 0.3 - 1e-5).all()


def test_projection_keeps_the_gradient_path():
    points = torch.randn(4, 3, requires_grad=True)
    anchors = torch.randn(4, 3, requires_grad=True)
    truncated_projection(points, anchors, 0.5, 1.0).sum().backward()
    assert points.grad.abs().sum() > 0 and anchors.grad.abs().sum() > 0


def test_ohem_focal_loss_by_hand():
    scores = torch.tensor([0.1, 0.9, 0.6, 0.2])
    targets = torch.tensor([0.0, 0.0, 1.0, 1.0])
    # errors (s − m)²: 0.01, 0.81, 0.16, 0.64; the median is 0.4, so rows 1 and 3 are kept
    p1 = (1 - 1e-5) * 0.1 + 1e-5 * 0.9 + 1e-5  # target 0: q = 1 − s = 0.1
    p3 = (1 - 1e-5) * 0.2 + 1e-5 * 0.8 + 1e-5  # target 1: q = s = 0.2
    expected = np.mean([-((1 - p) ** 2) * np.log(p) for p in (p1, p3)])
    loss = ohem_focal_loss(scores, targets, 0.5, 2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def make_detector(hypersphere: bool, **settings) -> GLASS:
    torch.manual_seed(0)
    detector = GLASS(**{**TINY, **settings})
    detector.adaptor, detector.discriminator = Adaptor(8), Discriminator(8, 16)
    detector.hypersphere = hypersphere
    detector.centres = torch.zeros(6, 8)
    return detector


def module_pass(disc: Discriminator, rows: torch.Tensor) -> torch.Tensor:
    """D as the reference writes it, module after module (BatchNorm on the hidden layer)."""
    hidden = torch.nn.functional.leaky_relu(disc.norm(disc.hidden(rows)), 0.2)
    return torch.sigmoid(disc.head(hidden))


def record_passes(detector: GLASS) -> list[tuple[int, torch.Tensor]]:
    """For each train-mode pass of D from now on: its batch size and the last rows it scores
    (g in GLASS's ascent)."""
    disc, passes = detector.discriminator, []
    score = disc.batch_scores

    def recording(batch, *row_sets):
        passes.append((batch.count, row_sets[-1].detach().clone()))
        return score(batch, *row_sets)

    disc.batch_scores = recording
    return passes


@pytest.mark.parametrize("hypersphere", [False, True])
def test_gas_runs_21_discriminator_passes_and_reaches_the_adaptor(hypersphere):
    detector = make_detector(hypersphere)
    clean = torch.randn(2, 6, 8)
    augmented = torch.randn(2, 6, 8)
    cells = torch.tensor([[0, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    terms = detector._losses((clean, augmented, cells))
    assert set(terms) == {"normal", "gas", "focal"}
    # 21 train-mode passes on [t; g] in the ascent loop, 1 on the LAS features
    assert int(detector.discriminator.norm.num_batches_tracked) == 22
    terms["gas"].backward()
    assert detector.adaptor.weight.grad.abs().sum() > 0  # through t and the projections


def straightforward_gas(detector, true_features, centres, radius):
    """§2.4.5 as the reference writes it: every pass is D(cat([t, g]))."""
    cfg, disc = detector.config, detector.discriminator
    count = len(true_features)
    synthetic = true_features + cfg.noise_std * torch.randn_like(true_features)
    for step in range(cfg.ascent_steps + 1):
        scores = module_pass(disc, torch.cat([true_features, synthetic]))
        normal = torch.nn.functional.binary_cross_entropy(scores[:count], torch.zeros(count, 1))
        fake = torch.nn.functional.binary_cross_entropy(scores[count:], torch.ones(count, 1))
        if step == cfg.ascent_steps:
            return {"normal": normal, "gas": fake}
        (gradient,) = torch.autograd.grad(fake, [synthetic])
        synthetic = synthetic + cfg.ascent_step_size * gradient / (
            gradient.norm(dim=1)[:, None] + 1e-10
        )
        if (step + 1) % cfg.projection_interval == 0:
            if detector.hypersphere:
                synthetic = truncated_projection(synthetic, centres, radius, 2 * radius)
            else:
                synthetic = truncated_projection(synthetic, true_features, *cfg.manifold_band)


@pytest.mark.parametrize("hypersphere", [False, True])
def test_gas_equals_the_straightforward_loop(hypersphere):
    """The shortcut ascent (t's BatchNorm statistics taken once, only g scored) gives the
    reference's losses, gradients and BatchNorm running statistics."""
    results = []
    for gas in (None, straightforward_gas):
        detector = make_detector(hypersphere, ascent_steps=10, noise_std=0.3, ascent_step_size=0.2)
        adaptor = detector.adaptor
        true_features = adaptor(torch.randn(30, 8) * 2)
        torch.manual_seed(1)
        args = (true_features, torch.zeros(30, 8), torch.tensor(0.5))
        terms = (gas or type(detector)._gas_losses)(detector, *args)
        sum(terms.values()).backward()
        norm = detector.discriminator.norm
        results.append((terms, adaptor.weight.grad, norm.running_mean, norm.running_var))
    (got, got_grad, *got_stats), (want, want_grad, *want_stats) = results
    for name in ("normal", "gas"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got_stats, want_stats)


@pytest.mark.parametrize(("preset", "fraction", "rows"), [("paper", 1.0, 24), ("fast", 0.25, 6)])
def test_gas_fraction_picks_the_rows_gas_runs_on(preset, fraction, rows):
    detector = make_detector(False, preset=preset, gas_fraction=fraction, ascent_steps=2)
    passes = record_passes(detector)
    true_features = torch.randn(24, 8, requires_grad=True)  # as P(φ(x)) is
    detector._gas_losses(true_features, torch.zeros(24, 8), torch.tensor(1.0))
    assert [count for count, _ in passes] == [2 * rows] * 3  # [t; g] over the kept rows


@pytest.mark.parametrize(
    ("settings", "passes"),
    [
        ({"preset": "paper"}, 21),
        ({"preset": "fast"}, 5),  # a gradient per projection block of 5 steps, and the last
        ({"preset": "fast", "ascent_steps": 21}, 22),  # gcd(21, 5) = 1
        ({"preset": "paper", "steps_per_gradient": 5, "ascent_steps": 10}, 3),
    ],
)
def test_steps_per_gradient_sets_the_number_of_ascent_passes(settings, passes):
    detector = make_detector(False, **settings)
    detector._gas_losses(torch.randn(12, 8, requires_grad=True), torch.zeros(12, 8), 1.0)
    assert int(detector.discriminator.norm.num_batches_tracked) == passes


def test_steps_per_gradient_must_fit_the_projection_blocks():
    with pytest.raises(AnomapError, match="steps_per_gradient"):
        GLASS(steps_per_gradient=3)  # 20 steps, blocks of 5
    with pytest.raises(AnomapError, match="steps_per_gradient"):
        GLASS(steps_per_gradient=0)


@pytest.mark.parametrize("hypersphere", [False, True])
def test_fast_ascent_lands_close_to_the_faithful_one(hypersphere):
    """At the paper's scales (noise 0.015, steps of 0.001, shells of radius ≥ 0.5), what the
    ascent adds to the bare projection of the starting noise is reproduced within a few per
    cent when each block's 5 steps follow its first gradient."""
    runs = []
    for stride in (1, 5):
        detector = make_detector(hypersphere, steps_per_gradient=stride)
        passes = record_passes(detector)  # g before every pass
        torch.manual_seed(1)
        true_features = (torch.randn(64, 8) * 0.3).requires_grad_()  # as P(φ(x)) is
        detector._gas_losses(true_features, torch.zeros(64, 8), torch.tensor(0.5))
        runs.append((passes[0][1], passes[-1][1]))
    (start, faithful), (same_start, fast) = runs
    torch.testing.assert_close(start, same_start)
    anchors = torch.zeros(64, 8) if hypersphere else true_features.detach()
    low, high = (0.5, 1.0)  # the manifold band, and [r, 2r] with r = 0.5
    ascent = (faithful - truncated_projection(start, anchors, low, high)).norm(dim=1)
    gap = (faithful - fast).norm(dim=1)
    assert ascent.min() > 0.01  # the faithful ascent does move every g
    assert gap.mean() < 0.03 * ascent.mean()
    assert (gap < 0.5 * ascent).all()


def test_gas_synthetic_features_lie_in_the_manifold_band():
    detector = make_detector(False, ascent_steps=5, projection_interval=5)
    passes = record_passes(detector)
    true_features = torch.randn(12, 8, requires_grad=True)  # as P(φ(x)) is
    detector._gas_losses(true_features, torch.zeros(12, 8), torch.tensor(1.0))
    final = passes[-1][1]  # the last pass scores g after the projection at step 5
    distances = (final - true_features.detach()).norm(dim=1)
    assert distances.min() >= 0.5 - 1e-5 and distances.max() <= 1.0 + 1e-5


def test_training_steps_reduce_the_loss():
    detector = make_detector(False, adaptor_lr=1e-2, discriminator_lr=1e-2, ascent_steps=4)
    batch = (torch.randn(2, 6, 8) + 1, torch.randn(2, 6, 8) * 3, torch.ones(2, 6) * 0.0)
    batch[2][:, :2] = 1
    optimisers = detector._optimisers()

    class Same:
        def batches(self, description, shuffle=True):
            yield batch

    losses = [detector._train_epoch(Same(), optimisers, 0)["loss"] for _ in range(25)]
    assert losses[-1] < 0.8 * losses[0]


@pytest.fixture(scope="module")
def category(synth_root):
    return next(c for c in discover(synth_root) if c.name == "pill")  # an object category


def test_las_views_and_sample_limit(category):
    detector = GLASS(**TINY, sample_limit=5)
    detector.categories = [category.name]
    detector._build_modules()
    features = GLASSFeatures(detector, list(category.train), cache=False)
    assert features.synthesis.grid == (8, 8)
    view = features.synthesis.view(0, (0, 3))
    again = features.synthesis.view(0, (0, 3))
    assert torch.equal(view.augmented, again.augmented)  # reproducible from (seed, key, index)
    assert view.cells.shape == (64,) and view.cells.sum() > 0
    assert not torch.equal(view.augmented, view.clean)
    # the thread pool makes the same views, in the order asked
    requests = [(i, (1, v)) for v in range(2) for i in range(3)]
    for made, request in zip(features.synthesis.views(requests), requests, strict=True):
        alone = features.synthesis.view(*request)
        assert torch.equal(made.augmented, alone.augmented) and torch.equal(made.cells, alone.cells)
    batches = list(features.batches("epoch"))
    assert len(batches) == 2  # 4 images, then 8 > 5: the epoch stops
    clean, augmented, cells = batches[0]
    assert clean.shape == augmented.shape == (4, 64, 152) and cells.shape == (4, 64)


def test_hypothesis_sources(category, tmp_path):
    detector = GLASS(**TINY)
    detector.categories = ["bottle"]
    detector._choose_hypothesis(list(category.train))
    assert detector.hypersphere and "published" in detector.training_info["hypothesis_source"]
    detector.categories = ["my_part"]
    detector._choose_hypothesis(list(category.train))
    assert detector.training_info["hypothesis_source"].startswith("spectrum judge")
    forced = GLASS(**TINY, hypothesis="manifold")
    forced.categories = ["bottle"]
    forced._choose_hypothesis(list(category.train))
    assert not forced.hypersphere


def test_foreground_from_files(tmp_path):
    root = tmp_path / "data"
    (root / "part" / "train" / "good").mkdir(parents=True)
    (root / "fg_mask" / "part").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (64, 64), (i * 20, 90, 90)).save(root / f"part/train/good/{i}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        Image.fromarray(mask).save(root / f"fg_mask/part/{i}.png")
    train = list(discover(root)[0].train)
    detector = GLASS(**TINY)
    detector.categories = ["part"]
    detector._build_modules()
    features = GLASSFeatures(detector, train, cache=False)
    assert set(features.synthesis.foreground_modes.values()) == {"files"}
    for i in range(5):
        cells = features.synthesis.view(0, (0, i)).cells.reshape(8, 8)
        assert cells[:2].sum() == 0 and cells[:, :2].sum() == 0  # outside the foreground
    assert (
        "non_faithful" not in detector.training_info
        or "foreground" not in (detector.training_info["non_faithful"])
    )


def test_foreground_mode_is_chosen_per_category(tmp_path):
    """A unified model over an object with fg_mask files and a texture class masks each as
    its own run would: files for the object, none for the texture."""
    root = tmp_path / "data"
    (root / "fg_mask" / "part").mkdir(parents=True)
    for name in ("part", "carpet"):
        (root / name / "train" / "good").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (i * 20, 90, 90)).save(root / f"{name}/train/good/{i}.png")
            if name == "part":
                Image.new("L", (64, 64), 255).save(root / f"fg_mask/part/{i}.png")
    train = [s for c in discover(root) for s in c.train]
    detector = GLASS(**TINY)
    detector.categories = ["carpet", "part"]
    assert detector._foreground_modes(train) == {"carpet": "none", "part": "files"}
    assert detector.training_info["foreground"] == {"carpet": "none", "part": "files"}


@pytest.fixture(scope="module")
def fitted(category):
    detector = GLASS(**{**TINY, "val_fraction": 0.1}, epochs=2, las_pool=2).fit(category)
    return detector


def test_fit_predict_and_labels(fitted, category):
    assert len(fitted.history) == 2 and set(fitted.history[0]) == {
        "normal",
        "gas",
        "focal",
        "loss",
    }
    info = fitted.training_info
    assert info["hypothesis"] == "hypersphere"  # the name 'pill' is in the MVTec table
    assert "procedural textures" in info["non_faithful"]
    assert info["ascent"] == "20 steps of 0.001, a gradient every 1, on 100% of the rows"
    result = fitted.predict([s.path for s in category.test])
    assert result.maps.shape == (len(category.test), 64, 64)
    assert ((result.scores > 0) & (result.scores < 1)).all()


def test_save_load_round_trip(fitted, category, tmp_path):
    loaded = anomap.artifact.load(fitted.save(tmp_path / "glass.safetensors"))
    assert isinstance(loaded, GLASS) and loaded.training_info == fitted.training_info
    paths = [s.path for s in category.test]
    np.testing.assert_array_equal(loaded.predict(paths).scores, fitted.predict(paths).scores)


class Killed(Exception):
    pass


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_resume_gives_identical_weights(category, tmp_path, preset):
    settings = {**TINY, "epochs": 3, "preset": preset, "las_pool": 2, "ascent_steps": 2}
    straight = GLASS(**settings).fit(category)

    def kill(detector, epoch, losses):
        if epoch == 1:
            raise Killed

    folder = str(tmp_path / "ckpt")
    interrupted = GLASS(**settings, checkpoint_dir=folder, checkpoint_every=1)
    interrupted.epoch_end_callbacks.append(kill)
    with pytest.raises(Killed):
        interrupted.fit(category)
    resumed = GLASS(**settings, checkpoint_dir=folder, resume=True).fit(category)
    expected, actual = straight.state_tensors(), resumed.state_tensors()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    with pytest.raises(AnomapError, match="noise_std"):
        GLASS(**settings, checkpoint_dir=folder, resume=True, noise_std=0.1).fit(category)
