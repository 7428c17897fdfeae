"""What the collaborative sampler needs from a scheduler, and the parts DDIM and MCM share.

A scheduler here is a fixed list of training timesteps plus a pure ``step`` function on the whole
``[V, C, F, h, w]`` latent. Unlike diffusers schedulers it keeps no hidden step counter, so the
sampler can call ``step`` several times for the same timestep (CVD's recurrent iterations) and the
result never depends on how the denoiser calls were batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass
class StepOutput:
    """Result of one scheduler step.

    ``prev_sample``: the latent at the next (lower) noise level. ``pred_original_sample``: the
    model's x0 estimate at this step (used for latent previews).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DiscreteScheduler:
    """Base class: a descending list of integer timesteps over an ``alphas_cumprod`` table.

    Subclasses set ``timesteps`` and implement ``step`` and ``landing_alpha``. Attributes the
    sampler reads:

    - ``timesteps``: list of ints, descending.
    - ``guidance_distilled``: True when classifier-free guidance is baked into the weights (MCM),
      so the sampler should run with ``guidance_scale=1`` (no unconditional rows).
    - ``step_needs_noise(index)``: whether ``step`` consumes fresh noise at that index.
    """

    guidance_distilled: bool = False

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: List[int]):
        self.alphas_cumprod = alphas_cumprod.to(torch.float32).cpu()
        self.timesteps = [int(t) for t in timesteps]
        n_train = self.alphas_cumprod.shape[0]
        for t in self.timesteps:
            if not 0 <= t < n_train:
                raise ValueError(f"timesteps must lie in [0, {n_train - 1}], got {t}")
        if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise ValueError(f"timesteps must be strictly descending, got {self.timesteps}")

    def __len__(self) -> int:
        return len(self.timesteps)

    def alpha(self, t: int) -> float:
        """ā at training timestep ``t`` as a Python float (read from the float32 table)."""
        return float(self.alphas_cumprod[int(t)])

    def landing_alpha(self, index: int) -> float:
        """ā of the noise level that ``step(.., index, ..)`` lands on."""
        raise NotImplementedError

    def step_needs_noise(self, index: int) -> bool:
        """Whether ``step`` at ``index`` needs a fresh noise tensor."""
        return False

    def step(self, eps: torch.Tensor, index: int, sample: torch.Tensor,
             noise: Optional[torch.Tensor] = None) -> StepOutput:
        """Advance ``sample`` from ``timesteps[index]`` using the noise prediction ``eps``."""
        raise NotImplementedError

    def renoise(self, sample: torch.Tensor, index: int, noise: torch.Tensor) -> torch.Tensor:
        """Undo one step with fresh noise (CVD's recurrent iterations).

        After ``step(.., index, ..)`` the latent sits at level ā_prev = ``landing_alpha(index)``;
        the forward process back to ā_t = ā(timesteps[index]) is
        ``x_t = sqrt(ā_t/ā_prev)·x_prev + sqrt(1 - ā_t/ā_prev)·ε`` (official pipeline, ≈l.700-705).
        """
        ratio = self.alpha(self.timesteps[index]) / self.landing_alpha(index)
        return sample * ratio ** 0.5 + noise * (1.0 - ratio) ** 0.5

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, index: int = 0) -> torch.Tensor:
        """q(x_t | x_0) at ``timesteps[index]``: the start latent of a partial denoise."""
        a = self.alpha(self.timesteps[index])
        return clean * a ** 0.5 + noise * (1.0 - a) ** 0.5

    @staticmethod
    def predict_x0(eps: torch.Tensor, sample: torch.Tensor, alpha_t: float) -> torch.Tensor:
        """x0 = (x_t - sqrt(1-ā_t)·ε) / sqrt(ā_t) for an epsilon-predicting model."""
        return (sample - eps * (1.0 - alpha_t) ** 0.5) / alpha_t ** 0.5
