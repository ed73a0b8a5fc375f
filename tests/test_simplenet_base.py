"""The SimpleNet-family base: module init, feature cache, training loop, checkpoints."""

import numpy as np
import pytest
import torch

from anomap.data.layouts import discover
from anomap.errors import AnomapError
from anomap.methods import simplenet_base
from anomap.methods.base import native_bf16
from anomap.methods.pbas import PBAS
from anomap.methods.simplenet_base import (
    Adaptor,
    Discriminator,
    RowStatistics,
    TrainingFeatures,
)
from anomap.selection import OracleSelection

TINY = {"resize": 64, "crop": 64, "batch_size": 4, "device": "cpu", "val_fraction": 0.0}


def xavier_std(fan_in: int, fan_out: int) -> float:
    return (2.0 / (fan_in + fan_out)) ** 0.5


def test_adaptor_init():
    torch.manual_seed(0)
    adaptor = Adaptor(256)
    assert adaptor.weight.shape == (256, 256) and adaptor.bias is not None
    assert adaptor.weight.std().item() == pytest.approx(xavier_std(256, 256), rel=0.03)
    assert adaptor.weight.mean().abs().item() < 0.005
    assert adaptor.bias.abs().max().item() <= 1 / 256**0.5  # PyTorch's default bias bound


def test_discriminator_init_and_output():
    torch.manual_seed(0)
    disc = Discriminator(152, 1024)
    assert disc.hidden.weight.std().item() == pytest.approx(xavier_std(152, 1024), rel=0.03)
    assert disc.head.weight.std().item() == pytest.approx(xavier_std(1024, 1), rel=0.1)
    assert disc.head.bias is None
    assert isinstance(disc.norm, torch.nn.BatchNorm1d)
    scores = disc(torch.randn(64, 152) * 10)
    assert scores.shape == (64, 1)
    assert ((scores > 0) & (scores < 1)).all()


@pytest.fixture(scope="module")
def train_samples(synth_root):
    return list(discover(synth_root)[0].train)


def _module_pass(disc: Discriminator, rows: torch.Tensor) -> torch.Tensor:
    """D as the reference writes it: the modules one after another, BatchNorm on the hidden
    layer's batch statistics."""
    hidden = torch.nn.functional.leaky_relu(disc.norm(disc.hidden(rows)), 0.2)
    return torch.sigmoid(disc.head(hidden))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_scores_equal_the_module_pass(momentum):
    """BatchNorm's statistics taken in input space: D's values, the gradients of its inputs
    and parameters, and its running statistics as the module path over [t; g], whether all
    rows are scored or only g (GLASS's ascent)."""
    torch.manual_seed(0)
    straight, folded = Discriminator(12, 32), Discriminator(12, 32)
    folded.load_state_dict(straight.state_dict())
    for disc in (straight, folded):
        disc.norm.momentum = momentum
    fixed = torch.randn(40, 12) * 3 + 1
    moving = torch.randn(25, 12, requires_grad=True)
    for _ in range(3):  # running statistics stay equal over several passes
        expected = _module_pass(straight, torch.cat([fixed, moving]))[40:]
        (expected_grad,) = torch.autograd.grad(expected.log().sum(), [moving])
        batch = RowStatistics.of(fixed) + RowStatistics.of(moving)
        (got,) = folded.batch_scores(batch, moving)
        (got_grad,) = torch.autograd.grad(got.log().sum(), [moving])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-6)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(folded.norm, name), getattr(straight.norm, name))

    both = torch.cat([fixed, moving])
    weights = torch.rand(len(both), 1)  # an uneven loss, so no gradient vanishes by symmetry
    (weights * _module_pass(straight, both)).sum().backward()
    (weights * folded(both)).sum().backward()
    for (name, expected), got in zip(straight.named_parameters(), folded.parameters(), strict=True):
        if name == "hidden.bias":  # cancels in BatchNorm: zero up to rounding, here none
            assert got.grad is None and expected.grad.abs().max() < 1e-6
        else:
            torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-6)


