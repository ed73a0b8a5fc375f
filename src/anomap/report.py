"""Pictures and reports people look at: heat-map overlays, panels, metric tables, HTML.

No matplotlib and no OpenCV: the colour map is a 256-entry LUT computed from Matt Zucker's
published 6th-order polynomial fit of matplotlib's "inferno" (CC0), and contours are
morphological edges (scipy.ndimage). Every file is written atomically (temp file in the same
folder, then ``os.replace``), so a crash never leaves a half-written report behind.
"""

from __future__ import annotations

import html
import math
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = [
    "LUT",
    "colorize",
    "html_report",
    "metrics_table_markdown",
    "overlay",
    "panel",
    "save_png_atomic",
    "write_text_atomic",
]

# inferno(t) = c0 + t*c1 + ... + t^6*c6 per RGB channel, t in [0, 1] (shadertoy.com/view/WlfXRN)
_INFERNO_POLY = np.array(
    [
        [0.0002189403691192265, 0.001651004631001012, -0.01948089843709184],
        [0.1065134194856116, 0.5639564367884091, 3.932712388889277],
        [11.60249308247187, -3.972853965665698, -15.9423941062914],
        [-41.70399613139459, 17.43639888205313, 44.35414519872813],
        [77.162935699427, -33.40235894210092, -81.80730925738993],
        [-71.31942824499214, 32.62606426397723, 73.20951985803202],
        [25.13112622477341, -12.24266895238567, -23.07032500287172],
    ]
)


def _inferno_lut() -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)[:, None]
    rgb = np.zeros((256, 3))
    for coefficients in _INFERNO_POLY[::-1]:  # Horner
        rgb = rgb * t + coefficients
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


LUT: np.ndarray = _inferno_lut()
"""256×3 uint8: index 0 is near-black (low anomaly), 255 pale yellow (high)."""

_THRESHOLD_COLOUR = (255, 255, 255)
_MASK_COLOUR = (40, 230, 110)
_ANOMALOUS_COLOUR = (206, 44, 52)
_NORMAL_COLOUR = (38, 140, 78)
_BACKGROUND = (22, 24, 29)
_TEXT = (236, 238, 242)
_MUTED = (150, 156, 168)


# --------------------------------------------------------------------------- pictures


def colorize(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """H×W float -> H×W×3 uint8 through the inferno LUT.

    Values are clipped to [vmin, vmax]; NaN shows as vmin. With ``vmax <= vmin`` the map is
    two-tone: values above vmin get the top colour, the rest the bottom one.
    """
    if not (math.isfinite(vmin) and math.isfinite(vmax)):
        raise ValueError(f"colour range must be finite, got vmin={vmin}, vmax={vmax}")
    values = np.asarray(anomaly_map, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"anomaly map must be H×W, got shape {values.shape}")
    values = np.nan_to_num(values, nan=vmin, posinf=max(vmin, vmax), neginf=vmin)
    if vmax > vmin:
        scaled = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    else:
        scaled = (values > vmin).astype(np.float64)
    return LUT[(scaled * 255).round().astype(np.intp)]


def _as_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL image or H×W / H×W×3 / H×W×4 array (uint8, or float in [0, 1]) -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if array.size and np.nanmax(array) <= 1.0:
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array).convert("RGB")


def _resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Map to PIL (w, h) `size` by bilinear interpolation when it differs."""
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.shape[::-1] == size:
        return anomaly_map
    pil = Image.fromarray(np.ascontiguousarray(anomaly_map))  # float32 -> mode "F"
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR))


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary mask to PIL (w, h) `size`."""
    return _resize_map(np.asarray(mask).astype(np.float32), size) >= 0.5


def _contour(region: np.ndarray) -> np.ndarray:
    """A 2-px line on the region's boundary: one pixel outside, one inside.

    Pixels along the picture's frame are not outlined (the frame already ends the region).
    """
    if not region.any():
        return region
    outer = ndimage.binary_dilation(region)
    inner = ndimage.binary_erosion(region, border_value=1)
    return outer & ~inner


