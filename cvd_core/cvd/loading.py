"""``load_cvd_model``: the official CVD files -> ``CVDModel``, with strict key accounting.

Files and key groups (all names official, nothing renamed):
- ``unet``: SD1.5 as a diffusers folder (adapter already fused, as the official flow) or a single
  LDM file (``adapter=`` optionally fuses ``v3_sd15_adapter.ckpt``);
- ``motion_module``: AnimateDiff flat dict (``…motion_modules.…``, optionally under ``state_dict``);
- ``cameractrl``: ``{"pose_encoder_state_dict", "attention_processor_state_dict"}``;
- ``cvd``: ``{"unet_trainable_dict"}`` (``…epi_modules.…``).
A trained key missing from its file is an error naming the file and the key; unexpected keys are
listed in ``model.load_report``. The motion modules' ``pos_encoder.pe`` are constructor buffers that
AnimateDiff itself does not load; when a file lacks them (or has another length) they stay as built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from .layers import PositionalEncoding
from .model import CVDModel, resolve_dtype
from .network import CVDUNet
from .pose_encoder import CameraPoseEncoder
from .sd15_checkpoint import (fuse_adapter_lora, load_diffusers_unet_folder, load_ldm_single_file,
                              load_state_dict_file)

PathLike = Union[str, Path]


class CheckpointKeyError(KeyError):
    """A trained parameter the model needs is absent from (or mis-shaped in) the named file."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def _group_of(key: str) -> str:
    if "epi_modules." in key:
        return "cvd"
    if ".processor." in key:
        return "cameractrl_processors"
    if "motion_modules." in key:
        return "motion_module"
    return "unet"


def _read_unet(unet: PathLike, adapter: Optional[PathLike], adapter_scale: float, report: dict):
    path = Path(unet)
    if path.is_dir():
        config, state = load_diffusers_unet_folder(path)
        form = "diffusers folder"
    else:
        config, state = load_ldm_single_file(path)
        form = "single-file LDM checkpoint"
    report["unet"] = {"path": str(path), "form": form}
    if adapter is not None:
        result = fuse_adapter_lora(state, load_state_dict_file(Path(adapter)), adapter_scale, str(adapter))
        report["adapter"] = {"path": str(adapter), "scale": adapter_scale, "fused": len(result["fused"]),
                             "unexpected": result["unexpected"]}
    return config, state


def _read_motion_module(path: PathLike) -> Dict[str, torch.Tensor]:
    data = load_state_dict_file(Path(path))
    if "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    return {k: v for k, v in data.items() if k != "animatediff_config"}


def _read_nested(path: PathLike, key: str) -> Dict[str, torch.Tensor]:
    data = load_state_dict_file(Path(path))
    if key not in data:
        raise CheckpointKeyError(f"{path}: expected a dictionary with '{key}', found keys {sorted(data)[:8]}")
    return data[key]


def _strip_module_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Checkpoints saved from DDP wrappers prefix every key with ``module.``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _account(expected: Dict[str, torch.Tensor], provided: Dict[str, torch.Tensor], source: str, role: str,
             optional_suffix: str = ".pos_encoder.pe") -> dict:
    """Compare one file's keys with the model's group; raise on a missing or mis-shaped trained key."""
    missing = [k for k in expected if k not in provided]
    required_missing = [k for k in missing if not k.endswith(optional_suffix)]
    if required_missing:
        more = f" (and {len(required_missing) - 1} more)" if len(required_missing) > 1 else ""
        raise CheckpointKeyError(f"{source} ({role}): missing trained key {required_missing[0]}{more}")
    kept_as_built = list(missing)
    for key in expected:
        if key in provided and tuple(provided[key].shape) != tuple(expected[key].shape):
            if key.endswith(optional_suffix):
                kept_as_built.append(key)
                continue
            raise CheckpointKeyError(f"{source} ({role}): key {key} has shape {tuple(provided[key].shape)}, "
                                     f"the model needs {tuple(expected[key].shape)}")
    unexpected = sorted(k for k in provided if k not in expected)
    return {"path": source, "loaded": len(expected) - len(kept_as_built), "missing": [],
            "kept_as_built": sorted(kept_as_built), "unexpected": unexpected}


