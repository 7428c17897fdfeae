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
