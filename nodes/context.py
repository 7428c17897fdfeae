"""CVD Context Options: temporal context windows (and FreeNoise) for long multi-view videos.

The node only bundles the knobs (``cvd_core.sampling.context.ContextOptions``); CVD Multi-View Sampler
and CVD Multi-View Guider take it on their optional ``context`` input and the collaborative denoiser
runs every step window by window (docs/long_videos.md).
"""

from __future__ import annotations

from cvd_core.sampling.context import FUSE, SCHEDULES, ContextOptions

from ._schema import Input, NodeSchema, Output, Result

CATEGORY = "CVD/sampling"
CONTEXT = "CVD_CONTEXT"
MAX_CONTEXT = 32  # AnimateDiff v3's position encoding; the sampler also checks the loaded model's


def _overlap_rule(context_length, context_overlap):
    if context_overlap >= context_length:
        return (f"context_overlap must be below context_length ({context_length}): windows that share all their "
                f"frames never move on, got {context_overlap}")
    return None


def _stride_rule(schedule, context_stride):
    if context_stride > 1 and schedule not in ("standard_uniform", "looped_uniform"):
        return (f"context_stride must be 1 with schedule {schedule} (strided windows belong to the uniform "
                f"schedules), got {context_stride}")
    return None


def _closed_loop_rule(schedule, closed_loop):
    if closed_loop and schedule != "looped_uniform":
        return f"closed_loop needs schedule looped_uniform (only its windows wrap around), got schedule {schedule}"
    return None


def _run_context(context_length, context_overlap, schedule, fuse, freenoise, context_stride=1, closed_loop=False):
    return Result((ContextOptions(int(context_length), int(context_overlap), schedule, fuse, int(context_stride),
                                  bool(closed_loop), bool(freenoise)),))


CONTEXT_OPTIONS = NodeSchema(
    node_id="CVD_ContextOptions",
    display_name="CVD Context Options",
    category=CATEGORY,
    description=("Context windows for videos up to 512 frames: every step denoises windows of context_length frames "
                 "(the same frames of every view, all pairs) and blends them where they overlap. For the 'context' "
                 "input of CVD Multi-View Sampler or Guider."),
    inputs=[
        Input("context_length", "INT", "Frames per window (CVD is trained on 16); at most the motion modules' "
              "position-encoding length (32).", default=16, min=1, max=MAX_CONTEXT),
        Input("context_overlap", "INT", "Frames two neighbouring windows share; more = smoother across windows and "
              "more windows per step.", default=4, min=0, max=MAX_CONTEXT - 1),
        Input("schedule", "COMBO", ("standard_static: fixed; standard_uniform: offsets move each step; "
                                    "looped_uniform: on a loop; batched: no overlap."), default="standard_static", options=list(SCHEDULES)),
        Input("fuse", "COMBO", ("Per-frame blend of overlapping windows: pyramid (trust centres), flat (mean), "
                                "overlap_linear (ramps)."), default="pyramid",
              options=list(FUSE)),
        Input("freenoise", "BOOLEAN", ("FreeNoise: later frames reuse earlier start noise, shuffled per view (more "
                                       "coherent, less new content)."),
              default=False),
        Input("context_stride", "INT", ("Uniform schedules: also windows of every 2nd ... 2^(stride-1)-th frame "
                                        "(long-range motion). 1 = off."), default=1, min=1, max=6, optional=True),
        Input("closed_loop", "BOOLEAN", "looped_uniform only: add the windows that join the last frames to the first, "
              "so the video loops.", default=False, optional=True),
    ],
    outputs=[Output(CONTEXT, "context", "Context windows for CVD Multi-View Sampler / Guider.")],
    run=_run_context,
    rules=[_overlap_rule, _stride_rule, _closed_loop_rule],
)

SCHEMAS = [CONTEXT_OPTIONS]
