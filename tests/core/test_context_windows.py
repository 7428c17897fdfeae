"""Temporal context windows in the collaborative denoiser (cvd_core/sampling/context.py, window_inputs.py).

Schedules and weights are checked exhaustively at odd lengths; the denoiser's windowed path against
(a) the path without windows when one window holds the clip (bit-identical), (b) a run of the path
without windows on each window's own inputs built from the rig cut to the window, fused by hand
after CFG (the denoiser fuses before CFG: equal up to float32 rounding of the sums), and (c) the
tiny CVD network on two CPU replicas (the noise floor of test_sampling_parallel_model.py).
"""

from __future__ import annotations

import pytest
import torch

from cvd_core.camera import CameraSet, make_preset_rig, pair_fundamentals
from cvd_core.camera.geometry import relative_to_first
from cvd_core.sampling import CollaborativeDenoiser, DDIMScheduler, PairingPlan, initial_noise, sample_multiview
from cvd_core.sampling.context import FUSE, SCHEDULES, ContextOptions, frame_weights, ordered_halving
from cvd_core.sampling.executor import Iteration
from cvd_core.sampling.noise import context_noise, freenoise_order
from cvd_core.sampling.window_inputs import WindowCameras, pseudo_frames
from nodes.sampling import camera_inputs

L = 16


def _options(schedule, overlap, **kw):
    stride = kw.pop("stride", 2 if "uniform" in schedule else 1)
    return ContextOptions(L, overlap, schedule, stride=stride, **kw)


def _adjacent(windows, a, b):
    return any(w[k] == a and w[k + 1] == b for w in windows for k in range(len(w) - 1))


# ------------------------------------------------------------------------------ schedules and weights

@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("frames", [17, 33, 50])
@pytest.mark.parametrize("overlap", [4, 0])
def test_every_frame_is_covered_and_the_weights_normalise(schedule, frames, overlap):
    for closed in ([False, True] if schedule == "looped_uniform" else [False]):
        options = _options(schedule, overlap, closed_loop=closed)
        for step in range(6):
            windows = options.windows(frames, step)
            assert sorted({f for w in windows for f in w}) == list(range(frames))
            assert all(1 <= len(w) <= L and len(set(w)) == len(w) for w in windows)
            for fuse in FUSE:
                fused = ContextOptions(L, overlap, schedule, fuse, options.stride, closed)
                total = frame_weights(fused, windows, frames)
                assert bool((total > 0).all())
                # the normalised weights of every frame sum to 1 (what the fusion divides by)
                share = torch.zeros(frames)
                for w in windows:
                    share.index_add_(0, torch.tensor(w), fused.weights(w, frames) / total[list(w)])
                assert torch.allclose(share, torch.ones(frames), atol=1e-6)


@pytest.mark.parametrize("frames", [17, 33, 50])
def test_the_schedules_shapes(frames):
    static = _options("standard_static", 4).windows(frames)
    assert static[0][0] == 0 and static[-1][-1] == frames - 1 and all(len(w) == L for w in static)
    assert all(list(w) == list(range(w[0], w[0] + L)) for w in static)
    batched = _options("batched", 4).windows(frames)
    assert sum(len(w) for w in batched) == frames  # no overlap
    uniform = _options("standard_uniform", 4)
    assert uniform.windows(frames, 0) != uniform.windows(frames, 1)  # offsets move every step
    for step in range(6):  # never across the end of the video
        assert all(list(w) == sorted(w) for w in uniform.windows(frames, step))


@pytest.mark.parametrize("frames", [17, 33, 50])
@pytest.mark.parametrize("overlap", [4, 0])
def test_looped_windows_wrap_and_close(frames, overlap):
    closed = _options("looped_uniform", overlap, closed_loop=True)
    opened = _options("looped_uniform", overlap, closed_loop=False)
    assert any(_adjacent(closed.windows(frames, s), frames - 1, 0) for s in range(1, 6))  # wraps
    for step in range(6):  # closed: every two cyclically adjacent frames share a window
        windows = closed.windows(frames, step)
        assert all(_adjacent(windows, f, (f + 1) % frames) for f in range(frames))
    assert not _adjacent(opened.windows(frames, 0), frames - 1, 0)  # open: the loop is cut at the offset


