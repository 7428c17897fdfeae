"""The nodes for ComfyUI's own sampling, outside a server (tests/integration/test_core_sampling.py runs them in one)."""

from __future__ import annotations

import pytest
import torch

from cvd_core.sampling import DDIMScheduler, initial_noise

import nodes.guider as guider
from nodes import _core_sampling as core


def test_cvd_ddim_sigmas_are_the_official_ddim_timesteps():
    table = core.cvd_sigma_table()
    sigmas = guider.SCHEDULER.run(scheduler="cvd_ddim", steps=25, denoise=1.0).values[0]
    assert float(sigmas[-1]) == 0.0 and len(sigmas) == 26
    back = [int((table.log() - s.log()).abs().argmin()) for s in sigmas[:-1]]  # what ComfyUI's timestep() does
    assert back == DDIMScheduler(25).timesteps == list(range(961, 0, -40))
    partial = guider.SCHEDULER.run(scheduler="cvd_ddim", steps=25, denoise=0.4).values[0]
    assert torch.equal(partial, sigmas[-11:])  # the last int(25 * 0.4) steps, as the pack's DDIM denoise


def test_the_sigma_table_is_cvds_linear_betas_in_float32():
    from cvd_core.sampling import make_alphas_cumprod

    a = make_alphas_cumprod("linear", 1000, 0.00085, 0.012).double()
    assert torch.allclose(core.cvd_sigma_table().double(), ((1 - a) / a).sqrt(), rtol=1e-6, atol=0)
    scaled = make_alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012).double()
    assert not torch.allclose(core.cvd_sigma_table().double(), ((1 - scaled) / scaled).sqrt(), rtol=1e-3)


def test_scheduler_offers_cvd_ddim_and_every_core_name(monkeypatch):
    monkeypatch.setattr(guider, "core_scheduler_names", lambda: ["normal", "karras", "beta"])
    assert guider.scheduler_options() == ["cvd_ddim", "normal", "karras", "beta"]


def test_noise_is_the_packs_per_view_streams():
    latent = {"samples": torch.zeros(3, 4, 2, 8, 8)}
    noise = guider.NOISE.run(noise_seed=11).values[0]
    assert noise.seed == 11
    three = noise.generate_noise(latent)
    assert torch.equal(three, initial_noise(11, 3, 4, 2, 8, 8))
    two = noise.generate_noise({"samples": torch.zeros(2, 4, 2, 8, 8)})
    assert torch.equal(three[:2], two)  # a view's noise does not depend on the number of views
    with pytest.raises(ValueError, match="5-D video latent"):
        noise.generate_noise({"samples": torch.zeros(1, 4, 8, 8)})


def test_empty_latent_is_sized_from_the_cameras():
    from cvd_core.camera import make_preset_rig

    out = guider.EMPTY_LATENT.run(cameras=make_preset_rig("circle", 3, 5, 96, 64)).values[0]
    assert tuple(out["samples"].shape) == (3, 4, 5, 8, 12) and not out["samples"].any()
    assert out["cvd_temporal_compression"] == 1


def test_guider_and_noise_refuse_where_comfyui_has_no_guider_sampling(monkeypatch):
    monkeypatch.setattr(guider, "has_guider_api", lambda: False)
    message = guider._guider_api_rule(8.5)
    assert "no GUIDER sampling (SamplerCustomAdvanced" in message and "sampler input" in message
    assert "no NOISE sampling" in guider._noise_api_rule(3)
    monkeypatch.setattr(guider, "has_guider_api", lambda: True)
    assert guider._guider_api_rule(8.5) is None and guider._noise_api_rule(3) is None


def test_start_noise_is_pure_noise_for_an_empty_latent_below_sigma_max():
    class Sampling:
        sigma_max = 14.6

    noise, sigmas = torch.ones(1, 4, 1, 2, 2), torch.tensor([3.0, 0.0])
    scaled = core.start_noise(noise, torch.zeros_like(noise), sigmas, Sampling())
    assert torch.allclose(scaled * 3.0, noise * (1 + 9.0) ** 0.5)  # core then multiplies by sigma_0
    assert core.start_noise(noise, torch.ones_like(noise), sigmas, Sampling()) is noise  # img2img: core's own rule
    assert core.start_noise(noise, torch.zeros_like(noise), torch.tensor([14.6, 0.0]), Sampling()) is noise
