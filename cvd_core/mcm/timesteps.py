"""MCM few-step schedule: timesteps, sigmas and consistency boundary scalings.

MCM (Zhai et al. 2024, yhZhai/mcm ``demo.py``) samples with diffusers' ``LCMScheduler`` and
``timestep_scaling=4.0``. The distillation grid has ``original_steps`` (50) DDIM timesteps
``k-1, 2k-1, ..., 999`` with k = 1000 // 50; N inference steps take the entries at
``floor(linspace(0, 50, N, endpoint=False))`` of the reversed grid: 4 steps -> 999, 759, 499, 259.
(diffusers < 0.24 used a different rule that gives 999, 759, 519, 279; not reproduced.)
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

from ..sampling.noise_schedule import make_alphas_cumprod, sigmas_from_alphas_cumprod

SIGMA_DATA = 0.5
MCM_TIMESTEP_SCALING = 4.0


def mcm_timesteps(steps: int, num_train_timesteps: int = 1000, original_steps: int = 50,
                  strength: float = 1.0) -> List[int]:
    """The LCM/MCM inference timesteps, descending (``LCMScheduler.set_timesteps``).

    ``strength < 1`` shortens the distillation grid first (diffusers' img2img rule), so the
    schedule starts at a lower noise level.
    """
    if not 1 <= original_steps <= num_train_timesteps:
        raise ValueError(f"original_steps must be from 1 to {num_train_timesteps}, got {original_steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength (denoise) must be in (0, 1], got {strength}")
    k = num_train_timesteps // original_steps
    grid = np.arange(1, int(original_steps * strength) + 1) * k - 1
    if not 1 <= steps <= len(grid):
        raise ValueError(f"MCM steps must be from 1 to {len(grid)} (original_steps {original_steps} x "
                         f"strength {strength}), got {steps}")
    reversed_grid = grid[::-1]
    picks = np.floor(np.linspace(0, len(reversed_grid), num=steps, endpoint=False)).astype(np.int64)
    return [int(t) for t in reversed_grid[picks]]


def boundary_scalings(timestep: float, timestep_scaling: float = MCM_TIMESTEP_SCALING,
                      sigma_data: float = SIGMA_DATA) -> Tuple[float, float]:
    """Consistency-model boundary condition ``(c_skip, c_out)`` at a discrete timestep.

    ``c_skip = σ_d² / ((s·t)² + σ_d²)``, ``c_out = s·t / sqrt((s·t)² + σ_d²)`` with s the timestep
    scaling (LCMScheduler ``get_scalings_for_boundary_condition_discrete``), so that
    ``denoised = c_out·x0 + c_skip·x_t`` equals x_t at t = 0.
    """
    scaled = float(timestep) * timestep_scaling
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip, c_out


def mcm_sigmas(timesteps: Sequence[int], beta_schedule: str = "linear", num_train_timesteps: int = 1000,
               beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """k-diffusion sigmas ``sqrt((1-ā)/ā)`` at the timesteps, followed by 0 (float64).

    This is the SIGMAS a ComfyUI ``lcm`` sampler needs to walk MCM's schedule.
    """
    table = sigmas_from_alphas_cumprod(make_alphas_cumprod(beta_schedule, num_train_timesteps,
                                                           beta_start, beta_end))
    idx = torch.tensor([int(t) for t in timesteps], dtype=torch.long)
    return torch.cat([table[idx], torch.zeros(1, dtype=torch.float64)])


def timesteps_from_sigmas(sigmas: Sequence[float], alphas_cumprod: torch.Tensor) -> List[int]:
    """Map ComfyUI SIGMAS (trailing 0 ignored) back to the nearest training timesteps.

    Matching is done in log-sigma, the way ComfyUI's ``ModelSamplingDiscrete.timestep`` does.
    """
    table = sigmas_from_alphas_cumprod(alphas_cumprod).log()
    out = []
    for s in sigmas:
        s = float(s)
        if s <= 0:
            continue
        out.append(int((table - np.log(s)).abs().argmin()))
    return out