def test_fuse_weights():
    options = ContextOptions(8, 3, fuse="pyramid")
    assert options.weights(tuple(range(8)), 20).tolist() == [1, 2, 3, 4, 4, 3, 2, 1]
    linear = ContextOptions(8, 3, fuse="overlap_linear")
    assert linear.weights(tuple(range(8)), 20).tolist() == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25]  # starts the video
    assert linear.weights(tuple(range(5, 13)), 20).tolist() == [0.25, 0.5, 0.75, 1, 1, 0.75, 0.5, 0.25]
    assert ContextOptions(8, 3, fuse="flat").weights(tuple(range(5, 13)), 20).tolist() == [1.0] * 8
    assert [ordered_halving(s) for s in range(5)] == [0, 0.5, 0.25, 0.75, 0.125]


def test_bad_options_name_the_rule():
    with pytest.raises(ValueError, match="context_overlap must be from 0 to context_length - 1"):
        ContextOptions(16, 16)
    with pytest.raises(ValueError, match="schedule must be one of"):
        ContextOptions(schedule="spiral")


# ------------------------------------------------------------------------------ FreeNoise

def test_freenoise_follows_the_rule_and_off_leaves_the_noise():
    frames, overlap = 50, 4
    hop = L - overlap
    noise = initial_noise(5, 3, 4, frames, 2, 2)
    assert context_noise(noise, 5, None) is noise
    assert context_noise(noise, 5, ContextOptions(L, overlap)) is noise  # freenoise off: as drawn
    on = context_noise(noise, 5, ContextOptions(L, overlap, freenoise=True))
    orders = [freenoise_order(5, v, frames, L, overlap) for v in range(3)]
    for v, order in enumerate(orders):
        assert order[:L].tolist() == list(range(L))
        for start in range(L, frames, hop):  # each chunk: the chunk L frames before, shuffled
            size = min(hop, frames - start)
            assert sorted(order[start:start + size].tolist()) == sorted(order[start - L:start - L + size].tolist())
        assert torch.equal(on[v], noise[v][:, order])
    assert not torch.equal(orders[0], orders[1])  # per view
    assert torch.equal(on, context_noise(noise, 5, ContextOptions(L, overlap, freenoise=True)))  # seeded
    assert not torch.equal(on, context_noise(noise, 6, ContextOptions(L, overlap, freenoise=True)))
    short = initial_noise(5, 2, 4, L, 2, 2)
    assert context_noise(short, 5, ContextOptions(L, overlap, freenoise=True)) is short


# ------------------------------------------------------------------------------ the denoiser

SIZE, TEXT = 16, 8


class Recorder:
    """A denoiser mixing frames (a cumulative mean over time, like a temporal layer) and partners;
    it records each call's inputs."""

    def __init__(self):
        self.calls = []

    def predict_noise(self, x, t, text, plucker, F_mats, partner, pseudo_frames=None):
        self.calls.append(dict(x=x.clone(), plucker=plucker.clone(), F=None if F_mats is None else F_mats.clone(),
                               partner=partner, pseudo=pseudo_frames, text=text.clone()))
        run = torch.cumsum(x, dim=2) / torch.arange(1, x.shape[2] + 1).view(1, 1, -1, 1, 1)
        out = 0.5 * x + 0.3 * run + text.mean((1, 2)).view(-1, 1, 1, 1, 1) \
            + 0.01 * plucker.mean((1, 3, 4))[:, None, :, None, None]
        if partner is not None:
            out = out + 0.1 * x[partner] + 1e-3 * F_mats.sum((2, 3)).clamp(-5, 5)[:, None, :, None, None]
        return out


