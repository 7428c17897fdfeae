"""Epipolar geometry of a view pair made visible: sample pixels in view A, their lines in view B.

For a correct rig, a scene point seen at a dot in A appears somewhere on the line of the same
colour in B; this is the constraint CVD's cross-view attention is biased towards. Frames where the
two cameras share their centre (frame 0 of every CVD rig, or a pure rotation) have no epipolar
geometry (F = 0); the preview then says so instead of drawing lines.
"""

from __future__ import annotations

import colorsys
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..camera.geometry import fundamental_matrix, inverse_affine
from ..camera.rig import CameraError, CameraSet
from .rig_preview import load_font, view_colors

__all__ = ["render_epipolar_preview", "clip_line_to_image"]

_BASELINE_EPS = 1e-9  # camera centres closer than this (scene units) count as the same point


def _point_colours(n: int) -> List[Tuple[int, int, int]]:
    """n clearly different saturated colours (hue ramp)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)) for i in range(n)]


def _checker(width: int, height: int) -> Image.Image:
    """Neutral grey checkerboard, 8 squares across the short side."""
    cell = max(4, min(width, height) // 8)
    ys, xs = np.mgrid[0:height, 0:width]
    board = (((xs // cell) + (ys // cell)) % 2).astype(np.uint8)
    grey = np.where(board[..., None] == 1, 150, 115).astype(np.uint8).repeat(3, axis=-1)
    return Image.fromarray(grey)


def _as_image(image, width: int, height: int, name: str) -> Image.Image:
    """An [H, W, C] (or [1, H, W, C]) float [0, 1] / uint8 array or tensor as an RGB PIL image of the rig's size."""
    if image is None:
        return _checker(width, height)
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise CameraError(f"{name} must be an image [H, W, C] with 1, 3 or 4 channels, got shape {list(array.shape)}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = (np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(array))
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.BILINEAR)
    return picture


def clip_line_to_image(line: np.ndarray, width: int, height: int) -> Optional[Tuple[Tuple[float, float], Tuple[float, float]]]:
    """End points of the line ``a x + b y + c = 0`` inside ``[0, W] x [0, H]``, or None if it misses."""
    a, b, c = (float(v) for v in line)
    points = []
    if abs(b) > 1e-12:
        for x in (0.0, float(width)):
            y = -(a * x + c) / b
            if -1e-6 <= y <= height + 1e-6:
                points.append((x, y))
    if abs(a) > 1e-12:
        for y in (0.0, float(height)):
            x = -(b * y + c) / a
            if -1e-6 <= x <= width + 1e-6:
                points.append((x, y))
    if len(points) < 2:
        return None
    # the two farthest apart (corners can appear twice)
    best = max(((p, q) for i, p in enumerate(points) for q in points[i + 1:]),
               key=lambda pq: (pq[0][0] - pq[1][0]) ** 2 + (pq[0][1] - pq[1][1]) ** 2)
    if (best[0][0] - best[1][0]) ** 2 + (best[0][1] - best[1][1]) ** 2 < 1e-9:
        return None
    return best


def _caption(draw: ImageDraw.ImageDraw, xy, text: str, font, colour) -> None:
    x, y = xy
    box = draw.textbbox((x, y), text, font=font)
    draw.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=(0, 0, 0))
    draw.text((x, y), text, fill=colour, font=font)


def _note(draw: ImageDraw.ImageDraw, origin_x: int, width: int, height: int, lines: List[str], font) -> None:
    """A centred, boxed multi-line message over one panel."""
    text = "\n".join(lines)
    box = draw.multiline_textbbox((0, 0), text, font=font, spacing=4)
    tw, th = box[2] - box[0], box[3] - box[1]
    x = origin_x + (width - tw) / 2
    y = (height - th) / 2
    draw.rectangle([x - 8, y - 8, x + tw + 8, y + th + 8], fill=(255, 255, 240), outline=(60, 60, 60), width=2)
    draw.multiline_text((x, y), text, fill=(20, 20, 20), font=font, spacing=4)


