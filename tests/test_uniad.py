"""UniAD (METHODS.md §4): mask, positions, jitter, layers, init, training rules, end to end."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import anomap.artifact
import anomap.methods
from anomap.backbones import FeatureExtractor, get_spec
from anomap.data.layouts import discover
from anomap.methods.uniad import (
    LearnedPosition,
    Reconstructor,
    UniAD,
    UniADConfig,
    feature_jitter,
    neighbour_mask,
)

# 96² synthetic images -> a 6×6 token grid; a small transformer so a fit takes seconds
TINY_MODEL = {
    "hidden_dim": 32,
    "heads": 4,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "feedforward_dim": 64,
    "neighbor_size": 3,
}
SMALL = {"resize": (96, 96), "batch_size": 4, "device": "cpu", **TINY_MODEL}


def test_config_defaults_follow_the_paper():
    cfg = UniADConfig()
    assert cfg.resize == (224, 224) and cfg.crop is None and cfg.blur_sigma == 0
    assert cfg.layers == (0, 1, 2, 3) and cfg.feature_size == (14, 14)
    assert (cfg.hidden_dim, cfg.heads, cfg.encoder_layers, cfg.decoder_layers) == (256, 8, 4, 4)
    assert (cfg.feedforward_dim, cfg.dropout, cfg.jitter_scale) == (1024, 0.1, 20.0)
    assert cfg.neighbor_size == 7
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.grad_clip) == (1000, 1e-4, 1e-4, 0.1)
    assert (cfg.lr_step_epoch, cfg.lr_gamma, cfg.batch_size) == (800, 0.1, 8)
    assert UniADConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "settings",
    [
        {"resize": 224},  # aspect-preserving resize: no fixed token grid
        {"resize": (100, 100)},  # not a multiple of 16
        {"resize": (64, 64)},  # 4×4 grid: a 7×7 window blocks every key of some query
        {"neighbor_size": 4},
        {"hidden_dim": 250},  # 8 heads do not divide it
        {"grad_clip": 0},
        {"resume": True},
    ],
)
def test_config_refuses_bad_settings(settings):
    with pytest.raises(ValueError):
        UniADConfig(**settings)


def test_neighbour_mask_blocks_exactly_the_clipped_window():
    mask = neighbour_mask(14, 14, 7)
    assert mask.shape == (196, 196)
    blocked = torch.isinf(mask) & (mask < 0)
    assert torch.equal(blocked | (mask == 0), torch.ones_like(blocked))  # only 0 and −inf
    assert blocked.diagonal().all()
    for i in range(196):
        r, c = divmod(i, 14)
        window = torch.zeros(14, 14, dtype=torch.bool)
        window[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4] = True
        assert torch.equal(blocked[i], window.flatten())
    counts = blocked.sum(1).view(14, 14)
    assert counts[0, 0] == counts[13, 13] == counts[0, 13] == 16  # corners: 4×4
    assert counts[0, 6] == 28 and counts[6, 6] == counts[3, 10] == 49
    assert torch.equal(blocked, blocked.T)


def test_neighbour_mask_refuses_a_fully_blocked_query():
    with pytest.raises(ValueError, match="every key"):
        neighbour_mask(4, 4, 7)
    assert not torch.isinf(neighbour_mask(4, 8, 7)).all(1).any()  # wider than the window


def test_positional_embedding_is_column_then_row():
    torch.manual_seed(0)
    position = LearnedPosition(3, 5, 8)
    for table in (position.row.weight, position.col.weight):
        assert table.min() >= 0 and table.max() < 1
    pos = position()
    assert pos.shape == (15, 8)
    for h in range(3):
        for w in range(5):
            expected = torch.cat([position.col.weight[w], position.row.weight[h]])
            assert torch.equal(pos[h * 5 + w], expected)


def test_jitter_is_norm_over_channels_times_scale():
    torch.manual_seed(0)
    tokens = torch.randn(500, 4, 272) * torch.rand(500, 4, 1) * 5
    noise = feature_jitter(tokens, 20.0) - tokens
    unit = noise / (tokens.norm(dim=-1, keepdim=True) / 272 * 20.0)  # divisor C, not √C
    assert unit.mean().abs() < 0.01
    assert unit.std().item() == pytest.approx(1.0, rel=0.01)


def test_jitter_in_training_only():
    torch.manual_seed(0)
    model = Reconstructor(16, (4, 4), **TINY_MODEL, dropout=0.0)
    features = torch.randn(2, 16, 4, 4)
    model.train()
    assert not torch.equal(model(features), model(features))  # fresh noise each pass
    model.eval()
    assert torch.equal(model(features), model(features))
    quiet = Reconstructor(16, (4, 4), **TINY_MODEL, dropout=0.0, jitter_scale=0.0).train()
    assert torch.equal(quiet(features), quiet(features))


def test_layers_queries_and_init():
    torch.manual_seed(0)
    model = Reconstructor(272, (14, 14))
    queries = [layer.query.weight for layer in model.decoder]
    assert len(queries) == 4 and len({id(q) for q in queries}) == 4
    assert all(q.shape == (196, 256) for q in queries)
    assert queries[0].std().item() == pytest.approx(1.0, rel=0.02)  # nn.Embedding: N(0, 1)
    # deep copies of one layer, as in the reference: equal at the start ...
    assert all(torch.equal(q, queries[0]) for q in queries)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 + 4 * 3 + 4 * 4  # projections; per layer FFN + MHA out_proj
    for linear in linears:
        fan_out, fan_in = linear.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
        assert not linear.bias.any()
    attention = model.encoder[0].attention
    assert not attention.in_proj_bias.any() and attention.in_proj_weight.std() > 0
    # ... and trained apart, since each layer sees different gradients
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    features = torch.randn(1, 272, 14, 14)
    F.mse_loss(model(features), features).backward()
    optimiser.step()
    assert not torch.equal(model.decoder[0].query.weight, model.decoder[3].query.weight)


def test_b4_channel_layout_gives_272_by_14_by_14():
    """EfficientNet-b4's stages (24/32/56/160 channels, strides 2–16) at 224²: random
    weights, since none are available offline; only shapes and the neck are checked."""
    torch.manual_seed(0)
    model = timm.create_model(
        "tf_efficientnet_b4", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3)
    )
    backbone = FeatureExtractor(model, get_spec("tf_efficientnet_b4"), (0, 1, 2, 3), "random")
    assert backbone.channels == (24, 32, 56, 160) and backbone.strides == (2, 4, 8, 16)
    detector = UniAD(backbone="tf_efficientnet_b4", device="cpu", **TINY_MODEL)
    detector._backbone = backbone
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        stages = backbone(images)
    features = detector._features(images)
    assert features.shape == (1, 272, 14, 14)
    bounds = [(0, 24), (24, 56), (56, 112), (112, 272)]  # concatenated in stage order
    for stage, (start, end) in zip(stages, bounds, strict=True):
        part = features[:, start:end]  # align_corners=True keeps the corner samples
        torch.testing.assert_close(part[..., 0, 0], stage[..., 0, 0])
        torch.testing.assert_close(part[..., -1, -1], stage[..., -1, -1])
    torch.testing.assert_close(features[:, 112:], stages[3])  # stride 16: unchanged
    detector._build_model()
    assert detector.model(features).shape == (1, 272, 14, 14)


def test_neck_samples_bilinearly_with_aligned_corners():
    """A row ramp survives bilinear resampling exactly, so each output row must hold the
    align_corners=True sample position i·(n − 1)/13 of its n-row stage."""
    detector = UniAD(device="cpu")

    def ramp(size: int) -> torch.Tensor:
        return torch.arange(size, dtype=torch.float32).view(1, 1, size, 1).expand(1, 1, -1, size)

    detector._backbone = lambda images: [ramp(112), ramp(56), ramp(28), ramp(14)]
    features = detector._features(torch.zeros(1, 3, 224, 224))
    assert features.shape == (1, 4, 14, 14)
    for channel, size in enumerate((112, 56, 28, 14)):
        expected = torch.arange(14.0) * (size - 1) / 13
        torch.testing.assert_close(features[0, channel, :, 5], expected)


def tiny_detector(**settings) -> UniAD:
    """A detector whose model trains on given 16-channel 4×4 features, no backbone."""
    detector = UniAD(**{**SMALL, "resize": (64, 64), **settings})
    detector.model = Reconstructor(16, (4, 4), **TINY_MODEL)
    return detector


def test_training_reduces_the_loss_with_clipped_gradients(monkeypatch):
    torch.manual_seed(0)
    detector = tiny_detector(lr=1e-3)
    features = torch.randn(8, 16, 4, 4) + 1.0
    optimiser = torch.optim.AdamW(detector.model.parameters())
    before, after = [], []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        before.append(float(clip(parameters, max_norm, *args, **kwargs)))
        after.append(float(torch.cat([p.grad.flatten() for p in parameters]).norm()))

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    losses = [detector._train_epoch(features, optimiser, 0)["loss"] for _ in range(25)]
    assert losses[-1] < 0.7 * losses[0]
    assert detector.model.training
    assert max(before) > 0.1 and max(after) <= 0.1 * (1 + 1e-5)


def test_learning_rate_steps_like_the_reference():
    detector = tiny_detector(lr=1e-3, lr_step_epoch=2, lr_gamma=0.1)
    optimiser = torch.optim.AdamW(detector.model.parameters())
    seen = []
    optimiser.register_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    features = torch.randn(4, 16, 4, 4)
    history = [detector._train_epoch(features, optimiser, epoch) for epoch in range(5)]
    expected = [1e-3, 1e-3, 1e-3, 1e-4, 1e-4]  # StepLR.step(epoch) after each epoch
    assert [h["lr"] for h in history] == pytest.approx(expected)
    assert seen == pytest.approx(expected)
    paper = UniAD(device="cpu")
    assert paper._epoch_lr(800) == pytest.approx(1e-4)
    assert paper._epoch_lr(801) == pytest.approx(1e-5)


def test_mixed_precision_is_opt_in_and_trains_like_float32(monkeypatch):
    """bf16 autocast only on request (the reference trains in float32), the same losses to
    bfloat16's rounding, float32 weights; "auto" stays float32 even where bf16 is native."""
    monkeypatch.setattr(anomap.methods.base, "native_bf16", lambda device: True)
    assert not UniAD(device="cpu").uses_mixed_precision
    assert UniAD(device="cpu", mixed_precision="bf16").uses_mixed_precision
    features = torch.randn(8, 16, 4, 4) + 1.0
    histories = []
    for setting in ("off", "bf16"):
        torch.manual_seed(0)
        detector = tiny_detector(lr=1e-3, mixed_precision=setting)
        optimiser = torch.optim.AdamW(detector.model.parameters())
        histories.append([detector._train_epoch(features, optimiser, e)["loss"] for e in range(5)])
        assert all(p.dtype == torch.float32 for p in detector.model.parameters())
    assert histories[1] == pytest.approx(histories[0], rel=0.05)
    assert histories[1][-1] < histories[1][0]


