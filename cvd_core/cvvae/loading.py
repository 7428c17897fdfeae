"""Loading CV-VAE weights: diffusers folders, single ``.safetensors`` files, and ``.ckpt`` pickles
(only through ``torch.load(weights_only=True)``).

The official Hugging Face repo ``AILab-CVC/CV-VAE`` has subfolders ``vae3d`` and ``vae3d_v1-1``
(z=4, :class:`CVVAEModel`) and ``vae3d_sd3`` (z=16, :class:`CVVAESD3Model`), each with
``config.json`` + ``diffusion_pytorch_model.safetensors``.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from .base import CVVAEBase
from .model_sd3 import CVVAESD3Model
from .model_z4 import CVVAEModel
from ..dtypes import resolve_dtype  # noqa: F401 (re-exported)

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
VARIANT_CLASSES = {"z4": CVVAEModel, "z16": CVVAESD3Model}
CLASS_VARIANTS = {"CVVAEModel": "z4", "CVVAESD3Model": "z16"}
DOWNLOAD_HINT = ("download a subfolder of https://huggingface.co/AILab-CVC/CV-VAE (vae3d_v1-1 or vae3d for z=4, "
                 "vae3d_sd3 for z=16) with its config.json and diffusion_pytorch_model.safetensors")


def variant_from_keys(keys) -> str:
    """"z16" for diffusers-style names (``encoder.down_blocks``), "z4" for LDM-style (``encoder.down.``)."""
    keys = list(keys)
    if any(k.startswith("encoder.down_blocks.") or k.startswith("decoder.up_blocks.") for k in keys):
        return "z16"
    if any(k.startswith("encoder.down.") or k.startswith("decoder.up.") for k in keys):
        return "z4"
    raise ValueError("not CV-VAE weights: no 'encoder.down.*' (z=4) or 'encoder.down_blocks.*' (z=16) keys")


def variant_from_config(config: dict) -> str:
    """Variant named by a ``config.json`` (its ``_class_name``, else its keys)."""
    name = config.get("_class_name")
    if name in CLASS_VARIANTS:
        return CLASS_VARIANTS[name]
    if name is not None:
        raise ValueError(f"config.json names class {name!r}; CV-VAE configs are CVVAEModel or CVVAESD3Model")
    if "block_out_channels" in config:
        return "z16"
    if "ch_mult" in config or "z_channels" in config:
        return "z4"
    raise ValueError("config.json has neither CVVAEModel keys (ch_mult, z_channels) nor CVVAESD3Model keys "
                     "(block_out_channels)")


def _locate(path: Path) -> Tuple[Optional[dict], Path]:
    """(config or None, weights file) for a folder or a file."""
    if path.is_dir():
        config_path = path / "config.json"
        weights = [path / n for n in WEIGHT_NAMES if (path / n).is_file()]
        if not config_path.is_file() or not weights:
            subfolders = [p.name for p in sorted(path.iterdir()) if p.is_dir() and (p / "config.json").is_file()]
            extra = f" (found model subfolders {subfolders}: pass one of them)" if subfolders else ""
            raise FileNotFoundError(f"{path} is not a CV-VAE diffusers folder: it needs config.json and "
                                    f"diffusion_pytorch_model.safetensors{extra}; {DOWNLOAD_HINT}")
        return json.loads(config_path.read_text(encoding="utf-8")), weights[0]
    if not path.is_file():
        raise FileNotFoundError(f"CV-VAE weights not found at {path}; {DOWNLOAD_HINT}")
    sibling = path.parent / "config.json"
    if path.name in WEIGHT_NAMES and sibling.is_file():
        return json.loads(sibling.read_text(encoding="utf-8")), path
    return None, path


def detect_variant(path: Union[str, Path]) -> str:
    """"z4" or "z16" for a folder or weights file, from ``config.json`` or else the key names."""
    config, weights = _locate(Path(path))
    if config is not None:
        return variant_from_config(config)
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            return variant_from_keys(handle.keys())
    return variant_from_keys(_read_state_dict(weights, "cpu").keys())


def _read_state_dict(weights: Path, device: Union[str, torch.device]) -> Dict[str, torch.Tensor]:
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weights), device=str(device))
    if weights.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"unsupported weights file {weights.name}: use .safetensors (preferred) or .ckpt")
    # weights_only=True refuses arbitrary pickled objects: untrusted checkpoints cannot run code.
    raw = torch.load(str(weights), map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ValueError(f"{weights.name} holds no state dict")
    return _strip_training_prefixes(raw)


def _strip_training_prefixes(state: dict) -> Dict[str, torch.Tensor]:
    """Keep the VAE's own tensors of a training checkpoint (e.g. drop ``loss.*`` discriminator
    weights) and remove a wrapper prefix such as ``vae.`` or ``first_stage_model.``."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        match = re.search(r"(?:^|\.)((?:encoder|decoder)\..*)$", key)
        if match and not key.startswith(("loss.", "discriminator.")):
            out[match.group(1)] = value
    return out


