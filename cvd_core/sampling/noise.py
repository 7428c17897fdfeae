"""Seeded Gaussian noise that depends only on (seed, purpose, step, sub-step, view).

Every noise tensor of a sampling run is drawn on the CPU from its own generator, seeded from a
``numpy.random.SeedSequence`` over those coordinates. So the noise a view receives does not depend
on how the denoiser calls are batched (``max_batch``), on the device, or on how many other views
are generated: the same seed gives the same videos.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

# Purposes (first entropy word after the seed): keep the streams of one run apart.
INITIAL = 0x494E_4954  # "INIT": the starting latent x_T
RECURRENCE = 0x5245_4E4F  # "RENO": re-noising between recurrent iterations
STEP = 0x5354_4550  # "STEP": noise consumed by the scheduler step (MCM, DDIM with eta > 0)


def _generator_seed(seed: int, coords: Sequence[int]) -> int:
    seed = int(seed) & ((1 << 64) - 1)
    words = [seed & 0xFFFF_FFFF, seed >> 32, *(int(c) for c in coords)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) | (int(state[1]) << 32)) & ((1 << 63) - 1)


def view_noise(seed: int, coords: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Standard normal float32 CPU tensor for one view at the given stream coordinates."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_generator_seed(seed, coords))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def multiview_noise(seed: int, purpose: int, step: int, substep: int, n_views: int,
                    view_shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``[V, *view_shape]`` noise, view v drawn from stream (purpose, step, substep, v)."""
    views = [view_noise(seed, (purpose, step, substep, v), view_shape) for v in range(n_views)]
    return torch.stack(views).to(device=device, dtype=dtype)


def initial_noise(seed: int, n_views: int, channels: int, frames: int, height: int, width: int,
                  device=None, dtype=torch.float32) -> torch.Tensor:
    """The starting latent x_T ``[V, C, F, h, w]`` for a seed (DDIM's init_noise_sigma is 1)."""
    return multiview_noise(seed, INITIAL, 0, 0, n_views, (channels, frames, height, width), device, dtype)


FREENOISE = 0x4652_4545  # "FREE": the frame shuffles of FreeNoise's noise reuse


def freenoise_order(seed: int, view: int, frames: int, length: int, overlap: int) -> torch.Tensor:
    """Which drawn noise frame every frame of one view takes under FreeNoise: ``[F]`` int64.

    FreeNoise (Qiu et al. 2023) keeps the noise of a long video close to one window's: frames
    ``[0, L)`` keep their own noise; every later chunk of ``d = L - O`` frames ``[s, s + d)`` takes the
    noise of the chunk ``L`` frames before it, ``[s - L, s - L + d)``, in a shuffled order (one
    permutation per chunk and view, from stream (FREENOISE, chunk, 0, view)). Windows ``L`` apart
    thus see the same noise frames in another order, so the content repeats less than with tiled
    noise but stays coherent across windows.
    """
    order = torch.arange(frames)
    hop = max(1, length - overlap)
    for chunk, start in enumerate(range(length, frames, hop)):
        size = min(hop, frames - start)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(_generator_seed(seed, (FREENOISE, chunk, 0, view)))
        shuffle = torch.randperm(size, generator=gen)
        order[start:start + size] = order[start - length + shuffle]
    return order


def freenoise(noise: torch.Tensor, seed: int, length: int, overlap: int) -> torch.Tensor:
    """``noise [V, C, F, h, w]`` with FreeNoise's reuse applied per view (``freenoise_order``); a clip of
    at most ``length`` frames is returned unchanged."""
    frames = noise.shape[2]
    if frames <= length:
        return noise
    views = [noise[v].index_select(1, freenoise_order(seed, v, frames, length, overlap).to(noise.device))
             for v in range(noise.shape[0])]
    return torch.stack(views)


def context_noise(noise: torch.Tensor, seed: int, context) -> torch.Tensor:
    """The start noise under ``context`` (``ContextOptions`` or None): FreeNoise's reuse when its
    ``freenoise`` is on, else the noise exactly as drawn."""
    if context is None or not context.freenoise:
        return noise
    return freenoise(noise, seed, context.length, context.overlap)
