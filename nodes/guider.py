"""Nodes for ComfyUI's own sampling (SamplerCustomAdvanced): the multi-view GUIDER, CVD's SIGMAS, the pack's
per-view NOISE and an empty 5-D LATENT. How they fit together: docs/sampling.md, "Use ComfyUI's samplers".
"""

from __future__ import annotations

import torch

from cvd_core.parallel.devices import DeviceSpecError, parse_devices
from cvd_core.sampling import STRATEGIES, initial_noise
from cvd_core.sampling.noise import context_noise

from . import _latent
from ._comfy import NodeInputError, cancel_only_progress, progress_bar, sd15_latent_preview
from ._core_sampling import (PatcherView, core_sample, core_schedule, core_scheduler_names, cvd_ddim_sigmas,
                             cvd_model_sampling, has_guider_api)
from ._schema import Input, NodeSchema, Output, Result
from .camera import CAMERAS
from .cvd_model import CVD_MODEL
from .context import CONTEXT
from .sampling import SamplingJob, _view_shape, prepare_job, video_latent
from .scene import LAYOUT

CATEGORY = "CVD/sampling"
CVD_DDIM = "cvd_ddim"


def _guider_api_rule(cfg):
    if not has_guider_api():
        return ("cfg: this ComfyUI has no GUIDER sampling (SamplerCustomAdvanced, ComfyUI 2024-04 and newer), so "
                "CVD Multi-View Guider cannot run here; use CVD Multi-View Sampler with its sampler input, got cfg "
                f"{cfg}")
    return None


def _noise_api_rule(noise_seed):
    if not has_guider_api():
        return ("noise_seed: this ComfyUI has no NOISE sampling (SamplerCustomAdvanced, ComfyUI 2024-04 and newer); "
                f"use CVD Multi-View Sampler's seed instead, got noise_seed {noise_seed}")
    return None


# ------------------------------------------------------------------------------ the guider

class MultiViewGuider:
    """A core GUIDER over the collaborative denoiser: ``sample`` loads the CVD model through ComfyUI's model
    management (as CVD Multi-View Sampler does) and runs the core sampler on it; the pairing is seeded by the
    seed core hands over (the NOISE's seed)."""

    def __init__(self, job: SamplingJob):
        self.job = job
        self.model_patcher = PatcherView(job.cvd_model, cvd_model_sampling())
        self.model_options = self.model_patcher.model_options
        self.inner_model = self.model_patcher.model
        self.cfg = job.cfg
        self._active = None

    def set_cfg(self, cfg: float) -> None:
        self.cfg = self.job.cfg = float(cfg)

    def set_conds(self, positive, negative) -> None:
        raise NodeInputError("CVD Multi-View Guider takes its prompts as node inputs (positive, negative); it cannot "
                             "be given core conds")

    def __call__(self, *args, **kwargs):
        return self.predict_noise(*args, **kwargs)

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        """The denoised x0 at sigma ``timestep`` (core's naming), during ``sample`` only."""
        if self._active is None:
            raise RuntimeError("CVD Multi-View Guider: predict_noise runs only inside sample (the model is loaded there)")
        return self._active(x, timestep, model_options=model_options or {}, seed=seed)

    def _checked_latent(self, latent_image: torch.Tensor) -> torch.Tensor:
        want = self.job.latent_shape
        if latent_image.dim() != 5 or tuple(latent_image.shape) != tuple(want):
            raise NodeInputError(f"latent_image must be a 5-D video latent {list(want)} [views, 4, frames, h, w] "
                                 f"matching the cameras (CVD Empty Latent), got {list(latent_image.shape)}")
        return latent_image

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        latent_image = self._checked_latent(latent_image)
        if denoise_mask is not None:  # SamplerCustomAdvanced hands over the latent's noise_mask as it is
            try:
                denoise_mask = _latent.resize_noise_mask(denoise_mask, latent_image.shape)
            except _latent.MaskShapeError as exc:
                raise NodeInputError(f"latent_image's {exc}") from None
        if tuple(noise.shape) != tuple(latent_image.shape):
            raise NodeInputError(f"noise must match the latent {list(latent_image.shape)}, got {list(noise.shape)}")
        seed = int(seed or 0)
        noise = context_noise(noise, seed, self.job.context)  # FreeNoise's reuse when the context asks for it
        progress = progress_bar()
        preview = sd15_latent_preview(progress)
        progress.start(int(sigmas.shape[-1]) - 1)

        def step_done(step, x0, x, total_steps):
            if callback is not None:
                callback(step, x0, x, total_steps)  # core's bar, and the denoised output of SamplerCustomAdvanced
            if preview is not None:
                progress.done = step + 1
                preview(step, total_steps, x0[0])
            progress.check()

        def body(denoiser):
            return core_sample(denoiser, sampler, sigmas, noise, latent_image, self.job.cvd_model,
                               denoise_mask=denoise_mask, callback=step_done, disable_pbar=disable_pbar, seed=seed,
                               on_model=self._bind)

        try:
            return self.job.run(seed, cancel_only_progress(progress), body)
        finally:
            self._active = None

    def _bind(self, model) -> None:
        self._active = model


