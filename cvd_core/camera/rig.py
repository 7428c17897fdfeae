"""The camera set that flows between every CVD node: intrinsics and poses of one or several videos.

Conventions (those of CVD and CameraCtrl):
- OpenCV camera axes: x right, y down, z forward (the camera looks along +z);
- ``c2w`` is camera-to-world; every view's trajectory is relative to *its own* first frame
  (``c2w[v, 0]`` is the identity), because CVD starts all videos from the same pose so that their
  first frames agree;
- ``K`` is in pixels of the generated frame (``width`` x ``height``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Sequence, Tuple

import torch

from .geometry import fundamental_matrix, resize_crop_intrinsics

__all__ = ["CameraError", "CameraSet", "pair_fundamentals"]


class CameraError(ValueError):
    """Invalid camera data or parameters; the message names the rule that was broken."""


def _as_float64(name: str, value: Any) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CameraError(f"{name} must be numeric (a tensor or nested lists of numbers): {exc}") from None
    return tensor.detach().cpu().contiguous()


def _check_size(name: str, value: Any) -> int:
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise CameraError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < 8 or value % 8 != 0:
        raise CameraError(f"{name} must be a multiple of 8 and at least 8 (the VAE works on 8x8 pixel blocks), "
                          f"got {value}")
    return value


@dataclass(frozen=True)
class CameraSet:
    """Intrinsics and camera-to-world poses of one trajectory (``[F, ...]``) or a rig (``[V, F, ...]``).

    ``K``: ``[F,3,3]`` or ``[V,F,3,3]`` float64 pixel intrinsics of the generated frame.
    ``c2w``: ``[F,4,4]`` or ``[V,F,4,4]`` float64 OpenCV camera-to-world, relative to each view's
    frame 0. ``labels``: one per view (empty = "view 0", "view 1", ...).
    Construction validates shapes, finiteness, focal lengths and the frame size and converts the
    tensors to float64 on the CPU; any violation raises :class:`CameraError`.
    """

    K: torch.Tensor
    c2w: torch.Tensor
    width: int
    height: int
    labels: Tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        K = _as_float64("K", self.K)
        c2w = _as_float64("c2w", self.c2w)
        if K.dim() not in (3, 4) or K.shape[-2:] != (3, 3):
            raise CameraError(f"K must have shape [F,3,3] or [V,F,3,3], got {list(K.shape)}")
        if c2w.dim() not in (3, 4) or c2w.shape[-2:] != (4, 4):
            raise CameraError(f"c2w must have shape [F,4,4] or [V,F,4,4], got {list(c2w.shape)}")
        if K.shape[:-2] != c2w.shape[:-2]:
            raise CameraError(f"K and c2w must describe the same views and frames: K is {list(K.shape)}, "
                              f"c2w is {list(c2w.shape)}")
        if K.shape[-3] < 1:
            raise CameraError("a camera set needs at least 1 frame, got 0")
        if K.dim() == 4 and K.shape[0] < 1:
            raise CameraError("a camera rig needs at least 1 view, got 0")
        for name, tensor in (("K", K), ("c2w", c2w)):
            if not torch.isfinite(tensor).all():
                bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
                raise CameraError(f"{name} must be finite (no NaN or inf); first bad entry at index {bad}")
        if not ((K[..., 0, 0] > 0).all() and (K[..., 1, 1] > 0).all()):
            raise CameraError("K must have positive focal lengths fx = K[0,0] and fy = K[1,1]")
        if not torch.allclose(K[..., 2, :], K.new_tensor([0.0, 0.0, 1.0]).expand_as(K[..., 2, :]), atol=1e-9):
            raise CameraError("the last row of every K must be [0, 0, 1]")
        if not torch.allclose(c2w[..., 3, :], c2w.new_tensor([0.0, 0.0, 0.0, 1.0]).expand_as(c2w[..., 3, :]),
                              atol=1e-6):
            raise CameraError("the last row of every c2w must be [0, 0, 0, 1] (a rigid camera-to-world matrix)")
        width = _check_size("width", self.width)
        height = _check_size("height", self.height)
        n_views = K.shape[0] if K.dim() == 4 else 1
        labels = tuple(str(label) for label in self.labels) if self.labels else tuple(
            f"view {i}" for i in range(n_views))
        if len(labels) != n_views:
            raise CameraError(f"labels must give one name per view: {n_views} views, {len(labels)} labels")
        # frozen dataclass: normalised values are written once, here.
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "c2w", c2w)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)
        object.__setattr__(self, "labels", labels)

    # ----------------------------------------------------------------------------------- shape
    @property
    def is_rig(self) -> bool:
        """True for a ``[V, F, ...]`` rig, False for a single ``[F, ...]`` trajectory."""
        return self.K.dim() == 4

    @property
    def n_views(self) -> int:
        return int(self.K.shape[0]) if self.is_rig else 1

    @property
    def n_frames(self) -> int:
        return int(self.K.shape[-3])

    def as_rig(self) -> "CameraSet":
        """The same cameras as a ``[V, F, ...]`` rig (a single trajectory becomes a 1-view rig)."""
        if self.is_rig:
            return self
        return CameraSet(self.K[None], self.c2w[None], self.width, self.height, self.labels)

    def view(self, index: int) -> "CameraSet":
        """View ``index`` as a single-trajectory camera set (``[F, ...]``)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise CameraError(f"view index must be an integer, got {index!r}")
        if not -self.n_views <= index < self.n_views:
            raise CameraError(f"view index must be in [0, {self.n_views - 1}], got {index}")
        if not self.is_rig:
            return self
        return CameraSet(self.K[index], self.c2w[index], self.width, self.height, (self.labels[index],))

    @staticmethod
    def stack(sets: Sequence["CameraSet"]) -> "CameraSet":
        """Stack single trajectories (or rigs, whose views are appended) into one ``[V, F, ...]`` rig.

        All parts must share the frame count, width and height.
        """
        sets = list(sets)
        if not sets:
            raise CameraError("stack needs at least one camera set, got none")
        first = sets[0]
        for i, other in enumerate(sets[1:], start=1):
            if other.n_frames != first.n_frames:
                raise CameraError(f"all views of a rig must have the same number of frames: set 0 has "
                                  f"{first.n_frames}, set {i} has {other.n_frames}")
            if (other.width, other.height) != (first.width, first.height):
                raise CameraError(f"all views of a rig must have the same frame size: set 0 is "
                                  f"{first.width}x{first.height}, set {i} is {other.width}x{other.height}")
        rigs = [s.as_rig() for s in sets]
        labels = tuple(label for r in rigs for label in r.labels)
        return CameraSet(torch.cat([r.K for r in rigs]), torch.cat([r.c2w for r in rigs]),
                         first.width, first.height, labels)

    # ----------------------------------------------------------------------------------- output size
    def resized(self, width: int, height: int) -> "CameraSet":
        """The same cameras for another output size.

        Frames are assumed to be resized so that they cover ``width`` x ``height`` (the short side
        relative to the target aspect is scaled to fit), then center-cropped; K follows that rule.
        """
        width = _check_size("width", width)
        height = _check_size("height", height)
        K = resize_crop_intrinsics(self.K, (self.width, self.height), (width, height))
        return CameraSet(K, self.c2w, width, height, self.labels)

    # ----------------------------------------------------------------------------------- JSON
    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict (plain lists and numbers); inverse of :meth:`from_dict`."""
        return {
            "format": "cvd_cameras/1",
            "width": self.width,
            "height": self.height,
            "labels": list(self.labels),
            "K": self.K.tolist(),
            "c2w": self.c2w.tolist(),
        }

    @staticmethod
    def from_dict(data: Dict[str, Any]) -> "CameraSet":
        """Rebuild a camera set from :meth:`to_dict` output (validated like any construction)."""
        if not isinstance(data, dict):
            raise CameraError(f"camera data must be a dict, got {type(data).__name__}")
        missing = [key for key in ("K", "c2w", "width", "height") if key not in data]
        if missing:
            raise CameraError(f"camera data is missing the keys {missing}")
        return CameraSet(data["K"], data["c2w"], data["width"], data["height"], tuple(data.get("labels", ())))

    def __repr__(self) -> str:
        shape = f"{self.n_views} views x {self.n_frames} frames" if self.is_rig else f"{self.n_frames} frames"
        return f"CameraSet({shape}, {self.width}x{self.height}, labels={list(self.labels)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CameraSet):
            return NotImplemented
        return (self.width, self.height, self.labels) == (other.width, other.height, other.labels) and \
            self.K.shape == other.K.shape and torch.equal(self.K, other.K) and torch.equal(self.c2w, other.c2w)


# Value equality over tensors: unhashable (set after the class body because @dataclass(frozen=True)
# would otherwise generate a field hash that disagrees with __eq__).
CameraSet.__hash__ = None  # type: ignore[assignment]


def pair_fundamentals(rig: CameraSet, src_view: int, tgt_view: int) -> torch.Tensor:
    """Per-frame F ``[F, 3, 3]`` from ``src_view`` to ``tgt_view`` of a rig (same time index).

    This is what CVD's cross-view attention uses: query frame t of the source view attends to
    frame t of its partner, with ``x_tgt^T F[t] x_src = 0``.
    """
    src = rig.view(src_view)
    tgt = rig.view(tgt_view)
    return fundamental_matrix(src.c2w, tgt.c2w, src.K, tgt.K)
