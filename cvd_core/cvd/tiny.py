"""Tiny random CVD checkpoints in the official file layouts (for tests, integration tests and demos).

``write_tiny_cvd_files`` writes the four files a user has (SD1.5 UNet, AnimateDiff motion module,
CameraCtrl, CVD), with every key exactly as in the official releases, at a small width. The SD1.5
UNet is a diffusers folder, or (``single_file=True``) a single-file LDM ``.safetensors`` as ComfyUI's
``models/checkpoints`` holds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, Union

import torch
from safetensors.torch import save_file

from .network import CVDUNet
from .pose_encoder import CameraPoseEncoder
from .sd15_checkpoint import diffusers_to_ldm_keys, sd15_config


def tiny_unet_config(width: int = 32, cross_attention_dim: int = 32) -> dict:
    """SD1.5 config at one width for every level (GroupNorm(32) needs width % 32 == 0)."""
    if width % 32 != 0:
        raise ValueError(f"width must be a multiple of 32 (GroupNorm with 32 groups), got {width}")
    config = copy.deepcopy(sd15_config())
    config.update(block_out_channels=[width] * 4, cross_attention_dim=cross_attention_dim, sample_size=8)
    return config


def _random_fill(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Deterministic non-zero values for every parameter (norm weights near 1, others ~1/sqrt(fan_in))."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() == 1 and ("norm" in name or name.endswith("ff_norm.weight")):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            elif param.dim() == 1:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel()
                bound = fan_in ** -0.5
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)


def write_tiny_cvd_files(folder: Union[str, Path], seed: int = 0, width: int = 32,
                         single_file: bool = False, cross_attention_dim: int = 32) -> Dict[str, str]:
    """Write tiny deterministic CVD weights under ``folder``; returns the paths for ``load_cvd_model``.

    Returns ``dict(unet=..., motion_module=..., cameractrl=..., cvd=...)``. Keys: the unet as
    diffusers names (folder) or ``model.diffusion_model.*`` LDM names (single file); the motion
    module a flat dict; CameraCtrl ``{pose_encoder_state_dict, attention_processor_state_dict}``;
    CVD ``{unet_trainable_dict}``. ``cross_attention_dim`` is the text width the UNet takes (768 =
    SD1.5's CLIP-L, so real ``CLIPTextEncode`` conditioning fits; 32 keeps unit tests light).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_unet_config(width, cross_attention_dim)
    generator = torch.Generator().manual_seed(seed)
    net = CVDUNet(config)
    pose_encoder = CameraPoseEncoder(channels=[width] * 4)
    for module in (net, pose_encoder):
        _random_fill(module, generator)

    state = {k: v.contiguous() for k, v in net.unet.state_dict().items()}
    sd15 = {k: v for k, v in state.items() if "motion_modules." not in k and "epi_modules." not in k}
    motion = {k: v for k, v in state.items() if "motion_modules." in k and ".processor." not in k}
    processors = {k: v for k, v in state.items() if ".processor." in k}
    cvsm = {k: v for k, v in state.items() if "epi_modules." in k}

    paths = {}
    if single_file:
        paths["unet"] = str(folder / "tiny_sd15.safetensors")
        save_file(diffusers_to_ldm_keys(sd15, config["layers_per_block"]), paths["unet"])
    else:
        unet_dir = folder / "unet"
        unet_dir.mkdir(exist_ok=True)
        (unet_dir / "config.json").write_text(json.dumps(config, indent=2))
        save_file(sd15, str(unet_dir / "diffusion_pytorch_model.safetensors"))
        paths["unet"] = str(unet_dir)
    paths["motion_module"] = str(folder / "animatediff_mm.ckpt")
    torch.save(motion, paths["motion_module"])
    paths["cameractrl"] = str(folder / "CameraCtrl.ckpt")
    torch.save({"pose_encoder_state_dict": {k: v.contiguous() for k, v in pose_encoder.state_dict().items()},
                "attention_processor_state_dict": processors}, paths["cameractrl"])
    paths["cvd"] = str(folder / "CVD.ckpt")
    torch.save({"unet_trainable_dict": cvsm}, paths["cvd"])
    return paths

