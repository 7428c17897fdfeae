"""The one reader and writer of the pack's 5-D video LATENT dict.

Keys: ``samples [V, C, F, h, w]`` (UNet-scaled), ``views``, ``cvd_frames`` (video frames), ``cvd_latent_scale`` /
``cvd_latent_shift`` (the VAE's scaling), ``cvd_temporal_compression`` (1: one latent frame per video frame, the
CVD sampler's kind; CV-VAE latents have 4) and ``noise_mask`` (core's ``SetLatentNoiseMask`` convention:
1 = regenerate, 0 = keep). Writers start from a copy of the incoming dict, as core's nodes do
(``latent.copy()``), so keys of other packs pass through.

A ``noise_mask`` may be, for V views of F frames at latent size h x w (image size H x W = 8h x 8w):
``[V*F, H, W]`` (an image-size MASK batch, view-major like every IMAGE batch here), ``[V*F, 1, h, w]``,
``[V, 1, F, h, w]``, each at latent or image size, or a single mask (batch 1) for every view and frame.
It is resized per frame with bilinear interpolation, as core's ``prepare_mask`` does for image latents (core's
own 5-D path would interpolate across the view-major batch as if it were time).
"""

from __future__ import annotations

from typing import Optional

import torch

SAMPLES = "samples"
VIEWS = "views"
FRAMES = "cvd_frames"
SCALE = "cvd_latent_scale"
SHIFT = "cvd_latent_shift"
TEMPORAL = "cvd_temporal_compression"
NOISE_MASK = "noise_mask"
SD_LATENT_SCALE = 0.18215  # SD1.5's VAE scaling: the UNet works on z * 0.18215


class MaskShapeError(ValueError):
    """A noise mask that does not fit the latent (the message names both shapes)."""


def samples_of(latent) -> torch.Tensor:
    return latent[SAMPLES] if isinstance(latent, dict) else latent


def derived(latent: Optional[dict], samples: torch.Tensor, **keys) -> dict:
    """A copy of ``latent`` (or a new dict) with new ``samples`` and ``keys`` (a key set to None is removed)."""
    out = dict(latent) if isinstance(latent, dict) else {}
    out[SAMPLES] = samples
    for key, value in keys.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def video_latent(samples: torch.Tensor, frames: int, base: Optional[dict] = None, noise_mask=None,
                 scale: float = SD_LATENT_SCALE, shift: float = 0.0) -> dict:
    """The pack's per-frame (AnimateDiff/CVD) 5-D latent: one latent frame per video frame, UNet-scaled;
    other keys of ``base`` (its noise_mask too, unless ``noise_mask`` is given) are kept."""
    keys = {VIEWS: int(samples.shape[0]), FRAMES: int(frames), TEMPORAL: 1, SCALE: scale, SHIFT: shift}
    if noise_mask is not None:
        keys[NOISE_MASK] = noise_mask
    return derived(base, samples.cpu(), **keys)


def latent_scale(latent: dict, default_scale: float = 1.0, default_shift: float = 0.0):
    return float(latent.get(SCALE, default_scale)), float(latent.get(SHIFT, default_shift))


def temporal_compression(latent) -> int:
    return int(latent.get(TEMPORAL, 1)) if isinstance(latent, dict) else 1


def noise_mask_of(latent) -> Optional[torch.Tensor]:
    return latent.get(NOISE_MASK) if isinstance(latent, dict) else None


# ------------------------------------------------------------------------------ noise masks

def _forms(views: int, frames: int, h: int, w: int) -> str:
    n = views * frames
    return (f"[{n}, {h * 8}, {w * 8}] (views x frames, image height, width; view-major), [{n}, 1, {h}, {w}] or "
            f"[{views}, 1, {frames}, {h}, {w}] (views, 1, frames, latent height, width), at latent or image size, "
            "or a batch of 1 for all")


def _per_frame(mask: torch.Tensor, views: int, frames: int) -> Optional[torch.Tensor]:
    """``[N, 1, S1, S2]`` with N = 1 or V*F (view-major), or None when the layout is not one of the forms."""
    n = views * frames
    if mask.dim() == 2:
        return mask[None, None]
    if mask.dim() == 3 and mask.shape[0] in (1, n):
        return mask[:, None]
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[0] in (1, n):
        return mask
    if mask.dim() == 5 and tuple(mask.shape[:3]) == (views, 1, frames):
        return mask.permute(0, 2, 1, 3, 4).reshape(n, 1, *mask.shape[3:])
    return None


def resize_noise_mask(mask, latent_shape) -> torch.Tensor:
    """Any accepted ``noise_mask`` form -> ``[V, 1, F, h, w]`` float32 in [0, 1] for a latent of ``latent_shape``
    ``[V, C, F, h, w]``; raises ``MaskShapeError`` naming both shapes otherwise."""
    views, _, frames, h, w = (int(s) for s in latent_shape)
    if not isinstance(mask, torch.Tensor):
        raise MaskShapeError(f"noise_mask must be a tensor (a MASK), got {type(mask).__name__}")
    shape = list(mask.shape)
    flat = _per_frame(mask, views, frames)
    if flat is None or tuple(flat.shape[-2:]) not in ((h, w), (h * 8, w * 8)):
        raise MaskShapeError(f"noise_mask {shape} does not fit the latent {[views, 4, frames, h, w]}: give "
                             f"{_forms(views, frames, h, w)}")
    flat = flat.float().cpu()
    if not torch.isfinite(flat).all() or flat.min() < 0 or flat.max() > 1:
        raise MaskShapeError(f"noise_mask must hold values in [0, 1] (1 = regenerate, 0 = keep), got values from "
                             f"{float(flat.nan_to_num(-1).min()):g} to {float(flat.nan_to_num(2).max()):g}")
    if tuple(flat.shape[-2:]) != (h, w):
        flat = torch.nn.functional.interpolate(flat, size=(h, w), mode="bilinear")
    flat = flat.expand(views * frames, 1, h, w)
    return flat.reshape(views, frames, 1, h, w).permute(0, 2, 1, 3, 4).contiguous()


def mask_problem(latent, latent_shape) -> Optional[str]:
    """A rule helper: why the latent's noise_mask does not fit ``latent_shape``, or None."""
    mask = noise_mask_of(latent)
    if mask is None:
        return None
    try:
        resize_noise_mask(mask, latent_shape)
    except MaskShapeError as exc:
        return f"latent's {exc}"
    return None


def per_frame_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[V, 1, F, h, w]`` -> ``[V*F, 1, h, w]`` (view-major, the image-latent batch's order)."""
    views, _, frames, h, w = mask.shape
    return mask.permute(0, 2, 1, 3, 4).reshape(views * frames, 1, h, w)
