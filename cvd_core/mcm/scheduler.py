"""The MCM (LCM multistep consistency) scheduler, usable by the collaborative sampler.

Each step predicts x0 from the noise prediction, applies the consistency boundary condition
(``denoised = c_out·x0 + c_skip·x_t``) and, except at the last step, jumps to the next timestep with
*fresh* noise: ``x_next = sqrt(ā_next)·denoised + sqrt(1-ā_next)·z`` (diffusers ``LCMScheduler.step``).
The last step returns ``denoised``. Guidance is distilled into MCM's weights, so the sampler runs
it with ``guidance_scale=1`` (conditional rows only).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..sampling.noise_schedule import make_alphas_cumprod
from ..sampling.scheduler_base import DiscreteScheduler, StepOutput
from .timesteps import MCM_TIMESTEP_SCALING, boundary_scalings, mcm_timesteps, timesteps_from_sigmas

# Base model -> the beta schedule MCM's demo uses at inference (docs/cvvae_mcm.md §2.2).
BASE_BETA_SCHEDULES = {"animatediff": "linear", "cvd": "linear", "modelscope": "scaled_linear"}


class MCMScheduler(DiscreteScheduler):
    """Few-step MCM sampling; ``timesteps`` overrides the computed schedule (e.g. from SIGMAS)."""

    guidance_distilled = True

    def __init__(self, steps: int = 4, beta_schedule: str = "linear", original_steps: int = 50,
                 timestep_scaling: float = MCM_TIMESTEP_SCALING, strength: float = 1.0,
                 timesteps: Optional[Sequence[int]] = None, num_train_timesteps: int = 1000,
                 beta_start: float = 0.00085, beta_end: float = 0.012):
        alphas_cumprod = make_alphas_cumprod(beta_schedule, num_train_timesteps, beta_start, beta_end)
        if timesteps is None:
            timesteps = mcm_timesteps(steps, num_train_timesteps, original_steps, strength)
        if len(timesteps) < 1:
            raise ValueError("MCM needs at least one timestep")
        super().__init__(alphas_cumprod, list(timesteps))
        self.beta_schedule = beta_schedule
        self.timestep_scaling = float(timestep_scaling)

    @classmethod
    def from_sigmas(cls, sigmas: Sequence[float], beta_schedule: str = "linear",
                    timestep_scaling: float = MCM_TIMESTEP_SCALING) -> "MCMScheduler":
        """Walk a ComfyUI SIGMAS list (e.g. from the MCM scheduler node; trailing 0 ignored).

        Each sigma is mapped to the nearest training timestep of ``beta_schedule``'s table.
        """
        table = make_alphas_cumprod(beta_schedule)
        return cls(beta_schedule=beta_schedule, timestep_scaling=timestep_scaling,
                   timesteps=timesteps_from_sigmas(sigmas, table))

    def _is_last(self, index: int) -> bool:
        return index == len(self.timesteps) - 1

    def landing_alpha(self, index: int) -> float:
        # The last step returns the clean estimate: noise level ā = 1.
        return 1.0 if self._is_last(index) else self.alpha(self.timesteps[index + 1])

    def step_needs_noise(self, index: int) -> bool:
        return not self._is_last(index)

    def step(self, eps: torch.Tensor, index: int, sample: torch.Tensor,
             noise: Optional[torch.Tensor] = None) -> StepOutput:
        """One consistency step from ``timesteps[index]``; ``noise`` required except at the last."""
        t = self.timesteps[index]
        x0 = self.predict_x0(eps, sample, self.alpha(t))
        c_skip, c_out = boundary_scalings(t, self.timestep_scaling)
        denoised = x0 * c_out + sample * c_skip
        if self._is_last(index):
            return StepOutput(denoised, denoised)
        if noise is None:
            raise ValueError("MCM re-noises with fresh noise between steps: pass a noise tensor")
        a_next = self.landing_alpha(index)
        return StepOutput(denoised * a_next ** 0.5 + noise * (1.0 - a_next) ** 0.5, denoised)
