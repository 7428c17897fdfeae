"""Chart of a consistency report (Pillow only): one panel per metric, one line per view pair.

- Sampson panel: mean Sampson error (px) per frame under the rig's known F;
- pose panel (when the report has ``pose``): rotation error (deg) per frame from CVD's pose protocol,
  failures drawn as crosses at the top, with AUC@5/10/20 and the matched-pixel count in its title.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Ten well-separated colours (matplotlib's "tab10" values), cycled for more pairs.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
MAX_LEGEND_ROWS = 10
PANEL_HEIGHT = 384
FAILURE = "failure"  # a per-frame value that is drawn as a cross at the top of the axis


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


@dataclass
class Panel:
    """One chart: per pair a legend label, ``[(frame, value | None | FAILURE)]`` and a legend value."""

    title: str
    series: list
    grey_frames: set  # frames shaded for every pair (no constraint there, e.g. F = 0)
    grey_label: str
    empty_message: str


def _fmt(value: Optional[float], digits: str = ".3f") -> str:
    return "n/a" if value is None else format(value, digits)


def _sampson_panel(report: dict) -> Panel:
    series = [(f"{entry['pair'][0]}-{entry['pair'][1]}",
               [(row["frame"], row["sampson_mean_px"]) for row in entry["frames"]],
               _fmt(entry["summary"]["sampson_mean_px"]))
              for entry in report["pairs"]]
    frames = {int(t) for t in report["evaluated_frames"]}
    for entry in report["pairs"]:  # grey where F = 0 for every pair (e.g. frame 0 of a CVD rig)
        frames &= {row["frame"] for row in entry["frames"] if row["degenerate_f"]}
    title = (f"mean Sampson error per frame (px), {report['detector']}; overall "
             f"{_fmt(report['overall']['sampson_mean_px'])} px")
    return Panel(title, series, frames, "F=0", "no Sampson error: every frame has F = 0 or no matches")


def _pose_value(row: dict):
    if row["status"] == "same_pose":
        return None
    return FAILURE if row["status"] != "ok" else row["rotation_error_deg"]


def _auc_text(auc: Optional[dict]) -> str:
    return "n/a" if auc is None else "/".join(f"{v:.0f}" for v in auc.values())


def _pose_panel(report: dict) -> Panel:
    pose = report["pose"]
    series = [(f"{entry['pair'][0]}-{entry['pair'][1]}", [(row["frame"], _pose_value(row)) for row in entry["frames"]],
               _fmt(entry["summary"]["rotation_error_median_deg"], ".2f"))
              for entry in pose["pairs"]]
    frames = {int(t) for t in report["evaluated_frames"]}
    for entry in pose["pairs"]:
        frames &= {row["frame"] for row in entry["frames"] if row["status"] == "same_pose"}
    overall = pose["overall"]
    matched = report.get("match_count", {}).get("overall", {}).get("matched_pixels_mean")
    title = (f"rotation error per frame (deg); AUC@5/10/20 rot {_auc_text(overall['rotation_auc_pct'])}, "
             f"trans {_auc_text(overall['translation_auc_pct'])}; Mat.Pix {_fmt(matched, '.0f')}; "
             f"failures {overall['failures']}")
    return Panel(title, series, frames, "same", "no pose: every frame has identical cameras")


def _draw_panel(panel: Panel, frames: list[int], width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (int(width), int(height)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(max(10, min(16, height // 28)))
    values = [v for _, points, _ in panel.series for _, v in points if isinstance(v, (int, float))]
    left, top, bottom = 56, 30, height - 34
    right = width - (150 if panel.series else 16)
    draw.text((left, 8), panel.title, fill=(0, 0, 0), font=font)
    y_top = _nice_ceiling(max(values) if values else 1.0)
    x_min, x_max = (min(frames), max(frames)) if frames else (0, 1)
    x_span = max(1, x_max - x_min)

    def to_xy(frame: int, value: float) -> tuple[float, float]:
        x = left + (frame - x_min) / x_span * (right - left) if len(frames) > 1 else (left + right) / 2
        return x, bottom - min(value, y_top) / y_top * (bottom - top)

    half = (right - left) / x_span / 2 if len(frames) > 1 else (right - left) / 2
    for frame in sorted(panel.grey_frames):
        x, _ = to_xy(frame, 0.0)
        draw.rectangle([max(left, x - half), top, min(right, x + half), bottom], fill=(232, 232, 232))
        draw.text((max(left + 3, x - 12), top + 2), panel.grey_label, fill=(120, 120, 120), font=font)

    for k in range(5):  # axes, y grid and ticks
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

    for index, (_, points, _) in enumerate(panel.series):  # one polyline per pair, broken at gaps
        colour = PALETTE[index % len(PALETTE)]
        segment: list[tuple[float, float]] = []
        for frame, value in points + [(None, None)]:
            if not isinstance(value, (int, float)):
                if len(segment) > 1:
                    draw.line(segment, fill=colour, width=2)
                segment = []
                if value == FAILURE:
                    x, y = to_xy(frame, y_top)
                    draw.line([x - 4, y - 4, x + 4, y + 4], fill=colour, width=2)
                    draw.line([x - 4, y + 4, x + 4, y - 4], fill=colour, width=2)
                continue
            x, y = to_xy(frame, value)
            segment.append((x, y))
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)

    for index, (label, _, legend) in enumerate(panel.series[:MAX_LEGEND_ROWS]):  # legend: pair and its value
        y = top + index * 18
        draw.rectangle([right + 12, y + 3, right + 24, y + 13], fill=PALETTE[index % len(PALETTE)])
        draw.text((right + 30, y), f"{label}: {legend}", fill=(0, 0, 0), font=font)
    if len(panel.series) > MAX_LEGEND_ROWS:
        draw.text((right + 12, top + MAX_LEGEND_ROWS * 18), f"+{len(panel.series) - MAX_LEGEND_ROWS} more pairs",
                  fill=(90, 90, 90), font=font)
    has_failures = any(v == FAILURE for _, points, _ in panel.series for _, v in points)
    if not values and not has_failures:
        draw.text((left + 12, (top + bottom) / 2), panel.empty_message, fill=(160, 0, 0), font=font)
    return image


def render_consistency_plot(report: dict, width: int = 768, height: Optional[int] = None) -> np.ndarray:
    """Draw the report's panels stacked: Sampson error per frame, and the pose protocol's rotation
    error per frame when the report has ``pose``.

    Frames without a constraint (F = 0, identical cameras) are shaded grey and the lines break there.
    ``height`` is the whole image (default 384 per panel). Returns ``[height, width, 3]`` float32 in
    0..1 (a ComfyUI IMAGE frame).
    """
    panels = [_sampson_panel(report)] + ([_pose_panel(report)] if report.get("pose") else [])
    height = PANEL_HEIGHT * len(panels) if height is None else int(height)
    if width < 200 or height < 120 * len(panels):
        raise ValueError(f"the plot needs at least 200x{120 * len(panels)} pixels, got {width}x{height}")
    frames = [int(t) for t in report["evaluated_frames"]]
    heights = [height // len(panels)] * len(panels)
    heights[-1] += height - sum(heights)
    canvas = Image.new("RGB", (int(width), height), (255, 255, 255))
    y = 0
    for panel, panel_height in zip(panels, heights):
        canvas.paste(_draw_panel(panel, frames, int(width), panel_height), (0, y))
        y += panel_height
    return np.asarray(canvas, dtype=np.float32) / 255.0
