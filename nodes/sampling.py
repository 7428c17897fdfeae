"""The collaborative multi-view sampler node: N camera-controlled videos denoised together by CVD.

Inputs come from the pack's other nodes and from ComfyUI's core: a ``CVD_MODEL`` (CVD Load
Model), a ``CVD_CAMERAS`` rig (its views, frames and image size define the job), text
CONDITIONING from the core ``CLIPTextEncode`` (SD1.5's CLIP-L, ``[1, 77, 768]``) and optionally
SIGMAS from CVD MCM Scheduler. The output is a 5-D video LATENT ``[V, 4, T, h, w]`` in the UNet's
scaled space with one latent frame per video frame (AnimateDiff latents are per frame, unlike
CV-VAE's 4x temporal latents): decode it with CVD Latent Frames To Image Latents -> VAE Decode.

Per-view prompts: ``positive`` (and ``negative``) hold either one conditioning for every view or
exactly one per view, in view order: chain core ``Conditioning (Combine)`` nodes prompt by prompt
(combine(combine(view0, view1), view2) lists view0, view1, view2), or feed one entry whose tensor
has a batch of V.

Regional prompts (scene director): connect ``layout`` (CVD Project Layout) and ``entity_prompts``
(one CONDITIONING per entity, in the layout's entity order, chained with Conditioning Combine).
Each entity's prompt steers the conditional noise prediction inside its projected mask in every
view and frame (masked noise-prediction blending, see ``cvd_core.sampling.denoiser``); the
masks are area-resized to the latent size. Each entity adds one set of conditional rows per step.

Start latents and masks (docs/masks.md): a ``latent`` with a ``noise_mask`` (1 = regenerate, 0 = keep; CVD Start
From Image, CVD Video As View, CVD Mask From Layout, core's Set Latent Noise Mask) is kept exactly where the mask is
0, in the pack's loop (``cvd_core.sampling.inpaint``) and through a core sampler (core's own mask handling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch

from cvd_core.camera import CameraError, pair_fundamentals, plucker_embedding
from cvd_core.guards import require_finite
from cvd_core.mcm import MCMScheduler
from cvd_core.sampling import (DDIMScheduler, STRATEGIES, CollaborativeDenoiser, KnownRegion, PairingPlan,
                               initial_noise, multiview_loop)
from cvd_core.sampling.batching import estimate_max_batch, estimate_row_bytes, min_rows_per_call, rows_per_iteration
from cvd_core.sampling.context import ContextOptions
from cvd_core.sampling.noise import context_noise
from cvd_core.sampling.window_inputs import WindowCameras

from . import _latent
from ._comfy import NodeInputError, cancel_only_progress, progress_bar, sd15_latent_preview
from ._managed import computing, free_bytes, module_of, out_of_memory_types
from ._scale_out import executor_for
from ._schema import Input, NodeSchema, Output, Result
from .camera import CAMERAS
from .context import CONTEXT
from .cvd_model import CVD_MODEL
from .scene import LAYOUT

CATEGORY = "CVD/sampling"
SCHEDULERS = ["ddim", "mcm"]
LATENT_CHANNELS = 4
SD_LATENT_SCALE = _latent.SD_LATENT_SCALE
MAX_WINDOWED_FRAMES = 512  # with context windows: memory follows the window, time the length


# ------------------------------------------------------------------------------ conditioning

def _conditioning_rows(conditioning, name: str) -> List[torch.Tensor]:
    """ComfyUI CONDITIONING (a list of ``[tensor [B, tokens, D], dict]``) -> one ``[tokens, D]`` per row."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise NodeInputError(f"{name} must be a CONDITIONING from CLIP Text Encode (a non-empty list), "
                             f"got {type(conditioning).__name__}")
    rows = []
    for index, entry in enumerate(conditioning):
        tensor = entry[0] if isinstance(entry, (list, tuple)) else entry
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
            raise NodeInputError(f"{name}[{index}] must hold a [batch, tokens, width] text embedding, got "
                                 f"{getattr(tensor, 'shape', type(tensor).__name__)}")
        require_finite(tensor, f"{name}[{index}]", hint="encode the prompt again")
        rows.extend(tensor.float().cpu().unbind(0))
    return rows