def overlay(
    image: Image.Image | np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    threshold: float | None = None,
    mask: np.ndarray | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """The colourised map blended over the image (at the image's size, map resized bilinearly),
    a white outline where the map reaches `threshold`, a green outline around `mask`."""
    base = _as_rgb(image)
    heat = _resize_map(anomaly_map, base.size)
    alpha = float(np.clip(alpha, 0.0, 1.0))
    blended = (1 - alpha) * np.asarray(base, np.float32) + alpha * colorize(heat, vmin, vmax)
    out = blended.round().astype(np.uint8)
    if threshold is not None:
        out[_contour(heat >= threshold)] = _THRESHOLD_COLOUR
    if mask is not None:
        out[_contour(_resize_mask(mask, base.size))] = _MASK_COLOUR
    return Image.fromarray(out)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag|")
    return int(bottom)


def _drawable(text: str, font) -> str:
    """The bitmap fallback font (old Pillow, no FreeType) only encodes Latin-1."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.replace("…", "...").encode("latin-1", "replace").decode("latin-1")


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut with an ellipsis in the middle (keeping the file name) to fit `width`."""
    text = _drawable(text, font)
    ellipsis = _drawable("…", font)
    if width <= 0:
        return ""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        head = (keep + 1) // 2
        candidate = text[:head] + ellipsis + text[len(text) - (keep - head) :]
        if draw.textlength(candidate, font=font) <= width:
            return candidate
    return ellipsis


def _format_number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


_MIN_TILE, _MAX_TILE = 224, 512


def _tile_size(size: tuple[int, int]) -> tuple[int, int]:
    """Small inputs are enlarged (readable next to the caption), huge ones reduced."""
    width, height = size
    side = max(width, height)
    scale = _MIN_TILE / side if side < _MIN_TILE else min(1.0, _MAX_TILE / side)
    return max(1, round(width * scale)), max(1, round(height * scale))


def panel(
    image: Image.Image | np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    threshold: float | None = None,
    mask: np.ndarray | None = None,
    title: str = "",
    score: float | None = None,
    decision: bool | None = None,
) -> Image.Image:
    """input | heat-map overlay | ground truth (when `mask` is given), with a caption strip
    (title, score, decision badge) above and a colour scale with a legend below.

    Tiles are shown at 224–512 px on their long side, whatever the input size; the map
    and the mask are resized to the tile, so outlines stay crisp.
    """
    source = _as_rgb(image)
    size = _tile_size(source.size)
    base = source if source.size == size else source.resize(size, Image.Resampling.BICUBIC)
    tiles = [
        ("input", base),
        (
            "anomaly map",
            overlay(base, anomaly_map, vmin=vmin, vmax=vmax, threshold=threshold, mask=mask),
        ),
    ]
    if mask is not None:
        gt = _resize_mask(mask, size).astype(np.uint8) * 255
        tiles.append(("ground truth", Image.fromarray(gt).convert("RGB")))

    title_font, text_font, small_font = _font(16), _font(13), _font(11)
    pad, gap = 10, 6
    title_h, text_h, small_h = (_line_height(f) for f in (title_font, text_font, small_font))
    width = max(360, sum(t.width for _, t in tiles) + gap * (len(tiles) - 1) + 2 * pad)
    header_h = pad + title_h + 6 + text_h + pad
    label_h = small_h + 6
    footer_h = pad + 10 + 4 + small_h + pad
    tiles_top = header_h + label_h
    height = tiles_top + size[1] + footer_h
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    # header: title, then score / threshold; decision badge on the right
    right_edge = width - pad
    if decision is not None:
        label = "ANOMALOUS" if decision else "normal"
        badge_w = int(draw.textlength(label, font=text_font)) + 20
        badge_h = text_h + 12
        top = (header_h - badge_h) // 2
        draw.rounded_rectangle(
            (right_edge - badge_w, top, right_edge, top + badge_h),
            radius=badge_h // 2,
            fill=_ANOMALOUS_COLOUR if decision else _NORMAL_COLOUR,
        )
        draw.text((right_edge - badge_w + 10, top + 6), label, fill=(255, 255, 255), font=text_font)
        right_edge -= badge_w + 12
    draw.text((pad, pad), _fit(draw, title, title_font, right_edge - pad), _TEXT, title_font)
    facts = []
    if score is not None:
        facts.append(f"score {_format_number(float(score))}")
    if threshold is not None:
        facts.append(f"pixel threshold {_format_number(float(threshold))}")
    draw.text(
        (pad, pad + title_h + 6),
        _fit(draw, "   ·   ".join(facts), text_font, right_edge - pad),
        _MUTED,
        text_font,
    )

    # tiles with their labels
    x = pad
    for name, tile in tiles:
        draw.text((x, header_h), name, _MUTED, small_font)
        canvas.paste(tile, (x, tiles_top))
        x += tile.width + gap

    # footer: colour scale with its range (and the threshold), legend of the outlines
    bar_top = tiles_top + size[1] + pad
    bar_w = int(min(256, max(96, (width - 2 * pad) * 0.4)))
    bar = np.broadcast_to(LUT[np.linspace(0, 255, bar_w).round().astype(np.intp)], (10, bar_w, 3))
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (pad, bar_top))
    label_y = bar_top + 10 + 4
    low, high = _format_number(float(vmin)), _format_number(float(vmax))
    draw.text((pad, label_y), low, _MUTED, small_font)
    draw.text(
        (pad + bar_w - draw.textlength(high, font=small_font), label_y), high, _MUTED, small_font
    )
    if threshold is not None and vmax > vmin and vmin <= threshold <= vmax:
        tick = pad + round((threshold - vmin) / (vmax - vmin) * (bar_w - 1))
        draw.rectangle((tick - 1, bar_top - 3, tick, bar_top + 12), fill=_THRESHOLD_COLOUR)
    legend = []
    if threshold is not None:
        legend.append(("above threshold", _THRESHOLD_COLOUR))
    if mask is not None:
        legend.append(("ground truth", _MASK_COLOUR))
    x = pad + bar_w + 24
    for text, colour in legend:
        text_w = draw.textlength(text, font=small_font)
        if x + 22 + text_w > width - pad:
            break
        draw.rectangle((x, bar_top + 4, x + 16, bar_top + 5), fill=colour)
        draw.text((x + 22, bar_top + 5 - small_h // 2 - 1), text, _MUTED, small_font)
        x += 22 + int(text_w) + 18
    return canvas


# --------------------------------------------------------------------------- files


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through `write(handle)` into a temp file beside `path`, then rename over it.

    The temp file is created with the usual 0o666 & ~umask mode (mkstemp's 0o600 would leave
    reports unreadable to others after the rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_png_atomic(image: Image.Image, path: str | Path) -> None:
    """Save `image` as PNG at `path`, atomically."""
    _atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write `text` as UTF-8 at `path`, atomically."""
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


# --------------------------------------------------------------------------- tables


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _format(value, percent: bool) -> str:
    if _missing(value):
        return "–"
    return f"{float(value) * 100:.1f}" if percent else f"{float(value):.4f}"


def _with_mean(
    rows: dict[str, dict[str, float]], columns: Sequence[str]
) -> tuple[dict[str, dict[str, float]], bool]:
    """`rows` plus a "mean" row (unweighted over categories, NaN ignored) when there are
    at least two categories; the flag says whether one was added."""
    if len(rows) < 2:
        return dict(rows), False
    means = {}
    for column in columns:
        values = [float(r[column]) for r in rows.values() if not _missing(r.get(column))]
        means[column] = float(np.mean(values)) if values else float("nan")
    return {**rows, "mean": means}, True


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def metrics_table_markdown(
    rows: dict[str, dict[str, float]],
    columns: Sequence[str],
    *,
    mean_row: bool = True,
    percent: bool = True,
    notes: Sequence[str] = (),
) -> str:
    """Category × metric table in GitHub markdown, numbers right-aligned.

    Missing or NaN values show as "–". With `mean_row` and two or more categories a bold
    **mean** row follows: the unweighted mean over categories, ignoring NaN. `percent`
    shows values ×100 with one decimal, otherwise four decimals. `notes` follow the table,
    one line each.
    """
    table, has_mean = _with_mean(rows, columns) if mean_row else (dict(rows), False)
    lines = [
        "| category | " + " | ".join(_md_cell(c) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    names = list(table)
    for i, name in enumerate(names):
        cells = [_format(table[name].get(c), percent) for c in columns]
        is_mean = has_mean and i == len(names) - 1
        label = f"**{_md_cell(name)}**" if is_mean else _md_cell(name)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if notes:
        lines.extend(["", *notes])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
:root{--fg:#1d2330;--muted:#5d6677;--line:#dde1e8;--bg:#f6f7f9;--card:#fff;--accent:#3554d1}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1280px;margin:0 auto;padding:2rem 1.5rem 3rem}
header{border-bottom:3px solid var(--accent);padding-bottom:1rem;margin-bottom:1.5rem}
h1{font-size:1.6rem;margin:0 0 .8rem;font-weight:650}
h2{font-size:1.15rem;margin:2rem 0 .6rem;font-weight:620}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1.2rem;margin:0}
dt{color:var(--muted)} dd{margin:0;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
font-size:.9rem;overflow-wrap:anywhere}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);
font-variant-numeric:tabular-nums}
th,td{padding:.4rem .8rem;text-align:right;border-bottom:1px solid var(--line);white-space:nowrap}
th{background:#eef0f4;font-weight:600;font-size:.85rem}
th:first-child,td:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafbfc}
tr.mean td{font-weight:700;border-top:2px solid var(--fg);background:#f0f3fb}
td.na{color:#a0a6b2}
.notes{color:var(--muted);font-size:.88rem;margin:.6rem 0 0;padding-left:1.2rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,30rem),1fr));gap:1rem}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:6px;
padding:.5rem;box-shadow:0 1px 2px rgba(0,0,0,.05)}
figure img{display:block;width:100%;height:auto;border-radius:3px}
figcaption{font-size:.82rem;color:var(--muted);margin-top:.35rem;overflow-wrap:anywhere}
.empty{color:var(--muted)}
h3{font-size:1rem;margin:1.2rem 0 .5rem;font-weight:600}
.curves{display:flex;flex-wrap:wrap;gap:.8rem}
.curves figure{width:calc(280px + 1rem)}
footer{margin-top:2.5rem;color:var(--muted);font-size:.8rem}
"""


def training_curves_svg(epochs: Sequence[dict[str, float]]) -> list[tuple[str, str]]:
    """One small inline SVG line chart per series of a training history (`history.json`'s
    epochs: losses, `val_mean`, `oracle` …), each on its own scale, as (caption, svg) pairs.
    Series recorded only every N epochs are drawn through the epochs that have them."""
    width, height, pad = 280, 110, 6
    names = list(dict.fromkeys(k for e in epochs for k in e if k != "epoch"))
    charts = []
    for name in names:
        points = [(e["epoch"], float(e[name])) for e in epochs if name in e]
        values = [v for _, v in points if math.isfinite(v)]
        if not values:
            continue
        first, last = points[0][0], points[-1][0]
        low, high = min(values), max(values)
        span_x, span_y = max(last - first, 1), (high - low) or 1.0
        scaled = [
            (
                pad + (width - 2 * pad) * (epoch - first) / span_x,
                height - pad - (height - 2 * pad) * (value - low) / span_y,
            )
            for epoch, value in points
            if math.isfinite(value)
        ]
        line = " ".join(f"{a:.1f},{b:.1f}" for a, b in scaled)
        dots = "".join(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2"/>' for a, b in scaled)
        dots = dots if len(scaled) <= 40 else ""
        caption = (
            f"{name}: {_format_number(points[-1][1])} at epoch {last} "
            f"(range {_format_number(low)} to {_format_number(high)})"
        )
        svg = (
            f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="{html.escape(caption, quote=True)}">'
            f'<rect width="{width}" height="{height}" fill="#fafbfc" stroke="#dde1e8"/>'
            f'<polyline points="{line}" fill="none" stroke="#3554d1" stroke-width="1.6"/>'
            f'<g fill="#3554d1">{dots}</g></svg>'
        )
        charts.append((caption, svg))
    return charts


def _default_notes(columns: Sequence[str]) -> list[str]:
    notes = []
    if any("f1_max" in c for c in columns):
        notes.append("*_f1_max columns pick their threshold on the test set (oracle).")
    if any(c.startswith("threshold_") for c in columns):
        notes.append("threshold_* columns use the threshold learnt from normal images only.")
    return notes


def _image_src(path: str) -> str:
    """A relative file path as an attribute-safe URL (spaces, '#', '%' … percent-encoded)."""
    return html.escape(quote(str(path).replace(os.sep, "/"), safe="/._-~"), quote=True)


def html_report(
    path: str | Path,
    *,
    title: str,
    summary: dict[str, str],
    metrics: dict[str, dict[str, float]],
    columns: Sequence[str],
    images: Sequence[tuple[str, str]],
    notes: Sequence[str] | None = None,
    histories: dict[str, Sequence[dict[str, float]]] | None = None,
) -> None:
    """Write one HTML page at `path`: title and `summary` facts (method, backbone, data…),
    the metrics table in percent (with a mean row for two or more categories), `notes`
    under it (None: explain the oracle / learnt-threshold columns present), a grid of
    `images`, each (caption, PNG path relative to the page), and for each of `histories`
    (model name -> its training history's epochs) a row of training curves.

    Inline CSS only: no script, no external resource; all text is HTML-escaped.
    """
    from anomap import __version__

    esc = html.escape
    notes = _default_notes(columns) if notes is None else list(notes)
    facts = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>" for k, v in summary.items())

    if metrics:
        table, has_mean = _with_mean(metrics, columns)
        head = "".join(f"<th>{esc(str(c))}</th>" for c in ["category", *columns])
        body = []
        names = list(table)
        for i, name in enumerate(names):
            cells = []
            for column in columns:
                value = table[name].get(column)
                css = ' class="na"' if _missing(value) else ""
                cells.append(f"<td{css}>{_format(value, True)}</td>")
            css = ' class="mean"' if has_mean and i == len(names) - 1 else ""
            body.append(f"<tr{css}><td>{esc(str(name))}</td>{''.join(cells)}</tr>")
        metrics_html = (
            f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
    else:
        metrics_html = '<p class="empty">No metrics.</p>'
    notes_html = (
        '<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
        if notes
        else ""
    )

    figures = "".join(
        f'<figure><img src="{_image_src(src)}" alt="{esc(cap)}" loading="lazy">'
        f"<figcaption>{esc(cap)}</figcaption></figure>"
        for cap, src in images
    )
    images_html = (
        f'<div class="grid">{figures}</div>'
        if images
        else '<p class="empty">No heat maps were written.</p>'
    )

    training_html = ""
    for name, epochs in (histories or {}).items():
        charts = "".join(
            f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>"
            for caption, svg in training_curves_svg(epochs)
        )
        training_html += f'<h3>{esc(name)}</h3><div class="curves">{charts}</div>'
    if training_html:
        training_html = f"<section><h2>Training</h2>{training_html}</section>\n"

    page = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><main><header><h1>{esc(title)}</h1><dl>{facts}</dl></header>\n"
        f"<section><h2>Metrics (%)</h2>{metrics_html}{notes_html}</section>\n"
        f"<section><h2>Heat maps</h2>{images_html}</section>\n"
        f"{training_html}"
        f"<footer>Written by anomap {esc(__version__)}.</footer></main></body></html>\n"
    )
    write_text_atomic(page, path)
