"""The collaborative N-view sampler with a deterministic fake denoiser.

The fake denoiser mixes each row with its partner row non-linearly and reads the text, Plücker,
F matrices (orientation-sensitive) and timestep, so a wrong pairing, layout, F orientation or
CFG branch changes the result.
"""

import pytest
import torch
from diffusers import DDIMScheduler as DiffusersDDIM

from cvd_core.progress import CallbackProgress
from cvd_core.sampling import DDIMScheduler, DiscreteScheduler, StepOutput, pair_schedule, sample_multiview
from cvd_core.sampling import noise as noise_streams

C, FR, H, W = 4, 3, 4, 4  # latent channels, frames, latent size
D = 8  # text width


class MixingDenoiser:
    """Row-wise deterministic stand-in for CVD's ``predict_noise``.

    With ``device`` it declares ``device``/``dtype`` (fp32) like the real model, so the sampler moves
    every call's rows there, and it checks that they arrive there.
    """

    def __init__(self, device=None):
        self.calls = []
        if device is not None:
            self.device, self.dtype = torch.device(device), torch.float32

    def predict_noise(self, latents, timestep, text, plucker, F_mats, partner):
        if hasattr(self, "device"):
            on = {t.device.type for t in (latents, timestep, text, plucker, F_mats, partner) if t is not None}
            assert on == {self.device.type}, f"inputs on {on}, model on {self.device}"
            assert F_mats is None or F_mats.dtype == torch.float32  # geometry never in half precision
        self.calls.append({"rows": latents.shape[0], "partner": None if partner is None else partner.tolist(),
                           "F": F_mats is not None})
        assert timestep.dim() == 0 and timestep.dtype == torch.long
        b = latents.shape[0]
        assert text.shape == (b, 77, D) and plucker.shape == (b, 6, FR, 8 * H, 8 * W)
        out = torch.tanh(0.5 * latents + text.mean(dim=(1, 2)).view(b, 1, 1, 1, 1) + 1e-3 * timestep.float())
        out = out + 0.1 * plucker.mean(dim=(1, 3, 4)).view(b, 1, FR, 1, 1)
        if partner is None:
            assert F_mats is None
            return out
        assert F_mats.shape == (b, FR, 3, 3)
        assert all(int(partner[int(p)]) == r for r, p in enumerate(partner))  # involution
        other = latents[partner]
        f_odd = (F_mats[..., 0, 1] - F_mats[..., 1, 0]).view(b, 1, FR, 1, 1)  # flips sign under Fᵀ
        return out + 0.3 * torch.sin(latents * other.flip(-1) + other) + 0.05 * f_odd


def _fundamental(i, j):
    lo, hi = min(i, j), max(i, j)
    g = torch.Generator().manual_seed(100 * lo + hi)
    m = torch.randn(FR, 3, 3, generator=g)
    return m if i < j else m.transpose(-1, -2)


def _inputs(n_views, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_views, C, FR, H, W, generator=g)
    cond = torch.randn(n_views, 77, D, generator=g)
    uncond = torch.randn(1, 77, D, generator=g)
    plucker = torch.randn(n_views, 6, FR, 8 * H, 8 * W, generator=g)
    return x, cond, uncond, plucker


def _run(n_views, denoiser=None, **kw):
    x, cond, uncond, plucker = _inputs(n_views)
    kw.setdefault("scheduler", DDIMScheduler(num_inference_steps=3))
    return sample_multiview(denoiser or MixingDenoiser(), x, cond, uncond, plucker, _fundamental, **kw)


@pytest.mark.parametrize("n_views,strategy", [(4, "random"), (5, "random"), (3, "all_pairs"), (5, "fixed")])
def test_max_batch_invariance(n_views, strategy):
    results = []
    for max_batch in (2, 3, 4, 7, None):
        den = MixingDenoiser()
        results.append(_run(n_views, den, strategy=strategy, recurrence=2, max_batch=max_batch, seed=11))
        if max_batch is not None:
            assert max(c["rows"] for c in den.calls) <= max_batch
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_fake_denoiser_depends_on_partner():
    x, cond, _, plucker = _inputs(4)
    den = MixingDenoiser()
    f = torch.stack([_fundamental(0, 1), _fundamental(1, 0), _fundamental(2, 3), _fundamental(3, 2)])
    t = torch.tensor(500)
    a = den.predict_noise(x, t, cond, plucker, f, torch.tensor([1, 0, 3, 2]))
    b = den.predict_noise(x, t, cond, plucker, f, torch.tensor([2, 3, 0, 1]))
    c = den.predict_noise(x, t, cond, plucker, f.transpose(-1, -2), torch.tensor([1, 0, 3, 2]))
    assert (a - b).abs().max() > 0.05 and (a - c).abs().max() > 0.05


