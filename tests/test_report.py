"""Report pictures, atomic writes, markdown and HTML: small, fast checks."""

import os
import sys
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFont

from anomap import report
from anomap.report import (
    LUT,
    colorize,
    html_report,
    metrics_table_markdown,
    overlay,
    panel,
    save_png_atomic,
    training_curves_svg,
    write_text_atomic,
)

WHITE = np.array([255, 255, 255], np.uint8)
GREEN = np.array(report._MASK_COLOUR, np.uint8)


def _blob(size=64, centre=(32, 32), sigma=8.0):
    yy, xx = np.mgrid[0:size, 0:size]
    return np.exp(-((xx - centre[1]) ** 2 + (yy - centre[0]) ** 2) / (2 * sigma**2))


def _grey(size=64, value=128):
    return np.full((size, size, 3), value, np.uint8)


def _count(image, colour) -> int:
    return int(np.all(np.asarray(image) == colour, axis=-1).sum())


# --------------------------------------------------------------------------- colorize


def test_lut_is_256_entries_dark_to_bright_with_increasing_luminance():
    assert LUT.shape == (256, 3) and LUT.dtype == np.uint8
    luminance = LUT.astype(float) @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(luminance) > 0)
    assert luminance[0] < 5 and luminance[-1] > 230


def test_colorize_shape_dtype_and_clipping():
    values = np.array([[-1.0, 0.0, 0.5], [1.0, 2.0, np.nan]])
    rgb = colorize(values, 0.0, 1.0)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], LUT[0])  # below vmin -> bottom colour
    np.testing.assert_array_equal(rgb[0, 1], LUT[0])
    np.testing.assert_array_equal(rgb[1, 0], LUT[255])
    np.testing.assert_array_equal(rgb[1, 1], LUT[255])  # above vmax -> top colour
    np.testing.assert_array_equal(rgb[1, 2], LUT[0])  # NaN shows as vmin
    assert not np.array_equal(rgb[0, 2], LUT[0]) and not np.array_equal(rgb[0, 2], LUT[255])


def test_colorize_equal_bounds_do_not_divide_by_zero():
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        rgb = colorize(np.array([[0.2, 0.5, 0.9]]), 0.5, 0.5)
    np.testing.assert_array_equal(rgb[0], [LUT[0], LUT[0], LUT[255]])


def test_colorize_refuses_non_finite_range():
    with pytest.raises(ValueError, match="finite"):
        colorize(np.zeros((2, 2)), 0.0, float("nan"))


# --------------------------------------------------------------------------- overlay


def test_overlay_takes_the_image_size_and_resizes_the_map():
    image = Image.fromarray(_grey(96))
    out = overlay(image, _blob(24, (12, 12), 3.0), vmin=0.0, vmax=1.0)
    assert out.size == (96, 96) and out.mode == "RGB"
    assert _count(out, WHITE) == 0  # no threshold, no outline


def test_overlay_draws_threshold_contour_only_where_the_map_crosses_it():
    anomaly_map = _blob()
    crossing = overlay(_grey(), anomaly_map, vmin=0.0, vmax=1.0, threshold=0.5)
    assert _count(crossing, WHITE) > 20
    outline = np.all(np.asarray(crossing) == WHITE, axis=-1)
    assert outline[32, 32] == 0 and not outline[0].any()  # a ring, not a fill or a frame
    above = overlay(_grey(), anomaly_map, vmin=0.0, vmax=1.0, threshold=2.0)
    assert _count(above, WHITE) == 0


def test_overlay_outlines_the_mask_in_green_not_along_the_frame():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 40:64] = True  # touches the right edge
    out = np.asarray(overlay(_grey(), np.zeros((64, 64)), vmin=0.0, vmax=1.0, mask=mask))
    green = np.all(out == GREEN, axis=-1)
    assert green.sum() > 30
    assert green[10, 45] and green[9, 45]  # 2 px: inside and just outside the boundary
    assert not green[15, 50] and not green[15, 63]  # not the interior, not the frame


def test_overlay_accepts_float_and_grey_arrays():
    out = overlay(np.full((32, 32), 0.5), np.zeros((32, 32)), vmin=0.0, vmax=1.0, alpha=0.0)
    assert out.size == (32, 32)
    assert np.asarray(out)[0, 0].tolist() == [128, 128, 128]


# --------------------------------------------------------------------------- panel


def test_panel_grows_with_the_mask_column_and_has_a_caption():
    image, anomaly_map = _grey(), _blob()
    kwargs = {"vmin": 0.0, "vmax": 1.0, "threshold": 0.5, "title": "bottle/good/000.png"}
    without = panel(image, anomaly_map, score=0.42, decision=False, **kwargs)
    with_mask = panel(image, anomaly_map, mask=_blob() > 0.5, score=0.42, decision=True, **kwargs)
    assert with_mask.width > without.width
    assert with_mask.height == without.height > 224  # small inputs are enlarged
    assert _count(with_mask, report._ANOMALOUS_COLOUR) > 50  # the decision badge
    assert _count(without, report._NORMAL_COLOUR) > 50


def test_panel_survives_long_titles_and_the_bitmap_fallback_font(monkeypatch):
    title = "a/very/long/path/" * 20 + "naïve…日本.png"
    picture = panel(_grey(300), _blob(), vmin=0.0, vmax=1.0, title=title, score=float("nan"))
    assert picture.mode == "RGB"
    if hasattr(ImageFont, "load_default_imagefont"):
        monkeypatch.setattr(report, "_font", lambda size: ImageFont.load_default_imagefont())
        picture = panel(_grey(), _blob(), vmin=0.0, vmax=1.0, title=title, decision=True)
        assert picture.width >= 360