def _build(config: dict, with_cvsm: bool) -> tuple:
    widths = list(config["block_out_channels"])
    # Real-size models are built on the meta device (no random init of ~1.7e9 parameters) and
    # materialised by the load; tiny ones build faster directly (meta dispatch has a fixed cost).
    device = torch.device("meta") if max(widths) > 256 else torch.device("cpu")
    with device:
        unet = CVDUNet(config, with_cvsm=with_cvsm)
        pose_encoder = CameraPoseEncoder(channels=widths)
    return unet, pose_encoder


def _materialise(module: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Load ``state`` (complete for parameters) into a meta-built module; rebuild constructor buffers."""
    if any(p.is_meta for p in module.parameters()):
        module.to_empty(device="cpu")
    for sub in module.modules():
        if isinstance(sub, PositionalEncoding):
            fresh = PositionalEncoding(sub.pe.shape[-1], max_len=sub.pe.shape[1])
            sub.pe.copy_(fresh.pe)
    module.load_state_dict(state, strict=False)


def load_cvd_model(unet: PathLike, motion_module: PathLike, cameractrl: PathLike, cvd: Optional[PathLike],
                   adapter: Optional[PathLike] = None, adapter_scale: float = 1.0,
                   dtype: Union[str, torch.dtype] = torch.float32,
                   device: Union[str, torch.device] = "cpu") -> CVDModel:
    """Load the CVD denoiser from the official files (see the module docstring for each file's layout).

    ``cvd=None`` builds the network without CVSMs (a plain CameraCtrl/AnimateDiff model; used by
    tests). Widths and depths come from the UNet config / checkpoint shapes. ``dtype`` may be
    "auto" (see ``resolve_dtype``); ``device`` is where the model ends up.
    """
    report: Dict[str, dict] = {}
    config, unet_state = _read_unet(unet, adapter, adapter_scale, report)
    net, pose_encoder = _build(config, with_cvsm=cvd is not None)

    expected = {k: v for k, v in net.unet.state_dict().items()}
    groups: Dict[str, Dict[str, torch.Tensor]] = {"unet": {}, "motion_module": {}, "cameractrl_processors": {},
                                                 "cvd": {}}
    for key, value in expected.items():
        groups[_group_of(key)][key] = value

    motion_state = _strip_module_prefix(_read_motion_module(motion_module))
    processor_state = _strip_module_prefix(_read_nested(cameractrl, "attention_processor_state_dict"))
    pose_state = _strip_module_prefix(_read_nested(cameractrl, "pose_encoder_state_dict"))
    files = {"unet": (unet_state, str(unet)), "motion_module": (motion_state, str(motion_module)),
             "cameractrl_processors": (processor_state, str(cameractrl))}
    if cvd is not None:
        files["cvd"] = (_strip_module_prefix(_read_nested(cvd, "unet_trainable_dict")), str(cvd))

    merged: Dict[str, torch.Tensor] = {}
    for role, (state, source) in files.items():
        entry = _account(groups[role], state, source, role)
        report[role] = {**report.get(role, {}), **entry}
        merged.update({k: v for k, v in state.items() if k in groups[role]
                       and k not in entry["kept_as_built"]})
    pose_expected = pose_encoder.state_dict()
    report["cameractrl_pose_encoder"] = _account(pose_expected, pose_state, str(cameractrl), "pose encoder",
                                                 optional_suffix="\0")

    _materialise(net.unet, merged)
    _materialise(pose_encoder, pose_state)

    model = CVDModel(net, pose_encoder)
    model.load_report = report
    target_dtype = resolve_dtype(dtype, device)
    return model.to(device=torch.device(device), dtype=target_dtype).eval()
