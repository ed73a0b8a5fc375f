"""PBAS (METHODS.md §3.4): centre alignment, assignment, AFS, a training step, end to end."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

import anomap.artifact
import anomap.methods
from anomap import progress
from anomap.methods import training
from anomap.methods.pbas import (
    PBAS,
    align_centres,
    nearest_centres,
    synthesise_anomalies,
)
from anomap.methods.simplenet_base import Adaptor, Discriminator


def test_align_centres_sequential_ema():
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    means = torch.tensor([[9.0, 10.0], [1.0, 0.8]])
    # row 0: cos to C1 (0.743) beats C0 (0.669) -> C1 = 0.9·[0, 1] + 0.1·[9, 10] = [0.9, 1.9]
    # row 1: nearer C0 (0.781) than the old C1 (0.625) but the updated C1 wins (0.899), so
    #        C1 = 0.9·[0.9, 1.9] + 0.1·[1, 0.8] = [0.91, 1.79]; C0 never moves
    expected = torch.tensor([[1.0, 0.0], [0.91, 1.79]])
    torch.testing.assert_close(align_centres(centres, means), expected)
    assert torch.equal(centres, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # input untouched


def test_initialise_first_batch_then_alignment():
    detector = PBAS(device="cpu")
    detector.adaptor = Adaptor(2)
    with torch.no_grad():
        detector.adaptor.weight.copy_(torch.eye(2))
        detector.adaptor.bias.zero_()
    first = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    second = torch.tensor([[[9.0, 10.0], [1.0, 0.8]]])

    class Batches:
        def batches(self, description, shuffle=True):
            yield from (first, second)

    detector._initialise(Batches())
    torch.testing.assert_close(detector.centres, torch.tensor([[1.0, 0.0], [0.91, 1.79]]))


def test_nearest_centre_is_by_cosine_not_distance():
    centres = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[3.0, 1.0], [0.1, 2.0]])
    # [3, 1] is 3.0 from [0, 1] but 7.1 from [10, 0]; by angle [10, 0] is nearer
    expected = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    assert torch.equal(nearest_centres(features, centres), expected)


def test_afs_push_length_and_identity_gradient():
    torch.manual_seed(0)
    features = torch.randn(50, 8, requires_grad=True)
    centres = torch.randn(50, 8)
    synthetic, radius = synthesise_anomalies(features, centres, 0.25)
    offsets = (features - centres).detach()
    torch.testing.assert_close(radius, offsets.norm(dim=1).mean())
    push = (synthetic - features).detach()
    torch.testing.assert_close(push.norm(dim=1), torch.full((50,), 0.25 * radius.item()))
    cosine = torch.nn.functional.cosine_similarity(push, offsets, dim=1)
    torch.testing.assert_close(cosine, torch.ones(50))
    weights = torch.randn(50, 8)
    (grad,) = torch.autograd.grad((synthetic * weights).sum(), features)
    torch.testing.assert_close(grad, weights)  # ∂f/∂t = I: the push is detached


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    detector = PBAS(device="cpu", adaptor_lr=1e-2, discriminator_lr=1e-2)
    detector.adaptor, detector.discriminator = Adaptor(16), Discriminator(16, 32)
    batch = torch.randn(2, 64, 16) + 2.0
    with torch.no_grad():
        detector.centres = detector.adaptor(batch).mean(0)
    optimisers = detector._optimisers()

    class SameBatch:
        def batches(self, description, shuffle=True):
            yield batch

    losses = [detector._train_epoch(SameBatch(), optimisers, 0)["loss"] for _ in range(20)]
    assert losses[-1] < 0.9 * losses[0]
    assert detector.discriminator.training  # trained in train mode


def write_images(folder, count, seed, defect=False):
    """64×64 smooth stripes with a random phase; `defect` adds a bright 12×12 square."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64]
    paths = []
    for i in range(count):
        level = 128 + 50 * np.sin(x / 4 + rng.uniform(0, 6)) * np.cos(y / 9)
        rgb = np.stack([level, level * 0.9, level * 0.8], -1) + rng.normal(0, 2, (64, 64, 3))
        if defect:
            rgb[26:38, 26:38] = 255
        paths.append(folder / f"{i}.png")
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pbas")
    train = write_images(root / "train", 10, seed=0)
    test = write_images(root / "good", 2, seed=1) + write_images(root / "bad", 2, 2, defect=True)
    settings = {"resize": 64, "crop": 64, "batch_size": 4, "epochs": 3, "device": "cpu"}
    return PBAS(**settings).fit(train), test