def _count(prefix: str, keys) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys for m in [pattern.match(k)] if m}
    return max(found) + 1 if found else 0


def infer_config(state: Dict[str, torch.Tensor], variant: str) -> dict:
    """Constructor kwargs from tensor shapes (for single files without config.json);
    everything not visible in the shapes keeps the official default."""
    keys = list(state)
    if variant == "z4":
        ch = state["encoder.conv_in.weight"].shape[0]
        levels = _count("encoder.down.", keys)
        ch_mult = [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)]
        return dict(ch=ch, ch_mult=ch_mult, num_res_blocks=_count("encoder.down.0.block.", keys),
                    in_channels=state["encoder.conv_in.weight"].shape[1],
                    z_channels=state["decoder.conv_in.weight"].shape[1],
                    out_ch=state["decoder.conv_out.weight"].shape[0],
                    double_z=state["encoder.conv_out.weight"].shape[0] == 2 * state["decoder.conv_in.weight"].shape[1])
    levels = _count("encoder.down_blocks.", keys)
    blocks = [state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)]
    z = state["decoder.conv_in.weight"].shape[1]
    return dict(block_out_channels=blocks, layers_per_block=_count("encoder.down_blocks.0.resnets.", keys),
                in_channels=state["encoder.conv_in.weight"].shape[1], out_channels=z,
                norm_num_groups=_guess_groups(blocks),
                double_z=state["encoder.conv_out.weight"].shape[0] == 2 * z,
                mid_block_add_attention=any(k.startswith("encoder.mid_block.attentions.") for k in keys))


def _guess_groups(channels) -> int:
    # GroupNorm groups are not stored; 32 is the official value, else the largest that divides all.
    for groups in (32, 16, 8, 4, 2, 1):
        if all(c % groups == 0 for c in channels):
            return groups
    return 1


def _constructor_kwargs(cls, config: dict) -> dict:
    params = inspect.signature(cls.__init__).parameters
    unknown = [k for k in config if k not in params and not k.startswith("_")]
    if unknown:
        warnings.warn(f"CV-VAE config keys ignored (not used by {cls.__name__}): {unknown}", stacklevel=3)
    return {k: v for k, v in config.items() if k in params}


def build_model(variant: str, config: dict) -> CVVAEBase:
    """Construct (random weights, fp32, CPU) the model class of ``variant`` from config kwargs."""
    cls = VARIANT_CLASSES[variant]
    return cls(**_constructor_kwargs(cls, config))


def load_cvvae(path: Union[str, Path], dtype: Union[str, torch.dtype, None] = "auto",
               device: Union[str, torch.device] = "cpu", variant: Optional[str] = None) -> CVVAEBase:
    """Load CV-VAE from a diffusers folder, a ``.safetensors`` file or a ``.ckpt`` (weights only).

    The variant (``"z4"``/``"z16"``) comes from ``config.json`` or the key names unless given.
    Keys must match exactly (``strict=True``); a mismatch names the missing and unexpected keys.
    Returns the model in eval mode on ``device`` in ``resolve_dtype(dtype, device)``.
    """
    path = Path(path)
    device = torch.device(device)
    target_dtype = resolve_dtype(dtype, device)
    config, weights = _locate(path)
    load_device = device if weights.suffix == ".safetensors" else "cpu"
    state = _read_state_dict(weights, load_device)
    if variant is None:
        variant = variant_from_config(config) if config is not None else variant_from_keys(state)
    if variant not in VARIANT_CLASSES:
        raise ValueError(f"variant must be 'z4' or 'z16', got {variant!r}")
    if config is None:
        config = infer_config(state, variant)
    with torch.device("meta"):
        model = build_model(variant, config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{weights} does not match CV-VAE {variant} ({type(model).__name__}): "
                         f"{len(missing)} missing keys {missing[:8]}, {len(unexpected)} unexpected keys "
                         f"{unexpected[:8]}; is this the right file and config.json?")
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=target_dtype).eval().requires_grad_(False)
    model.source_path = str(path)
    return model
