"""CV-VAE (AILab-CVC, NeurIPS 2024): a video VAE whose latents live in Stable Diffusion's latent
space. z=4 (:class:`CVVAEModel`, SD1.x/2.x) and z=16 (:class:`CVVAESD3Model`, SD3) variants,
loading of the official weights, and memory-bounded tiled encode/decode.

Latents are *unscaled* everywhere here; scaling by ``model.scaling_factor`` (and
``model.shift_factor`` for z=16) happens at the node boundary.
"""

from .base import CVVAEBase
from .frames import check_frame_count, check_spatial_size, latent_frames, padded_frame_count, pixel_frames
from .loading import build_model, detect_variant, infer_config, load_cvvae, resolve_dtype
from .model_sd3 import CVVAESD3Model
from .model_z4 import CVVAEModel
from .posterior import CVVAEPosterior
from .memory import usable_bytes
from .tiling import TilingConfig, decode_frames, decode_video, encode_video, memory_estimate
from .tiny import write_tiny_cvvae, write_tiny_cvvae_file

__all__ = [
    "CVVAEBase", "CVVAEModel", "CVVAESD3Model", "CVVAEPosterior", "TilingConfig",
    "build_model", "check_frame_count", "check_spatial_size", "decode_frames", "decode_video", "detect_variant", "encode_video",
    "infer_config", "latent_frames", "load_cvvae", "memory_estimate", "padded_frame_count", "pixel_frames",
    "resolve_dtype", "usable_bytes", "write_tiny_cvvae", "write_tiny_cvvae_file",
]