def test_fit_and_predict(fitted):
    detector, test = fitted
    assert detector.config.preset == "fast" and len(detector.history) == 3
    assert detector.centres.shape == (64, 152)  # one centre per cell of the 8×8 grid
    result = detector.predict(test)
    assert result.maps.shape == (4, 64, 64)
    assert ((result.scores > 0) & (result.scores < 1)).all()
    assert result.normalized is not None  # calibrated on the held-out image


def test_save_load_round_trip(fitted, tmp_path, monkeypatch):
    monkeypatch.setitem(anomap.methods.METHODS, "pbas", "anomap.methods.pbas:PBAS")
    detector, test = fitted
    loaded = anomap.artifact.load(detector.save(tmp_path / "pbas.safetensors"))
    assert isinstance(loaded, PBAS) and loaded.config == detector.config
    assert torch.equal(loaded.centres, detector.centres)
    expected, actual = detector.predict(test), loaded.predict(test)
    np.testing.assert_array_equal(actual.scores, expected.scores)
    np.testing.assert_array_equal(actual.maps, expected.maps)


def test_normal_validation_adds_to_history(tmp_path):
    train = write_images(tmp_path / "train", 10, seed=0)
    settings = {"resize": 64, "crop": 64, "batch_size": 4, "epochs": 2, "device": "cpu"}
    detector = PBAS(**settings, validate_every=1, val_fraction=0.2).fit(train)
    assert all({"val_mean", "val_q99"} <= set(entry) for entry in detector.history)
    assert detector.history[0]["val_q99"] >= detector.history[0]["val_mean"] > 0
    # the last epoch's entry, from remembered features, is what predict gives afresh
    _, held_out = detector._split(train, None)
    scores = detector.predict(held_out).scores
    assert detector.history[-1]["val_mean"] == float(np.mean(scores))
    assert detector.history[-1]["val_q99"] == float(np.quantile(scores, 0.99))


def test_training_without_a_terminal_prints_epoch_lines(tmp_path, capsys, monkeypatch):
    """A log file or container shows no bars, so the epoch loop writes the pace and losses
    as lines: the first epoch, then at most every LOG_SECONDS, and the last."""
    train = write_images(tmp_path / "train", 10, seed=0)
    settings = {"resize": 64, "crop": 64, "batch_size": 4, "epochs": 3, "device": "cpu"}
    PBAS(**settings).fit(train)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" · ")[0] for line in lines] == ["epoch 1/3", "epoch 3/3"]
    assert re.fullmatch(r"epoch 1/3 · [\d.]+ s/epoch, 0:00:\d\d left · svdd .* loss .*", lines[0])
    assert re.fullmatch(r"epoch 3/3 · [\d.]+ s/epoch, 0:00:\d\d in all · svdd .*", lines[1])
    monkeypatch.setattr(training, "LOG_SECONDS", 0.0)
    PBAS(**settings).fit(train)
    assert len(capsys.readouterr().err.splitlines()) == 3
    monkeypatch.setattr(progress, "_enabled", False)  # the CLI's --quiet
    PBAS(**settings).fit(train)
    assert capsys.readouterr().err == ""


def test_durations_read_as_hours_minutes_seconds():
    assert progress.duration(0) == "0:00:00"
    assert progress.duration(3725.4) == "1:02:05"
    assert progress.duration(90_000) == "25:00:00"