def _run_guider(cvd_model, cameras, positive, negative, cfg, strategy, max_batch, devices="", layout=None,
                entity_prompts=None, context=None):
    try:
        parse_devices(devices or "")
    except DeviceSpecError as exc:
        raise NodeInputError(f"devices: {exc}") from None
    return Result((MultiViewGuider(prepare_job(cvd_model, cameras, positive, negative, cfg, strategy, max_batch,
                                               layout, entity_prompts, devices, context=context)),))


GUIDER = NodeSchema(
    node_id="CVD_MultiViewGuider",
    display_name="CVD Multi-View Guider",
    category=CATEGORY,
    description=("CVD's collaborative denoiser as a GUIDER for SamplerCustomAdvanced: any core sampler and scheduler "
                 "denoises all views together (view pairs, CFG and regional prompts as in CVD Multi-View Sampler). "
                 "No recurrence: core samplers step once per sigma. A latent's noise_mask is applied by core's own "
                 "inpainting (docs/masks.md)."),
    inputs=[
        Input("cvd_model", CVD_MODEL, "The backbone from CVD Load Model (optionally with an MCM LoRA merged)."),
        Input("cameras", CAMERAS, "The camera rig: its views, frames and size must match the latent."),
        Input("positive", "CONDITIONING", "Prompt (SD1.5 CLIP): one for all views, or one per view in view order."),
        Input("negative", "CONDITIONING", "Negative prompt (one, or one per view). Unused when cfg is 1."),
        Input("cfg", "FLOAT", "Classifier-free guidance scale (CVD: 8.5; 1.0 with MCM).", default=8.5, min=1.0,
              max=30.0, step=0.1),
        Input("strategy", "COMBO", "How views are paired each step (random: CVD's default; all_pairs; fixed).",
              default="random", options=list(STRATEGIES)),
        Input("max_batch", "INT", "Rows (view x guidance branch) per denoiser call; 0 = auto from free memory.",
              default=0, min=0, max=256),
        Input("devices", "STRING", "Where each step's rows run: empty = ComfyUI's device; cuda:0,cuda:1, all, cpu,cpu, "
              "workers (docs/scaling.md).", default="", optional=True),
        Input("layout", LAYOUT, "Optional scene layout (CVD Project Layout) placing entity_prompts. Needs "
              "entity_prompts.", optional=True),
        Input("entity_prompts", "CONDITIONING", "Optional prompts, one per layout entity in its order. Needs layout.",
              optional=True),
        Input("context", CONTEXT, ("Optional context windows (CVD Context Options) for videos up to 512 frames; "
                                   "FreeNoise applies to the NOISE."), optional=True),
    ],
    outputs=[Output("GUIDER", "guider", "For SamplerCustomAdvanced (with CVD Noise, CVD Scheduler, CVD Empty Latent).")],
    run=_run_guider,
    rules=[_guider_api_rule],
)


