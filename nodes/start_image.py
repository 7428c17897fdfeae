"""Start latents from pixels: one start image for every view (image-to-multi-view video), or a given video as one
view of the rig (novel views of your footage). Both encode with ComfyUI's own SD1.5 VAE and write the pack's 5-D
LATENT with a ``noise_mask`` (0 = keep) for CVD Multi-View Sampler or SamplerCustomAdvanced (docs/masks.md).

Every view of a CVD rig starts at the same camera (poses are relative to each view's first frame), so one image
can begin every view exactly; each view then moves its own way.
"""

from __future__ import annotations

import math

import torch

from cvd_core.guards import require_finite

from . import _latent
from ._comfy import NodeInputError
from ._schema import Input, NodeSchema, Output, Result
from .camera import CAMERAS

CATEGORY = "CVD/latent"


def cover_crop(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE ``[N, H, W, 3]`` resized to cover ``width`` x ``height`` and center-cropped: the rule of the pose
    loader's intrinsics (``cvd_core.camera.resize_crop_intrinsics``: scale = max(W_dst / W_src, H_dst / H_src))."""
    src_h, src_w = int(images.shape[1]), int(images.shape[2])
    if (src_w, src_h) == (width, height):
        return images.float()
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, math.ceil(src_w * scale - 1e-6)), max(height, math.ceil(src_h * scale - 1e-6))
    chw = torch.nn.functional.interpolate(images.float().permute(0, 3, 1, 2), size=(new_h, new_w), mode="bilinear",
                                          antialias=True, align_corners=False)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return chw[:, :, top:top + height, left:left + width].permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def encode_frames(vae, images: torch.Tensor, width: int, height: int, name: str = "image") -> torch.Tensor:
    """IMAGE frames -> SD1.5 latents ``[N, 4, h, w]`` in the UNet's scaled space (x 0.18215), with core's VAE."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] < 3:
        raise NodeInputError(f"{name} must be an IMAGE [frames, height, width, 3], got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
    require_finite(images, name, axes=("frame",))
    if not hasattr(vae, "encode"):
        raise NodeInputError(f"vae must be a VAE from Load VAE (the SD1.5 VAE), got {type(vae).__name__}")
    pixels = cover_crop(images[..., :3], width, height)
    z = vae.encode(pixels)
    z = z.float().cpu() if isinstance(z, torch.Tensor) else z
    want = (pixels.shape[0], 4, height // 8, width // 8)
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != want:
        raise NodeInputError(f"vae must be the SD1.5 image VAE (4 latent channels, 8x smaller): it encoded {name} to "
                             f"{list(getattr(z, 'shape', []))}, the CVD sampler needs {list(want)}")
    require_finite(z, f"the encoded {name}", axes=("frame",), hint="load the VAE in fp32 (--fp32-vae)")
    return z * _latent.SD_LATENT_SCALE


def _rig_of(cameras):
    try:
        rig = cameras.as_rig()
    except Exception as exc:
        raise NodeInputError(f"cameras must be a CVD_CAMERAS rig from a CVD camera node: {exc}") from None
    if rig.width % 8 or rig.height % 8:
        raise NodeInputError(f"the cameras' size must be a multiple of 8, got {rig.width}x{rig.height}")
    return rig


def time_mask(frames: int, keep_frames: int, soft_edge: int) -> torch.Tensor:
    """``[F]``: 0 for frames ``0..keep_frames-1``, then a linear ramp over ``soft_edge`` frames, then 1."""
    f = torch.arange(frames, dtype=torch.float32)
    return ((f - keep_frames + 1) / (soft_edge + 1)).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------ start from an image

def _run_start(image, vae, cameras, keep_frames, soft_edge):
    rig = _rig_of(cameras)
    views, frames, h, w = rig.n_views, rig.n_frames, rig.height // 8, rig.width // 8
    if keep_frames > frames:
        raise NodeInputError(f"keep_frames must be at most the cameras' {frames} frames, got {keep_frames}")
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] not in (1, views):
        raise NodeInputError(f"image must hold 1 image (for every view) or exactly {views} (one per view, in view "
                             f"order), got {list(getattr(image, 'shape', []))}")
    encoded = encode_frames(vae, image, rig.width, rig.height).expand(views, 4, h, w)
    ramp = time_mask(frames, keep_frames, soft_edge)
    samples = torch.zeros(views, 4, frames, h, w)
    held = ramp < 1.0  # frames the mask keeps, fully or partly, start from the image; the rest are empty
    samples[:, :, held] = encoded[:, :, None]
    mask = ramp.view(1, 1, frames, 1, 1).expand(views, 1, frames, h, w).contiguous()
    return Result((_latent.video_latent(samples, frames, noise_mask=mask),))


START_FROM_IMAGE = NodeSchema(
    node_id="CVD_StartFromImage",
    display_name="CVD Start From Image",
    category=CATEGORY,
    description=("Image to multi-view video: a start LATENT whose frame 0 in every view is the encoded image (CVD's "
                 "views share their first camera), with a noise_mask keeping frames 0..keep_frames-1. Use it as CVD "
                 "Multi-View Sampler's latent at denoise 1.0."),
    inputs=[
        Input("image", "IMAGE", "One start image for every view, or one per view (a batch of exactly views images)."),
        Input("vae", "VAE", "ComfyUI's SD1.5 VAE (Load VAE) that encodes the image."),
        Input("cameras", CAMERAS, "The camera rig: views, frames and image size of the latent."),
        Input("keep_frames", "INT", "Frames kept as the image (mask 0): 1 = only frame 0.", default=1, min=1,
              max=32),
        Input("soft_edge", "INT", ("Frames after keep_frames whose mask ramps from 0 to 1 (partly regenerated); 0 = a "
                                   "hard edge."), default=0, min=0, max=32),
    ],
    outputs=[Output("LATENT", "latent", "Start latent [views, 4, frames, h, w] with its noise_mask.")],
    run=_run_start,
)


# ------------------------------------------------------------------------------ a video as one view

def _run_video_as_view(latent, images, vae, view):
    samples = _latent.samples_of(latent) if isinstance(latent, dict) else None
    if samples is None or samples.dim() != 5 or _latent.temporal_compression(latent) != 1:
        raise NodeInputError("latent must be the pack's 5-D video latent [views, 4, frames, h, w] with one latent "
                             "frame per video frame (CVD Empty Latent, CVD Start From Image)")
    views, _, frames, h, w = (int(s) for s in samples.shape)
    if view >= views:
        raise NodeInputError(f"view must be below the latent's {views} views, got {view}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != frames:
        raise NodeInputError(f"images must hold exactly the latent's {frames} frames (trim the video, e.g. with "
                             f"Image From Batch or the loader's frame cap), got {list(getattr(images, 'shape', []))}")
    mask = _latent.noise_mask_of(latent)
    try:
        mask = torch.ones(views, 1, frames, h, w) if mask is None else \
            _latent.resize_noise_mask(mask, samples.shape).clone()
    except _latent.MaskShapeError as exc:
        raise NodeInputError(f"latent's {exc}") from None
    encoded = encode_frames(vae, images, w * 8, h * 8, "images")  # [F, 4, h, w]
    out = samples.float().clone()
    out[view] = encoded.permute(1, 0, 2, 3)
    mask[view] = 0.0  # every frame of this view is known
    return Result((_latent.video_latent(out, latent.get(_latent.FRAMES, frames), base=latent, noise_mask=mask),))


VIDEO_AS_VIEW = NodeSchema(
    node_id="CVD_VideoAsView",
    display_name="CVD Video As View",
    category=CATEGORY,
    description=("Novel views of your video: its frames become one view of the latent, fully known (noise_mask 0); "
                 "CVD Multi-View Sampler (denoise 1.0) generates the other views around it. That view's camera path "
                 "must describe the video."),
    inputs=[
        Input("latent", "LATENT", ("The rig's latent (CVD Empty Latent or CVD Start From Image); its noise_mask stays "
                                   "for the other views.")),
        Input("images", "IMAGE", "The video: exactly the latent's frames; resized to cover and center-cropped."),
        Input("vae", "VAE", "ComfyUI's SD1.5 VAE (Load VAE)."),
        Input("view", "INT", "Which view the video is (0 = the first camera of the rig).", default=0, min=0, max=63),
    ],
    outputs=[Output("LATENT", "latent", "The latent with the video in that view and its noise_mask.")],
    run=_run_video_as_view,
)

SCHEMAS = [START_FROM_IMAGE, VIDEO_AS_VIEW]