def render_epipolar_preview(rig: CameraSet, view_a: int, view_b: int, frame: int,
                            image_a=None, image_b=None, grid: int = 4) -> np.ndarray:
    """Side-by-side ``[H, 2W, 3]`` float32 RGB in [0, 1]: ``grid x grid`` dots in view A, their epipolar lines in B.

    ``rig``: the cameras (H, W = rig.height, rig.width). ``frame``: time index shared by both views
    (CVD's cross-view attention pairs equal frame indices). ``image_a``/``image_b``: optional
    ``[H, W, C]`` images (float [0, 1] or uint8, resized if needed) drawn underneath; a neutral
    checkerboard otherwise. Line i in B is ``F @ (u_i, v_i, 1)`` with ``x_B^T F x_A = 0``; the
    epipole (camera A's centre seen from B) is marked when it is in front of B and inside the frame.
    When both cameras share their centre (frame 0 of a CVD rig), F = 0 and a note explains it.
    """
    if not isinstance(rig, CameraSet):
        raise CameraError(f"rig must be a CameraSet, got {type(rig).__name__}")
    rig = rig.as_rig()
    for name, index, count in (("view_a", view_a, rig.n_views), ("view_b", view_b, rig.n_views),
                               ("frame", frame, rig.n_frames)):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < count:
            raise CameraError(f"{name} must be an integer in [0, {count - 1}], got {index!r}")
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= 32:
        raise CameraError(f"grid must be an integer in [1, 32], got {grid!r}")
    W, H = rig.width, rig.height
    K_a, K_b = rig.K[view_a, frame], rig.K[view_b, frame]
    c2w_a, c2w_b = rig.c2w[view_a, frame], rig.c2w[view_b, frame]

    canvas = Image.new("RGB", (2 * W, H))
    canvas.paste(_as_image(image_a, W, H, "image_a"), (0, 0))
    canvas.paste(_as_image(image_b, W, H, "image_b"), (W, 0))
    draw = ImageDraw.Draw(canvas)
    font = load_font(max(10, min(W, H) // 22))
    radius = max(2.0, min(W, H) / 90.0)
    line_w = max(1, int(round(min(W, H) / 180.0)))

    view_rgb = [tuple(int(255 * c) for c in colour) for colour in view_colors(rig.n_views)]
    _caption(draw, (6, 4), f"A: view {view_a} ({rig.labels[view_a]}), frame {frame}", font, view_rgb[view_a])
    _caption(draw, (W + 6, 4), f"B: view {view_b} ({rig.labels[view_b]}), frame {frame}", font, view_rgb[view_b])

    coords = (np.arange(grid) + 0.5) * np.array([[W], [H]]) / grid  # cell centres, [2, grid]
    points = [(float(x), float(y)) for y in coords[1] for x in coords[0]]
    colours = _point_colours(len(points))
    for (x, y), colour in zip(points, colours):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(0, 0, 0))

    baseline = float(torch.linalg.norm(c2w_a[:3, 3] - c2w_b[:3, 3]))
    if baseline <= _BASELINE_EPS:
        same = "identical poses" if torch.equal(c2w_a, c2w_b) else "same camera centre (pure rotation)"
        _note(draw, W, W, H, [f"frame {frame}: {same}", "F = 0: no epipolar constraint.",
                              "CVD attends along pseudo lines", "through the query pixel here."], font)
    else:
        F = fundamental_matrix(c2w_a, c2w_b, K_a, K_b).numpy()
        missed = 0
        for (x, y), colour in zip(points, colours):
            segment = clip_line_to_image(F @ np.array([x, y, 1.0]), W, H)
            if segment is None:
                missed += 1
                continue
            (x0, y0), (x1, y1) = segment
            draw.line([(x0 + W, y0), (x1 + W, y1)], fill=colour, width=line_w)
        _mark_epipole(draw, K_b, c2w_b, c2w_a[:3, 3], W, H, radius)
        if missed:
            _caption(draw, (W + 6, H - font.size - 10 if hasattr(font, "size") else H - 20),
                     f"{missed} of {len(points)} lines miss view B", font, (255, 255, 255))
    draw.line([(W, 0), (W, H)], fill=(255, 255, 255), width=2)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _mark_epipole(draw: ImageDraw.ImageDraw, K_b: torch.Tensor, c2w_b: torch.Tensor, centre_a: torch.Tensor,
                  W: int, H: int, radius: float) -> None:
    """Ring at camera A's centre projected into B (where all lines meet), if visible."""
    local = inverse_affine(c2w_b) @ torch.cat([centre_a, centre_a.new_ones(1)])
    if float(local[2]) <= 1e-9:
        return
    pixel = K_b @ (local[:3] / local[2])
    u, v = float(pixel[0]), float(pixel[1])
    if 0 <= u <= W and 0 <= v <= H:
        r = 2.5 * radius
        draw.ellipse([u + W - r, v - r, u + W + r, v + r], outline=(255, 255, 255), width=2)
        draw.ellipse([u + W - r - 2, v - r - 2, u + W + r + 2, v + r + 2], outline=(0, 0, 0), width=1)
