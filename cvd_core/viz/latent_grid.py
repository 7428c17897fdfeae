"""All frames of one video latent laid out as one image-shaped latent (for sampling previews).

A preview decoder (ComfyUI's Latent2RGB or TAESD) turns one ``[C, h, w]`` latent into a picture;
showing every frame of a view at once lets the user see motion take shape, not only frame 0.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def frames_as_grid(latent: torch.Tensor, columns: Optional[int] = None) -> torch.Tensor:
    """``[C, F, h, w]`` -> ``[C, rows*h, columns*w]``, frames left to right, then top to bottom.

    ``columns`` defaults to ``ceil(sqrt(F))`` (a near-square grid, which fits a preview's
    size limit best). Cells after the last frame are zeros.
    """
    if latent.dim() != 4:
        raise ValueError(f"latent must be [C, F, h, w], got shape {tuple(latent.shape)}")
    channels, frames, height, width = latent.shape
    if columns is None:
        columns = math.ceil(math.sqrt(frames))
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    rows = math.ceil(frames / columns)
    cells = latent.new_zeros(channels, rows * columns, height, width)
    cells[:, :frames] = latent
    # [C, rows*cols, h, w] -> [C, rows, h, cols, w] -> [C, rows*h, cols*w]
    grid = cells.view(channels, rows, columns, height, width).permute(0, 1, 3, 2, 4)
    return grid.reshape(channels, rows * height, columns * width)