def test_batch_scores_keep_their_precision_under_autocast():
    """Under bfloat16 autocast D's statistics stay float32 and its scores near float32's."""
    torch.manual_seed(0)
    disc = Discriminator(12, 32)
    rows = torch.randn(300, 12) * 2 + 5  # a large mean: centring first keeps it out of bf16
    exact = disc(rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = disc(rows)
    torch.testing.assert_close(mixed.float(), exact, rtol=0, atol=0.02)


def test_cached_features_equal_streamed(train_samples, monkeypatch):
    detector = PBAS(**TINY)
    cached = TrainingFeatures(detector, train_samples, cache=True)
    assert cached.cache.dtype == torch.float32 and cached.cache.shape == (12, 64, 152)
    streamed = TrainingFeatures(detector, train_samples, cache=False)
    pairs = zip(
        cached.batches("c", shuffle=False), streamed.batches("s", shuffle=False), strict=True
    )
    for a, b in pairs:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(simplenet_base, "CACHE_FLOAT32_LIMIT", 0)
    assert TrainingFeatures(detector, train_samples[:2], cache=True).cache.dtype == torch.float16


def test_paper_preset_trains_from_images(train_samples):
    detector = PBAS(**TINY, preset="paper", epochs=1).fit(train_samples[:4])
    assert detector.is_fitted and set(detector.history[0]) == {"svdd", "bce", "loss"}


class Killed(Exception):
    pass


def test_resume_gives_identical_weights(train_samples, tmp_path):
    straight = PBAS(**TINY, epochs=4).fit(train_samples)

    def kill_in_third_epoch(detector, epoch, losses):
        if epoch == 2:  # after the epoch-2 checkpoint, before the epoch-3 one
            raise Killed

    folder = str(tmp_path / "ckpt")
    interrupted = PBAS(**TINY, epochs=4, checkpoint_dir=folder, checkpoint_every=1)
    interrupted.epoch_end_callbacks.append(kill_in_third_epoch)
    with pytest.raises(Killed):
        interrupted.fit(train_samples)
    resumed = PBAS(**TINY, epochs=4, checkpoint_dir=folder, resume=True).fit(train_samples)

    expected, actual = straight.state_tensors(), resumed.state_tensors()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert resumed.history == straight.history

    with pytest.raises(AnomapError, match="afs_scale"):
        PBAS(**TINY, epochs=4, checkpoint_dir=folder, resume=True, afs_scale=0.5).fit(train_samples)
    with pytest.raises(AnomapError, match="other images"):
        PBAS(**TINY, epochs=4, checkpoint_dir=folder, resume=True).fit(train_samples[:-1])


def test_a_setting_added_since_the_checkpoint_counts_as_its_default(train_samples, tmp_path):
    """A checkpoint written before a setting existed resumes when the run keeps that
    setting's default, and is refused when the run changes it."""
    from anomap.artifact import read_artifact, write_artifact
    from anomap.methods.training import CHECKPOINT_FILE

    folder = tmp_path / "ckpt"
    PBAS(**TINY, epochs=1, checkpoint_dir=str(folder)).fit(train_samples)
    path = folder / CHECKPOINT_FILE
    tensors, meta = read_artifact(path)
    del meta["config"]["mixed_precision"]  # as before the setting existed
    write_artifact(path, tensors, meta)
    resumed = PBAS(**TINY, epochs=2, checkpoint_dir=str(folder), resume=True).fit(train_samples)
    assert len(resumed.history) == 2
    write_artifact(path, tensors, meta)
    with pytest.raises(AnomapError, match="mixed_precision"):
        PBAS(**TINY, epochs=2, checkpoint_dir=str(folder), resume=True, mixed_precision="bf16").fit(
            train_samples
        )


def test_resume_keeps_the_oracles_choice(train_samples, synth_root, tmp_path):
    """The oracle's best epoch so far is part of the checkpoint, so a resumed run picks from
    every epoch, not only those after the restart."""
    test = list(discover(synth_root)[0].test)

    def oracle():
        return OracleSelection(test)

    straight_oracle = oracle()
    straight = PBAS(**TINY, epochs=4).fit(train_samples, select=straight_oracle)
    folder = str(tmp_path / "ckpt")
    chosen = straight.training_info["selected_epoch"]  # 1-based
    assert chosen < 4, "the test needs a choice made before the restart"

    def kill_after_the_chosen_epoch(detector, epoch, losses):
        if epoch == chosen:  # its checkpoint holds epochs 1..chosen, all scored
            raise Killed

    interrupted = PBAS(**TINY, epochs=4, checkpoint_dir=folder, checkpoint_every=1)
    interrupted.epoch_end_callbacks.append(kill_after_the_chosen_epoch)
    with pytest.raises(Killed):
        interrupted.fit(train_samples, select=oracle())
    resumed_oracle = oracle()
    curve = resumed_oracle.curve  # callers may hold the list
    resumed = PBAS(**TINY, epochs=4, checkpoint_dir=folder, resume=True).fit(
        train_samples, select=resumed_oracle
    )
    assert curve is resumed_oracle.curve and curve == straight_oracle.curve
    assert len(curve) == 4
    assert resumed.training_info["selected_epoch"] == straight.training_info["selected_epoch"]
    for name, tensor in straight.state_tensors().items():
        assert torch.equal(tensor, resumed.state_tensors()[name]), name

    unlabelled = str(tmp_path / "without")
    PBAS(**TINY, epochs=2, checkpoint_dir=unlabelled).fit(train_samples)
    with pytest.raises(AnomapError, match="without oracle selection"):
        PBAS(**TINY, epochs=4, checkpoint_dir=unlabelled, resume=True).fit(
            train_samples, select=oracle()
        )
    with pytest.raises(AnomapError, match="other test images"):
        PBAS(**TINY, epochs=4, checkpoint_dir=folder, resume=True).fit(
            train_samples, select=OracleSelection(test[1:])
        )


def test_oracle_scores_remembered_features_as_fresh_ones(train_samples, synth_root):
    """The oracle runs the frozen backbone on the test set once and reuses its features; its
    scores must equal a fresh scoring of the same weights at every epoch."""
    test = list(discover(synth_root)[0].test)
    fresh_curve = []

    def score_afresh(detector, epoch, losses):  # runs before the oracle, on the same weights
        fresh = OracleSelection(test)
        fresh(detector, epoch, losses)
        fresh_curve.extend(fresh.curve)

    oracle = OracleSelection(test)
    detector = PBAS(**TINY, epochs=3)
    detector.epoch_end_callbacks.append(score_afresh)
    detector.fit(train_samples, select=oracle)
    assert len(fresh_curve) == 3 and oracle.curve == fresh_curve


@pytest.mark.parametrize("dims", [{}, {"target_dim": 96}, {"target_dim": 32}])
def test_folded_inference_head_equals_the_modules(dims):
    torch.manual_seed(0)
    detector = PBAS(**TINY, **dims)
    dim = detector.aggregator.out_dim
    detector.adaptor, detector.discriminator = Adaptor(dim), Discriminator(dim, 64)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        detector.discriminator.norm.running_mean.uniform_(-1, 1)
        detector.discriminator.norm.running_var.uniform_(0.5, 2)
        detector.discriminator.norm.weight.uniform_(0.5, 1.5)
        detector.discriminator.norm.bias.uniform_(-0.5, 0.5)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        scores, cells = detector._score(images)
        detector.discriminator.eval()
        rows = detector.discriminator(detector.adaptor(detector._embed_cells(images).flatten(0, 1)))
    torch.testing.assert_close(cells.flatten(), rows.flatten(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores, rows.reshape(2, -1).max(dim=1).values)


def test_folded_head_follows_training_and_loading(train_samples):
    """The fold is cached, so it must never outlive the weights it was made from: scoring
    between epochs (as the oracle does), under autocast, and after a load all give what a
    fresh detector with the same weights gives."""
    images = torch.randn(2, 3, 64, 64)
    detector = PBAS(**TINY, epochs=2)
    early = []
    detector.epoch_end_callbacks.append(lambda d, *_: early.append(d._score(images)[0]))
    detector.fit(train_samples[:4])
    fresh = PBAS(**TINY, epochs=2)
    fresh.load_state_tensors(detector.state_tensors())
    torch.testing.assert_close(early[-1], fresh._score(images)[0])
    assert not torch.equal(early[0], early[1])  # the second epoch's weights were used
    detector.load_state_tensors(detector.state_tensors())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        detector._score(images)  # the first fold after the load: it must stay float32
    torch.testing.assert_close(detector._score(images)[0], fresh._score(images)[0])
    detector.load_state_tensors(
        {k: v + 0.01 if k.startswith("adaptor.") else v for k, v in fresh.state_tensors().items()}
    )
    assert not torch.equal(detector._score(images)[0], fresh._score(images)[0])


def test_bce_helper_matches_torch_and_is_float32_under_autocast():
    probabilities = torch.tensor([0.1, 0.7, 0.99])
    expected = torch.nn.functional.binary_cross_entropy(probabilities, torch.ones(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = simplenet_base.binary_cross_entropy(probabilities.bfloat16(), 1.0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, atol=5e-3, rtol=0)


@pytest.mark.parametrize("method", ["pbas", "glass"])
def test_mixed_precision_trains_and_is_labelled(train_samples, method, monkeypatch):
    from anomap.methods.glass import GLASS

    cls = PBAS if method == "pbas" else GLASS
    extra = {"las_pool": 1, "ascent_steps": 2} if method == "glass" else {}
    for native in (False, True):  # "auto": bfloat16 for "fast" where bfloat16 is native
        monkeypatch.setattr(simplenet_base, "native_bf16", lambda device, n=native: n)
        assert cls(**TINY, preset="fast").uses_mixed_precision is native
        assert not cls(**TINY, preset="paper").uses_mixed_precision  # the reference: float32
    with pytest.raises(ValueError, match="mixed_precision"):
        cls(**TINY, mixed_precision="fp8")
    settings = {**TINY, **extra, "epochs": 2, "seed": 3}
    full = cls(**settings, mixed_precision="off").fit(train_samples[:8])
    mixed = cls(**settings, mixed_precision="bf16").fit(train_samples[:8])
    assert mixed.training_info["precision"].startswith("bfloat16")
    assert "precision" not in full.training_info
    for a, b in zip(full.history, mixed.history, strict=True):
        assert set(a) == set(b)
        for name in a:  # same algorithm, bfloat16 matmuls: losses agree to a few percent
            assert b[name] == pytest.approx(a[name], rel=0.1, abs=0.02)
    # the trained weights stay float32 and the model scores in float32
    assert mixed.discriminator.hidden.weight.dtype == torch.float32
    scores = mixed.predict(train_samples[8:10]).scores
    assert scores.dtype == np.float32 and np.isfinite(scores).all()


def test_native_bf16_by_device():
    assert native_bf16(torch.device("cuda")) and not native_bf16(torch.device("meta"))
    cpu = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_bf16(torch.device("cpu")) == cpu
