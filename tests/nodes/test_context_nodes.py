"""CVD Context Options and the sampler's 'context' input, called directly (no server) with the tiny CVD model."""

import pytest
import torch

from cvd_core.camera import make_preset_rig
from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from cvd_core.sampling import initial_noise
from cvd_core.sampling.context import ContextOptions
from cvd_core.sampling.noise import context_noise
from nodes._comfy import NodeInputError
from nodes._schema import run_checked
from nodes.context import CONTEXT_OPTIONS
from nodes.sampling import SAMPLER, _start_latent, make_scheduler, memory_need, model_max_frames, prepare_job

TEXT, SIZE = 32, 64


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return load_cvd_model(**write_tiny_cvd_files(tmp_path_factory.mktemp("cvd"), seed=0), dtype="fp32", device="cpu")


def _cond(seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, TEXT, generator=g), {"pooled_output": None}]]


def _context(**overrides):
    values = dict(context_length=8, context_overlap=2, schedule="standard_static", fuse="pyramid", freenoise=False)
    values.update(overrides)
    return run_checked(CONTEXT_OPTIONS, values).values[0]


def _sample(model, frames, context=None, **overrides):
    kwargs = dict(cvd_model=model, cameras=make_preset_rig("circle", 2, frames, SIZE, SIZE), positive=_cond(1),
                  negative=_cond(2), seed=7, steps=1, cfg=1.0, scheduler="ddim", strategy="random", recurrence=1,
                  max_batch=0, denoise=1.0)
    if context is not None:
        kwargs["context"] = context
    kwargs.update(overrides)
    return run_checked(SAMPLER, kwargs).values[0]["samples"]


def test_the_node_bundles_the_knobs_and_refuses_bad_combinations():
    assert _context(freenoise=True, schedule="looped_uniform", closed_loop=True, context_stride=2) == \
        ContextOptions(8, 2, "looped_uniform", "pyramid", 2, True, True)
    for overrides, message in [(dict(context_overlap=8), r"context_overlap must be below context_length \(8\)"),
                               (dict(context_stride=2), "context_stride must be 1 with schedule standard_static"),
                               (dict(closed_loop=True), "closed_loop needs schedule looped_uniform"),
                               (dict(context_length=33), "context_length must be an integer from 1 to 32, got 33")]:
        with pytest.raises(NodeInputError, match=message):
            _context(**overrides)


def test_windows_lift_the_frame_rule_and_the_rule_stays_without_them(tiny_model):
    limit = model_max_frames(tiny_model)
    with pytest.raises(NodeInputError, match=rf"frames must be at most {limit} \(the motion modules.*got {limit + 4}"
                                             r".*connect CVD Context Options"):
        _sample(tiny_model, limit + 4)
    out = _sample(tiny_model, limit + 4, _context())
    assert out.shape[2] == limit + 4 and bool(torch.isfinite(out).all())
    with pytest.raises(NodeInputError, match=rf"context_length must be at most {limit} \(the motion modules"):
        _sample(tiny_model, limit + 4, ContextOptions(limit + 1, 2))
    with pytest.raises(NodeInputError, match="frames must be at most 512 with context windows, got 513"):
        prepare_job(tiny_model, make_preset_rig("circle", 1, 513, SIZE, SIZE), _cond(1), None, 1.0, "random", 0,
                    context=_context())


def test_one_window_holding_the_clip_is_the_sampler_without_windows(tiny_model):
    assert torch.equal(_sample(tiny_model, 6, _context()), _sample(tiny_model, 6))


def test_memory_is_sized_by_one_window_and_the_job_holds_no_full_length_maps(tiny_model):
    rig = make_preset_rig("circle", 2, 40, SIZE, SIZE)
    job = prepare_job(tiny_model, rig, _cond(1), None, 1.0, "random", 0, context=_context())
    assert job.plucker is None and job.cameras is not None
    short = make_preset_rig("circle", 2, 8, SIZE, SIZE)
    assert memory_need(rig, job.rows, 0, torch.float16, job.context) == memory_need(short, job.rows, 0, torch.float16)


def test_freenoise_reaches_the_start_latent(tiny_model):
    rig = make_preset_rig("circle", 2, 20, SIZE, SIZE)
    sched = make_scheduler("ddim", 1, 1.0)
    drawn = initial_noise(7, 2, 4, 20, SIZE // 8, SIZE // 8)
    assert torch.equal(_start_latent(None, rig, 7, sched, _context())[0], drawn)
    on = _context(freenoise=True)
    assert torch.equal(_start_latent(None, rig, 7, sched, on)[0], context_noise(drawn, 7, on))
    assert not torch.equal(_start_latent(None, rig, 7, sched, on)[0], drawn)
