"""The encoder's output distribution (diagonal Gaussian over unscaled latents)."""

from __future__ import annotations

from typing import Optional

import torch


class CVVAEPosterior:
    """Posterior N(mean, exp(logvar)) built from ``moments = mean || logvar`` on dim 1.

    Mirrors diffusers' ``DiagonalGaussianDistribution`` (logvar clamped to [-30, 20] for ``std``;
    ``moments`` keeps the raw encoder output). Also indexable like the dict the issue allows:
    ``post["moments"]``, ``post["mean"]``, ``post["logvar"]``. ``num_frames`` is the pixel frame
    count before any padding, for trimming after decode.
    """

    def __init__(self, moments: torch.Tensor, num_frames: Optional[int] = None):
        self.moments = moments
        self.mean, raw_logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(raw_logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        self.num_frames = num_frames

    @property
    def latent_dist(self) -> "CVVAEPosterior":
        """Official-style access ``model.encode(x).latent_dist.mode()``."""
        return self

    def mode(self) -> torch.Tensor:
        """Most likely latent (the mean); what the official scripts and the fixtures use."""
        return self.mean

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """mean + std * eps with eps ~ N(0, 1) drawn from ``generator``."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in ("moments", "mean", "logvar"):
            raise KeyError(f"posterior has 'moments', 'mean' and 'logvar', not {key!r}")
        return getattr(self, key)

    def keys(self):
        """The dict-style keys."""
        return ("moments", "mean", "logvar")
