"""A small random SD1.5-shaped checkpoint for ComfyUI's own loaders and samplers, so core workflows
(CheckpointLoaderSimple -> KSampler) run in the test server (CLIP-L comes from ``models_clip.py``).

ComfyUI 2024 recognises SD1.5 by ``model_channels`` 320, ``context_dim`` 768, conv ``proj_in`` and no
``label_emb`` (``comfy/supported_models.py::SD15``); depth is read from the keys, so the UNet keeps
the four resolution levels (the layout the feature cache's windows follow) with one layer per level
and cross-attention only at the first level and the middle: 17 blocks instead of 25, 58 M
parameters. Keys are the single-file LDM names (``model.diffusion_model.*``). The file name is the
one ComfyUI's own example workflows use for SD1.5, so the shipped workflow names a real file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

SD15_SMALL_FILE = "v1-5-pruned-emaonly-fp16.safetensors"
SD15_SMALL_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320, 320, 320, 320),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def sd15_small_state_dict(seed: int = 0) -> Dict[str, "torch.Tensor"]:  # noqa: F821
    """The small UNet's weights under single-file LDM names (fp16)."""
    import torch
    from diffusers import UNet2DConditionModel

    from cvd_core.cvd.sd15_checkpoint import diffusers_to_ldm_keys

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_SMALL_CONFIG)
    state = {k: v.contiguous() for k, v in unet.state_dict().items()}
    ldm = diffusers_to_ldm_keys(state, layers_per_block=SD15_SMALL_CONFIG["layers_per_block"])
    return {k: v.to(torch.float16) for k, v in ldm.items()}


def _write(target: Path, make_state) -> None:
    """Write atomically: a half-written file would break every later server start."""
    from safetensors.torch import save_file

    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    save_file(make_state(), str(partial))
    partial.replace(target)


def install(comfy_root: Path) -> None:
    models = Path(comfy_root) / "models"
    _write(models / "checkpoints" / SD15_SMALL_FILE, sd15_small_state_dict)
