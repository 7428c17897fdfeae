"""``cvd_core.sampling.inpaint.KnownRegion``: the known-region rule of core's ``KSamplerX0Inpaint`` in the pack's
(DDPM, epsilon) coordinates. The sampler-level properties (exact start where the mask is 0, exact unmasked result
where it is 1) are tested through the node in tests/nodes/test_mask_sampling.py."""

import pytest
import torch

from cvd_core.sampling import KnownRegion


def test_the_held_epsilon_gives_cores_held_x0():
    """KnownRegion's epsilon, stepped from the running latent, has the x0 of core's KSamplerX0Inpaint:
    m * x0(x_in) + (1 - m) * start, also for soft masks."""
    g = torch.Generator().manual_seed(0)
    start, noise, x, eps = (torch.randn(2, 4, 3, 4, 4, generator=g) for _ in range(4))
    mask = torch.rand(2, 1, 3, 4, 4, generator=g)
    region, a = KnownRegion(start, mask, noise), 0.3
    x_in = region.model_input(x, a)
    held = region.held_eps(eps, x, x_in, a)
    x0_core = mask * (x_in - (1 - a) ** 0.5 * eps) / a ** 0.5 + (1 - mask) * start
    torch.testing.assert_close((x - (1 - a) ** 0.5 * held) / a ** 0.5, x0_core)  # float32 rounding only
    with pytest.raises(ValueError, match=r"noise mask must be \[2, 1, 3, 4, 4\]"):
        KnownRegion(start, mask[:1], noise)


def test_hard_masks_are_exact_blends():
    g = torch.Generator().manual_seed(1)
    start, noise, x, eps = (torch.randn(1, 4, 2, 3, 3, generator=g) for _ in range(4))
    ones, zeros = torch.ones(1, 1, 2, 3, 3), torch.zeros(1, 1, 2, 3, 3)
    regenerate = KnownRegion(start, ones, noise)
    assert torch.equal(regenerate.model_input(x, 0.4), x)
    assert torch.equal(regenerate.held_eps(eps, x, x, 0.4), eps) and torch.equal(regenerate.finish(x), x)
    keep = KnownRegion(start, zeros, noise)
    assert torch.equal(keep.finish(x), start)
    x_in = keep.model_input(x, 0.4)
    torch.testing.assert_close(x_in, start * 0.4 ** 0.5 + noise * 0.6 ** 0.5)
    torch.testing.assert_close(keep.held_eps(eps, x_in, x_in, 0.4), noise)  # x0 = start: eps is the start noise


def test_masks_compose_with_context_windows():
    """Masks live in the loop on the whole clip, windows inside the denoiser: a kept region stays exact and an
    all-regenerate mask is the windowed run without a mask."""
    from cvd_core.camera import make_preset_rig, pair_fundamentals
    from cvd_core.sampling import ContextOptions, DDIMScheduler, WindowCameras, initial_noise, sample_multiview

    def denoiser(x, t, text, plucker, F, partner):
        out = 0.5 * x + 0.01 * plucker.mean((1, 3, 4))[:, None, :, None, None] + text.mean((1, 2)).view(-1, 1, 1, 1, 1)
        return out if partner is None else out + 0.1 * x[partner]

    views, frames = 2, 20
    rig = make_preset_rig("circle", views, frames, 64, 64)
    start, noise = torch.randn(views, 4, frames, 8, 8), initial_noise(3, views, 4, frames, 8, 8)
    cond, uncond = torch.randn(views, 77, 8), torch.randn(1, 77, 8)
    mask = torch.ones(views, 1, frames, 8, 8)
    mask[:, :, :3] = 0.0  # the first frames are known

    def run(known):
        scheduler = DDIMScheduler(3)
        return sample_multiview(denoiser, scheduler.add_noise(start, noise, 0), cond, uncond,
                                None, lambda i, j: pair_fundamentals(rig, i, j).float(), scheduler, 4.0,
                                max_batch=4, seed=3, context=ContextOptions(8, 2),
                                cameras=WindowCameras.from_rig(rig), known=known)

    kept = run(KnownRegion(start, mask, noise))
    assert torch.equal(kept[:, :, :3], start[:, :, :3]) and not torch.equal(kept[:, :, 3:], start[:, :, 3:])
    everything = run(KnownRegion(start, torch.ones_like(mask), noise))
    assert torch.equal(everything, run(None))
