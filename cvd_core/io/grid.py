"""Tiling V views into one labelled grid picture per frame (for the grid video and previews).

Layout is near-square: ``cols = ceil(sqrt(V))``, ``rows = ceil(V / cols)``, views in reading order,
unused cells black. Each tile carries a label in its top-left corner ("view 2: left") drawn once
with Pillow and alpha-composited onto every frame, so labelling costs one small blend per frame.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .frames import check_multiview_frames, to_uint8


def grid_layout(n_views: int) -> tuple[int, int]:
    """Return ``(rows, cols)`` of the near-square grid for ``n_views`` tiles (1 → 1x1, 2 → 1x2, 5 → 2x3)."""
    n_views = int(n_views)
    if n_views < 1:
        raise ValueError(f"a grid needs at least one view, got {n_views}")
    cols = math.ceil(math.sqrt(n_views))
    rows = math.ceil(n_views / cols)
    return rows, cols


def view_label_text(view: int, label: Optional[str] = None) -> str:
    """The text shown on a tile: ``"view 3"`` or ``"view 3: <label>"``."""
    return f"view {view}" if not label else f"view {view}: {label}"


def _font(size: int):
    """Pillow's bundled font at ``size`` px; old Pillow (< 10.1) only has a fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> str:
    """Shorten ``text`` with a trailing "..." until it fits ``max_width`` pixels (ASCII only, any font)."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while len(text) > 1:
        text = text[:-1]
        if draw.textlength(text + "...", font=font) <= max_width:
            return text + "..."
    return text


class _LabelOverlay:
    """A pre-rendered label: the region it covers and its colour/alpha there."""

    def __init__(self, text: str, tile_height: int, tile_width: int):
        size = int(min(32, max(8, round(min(tile_height, tile_width) / 12))))
        pad = max(1, size // 4)
        canvas = Image.new("RGBA", (tile_width, tile_height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        font = _font(size)
        text = _fit_text(draw, text, font, max(1, tile_width - 4 * pad))
        left, top, right, bottom = draw.textbbox((2 * pad, pad), text, font=font)
        box = (0, 0, min(tile_width, right + 2 * pad) - 1, min(tile_height, bottom + pad) - 1)
        # A translucent dark box keeps white text readable on any content.
        draw.rectangle(box, fill=(0, 0, 0, 160))
        draw.text((2 * pad, pad), text, font=font, fill=(255, 255, 255, 255))
        rgba = np.asarray(canvas, dtype=np.float32)[: box[3] + 1, : box[2] + 1]
        self.rows = box[3] + 1
        self.cols = box[2] + 1
        self.alpha = rgba[..., 3:4] / 255.0
        self.premultiplied = rgba[..., :3] * self.alpha
        self.text = text

    def apply(self, tile: np.ndarray) -> None:
        """Blend the label into the top-left corner of a uint8 ``[H, W, 3]`` tile, in place."""
        region = tile[: self.rows, : self.cols].astype(np.float32)
        blended = region * (1.0 - self.alpha) + self.premultiplied
        tile[: self.rows, : self.cols] = (blended + 0.5).astype(np.uint8)


class GridComposer:
    """Builds grid frames from per-view frames of one time step.

    ``labels`` (optional) holds one string per view; tiles read "view i" or "view i: label".
    """

    def __init__(self, n_views: int, height: int, width: int, labels: Optional[Sequence[str]] = None):
        if labels is not None and len(labels) != n_views:
            raise ValueError(f"labels must have one entry per view ({n_views}), got {len(labels)}")
        self.n_views = int(n_views)
        self.tile_height = int(height)
        self.tile_width = int(width)
        self.rows, self.cols = grid_layout(self.n_views)
        self.height = self.rows * self.tile_height
        self.width = self.cols * self.tile_width
        self._overlays = [
            _LabelOverlay(view_label_text(v, None if labels is None else str(labels[v])),
                          self.tile_height, self.tile_width)
            for v in range(self.n_views)
        ]

    def tile_origin(self, view: int) -> tuple[int, int]:
        """Top-left pixel ``(y, x)`` of ``view``'s tile in the grid."""
        row, col = divmod(view, self.cols)
        return row * self.tile_height, col * self.tile_width

    def compose(self, views_at_t: np.ndarray) -> np.ndarray:
        """Tile ``[V, H, W, 3]`` uint8 frames (one time step) into a labelled ``[rows*H, cols*W, 3]`` uint8 grid."""
        expected = (self.n_views, self.tile_height, self.tile_width, 3)
        if views_at_t.shape != expected or views_at_t.dtype != np.uint8:
            raise ValueError(f"grid input must be uint8 {expected}, got {views_at_t.dtype} {tuple(views_at_t.shape)}")
        grid = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        for view in range(self.n_views):
            y, x = self.tile_origin(view)
            tile = grid[y : y + self.tile_height, x : x + self.tile_width]
            tile[...] = views_at_t[view]
            self._overlays[view].apply(tile)
        return grid


def make_grid_frames(frames, labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """Labelled grid video ``[T, rows*H, cols*W, 3]`` uint8 from ``[V, T, H, W, 3]`` frames (float 0..1 or uint8)."""
    array = check_multiview_frames(frames)
    views, steps, height, width, _ = array.shape
    composer = GridComposer(views, height, width, labels)
    return np.stack([composer.compose(to_uint8(array[:, t])) for t in range(steps)])