def _official_loop(n_views, seed, recurrence, gs=8.5, steps=3):
    """Independent re-statement of the official N-view loop (pipeline_animation_epi_advanced):
    one UNet batch with rows 2·view + branch, partner via the matching, CFG on [0::2]/[1::2],
    diffusers DDIM, re-noise with ā_t / ā_{t - 1000//steps}."""
    x, cond, uncond, plucker = _inputs(n_views)
    den = MixingDenoiser()
    ref = DiffusersDDIM(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                        steps_offset=1, clip_sample=False)
    ref.set_timesteps(steps)
    text = torch.stack([t for v in range(n_views) for t in (uncond[0], cond[v])])
    plucker_rows = plucker.repeat_interleave(2, dim=0)
    for i, t in enumerate(ref.timesteps):
        iterations = recurrence if i != len(ref.timesteps) - 1 else 1
        for r in range(iterations):
            mate = {}
            for a, b in pair_schedule(n_views, "random", i, seed, substep=r):
                mate[a], mate[b] = b, a
            partner = torch.tensor([2 * mate[v] + br for v in range(n_views) for br in (0, 1)])
            f = torch.stack([_fundamental(v, mate[v]) for v in range(n_views) for _ in (0, 1)])
            eps = den.predict_noise(x.repeat_interleave(2, dim=0), t.long(), text, plucker_rows, f, partner)
            eps = eps[0::2] + gs * (eps[1::2] - eps[0::2])
            x = ref.step(eps, t, x).prev_sample
            if r != iterations - 1:
                z = noise_streams.multiview_noise(seed, noise_streams.RECURRENCE, i, r, n_views, x.shape[1:])
                ratio = ref.alphas_cumprod[t] / ref.alphas_cumprod[t - 1000 // steps]
                x = x * ratio ** 0.5 + (1 - ratio) ** 0.5 * z
    return x


@pytest.mark.parametrize("recurrence", [1, 3])
def test_matches_official_loop_for_even_views(recurrence, compute_device):
    """The reference runs on the CPU; our sampler's denoiser calls run on ``compute_device``."""
    ours = _run(4, denoiser=MixingDenoiser(compute_device), strategy="random", recurrence=recurrence, seed=5)
    assert ours.device.type == "cpu"  # the sampler keeps its latents where they came from
    ref = _official_loop(4, seed=5, recurrence=recurrence)
    assert (ours - ref).abs().max() < 1e-4 * (1 + ref.abs().max())


class ProbeScheduler(DiscreteScheduler):
    """One step whose output is the sampler's averaged noise prediction itself."""

    def __init__(self):
        from cvd_core.sampling import make_alphas_cumprod
        super().__init__(make_alphas_cumprod(), [500])

    def landing_alpha(self, index):
        return 1.0

    def step(self, eps, index, sample, noise=None):
        return StepOutput(eps, eps)


class PartnerIdDenoiser:
    """Noise prediction = the partner view's id (read from its Plücker), branch-dependent."""

    def predict_noise(self, latents, timestep, text, plucker, F_mats, partner):
        ids = plucker[:, 0, 0, 0, 0]
        src = ids if partner is None else ids[partner]
        branch = text[:, 0, 0]  # 0 for uncond rows, 1 for cond rows (set by the test)
        return (src + 100 * branch).view(-1, 1, 1, 1, 1).expand_as(latents).clone()


@pytest.mark.parametrize("n_views", [3, 5, 7])
def test_odd_views_average_over_their_pairs(n_views):
    x, _, _, _ = _inputs(n_views)
    plucker = torch.arange(n_views, dtype=torch.float32).view(-1, 1, 1, 1, 1).expand(n_views, 6, FR, 8 * H, 8 * W)
    cond, uncond = torch.ones(n_views, 77, D), torch.zeros(1, 77, D)
    gs = 3.0
    out = sample_multiview(PartnerIdDenoiser(), x, cond, uncond, plucker, _fundamental, ProbeScheduler(),
                           guidance_scale=gs, strategy="random", seed=4, max_batch=2)
    pairs = pair_schedule(n_views, "random", 0, 4)
    for v in range(n_views):
        mates = [b if a == v else a for a, b in pairs if v in (a, b)]
        mean_mate = sum(mates) / len(mates)
        # uncond = mean_mate, cond = mean_mate + 100 -> CFG = mean_mate + gs * 100
        assert torch.allclose(out[v], torch.full_like(out[v], mean_mate + gs * 100))


def test_single_view_runs_without_partner():
    den = MixingDenoiser()
    x, cond, uncond, plucker = _inputs(1)
    out = sample_multiview(den, x, cond, uncond, plucker, None, DDIMScheduler(num_inference_steps=3),
                           recurrence=2, seed=1)
    assert all(c["partner"] is None and not c["F"] and c["rows"] == 2 for c in den.calls)
    # reference: plain CFG DDIM of the lone view (recurrence repeats steps with the same streams)
    sched = DDIMScheduler(num_inference_steps=3)
    ref, solo = x.clone(), MixingDenoiser()
    text = torch.cat([uncond, cond])
    for i, t in enumerate(sched.timesteps):
        iters = 2 if i != 2 else 1
        for r in range(iters):
            eps = solo.predict_noise(ref.repeat(2, 1, 1, 1, 1), torch.tensor(t), text, plucker.repeat(2, 1, 1, 1, 1),
                                     None, None)
            ref = sched.step(eps[0:1] + 8.5 * (eps[1:2] - eps[0:1]), i, ref).prev_sample
            if r != iters - 1:
                z = noise_streams.multiview_noise(1, noise_streams.RECURRENCE, i, r, 1, ref.shape[1:])
                ref = sched.renoise(ref, i, z)
    assert torch.allclose(out, ref, atol=1e-6)


def test_progress_counts_calls_and_cancel_propagates():
    updates = []
    progress = CallbackProgress(lambda done, total: updates.append((done, total)))
    den = MixingDenoiser()
    _run(4, den, recurrence=2, max_batch=4, progress=progress)
    # 4 views, CFG -> 8 rows per iteration -> 2 calls; 3 steps with recurrence 2 -> 2+2+1 iterations
    assert progress.total == 10 and progress.done == 10 == len(den.calls)
    assert updates[0] == (0, 10) and updates[-1] == (10, 10)

    class Cancelled(Exception):
        pass

    def cancel_at(done, total):
        if done == 3:
            raise Cancelled()

    den = MixingDenoiser()
    with pytest.raises(Cancelled):
        _run(4, den, recurrence=2, max_batch=4, progress=CallbackProgress(cancel_at))
    assert len(den.calls) == 3


def test_seed_determinism_and_preview():
    previews = []
    a = _run(6, seed=3, preview_callback=lambda i, n, x0: previews.append((i, n, tuple(x0.shape))))
    assert previews == [(i, 3, (C, FR, H, W)) for i in range(3)]
    assert torch.equal(a, _run(6, seed=3))
    assert not torch.equal(a, _run(6, seed=4))  # another matching sequence
    same_pairs = _run(6, strategy="all_pairs", seed=3)
    assert torch.equal(same_pairs, _run(6, strategy="all_pairs", seed=99))  # no randomness with eta 0


def test_dict_of_fundamentals_in_either_orientation():
    x, cond, uncond, plucker = _inputs(3)
    upper = {(i, j): _fundamental(i, j) for i in range(3) for j in range(i + 1, 3)}
    a = sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, upper, DDIMScheduler(num_inference_steps=2),
                         strategy="all_pairs")
    b = sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, _fundamental,
                         DDIMScheduler(num_inference_steps=2), strategy="all_pairs")
    assert torch.equal(a, b)
    with pytest.raises(KeyError, match=r"needs the key \(0, 2\) or \(2, 0\)"):
        sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, {(0, 1): upper[(0, 1)]},
                         DDIMScheduler(num_inference_steps=2), strategy="all_pairs")