# ------------------------------------------------------------------------------ sigmas, noise, latent

def scheduler_options():
    return [CVD_DDIM] + [name for name in core_scheduler_names() if name != CVD_DDIM]


def _run_scheduler(scheduler, steps, denoise):
    if scheduler == CVD_DDIM:
        try:
            return Result((cvd_ddim_sigmas(steps, denoise),))
        except ValueError as exc:
            raise NodeInputError(str(exc)) from None
    return Result((core_schedule(scheduler, steps, denoise),))


SCHEDULER = NodeSchema(
    node_id="CVD_Scheduler",
    display_name="CVD Scheduler",
    category=CATEGORY,
    description=("SIGMAS over CVD's DDPM schedule (linear betas 0.00085-0.012, eps prediction) for any core sampler: "
                 "cvd_ddim (the official CVD DDIM timesteps) or any scheduler this ComfyUI offers."),
    inputs=[
        Input("scheduler", "COMBO", "cvd_ddim: CVD's DDIM timesteps (use euler or ddim); else a core scheduler.",
              default=CVD_DDIM, options=scheduler_options),
        Input("steps", "INT", "Sampling steps (CVD: 25 with cvd_ddim).", default=25, min=1, max=500),
        Input("denoise", "FLOAT", "Fraction of the schedule to run (below 1: from a start latent).", default=1.0,
              min=0.01, max=1.0, step=0.01),
    ],
    outputs=[Output("SIGMAS", "sigmas", "Noise levels, high to low, ending at 0.")],
    run=_run_scheduler,
)


class MultiViewNoise:
    """A core NOISE with the pack's per-view seeded streams: view v's noise never depends on the others."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def generate_noise(self, input_latent) -> torch.Tensor:
        samples = input_latent["samples"]
        if samples.dim() != 5:
            raise NodeInputError(f"CVD Noise needs a 5-D video latent [views, 4, frames, h, w] (CVD Empty Latent), "
                                 f"got {list(samples.shape)}")
        return initial_noise(self.seed, *samples.shape)


NOISE = NodeSchema(
    node_id="CVD_Noise",
    display_name="CVD Noise",
    category=CATEGORY,
    description=("The pack's per-view seeded start noise as a NOISE for SamplerCustomAdvanced: the same seed gives "
                 "CVD Multi-View Sampler's noise and pairing."),
    inputs=[Input("noise_seed", "INT", "Seed of the start noise and of the random view pairing.", default=0, min=0,
                  max=2**63 - 1)],
    outputs=[Output("NOISE", "noise", "Per-view noise streams.")],
    run=lambda noise_seed: Result((MultiViewNoise(noise_seed),)),  # the noise is drawn when the sampler runs
    rules=[_noise_api_rule],
)


def _run_empty_latent(cameras):
    try:
        rig = cameras.as_rig()
    except Exception as exc:
        raise NodeInputError(f"cameras must be a CVD_CAMERAS rig from a CVD camera node: {exc}") from None
    return Result((video_latent(torch.zeros((rig.n_views,) + _view_shape(rig)), rig),))


EMPTY_LATENT = NodeSchema(
    node_id="CVD_EmptyLatent",
    display_name="CVD Empty Latent",
    category=CATEGORY,
    description="An empty 5-D video LATENT [views, 4, frames, height/8, width/8] sized from the cameras.",
    inputs=[Input("cameras", CAMERAS, "The camera rig: its views, frames and image size give the latent's shape.")],
    outputs=[Output("LATENT", "latent", "Zeros, one latent frame per video frame.")],
    run=_run_empty_latent,
)

SCHEMAS = [GUIDER, SCHEDULER, NOISE, EMPTY_LATENT]
