"""Discrete DDPM noise schedules (betas, alphas_cumprod) shared by the DDIM and MCM schedulers.

Values are computed exactly like diffusers does (``torch.linspace`` in float32, cumulative
product in float32), because the official CVD and MCM pipelines run diffusers schedulers and the
checkpoints were trained against those tables.
"""

from __future__ import annotations

import torch

BETA_SCHEDULES = ("linear", "scaled_linear")


def make_betas(beta_schedule: str = "linear", num_train_timesteps: int = 1000,
               beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Float32 betas ``[num_train_timesteps]``.

    ``linear``: evenly spaced betas (CVD's and AnimateDiff's inference config; ComfyUI calls
    this ``sqrt_linear``). ``scaled_linear``: evenly spaced square roots, squared (SD1.5's and
    ModelScope-T2V's training schedule; ComfyUI's ``linear``).
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                              dtype=torch.float32) ** 2
    raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {beta_schedule!r}")


def make_alphas_cumprod(beta_schedule: str = "linear", num_train_timesteps: int = 1000,
                        beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Float32 ``alphas_cumprod`` (ā_t = Π_{s<=t} (1 - β_s)), index = training timestep."""
    betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """k-diffusion / ComfyUI sigmas ``sqrt((1 - ā) / ā)`` (float64)."""
    a = alphas_cumprod.double()
    return ((1.0 - a) / a).sqrt()
