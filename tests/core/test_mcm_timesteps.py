"""MCM timesteps, sigmas, boundary scalings and scheduler vs the reference fixture and diffusers."""

import json

import pytest
import torch
from diffusers import LCMScheduler

from cvd_core.mcm import (MCMScheduler, boundary_scalings, mcm_sigmas, mcm_timesteps,
                          timesteps_from_sigmas)
from cvd_core.sampling import make_alphas_cumprod, sample_multiview
from tests._shared import shared_fixture

BASES = {"modelscope_t2v": "scaled_linear", "animatediff_sd15": "linear"}


@pytest.fixture(scope="module")
def reference():
    return json.loads(shared_fixture("mcm/reference_timesteps.json").read_text())


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_fixture_parity(reference, base, steps):
    ref = reference["bases"][base]["by_steps"][str(steps)]
    cfg = reference["bases"][base]["scheduler_config"]
    assert cfg["beta_schedule"] == BASES[base]
    ts = mcm_timesteps(steps)
    assert ts == ref["timesteps"]
    ac = make_alphas_cumprod(BASES[base])
    assert torch.allclose(ac[ts].double(), torch.tensor(ref["alphas_cumprod"], dtype=torch.float64), rtol=0, atol=1e-9)
    sig = mcm_sigmas(ts, BASES[base])
    assert torch.allclose(sig, torch.tensor(ref["sigmas_kdiff"], dtype=torch.float64), rtol=1e-6, atol=0)
    # ComfyUI's lcm table + simple scheduler (float32) gives the same sigmas
    assert torch.allclose(sig, torch.tensor(ref["comfy_lcm_table_simple_sigmas"], dtype=torch.float64), rtol=1e-6)
    assert MCMScheduler.from_sigmas(ref["comfy_lcm_table_simple_sigmas"], BASES[base]).timesteps == ts
    for t, (c_skip, c_out) in zip(ts, ref["c_skip_c_out_scaling4"]):
        ours = boundary_scalings(t, 4.0)
        assert ours[0] == pytest.approx(c_skip, rel=1e-9) and ours[1] == pytest.approx(c_out, rel=1e-12)
    for t, (c_skip, c_out) in zip(ts, ref["c_skip_c_out_scaling10"]):
        ours = boundary_scalings(t, 10.0)
        assert ours[0] == pytest.approx(c_skip, rel=1e-9) and ours[1] == pytest.approx(c_out, rel=1e-12)
    # the pre-0.24 diffusers schedule differs from 4 steps on: we must not produce it
    if steps >= 4:
        assert ts != ref["legacy_diffusers_lt_0.24_timesteps"]


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_timesteps_match_diffusers_lcm(strength):
    ref = LCMScheduler(beta_schedule="linear", timestep_scaling=4.0)
    for steps in (1, 2, 3, 4, 5, 7, 8, 13, 25):
        ref.set_timesteps(steps, strength=strength)
        assert mcm_timesteps(steps, strength=strength) == ref.timesteps.tolist()
    with pytest.raises(ValueError, match="MCM steps must be from 1 to 50"):
        mcm_timesteps(51)


def test_sigmas_round_trip_to_timesteps():
    for schedule in ("linear", "scaled_linear"):
        ts = mcm_timesteps(8)
        assert timesteps_from_sigmas(mcm_sigmas(ts, schedule).tolist(), make_alphas_cumprod(schedule)) == ts
        assert MCMScheduler.from_sigmas(mcm_sigmas(ts, schedule).tolist(), schedule).timesteps == ts


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_scheduler_steps_match_diffusers_lcm(schedule):
    ref = LCMScheduler(beta_schedule=schedule, timestep_scaling=4.0, clip_sample=False, steps_offset=1)
    ref.set_timesteps(4)
    ours = MCMScheduler(steps=4, beta_schedule=schedule)
    assert ours.timesteps == ref.timesteps.tolist() and ours.guidance_distilled
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    for i, t in enumerate(ref.timesteps):
        eps = torch.randn(x.shape, generator=g)
        state = torch.Generator().manual_seed(100 + i)
        expected = ref.step(eps, t, x, generator=state)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i))  # what diffusers drew
        got = ours.step(eps, i, x, noise if ours.step_needs_noise(i) else None)
        assert (got.prev_sample - expected.prev_sample).abs().max() < 1e-5 * (1 + expected.prev_sample.abs().max())
        assert (got.pred_original_sample - expected.denoised).abs().max() < 1e-5 * (1 + expected.denoised.abs().max())
        x = expected.prev_sample
    assert not ours.step_needs_noise(3)


class _EpsDenoiser:
    def __init__(self):
        self.rows = []

    def predict_noise(self, latents, timestep, text, plucker, F_mats, partner):
        self.rows.append(latents.shape[0])
        mixed = latents if partner is None else 0.5 * (latents + latents[partner])
        return torch.tanh(mixed) * 0.5 + text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)  # row-wise


def test_mcm_in_the_collaborative_sampler():
    n = 4
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 4, 2, 3, 3, generator=g)
    cond = torch.randn(n, 77, 8, generator=g)
    plucker = torch.zeros(n, 6, 2, 24, 24)
    fund = lambda i, j: torch.eye(3).expand(2, 3, 3)  # noqa: E731
    den = _EpsDenoiser()
    a = sample_multiview(den, x, cond, None, plucker, fund, MCMScheduler(steps=4), guidance_scale=1.0, seed=7)
    assert den.rows == [n] * 4  # cond rows only (no CFG), one call per step
    b = sample_multiview(_EpsDenoiser(), x, cond, None, plucker, fund, MCMScheduler(steps=4), guidance_scale=1.0,
                         seed=7, max_batch=2)
    assert torch.equal(a, b)  # fresh re-noise is seeded per (step, view), not per call
    c = sample_multiview(_EpsDenoiser(), x, cond, None, plucker, fund, MCMScheduler(steps=4), guidance_scale=1.0,
                         seed=8)
    assert not torch.equal(a, c)
    with pytest.warns(UserWarning, match="distilled guidance"):
        sample_multiview(_EpsDenoiser(), x, cond, cond, plucker, fund, MCMScheduler(steps=1), guidance_scale=2.0)