def _job(views=3, frames=37, regional=False, seed=0):
    rig = make_preset_rig("circle", views, frames, SIZE, SIZE)
    g = torch.Generator().manual_seed(seed)
    cond, uncond = torch.randn(views, 77, TEXT, generator=g), torch.randn(1, 77, TEXT, generator=g)
    latents = torch.randn(views, 4, frames, SIZE // 8, SIZE // 8, generator=g)
    entity = None
    if regional:
        mask = torch.zeros(views, 1, frames, SIZE // 8, SIZE // 8)
        mask[:, :, 2:9, :, :1] = 1.0  # seen in the first windows only
        entity = [(torch.randn(1, 77, TEXT, generator=g), mask)]
    return rig, cond, uncond, latents, entity


def _windowed(model, rig, cond, uncond, entity, options, strategy="all_pairs"):
    _, fundamentals = camera_inputs(rig, maps=False)
    return CollaborativeDenoiser(model, cond, uncond, None, fundamentals, PairingPlan(rig.n_views, strategy, 2), 4.0,
                                 max_batch=6, regional=entity, context=options, cameras=WindowCameras.from_rig(rig))


def _sub_rig(rig, window):
    index = torch.tensor(window)
    return CameraSet(rig.K[:, index], relative_to_first(rig.c2w[:, index]), rig.width, rig.height)


@pytest.mark.parametrize("schedule,fuse", [("standard_static", "pyramid"), ("looped_uniform", "overlap_linear"),
                                           ("batched", "flat"), ("standard_uniform", "pyramid")])
def test_windows_equal_the_path_without_windows_on_each_sub_rig_fused_after_cfg(schedule, fuse):
    rig, cond, uncond, latents, entity = _job(regional=True)
    frames = rig.n_frames
    options = ContextOptions(L, 4, schedule, fuse, closed_loop=schedule == "looped_uniform")
    iteration = Iteration(1, 4, 0, 700)
    denoiser = _windowed(Recorder(), rig, cond, uncond, entity, options)
    with denoiser.session(latents):
        got = denoiser.predict(latents, iteration, with_parts=True)
    # by hand: the path without windows on the window's own inputs (cut rig, sliced F and masks), after CFG
    total, norm = torch.zeros_like(latents), torch.zeros(frames)
    for window in options.windows(frames, iteration.step):
        index = torch.tensor(window)
        sub = _sub_rig(rig, window)
        assert sub.n_frames == len(window)
        plucker, _ = camera_inputs(sub)
        full_f = {(i, j): pair_fundamentals(rig, i, j).float()[index] for i in range(3) for j in range(3) if i != j}
        sub_mask = entity[0][1][:, :, index]
        sub_entity = [(entity[0][0], sub_mask)] if float(sub_mask.max()) > 0 else None
        plain = CollaborativeDenoiser(Recorder(), cond, uncond, plucker, full_f, PairingPlan(3, "all_pairs", 2), 4.0,
                                      max_batch=6, regional=sub_entity)
        part = latents[:, :, index]
        with plain.session(part):
            eps = plain.predict(part, iteration).eps
        a = options.weights(window, frames)
        total.index_add_(2, index, eps * a.view(1, 1, -1, 1, 1))
        norm.index_add_(0, index, a)
    expected = total / norm.view(1, 1, -1, 1, 1)
    # The two orders differ only in float32 rounding: each side rounds a handful of sums and products per
    # value (<= 16 ulps of the largest branch prediction), and CFG scales a branch's error by up to
    # 1 + 2 * guidance. A wrong frame, weight or window moves values by O(1).
    scale = max(float(got.cond.abs().max()), float(got.uncond.abs().max()))
    bound = 16 * torch.finfo(torch.float32).eps * scale * (1 + 2 * 4.0)
    assert float((got.eps - expected).abs().max()) <= bound
    assert float((got.eps - got.uncond - 4.0 * (got.cond - got.uncond)).abs().max()) <= bound


def test_each_window_call_reads_the_cut_rig_and_pseudo_lines_only_where_cameras_coincide():
    rig, cond, uncond, latents, entity = _job(regional=True)
    recorder = Recorder()
    options = ContextOptions(L, 4, "looped_uniform", closed_loop=True)
    denoiser = _windowed(recorder, rig, cond, uncond, entity, options)
    iteration = Iteration(1, 4, 0, 700)
    with denoiser.session(latents):
        denoiser.predict(latents, iteration)
    windows = options.windows(rig.n_frames, iteration.step)
    assert any(0 in w and w[0] != 0 for w in windows)  # a window holding frame 0 inside it
    entity_windows = [w for w in windows if any(2 <= f < 9 for f in w)]
    assert len(entity_windows) < len(windows)
    calls_per_window = []
    calls = iter(recorder.calls)
    for window in windows:
        index = torch.tensor(window)
        plucker, _ = camera_inputs(_sub_rig(rig, window))
        branches = 3 if window in entity_windows else 2  # an entity empty in the window adds no rows
        n = 0
        rows = 0
        while rows < 3 * 2 * branches:  # all_pairs of 3 views: 3 pairs x 2 rows x branches
            call = next(calls)
            n += 1
            rows += call["x"].shape[0]
            views = _views_of(call, latents, index)
            assert torch.equal(call["plucker"], plucker[views])
            for b, v in enumerate(views):
                w = views[int(call["partner"][b])]
                assert torch.equal(call["F"][b], pair_fundamentals(rig, v, w).float()[index])
            want = torch.zeros(len(views), len(window), dtype=torch.bool)
            want[:, index == 0] = True  # the clip's frame 0: every camera starts there
            assert torch.equal(call["pseudo"], want)  # circle rig: the views differ at a window's first frame
        calls_per_window.append(n)
    assert next(calls, None) is None


def _views_of(call, latents, index):
    """Which view each row of a call holds (its latents are that view's window frames)."""
    views = []
    for row in call["x"]:
        matches = [v for v in range(latents.shape[0]) if torch.equal(row, latents[v][:, index])]
        assert len(matches) == 1
        views.append(matches[0])
    return views


def test_pseudo_lines_on_a_window_start_where_the_cameras_coincide():
    F_rows = torch.randn(2, 4, 3, 3)
    F_rows[1, 0] = 0.0  # row 1's cameras coincide at the window's first frame
    assert pseudo_frames((5, 6, 7, 8), F_rows).tolist() == [[False] * 4, [True, False, False, False]]
    assert pseudo_frames((9, 0, 1, 2), F_rows)[:, 1].tolist() == [True, True]


def test_one_window_holding_the_clip_is_the_path_without_windows():
    rig, cond, uncond, latents, entity = _job(frames=12, regional=True)
    plucker, fundamentals = camera_inputs(rig)
    run = dict(guidance_scale=4.0, strategy="random", seed=3, max_batch=4, regional=entity)
    scheduler = DDIMScheduler(num_inference_steps=3)
    plain = sample_multiview(Recorder(), latents, cond, uncond, plucker, fundamentals, scheduler, **run)
    for options in (ContextOptions(L, 4), ContextOptions(12, 4, "looped_uniform", freenoise=True)):
        windowed = sample_multiview(Recorder(), latents, cond, uncond, None, fundamentals, scheduler, context=options,
                                    cameras=WindowCameras.from_rig(rig), **run)
        assert torch.equal(windowed, plain)


def test_windows_need_the_cameras():
    rig, cond, uncond, latents, _ = _job(frames=20)
    plucker, fundamentals = camera_inputs(rig)
    denoiser = CollaborativeDenoiser(Recorder(), cond, uncond, plucker, fundamentals, PairingPlan(3), 4.0,
                                     context=ContextOptions(L, 4))
    with pytest.raises(ValueError, match="context windows need the cameras"):
        with denoiser.session(latents):
            pass


def test_the_network_draws_pseudo_lines_where_it_is_told(tmp_path):
    """``pseudo_frames`` = frame 0 of every row is the default exactly; none at all uses F's lines there."""
    from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files

    model = load_cvd_model(**write_tiny_cvd_files(tmp_path, seed=0), dtype="fp32", device="cpu")
    g = torch.Generator().manual_seed(0)
    frames, size = 2, 64
    x = torch.randn(2, 4, frames, size // 8, size // 8, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    plucker = torch.randn(2, 6, frames, size, size, generator=g)
    rig = make_preset_rig("circle", 2, 3, size, size)
    f = torch.stack([pair_fundamentals(rig, 0, 1)[1:], pair_fundamentals(rig, 1, 0)[1:]]).float()  # F != 0 at 0
    args = (x, torch.tensor(500), text, plucker, f, torch.tensor([1, 0]))
    default = model.predict_noise(*args)
    first = torch.zeros(2, frames, dtype=torch.bool)
    first[:, 0] = True
    assert torch.equal(model.predict_noise(*args, pseudo_frames=first), default)
    assert not torch.allclose(model.predict_noise(*args, pseudo_frames=torch.zeros_like(first)), default)
    with pytest.raises(ValueError, match=r"pseudo_frames must be \[B=2, F=2\] booleans"):
        model.predict_noise(*args, pseudo_frames=torch.zeros(2, 3, dtype=torch.bool))
