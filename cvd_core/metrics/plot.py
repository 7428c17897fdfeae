"""Chart of a consistency report: Sampson error per frame, one line per view pair (Pillow only)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Ten well-separated colours (matplotlib's "tab10" values), cycled for more pairs.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
MAX_LEGEND_ROWS = 10


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _nice_ceiling(value: float) -> float:
    """Smallest 1/2/5 x 10^k at or above ``value`` (a round top for the y axis)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def _series(report: dict) -> list[tuple[str, list[tuple[int, Optional[float]]], Optional[float]]]:
    """(legend label, [(frame, per-frame Sampson mean or None)], pair mean) for every pair."""
    return [(f"{entry['pair'][0]}-{entry['pair'][1]}",
             [(row["frame"], row["sampson_mean_px"]) for row in entry["frames"]],
             entry["summary"]["sampson_mean_px"])
            for entry in report["pairs"]]


def render_consistency_plot(report: dict, width: int = 768, height: int = 384) -> np.ndarray:
    """Draw the per-frame mean Sampson error of every pair as a line chart.

    Frames with a degenerate F (no epipolar constraint) are shaded grey and the lines break there.
    Returns ``[height, width, 3]`` float32 in 0..1 (a ComfyUI IMAGE frame).
    """
    if width < 200 or height < 120:
        raise ValueError(f"the plot needs at least 200x120 pixels, got {width}x{height}")
    image = Image.new("RGB", (int(width), int(height)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(max(10, min(16, height // 28)))
    series = _series(report)
    frames = [int(t) for t in report["evaluated_frames"]]
    values = [v for _, points, _ in series for _, v in points if v is not None]
    overall = report["overall"]["sampson_mean_px"]

    left, top, bottom = 56, 30, height - 34
    right = width - (150 if series else 16)
    title = f"mean Sampson error per frame (px), {report['detector']}; overall " + \
            ("n/a" if overall is None else f"{overall:.3f} px")
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)

    y_top = _nice_ceiling(max(values) if values else 1.0)
    x_min, x_max = (min(frames), max(frames)) if frames else (0, 1)
    x_span = max(1, x_max - x_min)

    def to_xy(frame: int, value: float) -> tuple[float, float]:
        x = left + (frame - x_min) / x_span * (right - left) if len(frames) > 1 else (left + right) / 2
        return x, bottom - min(value, y_top) / y_top * (bottom - top)

    # Grey bands where F = 0 for every pair (e.g. frame 0 of a CVD rig).
    degenerate = set(frames)
    for entry in report["pairs"]:
        degenerate &= {row["frame"] for row in entry["frames"] if row["degenerate_f"]}
    half = (right - left) / x_span / 2 if len(frames) > 1 else (right - left) / 2
    for frame in sorted(degenerate):
        x, _ = to_xy(frame, 0.0)
        draw.rectangle([max(left, x - half), top, min(right, x + half), bottom], fill=(232, 232, 232))
        draw.text((max(left + 3, x - 12), top + 2), "F=0", fill=(120, 120, 120), font=font)

    # Axes, y grid and ticks.
    for k in range(5):
        value = y_top * k / 4
        _, y = to_xy(x_min, value)
        draw.line([left, y, right, y], fill=(220, 220, 220))
        draw.text((4, y - 6), f"{value:.3g}", fill=(60, 60, 60), font=font)
    draw.line([left, top, left, bottom], fill=(0, 0, 0))
    draw.line([left, bottom, right, bottom], fill=(0, 0, 0))
    tick_every = max(1, math.ceil(len(frames) / 12))
    for frame in frames[::tick_every]:
        x, _ = to_xy(frame, 0.0)
        draw.line([x, bottom, x, bottom + 4], fill=(0, 0, 0))
        draw.text((x - 6, bottom + 6), str(frame), fill=(60, 60, 60), font=font)
    draw.text(((left + right) / 2 - 18, height - 14), "frame", fill=(0, 0, 0), font=font)

    # One polyline per pair, broken where a frame has no value.
    for index, (_, points, _) in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        segment: list[tuple[float, float]] = []
        for frame, value in points + [(None, None)]:
            if value is None:
                if len(segment) > 1:
                    draw.line(segment, fill=colour, width=2)
                segment = []
                continue
            x, y = to_xy(frame, value)
            segment.append((x, y))
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)

    # Legend: pair and its mean; the rest summarised when there are many pairs.
    for index, (label, _, mean) in enumerate(series[:MAX_LEGEND_ROWS]):
        y = top + index * 18
        colour = PALETTE[index % len(PALETTE)]
        draw.rectangle([right + 12, y + 3, right + 24, y + 13], fill=colour)
        text = f"{label}: " + ("n/a" if mean is None else f"{mean:.3f}")
        draw.text((right + 30, y), text, fill=(0, 0, 0), font=font)
    if len(series) > MAX_LEGEND_ROWS:
        draw.text((right + 12, top + MAX_LEGEND_ROWS * 18), f"+{len(series) - MAX_LEGEND_ROWS} more pairs",
                  fill=(90, 90, 90), font=font)
    if not values:
        draw.text((left + 12, (top + bottom) / 2), "no Sampson error: every frame has F = 0 or no matches",
                  fill=(160, 0, 0), font=font)

    return np.asarray(image, dtype=np.float32) / 255.0