# --------------------------------------------------------------------------- files


def test_atomic_writes_replace_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "report.md"
    write_text_atomic("first", target)
    write_text_atomic("second – ü", target)
    assert target.read_text(encoding="utf-8") == "second – ü"
    png = tmp_path / "sub" / "panel.png"
    save_png_atomic(Image.new("RGB", (4, 3), (1, 2, 3)), png)
    save_png_atomic(Image.new("RGB", (5, 2), (9, 9, 9)), png)
    with Image.open(png) as reread:
        assert reread.size == (5, 2)
    assert sorted(p.name for p in target.parent.iterdir()) == ["panel.png", "report.md"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    png = tmp_path / "panel.png"
    save_png_atomic(Image.new("RGB", (4, 4)), png)
    with pytest.raises(OSError):
        save_png_atomic(Image.new("CMYK", (4, 4)), png)  # PNG cannot hold CMYK
    assert [p.name for p in tmp_path.iterdir()] == ["panel.png"]
    with Image.open(png) as reread:
        assert reread.mode == "RGB"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_atomic_write_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic("x", tmp_path / "a.txt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- markdown

ROWS = {
    "bottle": {"image_auroc": 0.9876, "pixel_auroc": 0.95},
    "cable": {"image_auroc": 0.9, "pixel_auroc": float("nan")},
}


def test_markdown_table_exact():
    text = metrics_table_markdown(ROWS, ["image_auroc", "pixel_auroc"], notes=["oracle F1"])
    assert text == (
        "| category | image_auroc | pixel_auroc |\n"
        "|---|---:|---:|\n"
        "| bottle | 98.8 | 95.0 |\n"
        "| cable | 90.0 | – |\n"
        "| **mean** | 94.4 | 95.0 |\n"
        "\n"
        "oracle F1\n"
    )


def test_markdown_options_and_missing_columns():
    text = metrics_table_markdown(ROWS, ["image_auroc", "aupro"], mean_row=False, percent=False)
    assert text == (
        "| category | image_auroc | aupro |\n"
        "|---|---:|---:|\n"
        "| bottle | 0.9876 | – |\n"
        "| cable | 0.9000 | – |\n"
    )
    single = metrics_table_markdown({"a|b": {"m": 0.5}}, ["m"])
    assert "mean" not in single and "| a\\|b | 50.0 |" in single


# --------------------------------------------------------------------------- HTML


def test_html_report_escapes_text_and_lists_every_image(tmp_path):
    path = tmp_path / "report.html"
    html_report(
        path,
        title='PatchCore <on> "synth" & co',
        summary={"method": "patchcore", "backbone": "<wide_resnet50>"},
        metrics=ROWS,
        columns=["image_auroc", "pixel_auroc", "image_f1_max"],
        images=[("bottle <1>", "overlays/a b.png"), ("cable", "overlays/c#1.png")],
    )
    page = path.read_text(encoding="utf-8")
    assert "PatchCore &lt;on&gt; &quot;synth&quot; &amp; co" in page
    assert "<on>" not in page and "&lt;wide_resnet50&gt;" in page
    assert page.count("<img ") == 2
    assert 'src="overlays/a%20b.png"' in page and 'src="overlays/c%231.png"' in page
    assert "bottle &lt;1&gt;" in page
    assert '<tr class="mean"><td>mean</td><td>94.4</td><td>95.0</td>' in page
    assert '<td class="na">–</td>' in page
    assert "oracle" in page  # default note for *_f1_max columns
    assert "<script" not in page and "http" not in page
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_html_report_without_images_or_metrics(tmp_path):
    path = tmp_path / "r.html"
    html_report(path, title="t", summary={}, metrics={}, columns=[], images=[], notes=["n1"])
    page = path.read_text(encoding="utf-8")
    assert "<img" not in page and "No heat maps" in page and "<li>n1</li>" in page


def test_training_curves_one_chart_per_series_on_its_own_scale():
    epochs = [
        {"epoch": 1, "loss": 2.0, "oracle": 1.5},
        {"epoch": 2, "loss": 1.0},
        {"epoch": 3, "loss": float("nan")},
        {"epoch": 4, "loss": 0.5, "oracle": 1.9},
    ]
    charts = dict(training_curves_svg(epochs))
    loss, oracle = charts  # captions, in first-seen order
    assert loss == "loss: 0.5 at epoch 4 (range 0.5 to 2)"
    assert oracle == "oracle: 1.9 at epoch 4 (range 1.5 to 1.9)"
    # loss: epochs 1..4 across the width, 2.0 at the top and 0.5 at the bottom, NaN left out
    assert 'points="6.0,6.0 95.3,71.3 274.0,104.0"' in charts[loss]
    assert 'points="6.0,104.0 274.0,6.0"' in charts[oracle]  # only the scored epochs
    assert training_curves_svg([{"epoch": 1, "loss": float("nan")}]) == []


def test_html_report_draws_each_models_training_history(tmp_path):
    path = tmp_path / "report.html"
    history = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.8}]
    kwargs = {"title": "t", "summary": {}, "metrics": ROWS, "columns": ["image_auroc"]}
    html_report(path, **kwargs, images=[], histories={"<bottle>": history})
    page = path.read_text(encoding="utf-8")
    assert "<h2>Training</h2>" in page and "<h3>&lt;bottle&gt;</h3>" in page
    assert page.count("<svg ") == 1 and "loss: 0.8 at epoch 2" in page
    html_report(path, **kwargs, images=[])
    assert "Training" not in path.read_text(encoding="utf-8")
