"""CVD model nodes: load SD1.5 + AnimateDiff v3 + CameraCtrl + CVD as one CVD_MODEL, and describe it.

Files are read from the folders ComfyUI users already have: ``models/checkpoints`` (SD1.5),
``models/animatediff_models`` (AnimateDiff v3 motion module and adapter; the folder
AnimateDiff-Evolved uses) and ``models/cvd`` (CameraCtrl.ckpt, CVD.ckpt). Pickle checkpoints are
only read with ``torch.load(weights_only=True)`` (inside ``cvd_core.cvd``).
"""

from __future__ import annotations

import json

from cvd_core.cvd import CheckpointKeyError, load_cvd_model
from cvd_core.dtypes import resolve_dtype

from ._comfy import NodeInputError, list_model_entries, register_model_folder, resolve_model_entry
from ._managed import describe as describe_memory
from ._managed import devices, manage, module_of
from ._model_files import where_to_get
from ._schema import Input, NodeSchema, Output, Result

CATEGORY = "CVD/model"
CVD_MODEL = "CVD_MODEL"
WEIGHTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
NONE = "none"

# Where each folder's official files come from (nodes/_model_files.py, the one list of them).
SOURCES = {folder: where_to_get(folder) for folder in ("checkpoints", "animatediff_models", "cvd")}
SOURCES["checkpoints"] = "any Stable Diffusion 1.5 checkpoint, e.g. " + SOURCES["checkpoints"]

register_model_folder("animatediff_models", WEIGHTS)
register_model_folder("cvd", WEIGHTS)


def _choices(folder: str, optional: bool = False):
    def options():
        entries = list_model_entries(folder, WEIGHTS)
        if optional:
            return [NONE] + entries
        return entries or [f"(nothing in models/{folder})"]
    return options


def _path(folder: str, name: str, what: str):
    if name == NONE:
        return None
    if name.startswith("(nothing in"):
        raise NodeInputError(f"no {what} found: download {SOURCES[folder]}, then refresh the node list")
    try:
        return resolve_model_entry(folder, name)
    except NodeInputError as exc:
        raise NodeInputError(f"{exc}. Expected {SOURCES[folder]}") from None


def _run_loader(checkpoint, motion_module, adapter, adapter_scale, cameractrl, cvd, dtype):
    paths = dict(unet=_path("checkpoints", checkpoint, "SD1.5 checkpoint"),
                 motion_module=_path("animatediff_models", motion_module, "AnimateDiff v3 motion module"),
                 adapter=_path("animatediff_models", adapter, "AnimateDiff v3 adapter"),
                 cameractrl=_path("cvd", cameractrl, "CameraCtrl checkpoint"),
                 cvd=_path("cvd", cvd, "CVD checkpoint"))
    # The weights stay on ComfyUI's offload device until a node computes (building a workflow fills no
    # VRAM); the precision is chosen for the device that will compute.
    compute_device, offload_device = devices("cvd_model")
    try:
        model = load_cvd_model(unet=paths["unet"], motion_module=paths["motion_module"], cameractrl=paths["cameractrl"],
                               cvd=paths["cvd"], adapter=paths["adapter"], adapter_scale=adapter_scale,
                               dtype=resolve_dtype(dtype, compute_device), device=offload_device)
    except (CheckpointKeyError, ValueError, KeyError, OSError, RuntimeError) as exc:
        raise NodeInputError(f"could not load the CVD model: {exc}") from None
    model.source_files = {k: v for k, v in paths.items() if v is not None}
    # folder and entry of every file, so torch.distributed workers can find the same files (nodes/_replicas.py)
    model.source_entries = {role: (folder, name) for role, folder, name in
                            (("unet", "checkpoints", checkpoint), ("motion_module", "animatediff_models", motion_module),
                             ("adapter", "animatediff_models", adapter), ("cameractrl", "cvd", cameractrl),
                             ("cvd", "cvd", cvd)) if paths[role] is not None}
    return Result((manage(model, "cvd_model"),))


LOADER = NodeSchema(
    node_id="CVD_ModelLoader",
    display_name="CVD Load Model (SD1.5 + AnimateDiff + CameraCtrl + CVD)",
    category=CATEGORY,
    description=("Loads the CVD backbone from the official files, unchanged: SD1.5, the AnimateDiff v3 motion "
                 "module (and adapter), CameraCtrl and CVD's cross-view modules. cvd = none gives plain "
                 "CameraCtrl. ComfyUI's model management holds the weights like its own."),
    inputs=[
        Input("checkpoint", "COMBO", "SD1.5 checkpoint from models/checkpoints (single file, .safetensors or .ckpt).",
              options=_choices("checkpoints")),
        Input("motion_module", "COMBO", "AnimateDiff v3 motion module (v3_sd15_mm.ckpt) from "
              "models/animatediff_models.", options=_choices("animatediff_models")),
        Input("adapter", "COMBO", "AnimateDiff v3 adapter LoRA (v3_sd15_adapter.ckpt), fused at load; none if the "
                                  "checkpoint has it fused.",
              default=NONE, options=_choices("animatediff_models", optional=True)),
        Input("adapter_scale", "FLOAT", "Strength of the adapter LoRA (1.0 as in CVD).", default=1.0, min=0.0,
              max=2.0, step=0.05),
        Input("cameractrl", "COMBO", "CameraCtrl checkpoint (CameraCtrl.ckpt) from models/cvd: pose encoder and "
              "pose-adaptor attention processors.", options=_choices("cvd")),
        Input("cvd", "COMBO", "CVD.ckpt (cross-view modules) in models/cvd, from the Google Drive link in CVD's "
              "README. none = CameraCtrl only.", options=_choices("cvd", optional=True)),
        Input("dtype", "COMBO", "Precision. auto = fp32 on CPU, fp16/bf16 on GPUs. fp16 halves memory.",
              default="auto", options=["auto", "fp32", "fp16", "bf16"]),
    ],
    outputs=[Output(CVD_MODEL, "cvd_model", "The loaded CVD backbone.")],
    run=_run_loader,
)


def describe_model(cvd_model) -> dict:
    model = module_of(cvd_model)
    counts = model.parameter_counts()
    return {
        "files": getattr(model, "source_files", {}),
        "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "parameters": counts,
        "total_parameters": sum(counts.values()),
        "cross_view_modules": counts.get("cvsm", 0) > 0,
        "memory": describe_memory(cvd_model),
        "load_report": {role: {k: v for k, v in entry.items() if k != "kept_as_built" or v}
                        for role, entry in model.load_report.items()},
    }


def _run_info(cvd_model):
    text = json.dumps(describe_model(cvd_model), indent=2, default=str)
    return Result((text,), ui={"text": [text]})


INFO = NodeSchema(
    node_id="CVD_ModelInfo",
    display_name="CVD Model Info",
    category=CATEGORY,
    description=("What the CVD loader loaded: files, parameter counts per part (SD1.5 UNet, motion modules, "
                 "pose encoder and adaptor, cross-view modules), dtype, device, where ComfyUI holds the weights now "
                 "(memory), and the key report of every file."),
    inputs=[Input("cvd_model", CVD_MODEL, "The model from CVD Load Model.")],
    outputs=[Output("STRING", "info", "A JSON description of the model.")],
    run=_run_info,
    is_output_node=True,
)

SCHEMAS = [LOADER, INFO]
