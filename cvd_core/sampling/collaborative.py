"""The pack's own collaborative N-view sampling loop (CVD paper §3.3, Alg. 1; official
``pipeline_animation_epi_advanced.py::__call__``).

Every step asks the ``CollaborativeDenoiser`` (``denoiser.py``: pairs, CFG, regional rows, devices)
for the per-view noise prediction and applies the scheduler's update (DDIM, MCM). With
``recurrence`` R > 1 each step (except the last) is repeated R times, re-noising in between. ComfyUI's
own samplers call the same denoiser through a GUIDER (``nodes/_core_sampling.py``) instead of this loop.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

from ..guards import require_finite
from ..progress import Progress, ensure_progress
from . import noise as noise_streams
from .context import ContextOptions
from .denoiser import CollaborativeDenoiser, FundamentalSource, PairingPlan, Regional, stop_if_not_finite
from .executor import Iteration, RowExecutor
from .inpaint import KnownRegion
from .pairing import MAX_VIEWS
from .scheduler_base import DiscreteScheduler
from .window_inputs import WindowCameras

PreviewCallback = Callable[[int, int, torch.Tensor], None]


def _validate(latents: torch.Tensor, plucker, recurrence: int) -> None:
    if latents.dim() != 5:
        raise ValueError(f"latents must be [views, C, frames, h, w], got shape {list(latents.shape)}")
    n_views, frames = latents.shape[0], latents.shape[2]
    if not 1 <= n_views <= MAX_VIEWS:
        raise ValueError(f"views must be from 1 to {MAX_VIEWS}, got {n_views}")
    if isinstance(plucker, WindowCameras):
        if (plucker.n_views, plucker.n_frames) != (n_views, frames):
            raise ValueError(f"cameras must have {n_views} views x {frames} frames (the latents'), got "
                             f"{plucker.n_views} x {plucker.n_frames}")
    elif plucker is None:
        raise ValueError("give plucker maps [V, 6, F, H, W] or cameras (WindowCameras)")
    elif plucker.dim() != 5 or plucker.shape[1] != 6 or plucker.shape[2] != frames:
        raise ValueError(f"plucker must be [views, 6, {frames}, H, W], got shape {list(plucker.shape)}")
    if recurrence < 1:
        raise ValueError(f"recurrence must be >= 1, got {recurrence}")
    require_finite(latents, "the start latents", axes=("view", "channel", "frame"),
                   hint="give finite latents (a NaN start can only give NaN videos)")


def _iterations(n_steps: int, recurrence: int):
    """``(step, substep)`` of every denoiser iteration: R per step, 1 at the last step."""
    return [[(i, r) for r in range(recurrence if i != n_steps - 1 else 1)] for i in range(n_steps)]


@torch.no_grad()
def multiview_loop(denoiser: CollaborativeDenoiser, latents_init: torch.Tensor, scheduler: DiscreteScheduler,
                   recurrence: int = 1, seed: int = 0, progress: Optional[Progress] = None,
                   preview_callback: Optional[PreviewCallback] = None,
                   known: Optional[KnownRegion] = None) -> torch.Tensor:
    """The pack's loop over ``scheduler.timesteps`` around ``denoiser``; returns float32 latents.

    ``progress``: ``start(total denoiser calls)`` here, ``advance(1)`` per call (by the denoiser's
    executor, which must share this progress). ``preview_callback(step, n_steps, x0_view0)`` per step.
    ``known``: a start latent kept where its mask is 0 (``inpaint.KnownRegion``: re-noised before each call,
    its prediction held, exactly the start latent at the end).
    """
    if recurrence < 1:
        raise ValueError(f"recurrence must be >= 1, got {recurrence}")
    progress = ensure_progress(progress)
    latents = latents_init.to(torch.float32).clone()
    known = known.to(latents.device) if known is not None else None
    n_views, view_shape = latents.shape[0], tuple(latents.shape[1:])
    n_steps = len(scheduler.timesteps)
    schedule = _iterations(n_steps, recurrence)
    run_pairs = {pair for step in schedule for (i, r) in step for pair in denoiser.plan.pairs(i, r)}
    with denoiser.session(latents, sorted(run_pairs)):
        frames = latents.shape[2]
        progress.start(sum(denoiser.call_count(denoiser.plan.pairs(i, r), frames, i)
                           for step in schedule for i, r in step))
        for i, t in enumerate(scheduler.timesteps):
            for i_, r in schedule[i]:
                iteration = Iteration(i, n_steps, r, int(t))
                if known is None:
                    eps = denoiser.predict(latents, iteration).eps
                else:
                    x_in = known.model_input(latents, scheduler.alpha(t))
                    eps = known.held_eps(denoiser.predict(x_in, iteration).eps, latents, x_in, scheduler.alpha(t))
                step_noise = None
                if scheduler.step_needs_noise(i):
                    step_noise = noise_streams.multiview_noise(seed, noise_streams.STEP, i, r, n_views,
                                                               view_shape, latents.device)
                out = scheduler.step(eps, i, latents, step_noise)
                latents = out.prev_sample
                stop_if_not_finite(latents, "latents after the update", iteration, denoiser.model_dtype)
                if r != len(schedule[i]) - 1:
                    renoise = noise_streams.multiview_noise(seed, noise_streams.RECURRENCE, i, r, n_views,
                                                            view_shape, latents.device)
                    latents = scheduler.renoise(latents, i, renoise)
            if preview_callback is not None:
                preview_callback(i, n_steps, out.pred_original_sample[0])
    return latents if known is None else known.finish(latents)


@torch.no_grad()
def sample_multiview(denoiser, latents_init: torch.Tensor, cond: torch.Tensor,
                     uncond: Optional[torch.Tensor], plucker: torch.Tensor,
                     F_of: Optional[FundamentalSource], scheduler: DiscreteScheduler,
                     guidance_scale: float = 8.5, strategy: str = "random", recurrence: int = 1,
                     max_batch: Optional[int] = None, seed: int = 0,
                     progress: Optional[Progress] = None,
                     preview_callback: Optional[PreviewCallback] = None,
                     partitions: int = 1, regional: Optional[Regional] = None,
                     executor: Optional[RowExecutor] = None, context: Optional[ContextOptions] = None,
                     cameras: Optional[WindowCameras] = None, known: Optional[KnownRegion] = None) -> torch.Tensor:
    """Denoise N views together; returns the final latents ``[V, C, F, h, w]`` (float32).

    A convenience over ``CollaborativeDenoiser`` + ``multiview_loop``:
    - ``latents_init``: x_T (e.g. ``noise.initial_noise``, or ``scheduler.add_noise`` for a partial
      denoise). ``cond``/``uncond``: ``[V or 1, 77, D]``; ``uncond`` may be None at guidance 1.
    - ``plucker [V, 6, F, H, W]``; ``F_of(i, j) -> [F, 3, 3]`` or a dict keyed by ``(i, j)``.
    - ``strategy`` random/all_pairs/fixed (``pairing``); ``recurrence`` R iterations per step;
      ``partitions`` Q random matchings per iteration; ``max_batch`` rows per call (None = auto).
    - ``seed``: pairing and all noise drawn during sampling (recurrence, MCM re-noise).
    - ``progress``: ``start(total calls)``, ``advance(1)`` per call; raising there cancels.
    - ``regional``: ``[(text, mask [V or 1, 1, F, h, w])]`` entity prompts (``denoiser`` module doc).
    - ``executor``: where the calls run (None = on ``denoiser``, in order).
    - ``context``: temporal context windows (``context.ContextOptions``) with ``cameras``
      (``window_inputs.WindowCameras``) to build each window's Plücker maps; ``plucker`` may be None.
    - ``known``: a start latent kept where its mask is 0 (``inpaint.KnownRegion``).

    Raises ``NonFiniteError`` (a ``ValueError``) at the first step with NaN or infinity.
    """
    _validate(latents_init, plucker if plucker is not None else cameras, recurrence)
    n_views = latents_init.shape[0]
    if getattr(scheduler, "guidance_distilled", False) and float(guidance_scale) != 1.0:
        warnings.warn(f"this scheduler's model has distilled guidance (MCM): guidance_scale should be 1, "
                      f"got {guidance_scale}; it doubles the work and over-saturates", stacklevel=2)
    progress = ensure_progress(progress)
    collaborative = CollaborativeDenoiser(denoiser, cond, uncond, plucker, F_of,
                                          PairingPlan(n_views, strategy, seed, partitions), guidance_scale,
                                          max_batch, regional, executor, progress, latents_init.device,
                                          context, cameras)
    return multiview_loop(collaborative, latents_init, scheduler, recurrence, seed, progress, preview_callback,
                          known)
