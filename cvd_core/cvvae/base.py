"""Behaviour shared by both CV-VAE variants: public encode/decode, scaling constants, config."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import nn

from ..dtypes import ParameterPlacement


_UPCAST_WARNED = set()


def upcast_rerun(part: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    """``part(x)`` recomputed with fp32 copies of its weights (the module itself is not changed).

    Returns the result in fp16 when it fits, else in fp32; a non-finite fp32 result is an error.
    """
    if what not in _UPCAST_WARNED:
        _UPCAST_WARNED.add(what)
        warnings.warn(f"CV-VAE {what}: fp16 overflowed (values beyond 65504 became inf); this block was "
                      "recomputed in fp32 (force_upcast). Load the VAE as bf16 or fp32 to avoid the extra pass.",
                      RuntimeWarning, stacklevel=3)
    tensors = {name: t.float() if t.is_floating_point() else t
               for name, t in list(part.named_parameters()) + list(part.named_buffers())}
    with torch.no_grad():
        out = torch.func.functional_call(part, tensors, (x.float(),))
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"CV-VAE {what} gives non-finite values even in fp32: the input holds NaN/inf "
                         "or extreme values, or the weights are corrupt")
    fits = bool((out.abs() <= torch.finfo(torch.float16).max).all())
    return out.half() if fits else out


class CVVAEBase(ParameterPlacement, nn.Module):
    """Common surface of :class:`CVVAEModel` and :class:`CVVAESD3Model`.

    Subclasses build ``self.encoder``/``self.decoder`` and call :meth:`_init_common`.
    ``encode``/``decode`` default to the official chunking and tiling (what the official
    ``encode``/``decode`` do); see :mod:`cvd_core.cvvae.tiling` for the other modes.
    """

    variant = "?"

    def _init_common(self, *, config: dict, in_channels: int, latent_channels: int, scaling_factor: float,
                     shift_factor: float, encoder_full_res_channels: int, decoder_full_res_channels: int) -> None:
        self.config: dict[str, Any] = dict(config)
        self.in_channels = int(in_channels)
        self.latent_channels = int(latent_channels)
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.encoder_full_res_channels = int(encoder_full_res_channels)
        self.decoder_full_res_channels = int(decoder_full_res_channels)
        self.time_compression = 4
        self.spatial_compression = 8


    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled VAE latents -> the diffusion model's latent space: ``(z - shift) * scale``."""
        return (z - self.shift_factor) * self.scaling_factor

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale_latents` (what ``decode`` expects)."""
        return latents / self.scaling_factor + self.shift_factor

    # Raw passes: one encoder/decoder call on whatever the caller gives. The tilers use these,
    # so tests can intercept them (e.g. to simulate out-of-memory on large tiles).
    def encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder on one [B,3,T,H,W] block -> moments [B,2z,T',H/8,W/8]."""
        return self._run_part(self.encoder, x, "encode")

    def decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder on one [B,z,T',h,w] block -> pixels [B,3,4T'-3,8h,8w]."""
        return self._run_part(self.decoder, z, "decode")

    def _run_part(self, part: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
        """``part(x)``; in fp16, a block whose result overflowed is recomputed in fp32 (``force_upcast``).

        The official configs set ``force_upcast: true`` (diffusers' flag for "this VAE is not
        fp16-safe"), while the official scripts run fp16 anyway and never read it. fp16 ends at 65504;
        the widest activations (full-resolution decoder levels, GroupNorm inputs) can pass that with
        real weights and real images, and inf then turns into NaN frames. So an fp16 block runs in
        fp16 (fast) and, only if its output is not finite, again with fp32 copies of the weights.
        bf16 has fp32's range and needs no such check.
        """
        out = part(x)
        if out.dtype != torch.float16 or not self.config.get("force_upcast", True):
            return out
        if bool(torch.isfinite(out).all()):
            return out
        return upcast_rerun(part, x, what)

    def encode(self, x: torch.Tensor, tiling=None, pad: bool = False, progress=None):
        """Pixels in [-1, 1] ([B,3,T,H,W]; 4-D = single frames) -> :class:`CVVAEPosterior`.

        Default tiling is ``TilingConfig(mode="official")``: the official temporal chunking and
        spatial tiling from the config. Latents are *unscaled*.
        """
        from .tiling import TilingConfig, encode_video

        return encode_video(self, x, tiling=tiling or TilingConfig(mode="official"), pad=pad, progress=progress)

    def decode(self, z: torch.Tensor, num_frames: Optional[int] = None, tiling=None, progress=None,
               output_frames: Optional[int] = None) -> torch.Tensor:
        """Unscaled latents [B,z,T',h,w] -> pixels [B,3,4T'-3,8h,8w] in about [-1, 1].

        As in the official API a 4-D ``z`` is ``(b t) c h w`` with ``t = num_frames`` latent frames
        (default 1). ``output_frames`` trims the result (after ``pad=True`` encoding).
        """
        from .tiling import TilingConfig, decode_video

        if z.dim() == 4:
            t = int(num_frames or 1)
            if z.shape[0] % t:
                raise ValueError(f"4-D latents: batch {z.shape[0]} is not a multiple of num_frames={t}")
            z = z.reshape(z.shape[0] // t, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)
        return decode_video(self, z, tiling=tiling or TilingConfig(mode="official"), num_frames=output_frames,
                            progress=progress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mode (official ``forward`` default)."""
        post = self.encode(x)
        return self.decode(post.mode(), output_frames=post.num_frames)
