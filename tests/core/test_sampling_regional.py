"""Regional (per-entity) prompts in the collaborative sampler: masked noise-prediction blending.

An entity's prompt must change the prediction only inside its mask, cost one more set of
conditional rows, keep the max_batch invariance, and leave everything unchanged when off.
"""

import pytest
import torch

from cvd_core.sampling import DDIMScheduler, sample_multiview
from tests.core.test_sampling_sampler import (C, D, FR, H, W, MixingDenoiser, ProbeScheduler, _fundamental,
                                              _inputs)


def _mask(n_views, seed=0, soft=False):
    """A per-view rectangle (different in every view and frame), optionally with soft values."""
    m = torch.zeros(n_views, 1, FR, H, W)
    for v in range(n_views):
        for f in range(FR):
            r0 = (v + f) % (H - 1)
            m[v, 0, f, r0:r0 + 2, (v % (W - 2)):(v % (W - 2)) + 2] = 0.5 if soft else 1.0
    return m


def _entity_text(seed, n=1, tokens=77):
    return torch.randn(n, tokens, D, generator=torch.Generator().manual_seed(seed)) * 2.0


def _sample(n_views, regional=None, scheduler=None, denoiser=None, **kw):
    x, cond, uncond, plucker = _inputs(n_views)
    kw.setdefault("guidance_scale", 8.5)
    return sample_multiview(denoiser or MixingDenoiser(), x, cond, uncond, plucker, _fundamental,
                            scheduler or DDIMScheduler(num_inference_steps=3), seed=3, regional=regional, **kw)


@pytest.mark.parametrize("gs", [8.5, 1.0])
def test_entity_prompt_changes_the_prediction_only_inside_its_mask(gs):
    mask = _mask(4)
    plain = _sample(4, scheduler=ProbeScheduler(), guidance_scale=gs)
    regional = _sample(4, [(_entity_text(1), mask)], scheduler=ProbeScheduler(), guidance_scale=gs)
    outside = (mask == 0).expand_as(plain)
    assert (regional - plain)[outside].abs().max() <= 1e-6
    assert (regional - plain)[~outside].abs().min() > 1e-3  # every masked element moves


def test_one_step_sample_changes_only_inside_the_mask():
    mask = _mask(4)
    plain = _sample(4, scheduler=DDIMScheduler(num_inference_steps=1))
    regional = _sample(4, [(_entity_text(1), mask)], scheduler=DDIMScheduler(num_inference_steps=1))
    outside = (mask == 0).expand_as(plain)
    assert (regional - plain)[outside].abs().max() <= 1e-6
    assert (regional - plain)[~outside].abs().max() > 1e-2


class TextDenoiser:
    """eps = the row's text value (no view mixing): makes the blend weights directly readable."""

    def predict_noise(self, latents, timestep, text, plucker, F_mats, partner):
        return text[:, 0, 0].view(-1, 1, 1, 1, 1).expand_as(latents).clone()


def _const_text(value, n=1):
    return torch.full((n, 77, D), float(value))


def test_blend_weights_soft_and_overlapping_masks():
    x, _, _, plucker = _inputs(2)
    a = torch.zeros(2, 1, FR, H, W)
    b = torch.zeros(2, 1, FR, H, W)
    a[..., 0, 0] = 0.25   # soft, alone: 0.75 base + 0.25 entity a
    a[..., 1, 1] = 1.0    # overlap of two full masks: shared equally
    b[..., 1, 1] = 1.0
    a[..., 2, 2] = 0.5    # overlap summing to 1: weights as given
    b[..., 2, 2] = 0.5
    out = sample_multiview(TextDenoiser(), x, _const_text(1.0), None, plucker, _fundamental, ProbeScheduler(),
                           guidance_scale=1.0, regional=[(_const_text(10.0), a), (_const_text(100.0), b)])
    assert torch.allclose(out[..., 0, 0], torch.tensor(0.75 * 1 + 0.25 * 10))
    assert torch.allclose(out[..., 1, 1], torch.tensor(0.5 * 10 + 0.5 * 100))
    assert torch.allclose(out[..., 2, 2], torch.tensor(0.5 * 10 + 0.5 * 100))
    assert torch.allclose(out[..., 3, 3], torch.tensor(1.0))  # no mask: the plain prompt


def test_regional_blend_is_applied_before_cfg():
    x, _, _, plucker = _inputs(2)
    mask = torch.ones(1, 1, FR, H, W)
    out = sample_multiview(TextDenoiser(), x, _const_text(1.0), _const_text(0.0), plucker, _fundamental,
                           ProbeScheduler(), guidance_scale=3.0, regional=[(_const_text(2.0), mask)])
    assert torch.allclose(out, torch.tensor(0.0 + 3.0 * (2.0 - 0.0)))  # uncond + gs (eps_e - uncond)


def test_off_is_identical_to_before():
    base = _sample(4)
    assert torch.equal(_sample(4, regional=[]), base)
    den = MixingDenoiser()
    empty = _sample(4, [(_entity_text(1), torch.zeros(4, 1, FR, H, W))], denoiser=den)
    assert torch.equal(empty, base)  # an entity seen nowhere is skipped: no extra rows
    plain = MixingDenoiser()
    _sample(4, denoiser=plain)
    assert den.calls == plain.calls


