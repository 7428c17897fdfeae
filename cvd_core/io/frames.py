"""Validation and conversion of multi-view frame stacks for writing and measuring.

Multi-view frames travel as ``[V, T, H, W, 3]`` floats in 0..1 (torch or numpy): V views, T frames
per view. ComfyUI hands the nodes a view-major ``IMAGE [V*T, H, W, 3]``;
:func:`frames_from_image_batch` turns that into the 5-D layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..guards import require_finite


def _to_numpy(frames: Any) -> np.ndarray:
    """Return a numpy view/copy of a torch tensor or array-like without importing torch eagerly."""
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):
        tensor = frames.detach().cpu()
        # bf16/fp16 have no (or a lossy) numpy equivalent: widen first.
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(frames)


def check_multiview_frames(frames: Any, what: str = "frames") -> np.ndarray:
    """Validate a ``[V, T, H, W, 3]`` stack and return it as a numpy array (no copy when possible).

    Accepts float arrays in 0..1 or uint8 arrays in 0..255; floats must be finite. Raises ``ValueError``
    (``NonFiniteError`` for NaN/infinity) naming the rule.
    """
    array = _to_numpy(frames)
    if array.ndim != 5:
        raise ValueError(
            f"{what} must be [views, frames, height, width, 3], got shape {tuple(array.shape)}; "
            "a ComfyUI IMAGE batch [V*T, H, W, 3] is split with frames_from_image_batch(images, views)")
    views, steps, height, width, channels = array.shape
    if channels != 3:
        raise ValueError(f"{what} must have 3 colour channels (RGB) in the last axis, got {channels}")
    if min(views, steps, height, width) < 1:
        raise ValueError(f"{what} must have at least one view, frame, row and column, got shape {tuple(array.shape)}")
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype == np.uint8):
        raise ValueError(f"{what} must be float in 0..1 or uint8, got dtype {array.dtype}")
    # NaN would silently become black pixels: refuse before anything is written or measured.
    require_finite(array, what, axes=("view", "frame"), hint="nothing is written or measured")
    return array


def frames_from_image_batch(images: Any, views: int) -> np.ndarray:
    """Split a view-major ComfyUI IMAGE batch ``[V*T, H, W, 3]`` into ``[V, T, H, W, 3]``.

    The batch must divide evenly into ``views`` equally long videos (view 0's frames first).
    """
    array = _to_numpy(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"images must be an IMAGE batch [V*T, H, W, 3], got shape {tuple(array.shape)}")
    views = int(views)
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    if array.shape[0] % views != 0:
        raise ValueError(
            f"the image batch of {array.shape[0]} frames does not split into {views} views of equal length "
            f"(batch size must be a multiple of views)")
    return array.reshape(views, array.shape[0] // views, *array.shape[1:])


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Convert float 0..1 (values outside are clipped, NaN becomes 0) or uint8 frames to uint8 RGB."""
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    # Rounding (not truncation) so that k/255 round-trips exactly through 8-bit formats.
    scaled = np.clip(np.nan_to_num(frames.astype(np.float32, copy=False), nan=0.0), 0.0, 1.0) * 255.0 + 0.5
    return scaled.astype(np.uint8)
