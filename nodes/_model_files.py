"""The official model files the loaders and the example workflows name: one list, read by the
loaders' help texts, by ``scripts/build_workflows.py`` (``properties.models`` download links) and
checked against the README's model table by the tests.

No ComfyUI import: tools and tests read it outside a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

HF = "https://huggingface.co"
CVD_README = "https://github.com/CollaborativeVideoDiffusion/CVD#readme"
CVD_CKPT_PAGE = "https://drive.google.com/file/d/1z6cR3PbqnrlVjXJJlk6AYxdl8z18hvtL/view"


@dataclass(frozen=True)
class ModelFile:
    name: str            # as the loader's list shows it (a path inside the folder for folder models)
    directory: str       # folder under ComfyUI/models/
    url: Optional[str]   # a public direct download, None where there is none
    page: str            # where a person gets it
    what: str


FILES: Tuple[ModelFile, ...] = (
    ModelFile("v1-5-pruned-emaonly.safetensors", "checkpoints",
              f"{HF}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
              f"{HF}/stable-diffusion-v1-5/stable-diffusion-v1-5", "SD1.5 checkpoint"),
    ModelFile("v1-5-pruned-emaonly-fp16.safetensors", "checkpoints",
              f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
              f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive", "SD1.5 checkpoint, fp16"),
    ModelFile("v3_sd15_mm.ckpt", "animatediff_models", f"{HF}/guoyww/animatediff/resolve/main/v3_sd15_mm.ckpt",
              f"{HF}/guoyww/animatediff", "AnimateDiff v3 motion module"),
    ModelFile("v3_sd15_adapter.ckpt", "animatediff_models",
              f"{HF}/guoyww/animatediff/resolve/main/v3_sd15_adapter.ckpt", f"{HF}/guoyww/animatediff",
              "AnimateDiff v3 adapter LoRA"),
    ModelFile("CameraCtrl.ckpt", "cvd", f"{HF}/hehao13/CameraCtrl/resolve/main/CameraCtrl.ckpt",
              f"{HF}/hehao13/CameraCtrl", "CameraCtrl (AnimateDiff v3) pose encoder and adaptor"),
    ModelFile("CVD.ckpt", "cvd", None, CVD_CKPT_PAGE,
              "CVD cross-view modules (Google Drive, linked from the CVD README; no direct download)"),
    ModelFile("clip_l.safetensors", "text_encoders",
              f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
              f"{HF}/comfyanonymous/flux_text_encoders", "SD1.5's text encoder (CLIP ViT-L/14)"),
    ModelFile("vae-ft-mse-840000-ema-pruned.safetensors", "vae",
              f"{HF}/stabilityai/sd-vae-ft-mse-original/resolve/main/vae-ft-mse-840000-ema-pruned.safetensors",
              f"{HF}/stabilityai/sd-vae-ft-mse-original", "SD1.5 image VAE"),
    ModelFile("vae3d_v1-1/config.json", "cvvae", f"{HF}/AILab-CVC/CV-VAE/resolve/main/vae3d_v1-1/config.json",
              f"{HF}/AILab-CVC/CV-VAE", "CV-VAE v1.1 (z=4) config"),
    ModelFile("vae3d_v1-1/diffusion_pytorch_model.safetensors", "cvvae",
              f"{HF}/AILab-CVC/CV-VAE/resolve/main/vae3d_v1-1/diffusion_pytorch_model.safetensors",
              f"{HF}/AILab-CVC/CV-VAE", "CV-VAE v1.1 (z=4) weights"),
    ModelFile("animatediff-laion/adapter_config.json", "mcm",
              f"{HF}/yhzhai/mcm/resolve/main/animatediff-laion/adapter_config.json", f"{HF}/yhzhai/mcm",
              "MCM LoRA for AnimateDiff (LAION), config"),
    ModelFile("animatediff-laion/adapter_model.safetensors", "mcm",
              f"{HF}/yhzhai/mcm/resolve/main/animatediff-laion/adapter_model.safetensors", f"{HF}/yhzhai/mcm",
              "MCM LoRA for AnimateDiff (LAION), weights"),
)

# Loader widgets that name a model: {class_type: {widget: folder}}; core loaders included, because the
# shipped workflows use them and the frontend's Missing Models panel reads their links too.
LOADER_WIDGETS: Dict[str, Dict[str, str]] = {
    "CVD_ModelLoader": {"checkpoint": "checkpoints", "motion_module": "animatediff_models",
                        "adapter": "animatediff_models", "cameractrl": "cvd", "cvd": "cvd"},
    "CVD_CVVAELoader": {"vae_name": "cvvae"},
    "CVD_MCMLoraLoader": {"lora_name": "mcm"},
    "CVD_MCMLoraLoaderModel": {"lora_name": "mcm"},
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoints"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "VAELoader": {"vae_name": "vae"},
}


def files_for(directory: str, value: str) -> List[ModelFile]:
    """The files a loader widget's ``value`` stands for: the file itself, or every file of a folder model."""
    return [f for f in FILES if f.directory == directory and (f.name == value or f.name.startswith(value + "/"))]


def where_to_get(directory: str) -> str:
    """One line naming the official files of a folder and where to download them."""
    pages: Dict[str, List[str]] = {}
    for f in FILES:
        if f.directory == directory:
            pages.setdefault(f.page, []).append(f.name.split("/")[0])
    parts = [f"{', '.join(dict.fromkeys(names))} from {page}" for page, names in pages.items()]
    return f"{'; '.join(parts)}, into ComfyUI/models/{directory}/"


def workflow_models(class_type: str, inputs: Dict[str, object]) -> List[Dict[str, str]]:
    """``properties.models`` of a workflow node: ``{name, url, directory}`` for every official file its
    loader widgets select (``url`` left out where there is no direct download: the frontend then still
    shows the file's folder)."""
    entries = []
    for widget, directory in LOADER_WIDGETS.get(class_type, {}).items():
        value = inputs.get(widget)
        if not isinstance(value, str):
            continue
        for f in files_for(directory, value):
            entry = {"name": f.name, "directory": f.directory}
            if f.url:
                entry["url"] = f.url
            entries.append(entry)
    return entries
