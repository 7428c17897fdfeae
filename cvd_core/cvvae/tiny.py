"""Tiny random CV-VAE checkpoints in the official layout, for integration tests and demos.

They have the official key names and file layout, so they exercise exactly the loading path
real weights take; the images they produce are meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Union

import torch

from .loading import build_model

TINY_CONFIGS = {
    # z=4 GroupNorm has 32 groups fixed, so 32 channels is the floor; one widening level keeps
    # a shortcut conv in both encoder and decoder.
    "z4": dict(_class_name="CVVAEModel", ch=32, ch_mult=[1, 1, 1, 2], num_res_blocks=1, z_channels=4),
    # 32 groups as official: a single file does not store the group count, loaders assume 32.
    "z16": dict(_class_name="CVVAESD3Model", block_out_channels=[32, 32, 32, 32], layers_per_block=1,
                norm_num_groups=32, out_channels=16),
}
DIFFUSERS_VERSION = "0.29.2"  # what the official config.json files were written with


def _tiny_state(variant: str, seed: int) -> Dict[str, torch.Tensor]:
    if variant not in TINY_CONFIGS:
        raise ValueError(f"variant must be 'z4' or 'z16', got {variant!r}")
    config = {k: v for k, v in TINY_CONFIGS[variant].items() if not k.startswith("_")}
    with torch.device("meta"):
        model = build_model(variant, config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in model.state_dict().items():
        if param.dim() == 1 and ("norm" in name and name.endswith("weight")):
            value = torch.ones(param.shape)  # norm gains
        elif param.dim() == 1:
            value = 0.02 * torch.randn(param.shape, generator=generator)  # biases, norm shifts
        else:
            fan_in = param[0].numel()
            value = torch.randn(param.shape, generator=generator) / fan_in ** 0.5
        state[name] = value.contiguous()
    return state


def _full_config(variant: str) -> dict:
    config = dict(TINY_CONFIGS[variant])
    config["_diffusers_version"] = DIFFUSERS_VERSION
    with torch.device("meta"):
        model = build_model(variant, {k: v for k, v in config.items() if not k.startswith("_")})
    config.update(model.config)
    return config


def write_tiny_cvvae(folder: Union[str, Path], variant: str = "z4", seed: int = 0) -> Path:
    """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` of a tiny random CV-VAE
    (official diffusers-folder layout) into ``folder``; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = _tiny_state(variant, seed)
    (folder / "config.json").write_text(json.dumps(_full_config(variant), indent=2), encoding="utf-8")
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def write_tiny_cvvae_file(path: Union[str, Path], variant: str = "z4", seed: int = 0) -> Path:
    """Write a tiny random CV-VAE as one ``.safetensors`` file (no config: loaders infer it)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_tiny_state(variant, seed), str(path))
    return path
