"""A camera rig drawn so that a person sees it at a glance: paths and frusta from above and from the side.

Left panel: top view (X horizontal, Z = forward pointing up the page). Right panel: side view
(Z horizontal, Y vertical; OpenCV's y points down, so "down" is down on the page). Each view has
one colour (:func:`view_colors`), used for its path, its frusta and its legend entry.
"""

from __future__ import annotations

import colorsys
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..camera.rig import CameraError, CameraSet

__all__ = ["render_rig_preview", "view_colors", "load_font"]

# Distinct, colour-blind-friendly first colours (Okabe-Ito-like); more views get evenly spaced hues.
_PALETTE = [(0.00, 0.45, 0.70), (0.90, 0.38, 0.00), (0.00, 0.62, 0.45), (0.80, 0.47, 0.65),
            (0.94, 0.76, 0.05), (0.34, 0.71, 0.91), (0.55, 0.25, 0.10), (0.20, 0.20, 0.20)]
_SUPERSAMPLE = 2  # draw at 2x and downsample: smooth lines without an antialiasing library
_BACKGROUND = (248, 248, 246)
_PANEL = (255, 255, 255)
_INK = (40, 40, 40)
_GRID = (228, 228, 228)


def view_colors(n: int) -> np.ndarray:
    """``[n, 3]`` float32 RGB colours in [0, 1], one per view, pairwise distinct and stable in n."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    colours = [_PALETTE[i] if i < len(_PALETTE) else
               colorsys.hsv_to_rgb(((i - len(_PALETTE)) * 0.618034) % 1.0, 0.75, 0.85) for i in range(n)]
    return np.asarray(colours, dtype=np.float32).reshape(n, 3)


def load_font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (the bitmap default when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _to_rgb255(colour: Sequence[float]) -> Tuple[int, int, int]:
    return tuple(int(round(255 * float(c))) for c in colour[:3])


def _frame_indices(n_frames: int, count: int = 4) -> List[int]:
    """First, last and a few evenly spaced frames in between."""
    return sorted(set(np.linspace(0, n_frames - 1, min(n_frames, count)).round().astype(int).tolist()))


def _frustum_world(K: torch.Tensor, c2w: torch.Tensor, width: int, height: int, depth: float) -> np.ndarray:
    """World points ``[5, 3]``: camera centre, then the image corners at ``depth`` along z."""
    corners = torch.tensor([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]], dtype=torch.float64)
    x = (corners[:, 0] - K[0, 2]) / K[0, 0] * depth
    y = (corners[:, 1] - K[1, 2]) / K[1, 1] * depth
    local = torch.stack([x, y, torch.full_like(x, depth)], dim=-1)
    world = local @ c2w[:3, :3].T + c2w[:3, 3]
    return torch.cat([c2w[None, :3, 3], world]).numpy()


class _Panel:
    """Maps two world axes into a pixel box with a uniform scale (equal aspect)."""

    def __init__(self, box: Tuple[int, int, int, int], axes: Tuple[int, int], flip: Tuple[bool, bool],
                 points: np.ndarray):
        self.box, self.axes, self.flip = box, axes, flip
        coords = self._signed(points)
        lo, hi = coords.min(0), coords.max(0)
        span = np.maximum(hi - lo, 1e-6)
        x0, y0, x1, y1 = box
        margin = 0.12
        self.scale = min((x1 - x0) * (1 - 2 * margin) / span[0], (y1 - y0) * (1 - 2 * margin) / span[1])
        self.centre_world = (lo + hi) / 2.0
        self.centre_px = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])

    def _signed(self, points: np.ndarray) -> np.ndarray:
        coords = np.asarray(points)[..., list(self.axes)].astype(np.float64)
        return coords * np.array([-1.0 if f else 1.0 for f in self.flip])

    def to_px(self, points: np.ndarray) -> List[Tuple[float, float]]:
        px = (self._signed(points) - self.centre_world) * self.scale + self.centre_px
        return [tuple(p) for p in px.reshape(-1, 2)]


def _draw_arrow(draw: ImageDraw.ImageDraw, start, end, colour, width: int) -> None:
    draw.line([start, end], fill=colour, width=width)
    direction = np.subtract(end, start).astype(np.float64)
    length = np.linalg.norm(direction)
    if length < 1e-6:
        return
    direction /= length
    normal = np.array([-direction[1], direction[0]])
    head = 4.0 * width
    tip = np.asarray(end, dtype=np.float64)
    draw.polygon([tuple(tip), tuple(tip - head * direction + 0.5 * head * normal),
                  tuple(tip - head * direction - 0.5 * head * normal)], fill=colour)


def render_rig_preview(rig: CameraSet, width: int = 768, height: int = 384) -> np.ndarray:
    """Draw ``rig`` (a rig or single trajectory) as ``[height, width, 3]`` float32 RGB in [0, 1].

    Two panels: top view (X-Z) and side view (Z-Y), each with every view's camera path, frusta at
    the first, last and two intermediate frames, a start marker, axis arrows; a legend lists the
    views with their index and label.
    """
    if not isinstance(rig, CameraSet):
        raise CameraError(f"rig must be a CameraSet, got {type(rig).__name__}")
    if width < 128 or height < 96:
        raise CameraError(f"preview size must be at least 128x96, got {width}x{height}")
    rig = rig.as_rig()
    ss = _SUPERSAMPLE
    W, H = width * ss, height * ss
    image = Image.new("RGB", (W, H), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = load_font(max(10, height // 32) * ss)
    small = load_font(max(9, height // 40) * ss)

    centres = rig.c2w[..., :3, 3].numpy()  # [V, F, 3]
    extent = float(np.ptp(centres.reshape(-1, 3), axis=0).max()) if centres.size else 0.0
    depth = max(0.15 * extent, 0.08)
    frames = _frame_indices(rig.n_frames)
    frusta = [[_frustum_world(rig.K[v, f], rig.c2w[v, f], rig.width, rig.height, depth) for f in frames]
              for v in range(rig.n_views)]
    all_points = np.concatenate([centres.reshape(-1, 3), np.asarray(frusta).reshape(-1, 3)])

    title_h = int(font.size * 1.8) if hasattr(font, "size") else 24 * ss
    pad = 6 * ss
    half = W // 2
    panels = [
        ("top view (X right, Z forward)", _Panel((pad, title_h, half - pad // 2, H - pad), (0, 2), (False, True),
                                                 all_points), ("X", "Z")),
        ("side view (Z forward, Y down)", _Panel((half + pad // 2, title_h, W - pad, H - pad), (2, 1),
                                                 (False, False), all_points), ("Z", "Y")),
    ]
    colours = [_to_rgb255(c) for c in view_colors(rig.n_views)]
    line_w = max(1, ss)
    for title, panel, axis_names in panels:
        x0, y0, x1, y1 = panel.box
        draw.rectangle(panel.box, fill=_PANEL, outline=_GRID, width=ss)
        draw.text((x0 + pad, y0 - title_h + pad // 2), title, fill=_INK, font=font)
        origin = panel.to_px(np.zeros(3))[0]
        draw.ellipse([origin[0] - 3 * ss, origin[1] - 3 * ss, origin[0] + 3 * ss, origin[1] + 3 * ss],
                     outline=_INK, width=ss)
        for v in range(rig.n_views):
            colour = colours[v]
            path = panel.to_px(centres[v])
            if len(path) > 1:
                draw.line(path, fill=colour, width=2 * line_w)
            for pts in frusta[v]:
                c, a, b, cc, d = panel.to_px(pts)
                for corner in (a, b, cc, d):
                    draw.line([c, corner], fill=colour, width=line_w)
                draw.line([a, b, cc, d, a], fill=colour, width=line_w)
            end = path[-1]
            draw.ellipse([end[0] - 3 * ss, end[1] - 3 * ss, end[0] + 3 * ss, end[1] + 3 * ss], fill=colour)
        # axis arrows in the panel's lower-left corner, pointing along +axis as drawn
        arrow = 28 * ss
        vertical_up = panel.flip[1]
        base = (x0 + 14 * ss, y1 - 14 * ss - (0 if vertical_up else arrow))
        tip_v = (base[0], base[1] - arrow) if vertical_up else (base[0], base[1] + arrow)
        _draw_arrow(draw, base, (base[0] + arrow, base[1]), _INK, ss)
        _draw_arrow(draw, base, tip_v, _INK, ss)
        draw.text((base[0] + arrow + 3 * ss, base[1] - 6 * ss), axis_names[0], fill=_INK, font=small)
        draw.text((tip_v[0] + 5 * ss, tip_v[1] - (6 * ss if vertical_up else 10 * ss)), axis_names[1],
                  fill=_INK, font=small)

    _draw_legend(draw, rig, colours, panels[0][1].box, small, ss)
    out = image.resize((width, height), Image.LANCZOS)
    return np.asarray(out, dtype=np.float32) / 255.0


def _draw_legend(draw: ImageDraw.ImageDraw, rig: CameraSet, colours, box, font, ss: int) -> None:
    """One line per view (index, colour swatch, label), in the top-left corner of the first panel."""
    x0, y0 = box[0] + 6 * ss, box[1] + 6 * ss
    line_h = int(getattr(font, "size", 10 * ss) * 1.35)
    max_lines = max(1, (box[3] - box[1]) // (2 * line_h))
    shown = rig.n_views if rig.n_views <= max_lines else max_lines - 1
    entries = [(colours[v], f"{v}: {rig.labels[v]}") for v in range(shown)]
    if shown < rig.n_views:
        entries.append((_INK, f"... +{rig.n_views - shown} more views"))
    text_w = max(draw.textlength(text, font=font) for _, text in entries)
    draw.rectangle([x0 - 3 * ss, y0 - 3 * ss, x0 + text_w + 20 * ss, y0 + line_h * len(entries) + 2 * ss],
                   fill=(255, 255, 255), outline=_GRID, width=ss)
    for i, (colour, text) in enumerate(entries):
        y = y0 + i * line_h
        draw.rectangle([x0, y + 2 * ss, x0 + 10 * ss, y + line_h - 3 * ss], fill=colour)
        draw.text((x0 + 14 * ss, y), text, fill=_INK, font=font)
