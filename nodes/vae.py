"""CV-VAE nodes: load, encode video frames, decode latents, and convert between video latents
and SD image latents (the compatibility CV-VAE is about).

Latent conventions:
- ``CVD_CVVAEEncode`` returns a 5-D video LATENT ``samples [V, C, T', h, w]`` (V = views), *scaled*
  (z=4: ``z * 0.18215``; z=16: ``(z - 0.0609) * 1.5305``), the space diffusion UNets consume; the
  dict also records ``cvd_latent_scale``/``cvd_latent_shift`` and the original ``cvd_frames``.
- ComfyUI's own image LATENT (from ``VAEEncode``, read by ``VAEDecode``) is *unscaled*; the
  converter nodes remove or apply the scale so that CV-VAE latent frames decode with SD's VAE and
  SD image latents decode with CV-VAE.
"""

from __future__ import annotations

import torch

from cvd_core.cvvae import TilingConfig, decode_frames, encode_video, load_cvvae, memory_estimate, usable_bytes
from cvd_core.cvvae.tiling import MIN_TILE_PX
from cvd_core.dtypes import resolve_dtype
from cvd_core.guards import NonFiniteError, precision_hint, require_finite

from . import _latent
from ._comfy import NodeInputError, list_model_entries, progress_bar, register_model_folder, resolve_model_entry
from ._managed import computing, devices, free_bytes, manage, module_of
from ._schema import Input, NodeSchema, Output, Result

CATEGORY = "CVD/vae"
CVVAE = "CVD_CVVAE"
FOLDER = "cvvae"
EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
NOTHING_FOUND = "(no CV-VAE in models/cvvae)"
DOWNLOAD_HELP = ("Download CV-VAE from the Hugging Face repo AILab-CVC/CV-VAE and put the folder vae3d_v1-1 "
                 "(config.json + diffusion_pytorch_model.safetensors; or vae3d, or vae3d_sd3 for SD3 latents) "
                 "into ComfyUI/models/cvvae/, or a single .safetensors file there; then refresh.")
TILING_MODES = ["auto", "none", "manual", "official"]

register_model_folder(FOLDER, EXTENSIONS)


def cvvae_choices():
    return list_model_entries(FOLDER, EXTENSIONS) or [NOTHING_FOUND]


# ------------------------------------------------------------------------------ loader

def _run_loader(vae_name, dtype):
    if vae_name == NOTHING_FOUND:
        raise NodeInputError(f"no CV-VAE weights found. {DOWNLOAD_HELP}")
    path = resolve_model_entry(FOLDER, vae_name)
    # Weights wait on ComfyUI's VAE offload device; precision is picked for the device that computes.
    compute_device, offload_device = devices("cvvae")
    try:
        model = load_cvvae(path, dtype=resolve_dtype(dtype, compute_device), device=offload_device)
    except (ValueError, OSError, RuntimeError) as exc:
        raise NodeInputError(f"could not load CV-VAE {vae_name!r}: {exc}") from None
    return Result((manage(model, "cvvae"),))


LOADER = NodeSchema(
    node_id="CVD_CVVAELoader",
    display_name="CVD Load CV-VAE",
    category=CATEGORY,
    description=("Loads CV-VAE, a video VAE whose latents live in Stable Diffusion's latent space (4x temporal, "
                 "8x spatial compression), from the official files; the variant (z=4 for SD1.x/2.x, z=16 for SD3) "
                 "is detected. Put the folder vae3d_v1-1 from AILab-CVC/CV-VAE into models/cvvae/."),
    inputs=[
        Input("vae_name", "COMBO", "A CV-VAE folder (config.json + weights) or single file in models/cvvae/.",
              options=cvvae_choices),
        Input("dtype", "COMBO", "Precision. auto = fp32 on CPU, bf16 or fp16 on GPUs that support it. fp16 halves "
              "memory; fp32 is exact.", default="auto", options=["auto", "fp32", "fp16", "bf16"]),
    ],
    outputs=[Output(CVVAE, "cvvae", "The loaded CV-VAE.")],
    run=_run_loader,
)


# ------------------------------------------------------------------------------ encode / decode

