"""The camera inputs of one context window: what the sampler would build from the rig cut to it.

- Plücker maps: CameraCtrl conditions on poses relative to the clip's first frame, so each view's
  poses are re-relativised to *its* first frame of the window (``relative_to_first`` on the cut
  poses) before the ray maps are built. The full-length maps are never held (they grow with the
  length: V x 6 x F x H x W floats).
- F matrices: from the views' true relative poses at each frame (the full run's ``F_of`` sliced to
  the window's frames): re-relativising each view separately would move the views apart.
- First-frame pseudo lines: the model draws pseudo lines on frame 0 of every row because at the
  clip's first frame all cameras coincide (F = 0). In a window they go only where that holds: the
  clip's frame 0 (if the window holds it), and the window's first frame if F is 0 there.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

from ..camera.geometry import plucker_embedding, relative_to_first

Window = Tuple[int, ...]


class WindowCameras:
    """Per-view intrinsics ``K [V, F, 3, 3]`` and poses ``c2w [V, F, 4, 4]`` (each view relative to its
    own first frame, as ``CameraSet``) at image size ``width`` x ``height``."""

    def __init__(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int):
        K, c2w = torch.as_tensor(K), torch.as_tensor(c2w)
        if K.dim() != 4 or c2w.dim() != 4 or K.shape[:2] != c2w.shape[:2]:
            raise ValueError(f"cameras need K [V, F, 3, 3] and c2w [V, F, 4, 4] with the same V and F, got "
                             f"{list(K.shape)} and {list(c2w.shape)}")
        self.K, self.c2w, self.width, self.height = K, c2w, int(width), int(height)

    @classmethod
    def from_rig(cls, rig) -> "WindowCameras":
        return cls(rig.K, rig.c2w, rig.width, rig.height)

    @property
    def n_views(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.c2w.shape[1])

    def window_poses(self, window: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(K, c2w)`` of the rig cut to ``window``, each view re-relativised to its first frame there."""
        index = torch.as_tensor(list(window), dtype=torch.long)
        return self.K[:, index], relative_to_first(self.c2w[:, index])

    def plucker(self, window: Sequence[int]) -> torch.Tensor:
        """``[V, 6, len(window), H, W]`` float32, built view by view (one view's float64 maps at a time)."""
        K, c2w = self.window_poses(window)
        maps = [plucker_embedding(K[v], c2w[v], self.height, self.width).permute(1, 0, 2, 3).to(torch.float32)
                for v in range(self.n_views)]
        return torch.stack(maps).contiguous()


def pseudo_frames(window: Sequence[int], F_rows: torch.Tensor) -> torch.Tensor:
    """``[B, len(window)]`` bool: the frames of each row that get first-frame pseudo lines.

    ``F_rows [B, L, 3, 3]`` are the rows' F matrices in the window. The clip's frame 0 always (all
    cameras start there), the window's first frame where the row's cameras coincide (F = 0).
    """
    batch, length = F_rows.shape[:2]
    out = torch.zeros(batch, length, dtype=torch.bool)
    out[:, torch.as_tensor(list(window)) == 0] = True
    out[:, 0] |= (F_rows[:, 0] == 0).flatten(1).all(dim=1).cpu()
    return out


class WindowFundamentals:
    """``F(i, j)`` of the whole run, sliced to a window's frames (cached per pair for the window)."""

    def __init__(self, full, window: Sequence[int]):
        self._full = full
        self._index = torch.as_tensor(list(window), dtype=torch.long)
        self._cache: Dict[Tuple[int, int], torch.Tensor] = {}

    def __call__(self, i: int, j: int) -> torch.Tensor:
        if (i, j) not in self._cache:
            self._cache[(i, j)] = self._full(i, j).index_select(0, self._index)
        return self._cache[(i, j)]
