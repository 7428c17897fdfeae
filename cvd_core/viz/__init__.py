"""Drawings of cameras for people: rig overviews and epipolar-line previews (Pillow only)."""

from .epipolar_preview import clip_line_to_image, render_epipolar_preview
from .rig_preview import render_rig_preview, view_colors

__all__ = ["render_rig_preview", "view_colors", "render_epipolar_preview", "clip_line_to_image"]
