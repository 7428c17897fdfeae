"""A known region in multi-view sampling: where ``mask`` is 0 the latent follows a given start latent.

The convention is ComfyUI's ``SetLatentNoiseMask`` (1 = regenerate, 0 = keep), and the rule is that of core's
``KSamplerX0Inpaint``, written in the pack's (DDPM, epsilon) coordinates so both sampling paths agree:

- before each denoiser call the known region is the start latent re-noised to the current level with the
  run's start noise: ``x_in = m * x + (1 - m) * (sqrt(a_t) * start + sqrt(1 - a_t) * noise)``;
- the x0 prediction is held to the start latent there: ``x0' = m * x0(x_in) + (1 - m) * start``; the
  scheduler receives the epsilon that gives ``x0'`` from the running latent ``x`` (as core's samplers step
  from their own ``x`` with the held ``denoised``);
- at the end the latent is ``m * x + (1 - m) * start``: exactly the start latent where ``m`` is 0, exactly the
  unmasked result where ``m`` is 1 (multiplying by 0 or 1 and adding 0 are exact in floating point).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KnownRegion:
    """``start [V, C, F, h, w]`` (clean, UNet-scaled), ``mask [V, 1, F, h, w]`` in [0, 1] (1 = regenerate) and
    the run's start ``noise`` (same shape as ``start``)."""

    start: torch.Tensor
    mask: torch.Tensor
    noise: torch.Tensor

    def __post_init__(self):
        views, _, frames, h, w = self.start.shape
        if tuple(self.mask.shape) != (views, 1, frames, h, w):
            raise ValueError(f"the noise mask must be [{views}, 1, {frames}, {h}, {w}] (views, 1, frames, h, w) for "
                             f"a start latent {list(self.start.shape)}, got {list(self.mask.shape)}")
        if tuple(self.noise.shape) != tuple(self.start.shape):
            raise ValueError(f"the start noise must match the start latent {list(self.start.shape)}, "
                             f"got {list(self.noise.shape)}")
        self.start, self.noise = self.start.float(), self.noise.float()
        self.mask = self.mask.float()
        self.keep = 1.0 - self.mask

    def to(self, device) -> "KnownRegion":
        return KnownRegion(self.start.to(device), self.mask.to(device), self.noise.to(device))

    def model_input(self, latents: torch.Tensor, alpha_t: float) -> torch.Tensor:
        """The latent the denoiser sees: the known region re-noised to level ``alpha_t``."""
        known = self.start * alpha_t ** 0.5 + self.noise * (1.0 - alpha_t) ** 0.5
        return latents * self.mask + known * self.keep

    def held_eps(self, eps: torch.Tensor, latents: torch.Tensor, x_in: torch.Tensor, alpha_t: float) -> torch.Tensor:
        """The epsilon for a step from ``latents`` whose x0 is ``m * x0(x_in, eps) + (1 - m) * start``."""
        rest = latents - self.mask * x_in - self.keep * (self.start * alpha_t ** 0.5)
        return eps * self.mask + rest / (1.0 - alpha_t) ** 0.5

    def finish(self, latents: torch.Tensor) -> torch.Tensor:
        """The final latent: the start latent where the mask is 0."""
        return latents * self.mask + self.start * self.keep