def test_guidance_one_runs_no_uncond_rows():
    den = MixingDenoiser()
    x, cond, _, plucker = _inputs(4)
    sample_multiview(den, x, cond, None, plucker, _fundamental, DDIMScheduler(num_inference_steps=2),
                     guidance_scale=1.0)
    assert sum(c["rows"] for c in den.calls) == 2 * 4


def test_clear_errors():
    x, cond, uncond, plucker = _inputs(2)
    sched = DDIMScheduler(num_inference_steps=2)
    with pytest.raises(ValueError, match="max_batch must be at least 2"):
        sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, _fundamental, sched, max_batch=1)
    with pytest.raises(ValueError, match="F_of"):
        sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, None, sched)
    with pytest.raises(ValueError, match="needs uncond"):
        sample_multiview(MixingDenoiser(), x, cond, None, plucker, _fundamental, sched)
    with pytest.raises(ValueError, match="cond has 3 entries but there are 2 views"):
        sample_multiview(MixingDenoiser(), x, torch.zeros(3, 77, D), uncond, plucker, _fundamental, sched)
    with pytest.raises(ValueError, match="partitions > 1 needs strategy 'random'"):
        sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, _fundamental, sched, strategy="fixed",
                         partitions=2)
    with pytest.raises(ValueError, match=r"F_of\(0, 1\) must be \[3, 3, 3\]"):
        sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, lambda i, j: torch.zeros(2, 3, 3), sched)