def _per_view_text(conditioning, name: str, views: int, width: int) -> List[torch.Tensor]:
    """One ``[tokens, D]`` embedding per view: one entry for all views, or exactly one per view."""
    rows = _conditioning_rows(conditioning, name)
    for row in rows:
        if row.shape[-1] != width:
            raise NodeInputError(f"{name} has text width {row.shape[-1]} but the CVD model's cross-attention takes "
                                 f"width {width} (SD1.5 uses CLIP-L, 768): load the SD1.5 CLIP "
                                 "(clip_l.safetensors) for CLIP Text Encode")
    if len(rows) == 1:
        return rows * views
    if len(rows) != views:
        raise NodeInputError(f"{name} holds {len(rows)} conditionings but the cameras have {views} views: give one "
                             "for all views, or exactly one per view in view order (Conditioning Combine)")
    return rows


def _stack_tokens(rows: List[torch.Tensor]) -> torch.Tensor:
    """Stack embeddings of different token counts (long prompts are 77·k tokens) as ComfyUI does:
    each is repeated up to the least common multiple of the lengths."""
    target = 1
    for row in rows:
        target = target * row.shape[0] // math.gcd(target, row.shape[0])
    return torch.stack([row.repeat(target // row.shape[0], 1) for row in rows])


def text_embeddings(positive, negative, views: int, width: int, use_cfg: bool):
    """``(cond [V, L, D], uncond [V, L, D] or None)`` with one token length L for both."""
    cond_rows = _per_view_text(positive, "positive", views, width)
    uncond_rows = _per_view_text(negative, "negative", views, width) if use_cfg else []
    stacked = _stack_tokens(cond_rows + uncond_rows)
    return stacked[:views], (stacked[views:] if use_cfg else None)


# ------------------------------------------------------------------------------ regional prompts

def _layout_masks(layout, rig) -> torch.Tensor:
    """The layout's masks as ``[E, V, 1, F, h, w]`` at latent size (area-resized from the image size: soft
    at the edges, so an entity covering part of a latent pixel steers it partly)."""
    try:
        views, frames, width, height = int(layout.views), int(layout.frames), int(layout.width), int(layout.height)
        entity_ids, masks = list(layout.entity_ids), layout.masks
    except (AttributeError, TypeError, ValueError):
        raise NodeInputError(f"layout must be a CVD_LAYOUT from CVD Project Layout, got {type(layout).__name__}") \
            from None
    mismatches = [f"{name} {got} vs {want}" for name, got, want in
                  (("views", views, rig.n_views), ("frames", frames, rig.n_frames)) if got != want]
    if (width, height) not in ((rig.width, rig.height), (rig.width // 8, rig.height // 8)):
        mismatches.append(f"size {width}x{height} vs {rig.width}x{rig.height} (or the latent size "
                          f"{rig.width // 8}x{rig.height // 8})")
    if mismatches:
        raise NodeInputError("layout must match the cameras (project it with the same rig; width/height 0, the "
                             f"cameras' size or the latent size): layout vs cameras differ in {', '.join(mismatches)}")
    h, w = rig.height // 8, rig.width // 8
    out = []
    for entity_id in entity_ids:
        mask = torch.as_tensor(masks[entity_id]).float().cpu()
        if tuple(mask.shape) != (views * frames, height, width):
            raise NodeInputError(f"layout mask of entity {entity_id!r} must be [{views * frames}, {height}, {width}] "
                                 f"(views x frames, height, width), got {list(mask.shape)}")
        small = torch.nn.functional.interpolate(mask.view(views * frames, 1, height, width),
                                                size=(h, w), mode="area")
        out.append(small.view(views, frames, 1, h, w).permute(0, 2, 1, 3, 4).clamp(0.0, 1.0))
    return torch.stack(out) if out else torch.zeros(0, views, 1, frames, h, w)


def regional_inputs(layout, entity_prompts, rig, width: int):
    """``[(text [1, L, D], mask [V, 1, F, h, w]), ...]`` for ``sample_multiview(regional=...)``, or None."""
    if layout is None and entity_prompts is None:
        return None
    masks = _layout_masks(layout, rig)
    rows = _conditioning_rows(entity_prompts, "entity_prompts")
    ids = list(layout.entity_ids)
    if len(rows) != len(ids):
        raise NodeInputError(f"entity_prompts holds {len(rows)} conditionings but the layout has {len(ids)} entities "
                             f"({', '.join(ids) or 'none'}): give exactly one per entity, in that order "
                             "(Conditioning Combine)")
    for row in rows:
        if row.shape[-1] != width:
            raise NodeInputError(f"entity_prompts has text width {row.shape[-1]} but the CVD model's cross-attention "
                                 f"takes width {width}: encode them with the same SD1.5 CLIP as positive")
    return [(row.unsqueeze(0), mask) for row, mask in zip(rows, masks)]


# ------------------------------------------------------------------------------ model and cameras

def model_text_width(cvd_model) -> int:
    return int(module_of(cvd_model).unet.unet.config.cross_attention_dim)


def model_max_frames(cvd_model) -> int:
    """Frames the motion modules' position encoding covers (32 for AnimateDiff v3)."""
    lengths = [int(m.pe.shape[1]) for m in module_of(cvd_model).modules()
               if isinstance(getattr(m, "pe", None), torch.Tensor)]
    return min(lengths) if lengths else 32


def _rig(cameras, cvd_model, context=None):
    try:
        rig = cameras.as_rig()
    except (AttributeError, CameraError) as exc:
        raise NodeInputError(f"cameras must be a CVD_CAMERAS rig from a CVD camera node: {exc}") from None
    max_frames = model_max_frames(cvd_model)
    if context is None and rig.n_frames > max_frames:
        raise NodeInputError(f"frames must be at most {max_frames} (the motion modules' position encoding length; "
                             f"CVD is trained on 16), got {rig.n_frames}; connect CVD Context Options for longer "
                             f"videos (up to {MAX_WINDOWED_FRAMES} frames)")
    if context is not None:
        _check_context(context, rig, max_frames)
    for name, size in (("width", rig.width), ("height", rig.height)):
        if size % 8:
            raise NodeInputError(f"{name} must be a multiple of 8 (latents are 1/8 of the image), got {size}")
    return rig


def _check_context(context, rig, max_frames: int) -> None:
    if not isinstance(context, ContextOptions):
        raise NodeInputError(f"context must be a CVD_CONTEXT from CVD Context Options, got {type(context).__name__}")
    if context.length > max_frames:
        raise NodeInputError(f"context_length must be at most {max_frames} (the motion modules' position encoding "
                             f"length), got {context.length}")
    if rig.n_frames > MAX_WINDOWED_FRAMES:
        raise NodeInputError(f"frames must be at most {MAX_WINDOWED_FRAMES} with context windows, got {rig.n_frames}")


def camera_inputs(rig, maps: bool = True):
    """Plücker maps ``[V, 6, F, H, W]`` (float32; None without ``maps``) and the F-matrix lookup
    ``F_of(i, j) -> [F, 3, 3]``."""
    plucker = None
    if maps:
        plucker = plucker_embedding(rig.K, rig.c2w, rig.height, rig.width)  # [V, F, 6, H, W]
        plucker = plucker.permute(0, 2, 1, 3, 4).to(torch.float32).contiguous()

    def fundamentals(i: int, j: int) -> torch.Tensor:
        return pair_fundamentals(rig, i, j).to(torch.float32)

    return plucker, fundamentals


# ------------------------------------------------------------------------------ schedule and start

def make_scheduler(scheduler: str, steps: int, denoise: float, sigmas=None):
    try:
        if sigmas is not None:
            values = [float(s) for s in torch.as_tensor(sigmas).flatten()]
            return MCMScheduler.from_sigmas(values)
        if scheduler == "mcm":
            return MCMScheduler(steps=steps, strength=denoise)
        if scheduler == "ddim":
            return DDIMScheduler(num_inference_steps=steps, denoise=denoise)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    raise NodeInputError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")


def _start_latent(latent, rig, seed: int, sched, context=None):
    """``(x_T, known)``: seeded noise (FreeNoise's reuse with the context's freenoise on), or the given latent noised
    to the first timestep (partial denoise; the clean latent is kept where its noise_mask is 0: ``known``, a
    ``KnownRegion`` or None)."""
    noise = context_noise(initial_noise(seed, rig.n_views, *_view_shape(rig)), seed, context)
    if latent is None:
        return noise, None
    clean = _checked_start(latent, rig)
    mask = _checked_mask(latent, rig)
    return sched.add_noise(clean, noise, 0), (None if mask is None else KnownRegion(clean, mask, noise))


def _checked_start(latent, rig) -> torch.Tensor:
    """The start latent as float32 ``[V, 4, F, h, w]``, refused unless it matches the cameras."""
    shape = (rig.n_views,) + _view_shape(rig)
    samples = _latent.samples_of(latent)
    if samples.dim() != 5 or tuple(samples.shape) != shape:
        raise NodeInputError(f"latent must be a 5-D video latent {list(shape)} [views, 4, frames, height/8, width/8] "
                             f"matching the cameras, got {list(samples.shape)}")
    require_finite(samples, "latent", axes=("view", "channel", "frame"))
    if _latent.temporal_compression(latent) != 1:
        raise NodeInputError("latent has temporally compressed frames (CV-VAE); the CVD sampler needs one latent "
                             "frame per video frame (encode the frames with VAE Encode + Image Latents To Latent Frames)")
    return samples.float().cpu()


def _checked_mask(latent, rig) -> Optional[torch.Tensor]:
    """The latent's noise_mask as ``[V, 1, F, h, w]`` (None without one), refused unless it fits the cameras."""
    mask = _latent.noise_mask_of(latent)
    if mask is None:
        return None
    try:
        return _latent.resize_noise_mask(mask, (rig.n_views,) + _view_shape(rig))
    except _latent.MaskShapeError as exc:
        raise NodeInputError(f"latent's {exc}") from None


def _view_shape(rig):
    return (LATENT_CHANNELS, rig.n_frames, rig.height // 8, rig.width // 8)


def rows_needed(rig, strategy: str, seed: int, use_cfg: bool, entities: int = 0) -> int:
    """Denoiser rows of one iteration: all its view pairs and guidance branches in one call (the
    pairing plan's pair count is the same at every step)."""
    pairs = PairingPlan(rig.n_views, strategy, seed).pairs_per_call()
    return rows_per_iteration(pairs, (2 if use_cfg else 1) + entities)


def _row_shape(rig, context=None):
    """One denoiser row's latent ``[C, frames, h, w]``: a context window's frames, or the whole clip."""
    channels, frames, h, w = _view_shape(rig)
    if context is not None and context.active(frames):
        frames = context.length
    return channels, frames, h, w


def memory_need(rig, rows: int, max_batch: int, dtype, context=None) -> tuple:
    """``(bytes wanted, least bytes)`` of activations besides the weights: ``max_batch`` rows per call
    (0 = all ``rows`` at once) and the smallest call that works (one view pair, one branch); with context
    windows a row holds one window's frames."""
    per_row = estimate_row_bytes(_row_shape(rig, context), dtype)
    wanted = rows if max_batch == 0 else min(max_batch, rows)
    return per_row * wanted, per_row * min_rows_per_call(rig.n_views)


def _auto_max_batch(rig, rows: int, model, executor=None, context=None) -> Optional[int]:
    """Rows per denoiser call that fit into what ComfyUI reports free once the model is loaded (and
    other models offloaded to make room); None outside ComfyUI (the core then measures itself).
    With several devices every call must fit the tightest one (the split gives each about the same rows)."""
    devices = [d.device for d in executor.denoisers] if executor is not None else [model.device]
    free = [free_bytes(device) for device in devices]
    if any(f is None for f in free):
        return None
    return min(estimate_max_batch(_row_shape(rig, context), f, rows, rig.n_views, model.dtype) for f in free)


def _out_of_memory_message(device, max_batch, rows: int, error: str) -> str:
    return (f"CVD sampling ran out of memory on {device} with {max_batch or rows} of {rows} denoiser rows per call "
            f"({error}). Lower max_batch (2 is the least), use dtype fp16/bf16, fewer views, frames or pixels, or "
            "start ComfyUI with --lowvram so the model streams from system RAM")


# ------------------------------------------------------------------------------ the node

@dataclass
class SamplingJob:
    """One collaborative sampling run's inputs, checked and laid out; ``run`` loads the model and calls
    a loop (the pack's ``multiview_loop`` or a core sampler) on the collaborative denoiser."""

    cvd_model: object
    rig: object
    cond: torch.Tensor
    uncond: Optional[torch.Tensor]
    regional: Optional[list]
    plucker: torch.Tensor
    fundamentals: object
    cfg: float
    strategy: str
    max_batch: int
    devices: str
    rows: int
    context: Optional[ContextOptions] = None
    cameras: Optional[WindowCameras] = None

    @property
    def latent_shape(self):
        return (self.rig.n_views,) + _view_shape(self.rig)

    def run(self, seed: int, progress, body):
        """``body(denoiser)`` with the model loaded by ComfyUI; out of memory -> a message that says what to lower."""
        module = module_of(self.cvd_model)
        wanted, least = memory_need(self.rig, self.rows, self.max_batch, module.dtype, self.context)
        failure = None
        # ComfyUI loads the model (offloading others to make room for `wanted`), then max_batch = 0 is sized
        # from what it reports free.
        with computing(self.cvd_model, memory_required=wanted, minimum_memory=least) as model:
            executor = executor_for(self.cvd_model, model, self.devices)  # once loaded: replicas copy the weights
            max_batch = self.max_batch or _auto_max_batch(self.rig, self.rows, model, executor, self.context)
            try:
                denoiser = CollaborativeDenoiser(
                    model, self.cond, self.uncond, self.plucker, self.fundamentals if self.rig.n_views > 1 else None,
                    PairingPlan(self.rig.n_views, self.strategy, seed), self.cfg, max_batch, self.regional,
                    executor, progress, context=self.context, cameras=self.cameras)
                return body(denoiser)
            except ValueError as exc:
                raise NodeInputError(str(exc)) from None
            except out_of_memory_types() as exc:
                failure = (type(exc), _out_of_memory_message(model.device, max_batch, self.rows,
                                                             str(exc).splitlines()[0]))
        # Raised outside the except block (its traceback would keep the tensors alive), as the same type, so
        # ComfyUI still recognizes an out-of-memory error (it then unloads models and adds its own tips).
        raise failure[0](failure[1])


def prepare_job(cvd_model, cameras, positive, negative, cfg, strategy, max_batch, layout=None, entity_prompts=None,
                devices="", seed: int = 0, context=None) -> SamplingJob:
    module = module_of(cvd_model)
    rig = _rig(cameras, module, context)
    use_cfg = float(cfg) != 1.0
    cond, uncond = text_embeddings(positive, negative, rig.n_views, model_text_width(module), use_cfg)
    regional = regional_inputs(layout, entity_prompts, rig, model_text_width(module))
    windowed = context is not None and context.active(rig.n_frames)
    if windowed:  # each window builds its own maps: the full-length ones would grow with the length
        plucker, fundamentals = None, camera_inputs(rig, maps=False)[1]
    else:
        plucker, fundamentals = camera_inputs(rig)
    rows = rows_needed(rig, strategy, seed, use_cfg, len(regional or []))
    return SamplingJob(cvd_model, rig, cond, uncond, regional, plucker, fundamentals, float(cfg), strategy,
                       int(max_batch), devices or "", rows, context if windowed else None,
                       WindowCameras.from_rig(rig) if windowed else None)


def video_latent(samples: torch.Tensor, rig, base=None) -> dict:
    """The pack's 5-D LATENT dict (one latent frame per video frame, UNet-scaled); a copy of ``base`` (the start
    latent, as core's ``latent.copy()``: its noise_mask and other keys stay) when given."""
    return _latent.video_latent(samples, rig.n_frames, base=base if isinstance(base, dict) else None)


def _core_sampler_sigmas(sampler_sigmas, sched) -> torch.Tensor:
    from ._core_sampling import timesteps_to_sigmas

    if sampler_sigmas is not None:
        return torch.as_tensor(sampler_sigmas, dtype=torch.float32).flatten()
    return timesteps_to_sigmas(sched.timesteps)


def _run_sampler(cvd_model, cameras, positive, negative, seed, steps, cfg, scheduler, strategy, recurrence,
                 max_batch, denoise, latent=None, sigmas=None, layout=None, entity_prompts=None, devices="",
                 sampler=None, context=None, unique_id=None):
    job = prepare_job(cvd_model, cameras, positive, negative, cfg, strategy, max_batch, layout, entity_prompts,
                      devices, seed, context)
    progress = progress_bar(unique_id)
    if sampler is not None:
        return Result((video_latent(_run_core_sampler(job, sampler, sigmas, scheduler, steps, denoise, latent,
                                                      seed, progress), job.rig, latent),))
    sched = make_scheduler(scheduler, steps, denoise, sigmas)
    start, known = _start_latent(latent, job.rig, seed, sched, job.context)
    preview = sd15_latent_preview(progress)
    samples = job.run(seed, progress, lambda denoiser: multiview_loop(denoiser, start, sched, recurrence, seed,
                                                                       progress, preview, known))
    return Result((video_latent(samples, job.rig, latent),))


def _run_core_sampler(job: SamplingJob, sampler, sigmas, scheduler, steps, denoise, latent, seed, progress):
    """The node's steps through a core SAMPLER: on the connected sigmas, or on the node's DDIM/MCM timesteps."""
    from ._core_sampling import core_sample

    run_sigmas = _core_sampler_sigmas(sigmas, None if sigmas is not None else make_scheduler(scheduler, steps, denoise))
    noise = context_noise(initial_noise(seed, *job.latent_shape), seed, job.context)
    clean = torch.zeros(job.latent_shape) if latent is None else _checked_start(latent, job.rig)
    mask = None if latent is None else _checked_mask(latent, job.rig)
    steps_done = cancel_only_progress(progress)
    preview = sd15_latent_preview(progress)
    progress.start(len(run_sigmas) - 1)

    def callback(step, x0, x, total_steps):
        progress.advance(1)
        if preview is not None:
            preview(step, total_steps, x0[0])

    return job.run(seed, steps_done, lambda denoiser: core_sample(
        denoiser, sampler, run_sigmas, noise, clean, job.cvd_model, denoise_mask=mask, callback=callback, seed=seed))


def _mcm_steps_rule(steps, scheduler):
    if scheduler == "mcm" and steps > 8:
        return f"steps must be at most 8 with scheduler mcm (MCM is distilled for 1 to 8 steps; use ddim for more), " \
               f"got {steps}"
    return None


def _denoise_rule(denoise, latent):
    if latent is None and denoise < 1.0:
        return f"denoise must be 1 without a latent to start from (connect 'latent' for video-to-video), got {denoise}"
    return None


def _sigmas_rule(scheduler, sigmas, sampler):
    if sigmas is not None and scheduler != "mcm" and sampler is None:
        return (f"scheduler must be mcm when sigmas (from CVD MCM Scheduler) are connected (or disconnect sigmas "
                f"to use DDIM), got {scheduler!r}")
    return None


def _core_sampler_rule(sampler, recurrence):
    if sampler is not None and recurrence != 1:
        return (f"recurrence must be 1 when a core sampler is connected (re-noising between a step's iterations "
                f"is the pack's own loop; core samplers step once per sigma), got {recurrence}")
    return None


def _noise_mask_rule(latent, cameras):
    """A noise_mask that cannot fit the cameras' latent is refused before anything runs (shapes named)."""
    if not isinstance(latent, dict) or not hasattr(cameras, "as_rig"):
        return None  # links: checked again when the node runs, with the values
    try:
        rig = cameras.as_rig()
    except Exception:
        return None  # the sampler's own check names the camera problem
    return _latent.mask_problem(latent, (rig.n_views,) + _view_shape(rig))


def _regional_rule(layout, entity_prompts):
    if (layout is None) != (entity_prompts is None):
        missing = "layout" if layout is None else "entity_prompts"
        return (f"{missing} must be connected too: regional prompts need both layout and entity_prompts "
                "(or disconnect both)")
    return None


SAMPLER = NodeSchema(
    node_id="CVD_MultiViewSampler",
    display_name="CVD Multi-View Sampler",
    category=CATEGORY,
    description=("One video per camera of the rig, denoised together (CVD): each step pairs the views, runs each pair "
                 "with epipolar cross-view attention and averages. DDIM or MCM, or any core sampler on the sampler "
                 "input. Output: a 5-D LATENT; decode with CVD Latent Frames To Image Latents -> VAE Decode."),
    inputs=[
        Input("cvd_model", CVD_MODEL, "The backbone from CVD Load Model (optionally with an MCM LoRA merged)."),
        Input("cameras", CAMERAS, "The camera rig: views, frames (at most 32, or 512 with context; CVD is trained on 16) "
              "and image size."),
        Input("positive", "CONDITIONING", "Prompt (SD1.5 CLIP): one for all views, or one per view in view order."),
        Input("negative", "CONDITIONING", "Negative prompt (one, or one per view). Unused when cfg is 1 (MCM)."),
        Input("seed", "INT", "Seed of the start noise, the view pairing and the MCM re-noising; max_batch never "
              "changes the result.", default=0, min=0, max=2**63 - 1),
        Input("steps", "INT", "Denoising steps: 25 for DDIM (CVD's setting), 1-8 for MCM (4 recommended).",
              default=25, min=1, max=500),
        Input("cfg", "FLOAT", "Classifier-free guidance scale (CVD: 8.5). 1.0 with MCM, which also halves the work.",
              default=8.5, min=1.0, max=30.0, step=0.1),
        Input("scheduler", "COMBO", "ddim: CVD's DDIM. mcm: few-step consistency sampling (needs the MCM LoRA).",
              default="ddim", options=SCHEDULERS),
        Input("strategy", "COMBO", "View pairing per step: random (CVD's default), all_pairs (every pair), fixed.",
              default="random", options=list(STRATEGIES)),
        Input("recurrence", "INT", "Iterations per step with re-noising in between (CVD's recurrent denoising); "
              "1 = off.", default=1, min=1, max=10),
        Input("max_batch", "INT", "Rows (view x guidance branch) per denoiser call; 0 = auto. Lower it on out of "
              "memory.", default=0, min=0, max=256),
        Input("denoise", "FLOAT", "Fraction of the schedule to run; below 1 needs 'latent' (video-to-video).",
              default=1.0, min=0.01, max=1.0, step=0.01),
        Input("latent", "LATENT", "Optional 5-D start latent for denoise below 1; a noise_mask keeps it where 0 "
              "(docs/masks.md).", optional=True),
        Input("sigmas", "SIGMAS", "Optional schedule (CVD MCM Scheduler with mcm, or CVD Scheduler with a sampler).",
              optional=True),
        Input("layout", LAYOUT, "Optional scene layout (CVD Project Layout) placing entity_prompts. Needs "
              "entity_prompts.", optional=True),
        Input("entity_prompts", "CONDITIONING", "Optional prompts, one per layout entity in its order. Needs layout.",
              optional=True),
        Input("devices", "STRING", "Where each step's rows run: empty = ComfyUI's device; cuda:0,cuda:1, all, cpu,cpu, "
              "workers (docs/scaling.md).", default="", optional=True),
        Input("sampler", "SAMPLER", "Optional core sampler (KSampler Select): the steps run through it.",
              optional=True),
        Input("context", CONTEXT, "Optional context windows (CVD Context Options) for videos up to 512 frames.",
              optional=True),
    ],
    outputs=[Output("LATENT", "latent", "Video latents [views, 4, frames, h, w], UNet-scaled, one per video frame.")],
    run=_run_sampler,
    hidden=("unique_id",),
    rules=[_mcm_steps_rule, _denoise_rule, _sigmas_rule, _core_sampler_rule, _regional_rule, _noise_mask_rule],
)

SCHEMAS = [SAMPLER]
