"""Frame-count and size rules of CV-VAE: 1+4k frames -> 1+k latent frames, H and W /8."""

from __future__ import annotations

import torch


def latent_frames(frames: int) -> int:
    """Latent frames for ``frames`` pixel frames (``frames`` must be 1+4k)."""
    return 1 + (frames - 1) // 4


def pixel_frames(latent: int) -> int:
    """Pixel frames the decoder makes from ``latent`` latent frames (T' -> 4T'-3)."""
    return 4 * latent - 3


def padded_frame_count(frames: int) -> int:
    """Smallest 1+4k >= ``frames``."""
    return 1 + 4 * ((max(frames, 1) - 1 + 3) // 4)


def check_frame_count(frames: int) -> None:
    """Raise ``ValueError`` naming the 1+4k rule and the nearest valid counts."""
    if frames >= 1 and (frames - 1) % 4 == 0:
        return
    lower = 1 + 4 * ((frames - 1) // 4) if frames > 1 else None
    upper = padded_frame_count(frames)
    choices = f"{lower} or {upper}" if lower else f"{upper}"
    raise ValueError(
        f"frames must be 1+4k (1, 5, 9, 13, ...), got {frames}: use {choices} frames, or enable pad "
        f"(repeats the last frame up to {upper}; the extra frames are trimmed after decode)")


def check_spatial_size(height: int, width: int) -> None:
    """Raise ``ValueError`` unless H and W are positive multiples of 8 (the spatial compression)."""
    if height > 0 and width > 0 and height % 8 == 0 and width % 8 == 0:
        return

    def options(n: int) -> str:
        lo, hi = (n // 8) * 8, -(-n // 8) * 8
        return f"{hi}" if lo in (0, hi) else f"{lo} or {hi}"

    raise ValueError(
        f"height and width must be multiples of 8 (CV-VAE compresses space 8x), got {height}x{width}: "
        f"crop or resize to height {options(height)}, width {options(width)}")


def pad_frames_with_last(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Repeat the last frame of [B,C,T,H,W] until it has ``frames`` frames."""
    missing = frames - x.shape[2]
    if missing <= 0:
        return x
    return torch.cat([x, x[:, :, -1:].expand(-1, -1, missing, -1, -1)], dim=2)