@pytest.fixture(scope="module")
def categories(synth_root):
    return discover(synth_root)


@pytest.fixture(scope="module")
def fitted(categories):
    return UniAD(**SMALL, epochs=3).fit(categories)


def test_unified_fit_and_predict(fitted, categories):
    assert fitted.categories == [c.name for c in categories] and len(categories) == 2
    assert len(fitted.history) == 3 and all(np.isfinite(h["loss"]) for h in fitted.history)
    test = [s for c in categories for s in c.test]
    result = fitted.predict(test)
    assert result.maps.shape == (len(test), 96, 96)
    assert np.isfinite(result.scores).all() and (result.maps >= 0).all()
    assert result.normalized is not None  # calibrated on held-out normal images


def test_map_and_image_score(fitted, categories):
    images = next(fitted._batches(categories[1].test[:3], "scoring"))
    scores, maps = fitted.predict_tensor(images)
    with torch.no_grad():
        features = fitted._features(images)
        errors = (fitted.model.eval()(features) - features).pow(2).sum(1).sqrt()
    expected = F.interpolate(errors[:, None], size=(96, 96), mode="bilinear", align_corners=True)
    torch.testing.assert_close(maps, expected[:, 0])
    torch.testing.assert_close(maps[:, 0, 0], errors[:, 0, 0])  # corners kept: align_corners
    pooled = F.avg_pool2d(maps[:, None], 16, stride=1)
    assert pooled.shape[-2:] == (81, 81)
    torch.testing.assert_close(scores, pooled.flatten(1).max(1).values)