def test_partitions_average_several_matchings():
    # Q partitions of 4 views: every view takes part in Q pairs per iteration (official accumulate_step)
    den = MixingDenoiser()
    _run(4, den, partitions=2, max_batch=100, guidance_scale=1.0)
    assert [c["rows"] for c in den.calls] == [8, 8, 8]


def test_call_layout_follows_the_fixture_convention():
    from cvd_core.sampling import plan_calls
    (call,) = plan_calls([(0, 1)], (0, 1), max_batch=4)
    assert [(r.view, r.branch) for r in call.rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert call.partner == [2, 3, 0, 1]  # cvd_backbone/README.md two_view
    (call,) = plan_calls([(0, 3), (1, 2)], (0, 1), max_batch=8)
    assert [(r.view, r.branch) for r in call.rows] == [(0, 0), (0, 1), (3, 0), (3, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert call.partner == [2, 3, 0, 1, 6, 7, 4, 5]
    # any max_batch: partners are involutions that keep the CFG branch and pair the right views
    pairs = pair_schedule(7, "all_pairs")
    for max_batch in range(2, 12):
        calls = plan_calls(pairs, (0, 1), max_batch)
        seen = []
        for c in calls:
            assert len(c.rows) <= max_batch
            for n, p in enumerate(c.partner):
                assert c.partner[p] == n and p != n and c.rows[p].branch == c.rows[n].branch
                assert {c.rows[p].view, c.rows[n].view} == set(pairs[c.rows[n].pair])
            seen += [(r.pair, r.view, r.branch) for r in c.rows]
        assert sorted(seen) == sorted((k, v, b) for k, pr in enumerate(pairs) for v in pr for b in (0, 1))


class KindRecordingDenoiser(MixingDenoiser):
    """Takes ``row_kinds`` and checks it against the text each row carries."""

    def __init__(self, uncond_text):
        super().__init__()
        self.uncond_text = uncond_text
        self.kinds = []

    def predict_noise(self, latents, timestep, text, plucker, F_mats, partner, row_kinds=None):
        assert row_kinds is not None and len(row_kinds) == latents.shape[0]
        is_uncond = [bool(torch.equal(row, self.uncond_text)) for row in text]
        assert row_kinds == [1 if u else 0 for u in is_uncond]  # 1 = uncond, 0 = cond (entity rows too)
        if partner is not None:  # partners keep the branch
            assert all(row_kinds[int(p)] == k for k, p in zip(row_kinds, partner))
        self.kinds += row_kinds
        return super().predict_noise(latents, timestep, text, plucker, F_mats, partner)


@pytest.mark.parametrize("n_views,max_batch,gs", [(4, 3, 8.5), (1, 1, 8.5), (3, 100, 1.0)])
def test_row_kinds_are_passed_to_denoisers_that_take_them(n_views, max_batch, gs):
    x, cond, uncond, plucker = _inputs(n_views)
    den = KindRecordingDenoiser(uncond[0])
    entity = (torch.randn(1, 77, D), torch.ones(n_views, 1, FR, H, W))
    out = sample_multiview(den, x, cond, uncond, plucker, _fundamental if n_views > 1 else None,
                           DDIMScheduler(num_inference_steps=2), max_batch=max_batch, guidance_scale=gs,
                           regional=[entity])
    plain = sample_multiview(MixingDenoiser(), x, cond, uncond, plucker, _fundamental if n_views > 1 else None,
                             DDIMScheduler(num_inference_steps=2), max_batch=max_batch, guidance_scale=gs,
                             regional=[entity])
    assert torch.equal(out, plain)  # the extra keyword changes nothing else
    rows_per_step = len(den.kinds) // 2
    assert den.kinds.count(1) == (rows_per_step // 3 * 2 if gs > 1 else 0)  # uncond, cond, entity rows alike
