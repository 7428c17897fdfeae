"""DDIM (Song et al. 2021) with CVD's inference configuration.

CVD builds ``diffusers.DDIMScheduler(**noise_scheduler_kwargs)`` from
``configs/inference_config.yaml``: 1000 training steps, linear betas 0.00085-0.012,
``steps_offset=1``, ``clip_sample=False``, and the diffusers defaults for everything else:
epsilon prediction, ``timestep_spacing="leading"`` and ``set_alpha_to_one=True`` (the yaml does
not set it, so the official last step lands on ā = 1, i.e. returns the x0 prediction). 25 steps
give the timesteps 961, 921, ..., 41, 1. ``eta=0`` (deterministic) is the official setting.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .noise_schedule import make_alphas_cumprod
from .scheduler_base import DiscreteScheduler, StepOutput


def ddim_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1,
                   denoise: float = 1.0) -> List[int]:
    """DDIM "leading" timesteps, descending; ``denoise < 1`` keeps the last ``int(steps·denoise)``.

    Same as diffusers (``set_timesteps`` then the img2img ``strength`` cut).
    """
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be from 1 to {num_train_timesteps}, got {num_inference_steps}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    ratio = num_train_timesteps // num_inference_steps
    full = [i * ratio + steps_offset for i in reversed(range(num_inference_steps))]
    kept = min(int(num_inference_steps * denoise), num_inference_steps)
    if kept < 1:
        raise ValueError(f"denoise {denoise} leaves no step of {num_inference_steps}: raise steps or denoise")
    return full[num_inference_steps - kept:]


class DDIMScheduler(DiscreteScheduler):
    """Deterministic (eta 0) or stochastic DDIM over a discrete DDPM schedule.

    ``step`` returns ``x_{t-Δ}`` with Δ = ``num_train_timesteps // num_inference_steps``; the last
    step lands on ``ā_0`` or on 1 (``set_alpha_to_one``).
    """

    def __init__(self, num_inference_steps: int = 25, num_train_timesteps: int = 1000,
                 beta_start: float = 0.00085, beta_end: float = 0.012, beta_schedule: str = "linear",
                 steps_offset: int = 1, set_alpha_to_one: bool = True, eta: float = 0.0,
                 denoise: float = 1.0):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        alphas_cumprod = make_alphas_cumprod(beta_schedule, num_train_timesteps, beta_start, beta_end)
        super().__init__(alphas_cumprod, ddim_timesteps(num_inference_steps, num_train_timesteps,
                                                        steps_offset, denoise))
        self.num_inference_steps = num_inference_steps
        self.step_ratio = num_train_timesteps // num_inference_steps
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
        self.eta = float(eta)

    def _alpha_prev(self, t: int) -> float:
        prev_t = t - self.step_ratio
        return self.alpha(prev_t) if prev_t >= 0 else self.final_alpha_cumprod

    def landing_alpha(self, index: int) -> float:
        return self._alpha_prev(self.timesteps[index])

    def step_needs_noise(self, index: int) -> bool:
        return self.eta > 0

    def step(self, eps: torch.Tensor, index: int, sample: torch.Tensor,
             noise: Optional[torch.Tensor] = None) -> StepOutput:
        """DDIM update (Song et al. Eq. 12) from ``timesteps[index]``; ``noise`` needed if eta > 0."""
        t = self.timesteps[index]
        alpha_t, alpha_prev = self.alpha(t), self._alpha_prev(t)
        x0 = self.predict_x0(eps, sample, alpha_t)
        # σ_t of Eq. 16; zero for eta 0.
        variance = (1.0 - alpha_prev) / (1.0 - alpha_t) * (1.0 - alpha_t / alpha_prev)
        std = self.eta * variance ** 0.5
        prev = x0 * alpha_prev ** 0.5 + eps * max(1.0 - alpha_prev - std ** 2, 0.0) ** 0.5
        if std > 0:
            if noise is None:
                raise ValueError("DDIM with eta > 0 needs a noise tensor for every step")
            prev = prev + noise * std
        return StepOutput(prev, x0)