TILING_INPUTS = [
    Input("tiling", "COMBO", "auto = tiles sized from free memory; none = whole video; manual = the knobs below; "
                             "official = the reference's.", default="auto", options=TILING_MODES),
    Input("tile_size", "INT", "Spatial tile edge in pixels (manual; a bound in auto); 0 = whole frame. Smaller "
                              "uses less memory.", default=0, min=0, max=4096, step=8,
          multiple_of=8),
    Input("tile_overlap", "FLOAT", "Fraction of a tile shared with its neighbour (blended). More overlap = fewer "
          "visible seams, more compute.", default=0.25, min=0.0, max=0.5, step=0.05),
    Input("temporal_chunk", "INT", "Pixel frames per temporal window (multiple of 4; manual, auto uses 16); 0 = "
                                   "whole video.", default=0, min=0, max=1024, step=4,
          multiple_of=4),
]


def _tile_size_rule(tile_size):
    if 0 < tile_size < MIN_TILE_PX:
        return f"tile_size must be 0 (whole frame) or at least {MIN_TILE_PX} pixels, got {tile_size}"
    return None


def _tiling(tiling, tile_size, tile_overlap, temporal_chunk) -> TilingConfig:
    manual_only = tiling in ("none", "official")
    try:
        return TilingConfig(mode=tiling, tile_size=None if manual_only else (tile_size or None),
                            tile_overlap=tile_overlap, temporal_chunk=None if manual_only else (temporal_chunk or None))
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None


def _frames_to_video(images: torch.Tensor, views: int) -> torch.Tensor:
    """ComfyUI IMAGE ``[V*T, H, W, 3]`` in [0,1] (view-major) -> ``[V, 3, T, H, W]`` in [-1,1]."""
    if images.shape[0] % views:
        raise NodeInputError(f"the image batch ({images.shape[0]} frames) must split evenly into views={views} "
                             "videos (view-major: all frames of view 0, then view 1, ...)")
    frames = images.shape[0] // views
    video = images.reshape(views, frames, *images.shape[1:]).permute(0, 4, 1, 2, 3)
    return torch.mul(video.float(), 2.0).sub_(1.0)  # one copy of the frames, not two


def _coded(cvvae, kind: str, src: torch.Tensor, config: TilingConfig, run):
    """``run(model, memory_budget)`` with the CV-VAE loaded by ComfyUI, which first makes room for the
    plan's estimated peak (offloading other models); ``auto`` tiles are then sized from what ComfyUI
    reports free."""
    vae = module_of(cvvae)
    want, least = memory_estimate(vae, src.shape, kind, config)
    with computing(cvvae, memory_required=want, minimum_memory=least) as model:
        free = free_bytes(model.device)
        return run(model, None if free is None else usable_bytes(free, model.device))


def _run_encode(cvvae, images, views, pad_frames, tiling, tile_size, tile_overlap, temporal_chunk, unique_id=None):
    require_finite(images, "images", axes=("frame",))
    video = _frames_to_video(images, views)
    config = _tiling(tiling, tile_size, tile_overlap, temporal_chunk)
    try:
        posterior = _coded(cvvae, "encode", video, config, lambda model, budget: encode_video(
            model, video, tiling=config, pad=pad_frames, progress=progress_bar(unique_id), memory_budget=budget))
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    z = posterior.mode().float().cpu()
    vae = module_of(cvvae)
    require_finite(z, "the encoded latent", axes=("view", "channel", "frame"), hint=precision_hint(vae.dtype))
    scaled = (z - vae.shift_factor) * vae.scaling_factor
    latent = {"samples": scaled, "views": views, "cvd_frames": int(video.shape[2]),
              "cvd_latent_scale": vae.scaling_factor, "cvd_latent_shift": vae.shift_factor}
    return Result((latent,))