def test_save_load_round_trip(fitted, categories, tmp_path, monkeypatch):
    monkeypatch.setitem(anomap.methods.METHODS, "uniad", "anomap.methods.uniad:UniAD")
    loaded = anomap.artifact.load(fitted.save(tmp_path / "uniad.safetensors"))
    assert isinstance(loaded, UniAD) and loaded.config == fitted.config
    assert loaded.categories == fitted.categories
    test = list(categories[0].test[:4])
    expected, actual = fitted.predict(test), loaded.predict(test)
    np.testing.assert_array_equal(actual.scores, expected.scores)
    np.testing.assert_array_equal(actual.maps, expected.maps)


class Killed(Exception):
    pass


def test_resume_gives_identical_weights(categories, tmp_path):
    settings = {**SMALL, "epochs": 4, "val_fraction": 0.0}
    train = list(categories[0].train)
    straight = UniAD(**settings).fit(train)

    folder = str(tmp_path / "ckpt")
    interrupted = UniAD(**settings, checkpoint_dir=folder, checkpoint_every=1)
    train_epoch = interrupted._train_epoch

    def killed_in_third_epoch(features, optimiser, epoch):
        if epoch == 2:  # after the epoch-2 checkpoint
            raise Killed
        return train_epoch(features, optimiser, epoch)

    interrupted._train_epoch = killed_in_third_epoch
    with pytest.raises(Killed):
        interrupted.fit(train)
    resumed = UniAD(**settings, checkpoint_dir=folder, resume=True).fit(train)
    assert resumed.history == straight.history
    expected, actual = straight.state_tensors(), resumed.state_tensors()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
