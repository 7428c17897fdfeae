"""DDIM with CVD's inference config, checked step by step against diffusers.DDIMScheduler."""

import pytest
import torch
from diffusers import DDIMScheduler as DiffusersDDIM

from cvd_core.sampling import DDIMScheduler, ddim_timesteps, make_alphas_cumprod

CVD_KWARGS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                  steps_offset=1, clip_sample=False)  # configs/inference_config.yaml


def _reference(steps=25, **extra):
    ref = DiffusersDDIM(**{**CVD_KWARGS, **extra})
    ref.set_timesteps(steps)
    return ref


def test_cvd_timesteps():
    ours = DDIMScheduler()
    assert ours.timesteps == _reference().timesteps.tolist()
    assert ours.timesteps[0] == 961 and ours.timesteps[-1] == 1 and ours.timesteps[12] == 481
    assert len(ours) == 25


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_step_parity_full_loop(set_alpha_to_one):
    ref = _reference(set_alpha_to_one=set_alpha_to_one)
    ours = DDIMScheduler(set_alpha_to_one=set_alpha_to_one)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    gen = torch.Generator().manual_seed(0)
    x_ref = torch.randn(2, 4, 3, 8, 8, generator=gen)
    x_ours = x_ref.clone()
    worst = 0.0

    def err(a, b):  # float32 rounding scales with magnitude: x0 at t=961 is ~14x the input
        return ((a - b).abs().max() / (1 + b.abs().max())).item()

    for i, t in enumerate(ref.timesteps):
        eps = torch.randn(x_ref.shape, generator=gen)
        out_ref = ref.step(eps, t, x_ref)
        out_ours = ours.step(eps, i, x_ours)
        worst = max(worst, err(out_ours.pred_original_sample, out_ref.pred_original_sample))
        x_ref, x_ours = out_ref.prev_sample, out_ours.prev_sample
        worst = max(worst, err(x_ours, x_ref))
    assert worst < 1e-6, worst


def test_eta_and_partial_denoise_parity():
    ref = _reference(steps=10)
    ours = DDIMScheduler(num_inference_steps=10, eta=0.5)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 2, 4, 4, generator=gen)
    for i, t in enumerate(ref.timesteps):
        eps, z = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
        expected = ref.step(eps, t, x, eta=0.5, variance_noise=z).prev_sample
        got = ours.step(eps, i, x, noise=z).prev_sample
        assert (expected - got).abs().max() < 2e-5
        x = expected
    # img2img cut: diffusers keeps the last int(steps * strength) timesteps
    assert ddim_timesteps(25, denoise=0.6) == ref_tail(25, 0.6)
    with pytest.raises(ValueError, match="denoise"):
        ddim_timesteps(25, denoise=0.0)


def ref_tail(steps, strength):
    ts = _reference(steps).timesteps.tolist()
    keep = min(int(steps * strength), steps)
    return ts[steps - keep:]


def test_renoise_is_the_official_recurrence_formula():
    ours = DDIMScheduler()
    ac = make_alphas_cumprod()
    x = torch.randn(1, 4, 2, 4, 4)
    z = torch.randn_like(x)
    i, t = 3, ours.timesteps[3]
    ratio = ac[t] / ac[t - 40]  # official: prev_timestep = t - num_train // num_inference
    expected = x * ratio ** 0.5 + (1 - ratio) ** 0.5 * z
    assert torch.allclose(ours.renoise(x, i, z), expected, atol=1e-6)


def test_scaled_linear_table_matches_diffusers():
    ref = DiffusersDDIM(**{**CVD_KWARGS, "beta_schedule": "scaled_linear"})
    assert torch.equal(make_alphas_cumprod("scaled_linear"), ref.alphas_cumprod)
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        make_alphas_cumprod("cosine")
