"""Frame grids for sampling previews: every frame lands in its cell, in reading order."""

import pytest
import torch

from cvd_core.viz import frames_as_grid


def test_frames_fill_a_near_square_grid_in_reading_order():
    latent = torch.arange(2 * 5 * 2 * 3, dtype=torch.float32).view(2, 5, 2, 3)  # C=2, F=5, h=2, w=3
    grid = frames_as_grid(latent)
    assert grid.shape == (2, 2 * 2, 3 * 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    for frame in range(5):
        row, col = divmod(frame, 3)
        assert torch.equal(grid[:, 2 * row:2 * row + 2, 3 * col:3 * col + 3], latent[:, frame])
    assert torch.count_nonzero(grid[:, 2:, 6:]) == 0  # the sixth cell is empty


def test_explicit_columns_and_errors():
    latent = torch.randn(4, 3, 2, 2)
    assert torch.equal(frames_as_grid(latent, columns=3), torch.cat(list(latent.unbind(1)), dim=-1))
    assert frames_as_grid(latent, columns=1).shape == (4, 6, 2)
    with pytest.raises(ValueError, match=r"latent must be \[C, F, h, w\]"):
        frames_as_grid(latent[0])
    with pytest.raises(ValueError, match="columns must be at least 1"):
        frames_as_grid(latent, columns=0)