ENCODE = NodeSchema(
    node_id="CVD_CVVAEEncode",
    display_name="CVD CV-VAE Encode (video)",
    category=CATEGORY,
    description=("Encodes video frames (an IMAGE batch, view-major when it holds several views) into a 5-D video "
                 "LATENT [views, C, 1+(T-1)/4, H/8, W/8], scaled for diffusion models. Frame counts must be 1+4k "
                 "(1, 5, 9, 13, 17, ...) unless pad_frames repeats the last frame (trimmed again on decode)."),
    inputs=[
        Input("cvvae", CVVAE, "The CV-VAE from CVD Load CV-VAE."),
        Input("images", "IMAGE", "Frames [views x T, H, W, 3] in [0,1]; H and W multiples of 8."),
        Input("views", "INT", "How many videos the batch holds (view-major). 1 for a single video.", default=1,
              min=1, max=64),
        Input("pad_frames", "BOOLEAN", "Pad to the next 1+4k frame count with copies of the last frame instead of "
              "refusing other counts.", default=False),
        *TILING_INPUTS,
    ],
    outputs=[Output("LATENT", "latent", "Video latent [views, C, T', h, w], scaled by the VAE's scaling factor.")],
    run=_run_encode,
    hidden=("unique_id",),
    rules=[_tile_size_rule],
)


def _latent_scale(latent, cvvae):
    return float(latent.get("cvd_latent_scale", cvvae.scaling_factor)), \
        float(latent.get("cvd_latent_shift", cvvae.shift_factor))


def _run_decode(cvvae, latent, tiling, tile_size, tile_overlap, temporal_chunk, unique_id=None):
    vae = module_of(cvvae)
    samples = latent["samples"]
    if samples.dim() == 4:
        raise NodeInputError("this is a 4-D image latent [N, C, h, w]; convert it with CVD Image Latents To Latent "
                             "Frames first (it also restores the video scaling)")
    if samples.dim() != 5:
        raise NodeInputError(f"latent must be 5-D [views, C, T, h, w], got shape {list(samples.shape)}")
    if latent.get("cvd_temporal_compression") == 1:
        raise NodeInputError("this latent has one latent frame per video frame (CVD Multi-View Sampler, AnimateDiff), "
                             "not CV-VAE's 4x temporal latents: decode it with CVD Latent Frames To Image Latents -> "
                             "VAE Decode (the SD1.5 VAE)")
    if samples.shape[1] != vae.latent_channels:
        raise NodeInputError(f"latent has {samples.shape[1]} channels but this CV-VAE expects "
                             f"{vae.latent_channels} (z=4 for SD1.x/2.x, z=16 for SD3)")
    require_finite(samples, "latent", axes=("view", "channel", "frame"),
                   hint="nothing is decoded (the sampler or encoder upstream produced them)")
    scale, shift = _latent_scale(latent, vae)
    z = samples.float() / scale + shift
    config = _tiling(tiling, tile_size, tile_overlap, temporal_chunk)
    try:
        # Each finished window lands in the CPU IMAGE at once: the device holds one window, not the video.
        frames = _coded(cvvae, "decode", z, config, lambda model, budget: decode_frames(
            model, z, tiling=config, num_frames=latent.get("cvd_frames"), progress=progress_bar(unique_id),
            memory_budget=budget))
    except NonFiniteError:  # raised by the window that holds it; names view, channel and frame
        raise
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    return Result((frames.reshape(-1, *frames.shape[2:]),))


DECODE = NodeSchema(
    node_id="CVD_CVVAEDecode",
    display_name="CVD CV-VAE Decode (video)",
    category=CATEGORY,
    description=("Decodes a 5-D video LATENT [views, C, T', h, w] into frames (IMAGE [views x (4T'-3), H, W, 3], "
                 "view-major). Memory stays bounded by tiling; cancelling stops between tiles."),
    inputs=[
        Input("cvvae", CVVAE, "The CV-VAE from CVD Load CV-VAE."),
        Input("latent", "LATENT", "A video latent from CV-VAE Encode or a video sampler."),
        *TILING_INPUTS,
    ],
    outputs=[Output("IMAGE", "images", "Decoded frames, view-major.")],
    run=_run_decode,
    hidden=("unique_id",),
    rules=[_tile_size_rule],
)


# ------------------------------------------------------------------------------ latent reshaping

