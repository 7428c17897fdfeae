"""A tiny MCM LoRA for the tiny CVD model, in MCM's release layout, as ``models/mcm/animatediff-laion/``.

PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) with keys
``base_model.model.<diffusers UNetMotionModel path>.lora_A/B.weight`` on MCM's target module names
(attention projections, feed-forwards, resnet convs, time embeddings; spatial layers and motion
modules), so the shipped MCM workflow merges it unchanged.
"""

import json
import re
from pathlib import Path

ADAPTER = "animatediff-laion"
RANK = 4
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
           "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def _diffusers_path(name: str) -> str:
    """Our AnimateDiff-named motion module path -> diffusers ``UNetMotionModel`` path (what MCM saves)."""
    name = name.replace(".temporal_transformer.", ".")
    name = re.sub(r"\.attention_blocks\.0\.", ".attn1.", name)
    return re.sub(r"\.attention_blocks\.1\.", ".attn2.", name)


def write_tiny_mcm_adapter(folder: Path, seed: int = 0, cross_attention_dim: int = 768) -> Path:
    from cvd_core.cvd.tiny import tiny_unet_config

    return write_mcm_adapter(folder, tiny_unet_config(32, cross_attention_dim), seed=seed)


def write_mcm_adapter(folder: Path, unet_config: dict, seed: int = 0, rank: int = RANK) -> Path:
    """A random MCM-layout adapter of ``rank`` for the CVD UNet built from ``unet_config`` (any width)."""
    import torch
    from safetensors.torch import save_file

    from cvd_core.cvd.network import CVDUNet

    unet = CVDUNet(unet_config).unet
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() < 2 or ".processor." in name or "epi_modules." in name:
            continue  # CameraCtrl and CVD layers are not part of MCM
        if not any(name == t or name.endswith("." + t) for t in TARGETS):
            continue
        path = _diffusers_path(name)
        a_shape = (rank, *weight.shape[1:])
        b_shape = (weight.shape[0], rank, *([1] * (weight.dim() - 2)))
        state[f"base_model.model.{path}.lora_A.weight"] = (torch.randn(a_shape, generator=generator) * 0.1)
        state[f"base_model.model.{path}.lora_B.weight"] = (torch.randn(b_shape, generator=generator) * 0.01)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none",
              "target_modules": list(TARGETS)}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def install(comfy_root: Path) -> None:
    folder = Path(comfy_root) / "models" / "mcm" / ADAPTER
    if not (folder / "adapter_model.safetensors").exists():
        write_tiny_mcm_adapter(folder)