@pytest.mark.parametrize("n_views,strategy,entities", [(4, "random", 1), (5, "random", 2), (3, "all_pairs", 2)])
def test_max_batch_invariance_with_regional_rows(n_views, strategy, entities):
    regional = [(_entity_text(10 + e), _mask(n_views, seed=e, soft=e == 1)) for e in range(entities)]
    results = []
    for max_batch in (2, 3, 5, 8, None):
        den = MixingDenoiser()
        results.append(_sample(n_views, regional, denoiser=den, strategy=strategy, recurrence=2,
                               max_batch=max_batch))
        if max_batch is not None:
            assert max(c["rows"] for c in den.calls) <= max_batch
    for r in results[1:]:
        assert torch.equal(r, results[0])
    assert torch.equal(_sample(n_views, regional, strategy=strategy, recurrence=2), results[0])  # deterministic


@pytest.mark.parametrize("entities", [1, 2])
def test_cost_is_one_more_set_of_conditional_rows_per_entity(entities):
    regional = [(_entity_text(e), _mask(4)) for e in range(entities)]
    for gs, rows_per_branch in ((8.5, 2), (1.0, 1)):
        plain, with_regions = MixingDenoiser(), MixingDenoiser()
        _sample(4, denoiser=plain, guidance_scale=gs)
        _sample(4, regional, denoiser=with_regions, guidance_scale=gs)
        plain_rows = sum(c["rows"] for c in plain.calls)
        cond_rows = plain_rows // rows_per_branch
        assert sum(c["rows"] for c in with_regions.calls) == plain_rows + entities * cond_rows


class TokenCountDenoiser(TextDenoiser):
    def __init__(self):
        self.tokens = set()

    def predict_noise(self, latents, timestep, text, plucker, F_mats, partner):
        self.tokens.add(text.shape[1])
        return super().predict_noise(latents, timestep, text, plucker, F_mats, partner)


def test_per_view_entity_text_and_longer_prompts():
    x, _, _, plucker = _inputs(3)
    mask = torch.zeros(1, 1, FR, H, W)
    mask[..., 0, :] = 1.0
    per_view = torch.cat([_const_text(10.0), _const_text(20.0), _const_text(30.0)])
    den = TokenCountDenoiser()
    out = sample_multiview(den, x, _const_text(1.0), None, plucker, _fundamental, ProbeScheduler(),
                           guidance_scale=1.0, regional=[(per_view, mask)])
    assert out[:, :, :, 0, :].flatten(1).unique(dim=1).flatten().tolist() == [10.0, 20.0, 30.0]
    # a 154-token entity prompt (long prompt) shares calls with 77-token rows: all are repeated to 154
    long = _const_text(5.0).repeat(1, 2, 1)
    out = sample_multiview(den, x, _const_text(1.0), None, plucker, _fundamental, ProbeScheduler(),
                           guidance_scale=1.0, regional=[(long, mask)])
    assert den.tokens == {77, 154} and torch.allclose(out[..., 0, :], torch.tensor(5.0))


def test_clear_errors():
    mask = _mask(4)
    with pytest.raises(ValueError, match=r"regional\[0\] mask must be \[4, 1, 3, 4, 4\].*got \[4, 1, 3, 8, 8\]"):
        _sample(4, [(_entity_text(1), torch.zeros(4, 1, FR, 2 * H, 2 * W))])
    with pytest.raises(ValueError, match=r"regional\[1\] mask has 3 entries but there are 4 views"):
        _sample(4, [(_entity_text(1), mask), (_entity_text(2), mask[:3])])
    with pytest.raises(ValueError, match=r"regional\[0\] text has 2 entries but there are 4 views"):
        _sample(4, [(_entity_text(1, n=2), mask)])
    with pytest.raises(ValueError, match=r"regional\[0\] text has width 5 but cond has width 8"):
        _sample(4, [(torch.zeros(1, 77, 5), mask)])
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\]"):
        _sample(4, [(_entity_text(1), mask * 2)])
    with pytest.raises(ValueError, match=r"regional\[0\] must be a \(text, mask\) pair"):
        _sample(4, [_entity_text(1)])
    assert C == 4  # the masks broadcast over the latent channels


# ------------------------------------------------------------------------------ the tiny real model

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, compute_device):
    from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
    paths = write_tiny_cvd_files(tmp_path_factory.mktemp("cvd"), seed=0)
    return load_cvd_model(**paths, dtype="fp32", device=compute_device)


def test_tiny_model_entity_prompt_acts_only_inside_its_mask(tiny_model):
    from cvd_core.camera import make_preset_rig, pair_fundamentals, plucker_embedding
    rig = make_preset_rig("circle", 2, 2, 64, 64)
    plucker = plucker_embedding(rig.K, rig.c2w, 64, 64).permute(0, 2, 1, 3, 4).float().contiguous()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 2, 8, 8, generator=g)
    cond, uncond, entity = (torch.randn(1, 77, 32, generator=g) for _ in range(3))
    mask = torch.zeros(2, 1, 2, 8, 8)
    mask[:, :, :, 2:6, 3:7] = 1.0

    def run(scheduler, regional, max_batch=2):
        return sample_multiview(tiny_model, x, cond, uncond, plucker, lambda i, j: pair_fundamentals(rig, i, j),
                                scheduler, guidance_scale=1.0, max_batch=max_batch, seed=1, regional=regional)

    scheduler = DDIMScheduler(num_inference_steps=1)  # one step: x_0 is element-wise in eps
    plain = run(scheduler, None)
    regional = run(scheduler, [(entity, mask)])
    outside = (mask == 0).expand_as(plain)
    # max_batch 2: the plain rows run in calls of the same size either way -> bitwise the same
    assert (regional - plain)[outside].abs().max() <= 1e-6
    # cfg 1: the tiny random model reads the text weakly (~4e-4 here), still 400x the bound outside
    assert (regional - plain)[~outside].abs().mean() > 1e-4