def _run_to_image_latents(latent):
    samples = latent["samples"]
    if samples.dim() != 5:
        raise NodeInputError(f"expected a 5-D video latent [views, C, T, h, w], got shape {list(samples.shape)}")
    require_finite(samples, "latent", axes=("view", "channel", "frame"))
    views, channels, frames = samples.shape[:3]
    scale = float(latent.get("cvd_latent_scale", 1.0))
    shift = float(latent.get("cvd_latent_shift", 0.0))
    images = samples.permute(0, 2, 1, 3, 4).reshape(views * frames, channels, *samples.shape[3:])
    mask = _latent.noise_mask_of(latent)
    if mask is not None:  # one mask per image latent, in the batch's view-major order (core's image convention)
        try:
            mask = _latent.per_frame_mask(_latent.resize_noise_mask(mask, samples.shape))
        except _latent.MaskShapeError as exc:
            raise NodeInputError(f"latent's {exc}") from None
    # a copy, as core's nodes do: other packs' keys stay
    out = _latent.derived(latent, images / scale + shift, views=views, cvd_latent_frames=frames,
                          cvd_frames=latent.get("cvd_frames"), cvd_latent_scale=scale, cvd_latent_shift=shift,
                          cvd_temporal_compression=None, noise_mask=mask)
    return Result((out,))


TO_IMAGE_LATENTS = NodeSchema(
    node_id="CVD_LatentFramesToImageLatents",
    display_name="CVD Latent Frames To Image Latents",
    category=CATEGORY,
    description=("Turns a 5-D video latent [views, C, T, h, w] into a batch of SD image latents [views x T, C, h, w] "
                 "(view-major) in ComfyUI's unscaled convention, so ComfyUI's own VAE Decode can decode each CV-VAE "
                 "latent frame with Stable Diffusion's image VAE."),
    inputs=[Input("latent", "LATENT", "A 5-D video latent (e.g. from CV-VAE Encode).")],
    outputs=[Output("LATENT", "image_latents", "Image latents, one per latent frame, for VAE Decode.")],
    run=_run_to_image_latents,
)


def _run_to_latent_frames(latent, views, scale_factor, shift_factor):
    samples = latent["samples"]
    if samples.dim() != 4:
        raise NodeInputError(f"expected a 4-D image latent batch [N, C, h, w], got shape {list(samples.shape)}")
    if samples.shape[0] % views:
        raise NodeInputError(f"the latent batch ({samples.shape[0]}) must split evenly into views={views}")
    require_finite(samples, "latent", axes=("image latent",))
    frames = samples.shape[0] // views
    scale = float(latent.get("cvd_latent_scale", scale_factor))
    shift = float(latent.get("cvd_latent_shift", shift_factor))
    video = samples.reshape(views, frames, *samples.shape[1:]).permute(0, 2, 1, 3, 4)
    known_frames = latent.get("cvd_frames") is not None and latent.get("cvd_latent_frames") == frames
    # a copy (other keys stay); a noise_mask of the image batch [views x T, ...] is one of the 5-D latent's forms
    out = _latent.derived(latent, (video - shift) * scale, views=views, cvd_latent_scale=scale,
                          cvd_latent_shift=shift, cvd_frames=latent["cvd_frames"] if known_frames else None,
                          cvd_latent_frames=None, cvd_temporal_compression=None)
    return Result((out,))


TO_LATENT_FRAMES = NodeSchema(
    node_id="CVD_ImageLatentsToLatentFrames",
    display_name="CVD Image Latents To Latent Frames",
    category=CATEGORY,
    description=("Groups a batch of SD image latents [views x T, C, h, w] (view-major; ComfyUI's unscaled "
                 "convention, e.g. from VAE Encode) into a 5-D video latent [views, C, T, h, w] scaled for CV-VAE "
                 "Decode and video samplers. T image latents decode to 4T-3 frames."),
    inputs=[
        Input("latent", "LATENT", "Image latents, e.g. from VAE Encode or Latent Frames To Image Latents."),
        Input("views", "INT", "How many videos the batch holds (view-major).", default=1, min=1, max=64),
        Input("scale_factor", "FLOAT", "Latent scale of the target space (0.18215 for SD1.x/2.x and CV-VAE z=4; "
                                       "1.5305 for SD3).",
              default=0.18215, min=0.0001, max=100.0, step=0.00001),
        Input("shift_factor", "FLOAT", "Latent shift of the target space (0 for SD1.x/2.x; 0.0609 for SD3).",
              default=0.0, min=-10.0, max=10.0, step=0.0001),
    ],
    outputs=[Output("LATENT", "latent", "A 5-D video latent.")],
    run=_run_to_latent_frames,
)

SCHEMAS = [LOADER, ENCODE, DECODE, TO_IMAGE_LATENTS, TO_LATENT_FRAMES]
