"""Pictures and reports people look at: heat-map overlays, panels, metric tables, HTML.

No matplotlib: the colour map is a 256-entry LUT interpolated from inferno's anchor colours,
and contours come from a one-pixel morphological edge.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# inferno sampled at 9 evenly spaced points (perceptually uniform, dark -> bright)
_INFERNO_ANCHORS = np.array(
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
_POSITIONS = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
LUT = (
    np.stack(
        [np.interp(np.linspace(0, 1, 256), _POSITIONS, _INFERNO_ANCHORS[:, c]) for c in range(3)],
        axis=1,
    )
    .round()
    .astype(np.uint8)
)

_THRESHOLD_COLOUR = (255, 255, 255)
_MASK_COLOUR = (0, 220, 90)
_ANOMALOUS_COLOUR = (220, 40, 40)
_NORMAL_COLOUR = (30, 150, 60)


def colorize(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """H×W float -> H×W×3 uint8, values clipped to [vmin, vmax]."""
    span = max(vmax - vmin, 1e-12)
    scaled = np.clip((np.asarray(anomaly_map, dtype=np.float32) - vmin) / span, 0.0, 1.0)
    return LUT[(scaled * 255).round().astype(np.uint8)]


def _as_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    return (image if isinstance(image, Image.Image) else Image.fromarray(image)).convert("RGB")


def _resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Map to PIL (w, h) `size` by bilinear interpolation when it differs."""
    if anomaly_map.shape[::-1] == size:
        return anomaly_map
    pil = Image.fromarray(np.asarray(anomaly_map, dtype=np.float32), mode="F")
    return np.asarray(pil.resize(size, Image.BILINEAR))


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary mask to PIL (w, h) `size`."""
    return _resize_map(mask.astype(np.float32), size) >= 0.5


def _edge(region: np.ndarray) -> np.ndarray:
    return region & ~ndimage.binary_erosion(region, iterations=1, border_value=0)


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
    """The heat map blended over the image; white outline where the map reaches `threshold`,
    green outline around the ground-truth `mask`."""
    base = _as_rgb(image)
    heat = _resize_map(anomaly_map, base.size)
    blended = (1 - alpha) * np.asarray(base, np.float32) + alpha * colorize(heat, vmin, vmax)
    out = blended.round().astype(np.uint8)
    if threshold is not None:
        out[ndimage.binary_dilation(_edge(heat >= threshold))] = _THRESHOLD_COLOUR
    if mask is not None:
        out[_edge(_resize_mask(mask, base.size))] = _MASK_COLOUR
    return Image.fromarray(out)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


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
    """input | heat-map overlay | ground truth (when given), with a caption strip."""
    base = _as_rgb(image)
    tiles = [base, overlay(base, anomaly_map, vmin=vmin, vmax=vmax, threshold=threshold)]
    if mask is not None:
        gt = _resize_mask(mask, base.size).astype(np.uint8) * 255
        tiles.append(Image.fromarray(gt).convert("RGB"))
    gap, caption = 4, 40
    width = max(320, sum(t.width for t in tiles) + gap * (len(tiles) - 1))
    canvas = Image.new("RGB", (width, base.height + caption), (24, 24, 28))
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, caption))
        x += tile.width + gap
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill=(235, 235, 235), font=_font(13))
    parts = []
    if score is not None:
        parts.append(f"score {score:.4g}")
    draw.text((6, 22), "  ".join(parts), fill=(200, 200, 200), font=_font(12))
    if decision is not None:
        label = "ANOMALOUS" if decision else "normal"
        colour = _ANOMALOUS_COLOUR if decision else _NORMAL_COLOUR
        font = _font(13)
        text_width = draw.textlength(label, font=font)
        left = width - text_width - 14
        draw.rectangle((left - 4, 18, width - 6, 36), fill=colour)
        draw.text((left, 20), label, fill=(255, 255, 255), font=font)
    return canvas


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png_atomic(image: Image.Image, path: str | Path) -> None:
    _atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))


def write_text_atomic(text: str, path: str | Path) -> None:
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _format(value: float, percent: bool) -> str:
    if value is None or np.isnan(value):
        return "–"
    return f"{value * 100:.1f}" if percent else f"{value:.4f}"


def _with_mean(rows: dict[str, dict[str, float]], columns: Sequence[str]) -> dict:
    means = {}
    for column in columns:
        values = [r[column] for r in rows.values() if column in r and not np.isnan(r[column])]
        means[column] = float(np.mean(values)) if values else float("nan")
    return {**rows, "mean": means}


def metrics_table_markdown(
    rows: dict[str, dict[str, float]],
    columns: Sequence[str],
    *,
    mean_row: bool = True,
    percent: bool = True,
    notes: Sequence[str] = (),
) -> str:
    """Category × metric table; the mean row is the unweighted mean over categories."""
    table = _with_mean(rows, columns) if mean_row and len(rows) > 1 else rows
    lines = [
        "| category | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, values in table.items():
        cells = [_format(values.get(c, float("nan")), percent) for c in columns]
        label = f"**{name}**" if name == "mean" and table is not rows else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.extend(["", *notes] if notes else [])
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}
h1{font-size:1.4rem} table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right} th{background:#eee}
td:first-child,th:first-child{text-align:left} dl{display:grid;grid-template-columns:auto 1fr;
gap:.2rem 1rem} dt{font-weight:600} .grid{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:.4rem}
figcaption{font-size:.8rem;color:#555;max-width:40rem;overflow-wrap:anywhere}
img{max-width:44rem;display:block}
"""


def html_report(
    path: str | Path,
    *,
    title: str,
    summary: dict[str, str],
    metrics: dict[str, dict[str, float]],
    columns: Sequence[str],
    images: Sequence[tuple[str, str]],
) -> None:
    """One self-contained HTML page: summary, metrics table (%), and the given panels
    (caption, path relative to the page)."""
    esc = html.escape
    table = _with_mean(metrics, columns) if len(metrics) > 1 else metrics
    head = "".join(f"<th>{esc(c)}</th>" for c in ["category", *columns])
    body = "".join(
        "<tr><td>"
        + esc(name)
        + "</td>"
        + "".join(f"<td>{_format(v.get(c, float('nan')), True)}</td>" for c in columns)
        + "</tr>"
        for name, v in table.items()
    )
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in summary.items())
    figures = "".join(
        f'<figure><img src="{esc(src)}" alt="{esc(cap)}"><figcaption>{esc(cap)}</figcaption>'
        "</figure>"
        for cap, src in images
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1><dl>{facts}</dl>"
        f"<h2>Metrics (%)</h2><table><tr>{head}</tr>{body}</table>"
        "<p>F1-max columns choose their threshold on the test set (oracle); threshold_* use "
        f"the threshold learnt from normal images only.</p><h2>Heat maps</h2>"
        f"<div class='grid'>{figures}</div></body></html>"
    )
    write_text_atomic(page, path)
