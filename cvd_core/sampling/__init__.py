"""Collaborative N-view sampling: pairing, DDIM, seeded noise and the sampler loop.

Public entry points: ``CollaborativeDenoiser`` (the one denoiser of a step), ``multiview_loop``,
``sample_multiview``, ``pair_schedule``, ``ContextOptions`` + ``WindowCameras`` (temporal context windows),
``DDIMScheduler``, ``initial_noise``. The MCM scheduler lives in ``cvd_core.mcm``.
"""

from .batching import estimate_max_batch, estimate_row_bytes, plan_calls
from .collaborative import multiview_loop, sample_multiview
from .context import ContextOptions
from .inpaint import KnownRegion
from .denoiser import CollaborativeDenoiser, PairingPlan, Prediction
from .ddim import DDIMScheduler, ddim_timesteps
from .noise import initial_noise, multiview_noise
from .noise_schedule import make_alphas_cumprod, make_betas, sigmas_from_alphas_cumprod
from .pairing import MAX_VIEWS, STRATEGIES, pair_schedule, pairs_per_view
from .scheduler_base import DiscreteScheduler, StepOutput
from .window_inputs import WindowCameras

__all__ = [
    "CollaborativeDenoiser", "ContextOptions", "KnownRegion", "PairingPlan", "Prediction", "WindowCameras",
    "multiview_loop",
    "DDIMScheduler", "DiscreteScheduler", "MAX_VIEWS", "STRATEGIES", "StepOutput", "ddim_timesteps",
    "estimate_max_batch", "estimate_row_bytes", "initial_noise", "make_alphas_cumprod", "make_betas",
    "multiview_noise", "pair_schedule", "pairs_per_view", "plan_calls", "sample_multiview",
    "sigmas_from_alphas_cumprod",
]
