import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.stats import norm

from anomap.postprocess import calibrate, upsample


@pytest.mark.parametrize("shape", [(2, 40, 40), (1, 224, 224), (1, 10, 30)])
def test_blur_matches_scipy(shape):
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ours = upsample(maps, shape[1:], sigma=4.0).numpy()  # same size: the blur alone
    for i in range(shape[0]):
        ref = gaussian_filter(maps[i].numpy().astype(np.float64), sigma=4.0)
        np.testing.assert_allclose(ours[i], ref, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("grid", "size"), [((7, 7), (56, 56)), ((5, 9), (40, 30))])
def test_upsample_equals_resize_then_blur_then_moving_mean(grid, size, align_corners):
    """The one-matrix-per-axis form against the three steps run one after another."""
    cells = torch.rand(2, *grid, generator=torch.Generator().manual_seed(1))
    resized = F.interpolate(cells[:, None], size=size, mode="bilinear", align_corners=align_corners)
    plain = upsample(cells, size, align_corners=align_corners)
    torch.testing.assert_close(plain, resized[:, 0], atol=1e-6, rtol=0)
    blurred = upsample(cells, size, sigma=4.0, align_corners=align_corners)
    for i in range(2):
        ref = gaussian_filter(resized[i, 0].double().numpy(), sigma=4.0)
        np.testing.assert_allclose(blurred[i].numpy(), ref, atol=1e-5)
    pooled = upsample(cells, size, align_corners=align_corners, window=16)
    ref = F.avg_pool2d(resized, 16, stride=1)[:, 0]
    assert pooled.shape == (2, size[0] - 15, size[1] - 15)
    torch.testing.assert_close(pooled, ref, atol=1e-6, rtol=0)


def test_upsample_shape_and_constant():
    cells = torch.full((3, 7, 7), 2.5)
    out = upsample(cells, (56, 56))
    assert out.shape == (3, 56, 56)
    assert torch.allclose(out, torch.full_like(out, 2.5))


def test_calibration_from_normal_scores():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    maps = np.stack([np.full((4, 4), v) for v in scores]).astype(np.float32)
    cal = calibrate(scores, maps, quantile=1.0)
    assert cal.image_threshold == 5.0 and cal.image_center == 3.0
    np.testing.assert_allclose(cal.normalize(np.array([3.0, 5.0])), [0.0, 1.0])
    assert cal.decide(np.array([4.9, 5.0])).tolist() == [False, True]
    low, high = cal.pixel_range
    assert low == 3.0 and high == 7.0 and cal.pixel_threshold == 5.0


# Student-t quantile t(0.99; 3 degrees of freedom), from tables
T_99_3 = 4.540702858698419


def test_few_normal_scores_get_a_prediction_bound_many_the_empirical_quantile():
    few = np.array([15.95, 15.98, 16.52, 16.70])  # 4 held-out images: q99 is about their max
    cal = calibrate(few, np.zeros((4, 2, 2)), quantile=0.99)
    expected = few.mean() + T_99_3 * few.std(ddof=1) * np.sqrt(1 + 1 / 4)
    assert cal.image_threshold == pytest.approx(expected) and cal.image_threshold > few.max()
    many = np.concatenate([np.zeros(990), np.full(10, 100.0)])  # enough for the empirical one
    cal = calibrate(many, np.zeros((1000, 2, 2)), quantile=0.99)
    assert cal.image_threshold == pytest.approx(np.quantile(many, 0.99))


@pytest.mark.parametrize("scores", [[0.4], [0.4, 0.4, 0.4], [-2.0]])
def test_calibration_without_spread_stays_readable(scores):
    cal = calibrate(np.array(scores), np.zeros((len(scores), 2, 2)))
    assert cal.image_threshold == pytest.approx(scores[0])
    np.testing.assert_allclose(cal.normalize(np.array([scores[0]])), [1.0])
    assert np.abs(cal.normalize(np.array([scores[0] * 1.5]))).max() < 10


def test_calibration_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        calibrate(np.array([]), np.zeros((0, 2, 2)))


def test_probability_scores_get_a_threshold_below_one():
    """PBAS/GLASS scores are a sigmoid's maximum: a normal fit on the raw scale put the
    threshold above 1 (seen: 1.061 on woven_fabric), where no image can ever reach it."""
    normals = np.array([0.93, 0.96, 0.975, 0.995])
    raw = calibrate(normals, np.zeros((4, 2, 2)), quantile=0.99)
    assert raw.image_threshold > 1.0
    cal = calibrate(normals, np.zeros((4, 2, 2)), quantile=0.99, probabilities=True)
    logits = np.log(normals / (1 - normals))
    bound = logits.mean() + T_99_3 * logits.std(ddof=1) * np.sqrt(1 + 1 / 4)
    expected = 1 / (1 + np.exp(-bound))
    assert cal.image_threshold == pytest.approx(expected)
    assert normals.max() < cal.image_threshold < 1.0
    assert cal.decide(np.array([0.99999, 1.0])).all()


@pytest.mark.parametrize("count", [4, 12, 40])
def test_a_new_normal_exceeds_the_threshold_as_often_as_promised(count):
    """Gaussian normal scores: over many held-out sets, the chance that a new normal image is
    flagged must be 1 − q. The plug-in mean + z·std it replaced promised the same and, with 4
    images, flagged about 6 % instead of 1 %."""
    rng = np.random.default_rng(0)
    held_out_sets = rng.normal(10.0, 2.0, size=(5000, count))
    maps = np.zeros((count, 1, 1))
    thresholds = np.array([calibrate(s, maps).image_threshold for s in held_out_sets])
    flagged = norm.sf(thresholds, 10.0, 2.0)  # exact, per threshold
    assert flagged.mean() == pytest.approx(0.01, abs=0.0015)
    plug_in = held_out_sets.mean(1) + 2.3263478740 * held_out_sets.std(1, ddof=1)
    if count == 4:
        assert norm.sf(plug_in, 10.0, 2.0).mean() > 0.04
