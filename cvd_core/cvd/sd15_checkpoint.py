"""SD1.5 UNet weights: diffusers folders, single-file LDM checkpoints, and the AnimateDiff v3 adapter.

Single-file checkpoints (ComfyUI's ``models/checkpoints``) are converted offline with diffusers'
``convert_ldm_unet_checkpoint`` and the UNet config shipped in ``configs/sd15_unet_config.json``
(widths re-read from the checkpoint so narrow test models convert through the same path).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, Tuple

import torch
from safetensors.torch import load_file

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SD15_CONFIG_PATH = CONFIG_DIR / "sd15_unet_config.json"
LDM_PREFIX = "model.diffusion_model."

StateDict = Dict[str, torch.Tensor]


def load_state_dict_file(path: Path) -> dict:
    """safetensors, or a pickle loaded with ``weights_only=True`` (never arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle with non-tensor objects: refuse rather than execute code
        raise ValueError(f"{path}: could not be read as safetensors or as a weights-only torch "
                         f"checkpoint ({error})") from error


def sd15_config() -> dict:
    """The SD1.5 ``UNet2DConditionModel`` config shipped with the pack (no hub access)."""
    return json.loads(SD15_CONFIG_PATH.read_text())


def load_diffusers_unet_folder(folder: Path) -> Tuple[dict, StateDict]:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers UNet folder: config.json missing")
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        weights = folder / "diffusion_pytorch_model.bin"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: diffusion_pytorch_model.safetensors (or .bin) missing")
    return json.loads(config_path.read_text()), load_state_dict_file(weights)


def _ldm_unet_part(checkpoint: dict) -> StateDict:
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        checkpoint = checkpoint["state_dict"]
    return {k: v for k, v in checkpoint.items() if k.startswith(LDM_PREFIX)}


def config_for_ldm_checkpoint(ldm: StateDict) -> dict:
    """SD1.5 config with widths and text width read from the checkpoint's tensor shapes."""
    config = copy.deepcopy(sd15_config())
    widths = []
    for level in range(4):
        key = f"{LDM_PREFIX}input_blocks.{3 * level + 1}.0.out_layers.3.weight"
        if key not in ldm:
            raise ValueError(f"not an SD1.5 UNet checkpoint: {key} missing")
        widths.append(int(ldm[key].shape[0]))
    config["block_out_channels"] = widths
    text_key = f"{LDM_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if text_key not in ldm:
        raise ValueError(f"not an SD1.5 UNet checkpoint: {text_key} missing")
    config["cross_attention_dim"] = int(ldm[text_key].shape[1])
    return config


def load_ldm_single_file(path: Path) -> Tuple[dict, StateDict]:
    """Single-file SD1.5 (``model.diffusion_model.*`` keys) -> (diffusers config, diffusers state dict)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ldm = _ldm_unet_part(load_state_dict_file(path))
    if not ldm:
        raise ValueError(f"{path}: no '{LDM_PREFIX}*' keys: not a single-file SD1.5 checkpoint")
    config = config_for_ldm_checkpoint(ldm)
    return config, convert_ldm_unet_checkpoint(ldm, config)


def _resnet_ldm_names(prefix_ldm: str, prefix_diff: str) -> Dict[str, str]:
    names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    return {f"{prefix_diff}.{d}": f"{prefix_ldm}.{l}" for d, l in names.items()}


def diffusers_to_ldm_keys(state_dict: StateDict, layers_per_block: int = 2) -> StateDict:
    """Rename a diffusers SD1.5 UNet state dict to the single-file LDM names (for writing test files).

    Inverse of diffusers' ``convert_ldm_unet_checkpoint`` for the SD1.5 layout; the tests check the
    round trip through diffusers' converter.
    """
    prefixes = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    per_level = layers_per_block + 1
    for i in range(4):
        for j in range(layers_per_block):
            ldm = f"input_blocks.{per_level * i + j + 1}"
            prefixes.update(_resnet_ldm_names(f"{ldm}.0", f"down_blocks.{i}.resnets.{j}"))
            prefixes[f"down_blocks.{i}.attentions.{j}"] = f"{ldm}.1"
        prefixes[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{per_level * (i + 1)}.0.op"
    prefixes.update(_resnet_ldm_names("middle_block.0", "mid_block.resnets.0"))
    prefixes["mid_block.attentions.0"] = "middle_block.1"
    prefixes.update(_resnet_ldm_names("middle_block.2", "mid_block.resnets.1"))
    for i in range(4):
        has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state_dict)
        for j in range(per_level):
            ldm = f"output_blocks.{per_level * i + j}"
            prefixes.update(_resnet_ldm_names(f"{ldm}.0", f"up_blocks.{i}.resnets.{j}"))
            prefixes[f"up_blocks.{i}.attentions.{j}"] = f"{ldm}.1"
        upsampler_slot = 2 if has_attention else 1
        prefixes[f"up_blocks.{i}.upsamplers.0.conv"] = \
            f"output_blocks.{per_level * i + per_level - 1}.{upsampler_slot}.conv"
    # longest prefix first so "...resnets.1" never matches "...resnets.10"-style keys wrongly
    ordered = sorted(prefixes.items(), key=lambda item: -len(item[0]))
    out = {}
    for key, value in state_dict.items():
        for diff, ldm in ordered:
            if key.startswith(diff + "."):
                out[LDM_PREFIX + ldm + key[len(diff):]] = value
                break
        else:
            raise KeyError(f"no LDM name for diffusers UNet key {key}")
    return out


def fuse_adapter_lora(unet_state: StateDict, adapter: dict, scale: float, source: str) -> Dict[str, list]:
    """Fuse the AnimateDiff v3 adapter (``…processor.to_q_lora.{down,up}.weight``) in place:
    ``W += up @ down · scale``. Returns {"fused": [...], "unexpected": [...]}; a LoRA pair whose
    target weight is absent is an error naming the file and the key."""
    if "state_dict" in adapter and isinstance(adapter["state_dict"], dict):
        adapter = adapter["state_dict"]
    adapter = {k: v for k, v in adapter.items() if k != "animatediff_config"}
    fused, unexpected = [], []
    for key in sorted(adapter):
        if ".processor." not in key or "_lora.down." not in key:
            if not ("_lora.up." in key and ".processor." in key):
                unexpected.append(key)
            continue
        up_key = key.replace("_lora.down.", "_lora.up.")
        if up_key not in adapter:
            raise KeyError(f"{source}: LoRA pair incomplete, {up_key} missing")
        module, rest = key.split(".processor.", 1)
        proj = rest.split("_lora.down.", 1)[0]  # to_q / to_k / to_v / to_out
        target = f"{module}.{proj}{'.0' if proj == 'to_out' else ''}.weight"
        if target not in unet_state:
            raise KeyError(f"{source}: adapter key {key} targets {target}, which the UNet does not have")
        down, up = adapter[key].float(), adapter[up_key].float()
        weight = unet_state[target]
        unet_state[target] = (weight.float() + (up @ down) * scale).to(weight.dtype)
        fused.append(target)
    return {"fused": fused, "unexpected": unexpected}
