"""Drawings for people: rig overviews, epipolar-line previews (Pillow only), latent frame grids."""

from .epipolar_preview import clip_line_to_image, render_epipolar_preview
from .latent_grid import frames_as_grid
from .rig_preview import render_rig_preview, view_colors

__all__ = ["render_rig_preview", "view_colors", "render_epipolar_preview", "clip_line_to_image", "frames_as_grid"]
