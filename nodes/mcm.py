"""MCM few-step nodes: the MCM schedule as SIGMAS, and MCM's PEFT LoRA merged into models.

``CVD_MCMScheduler`` gives the SIGMAS of MCM's timesteps (4 steps: 999, 759, 499, 259). With a core
MODEL connected they come from that model's own sigma table, so the core ``SamplerCustom`` with
``KSamplerSelect(lcm)`` and cfg 1 walks MCM's schedule (LCM multistep sampling: predict x0, re-noise
with fresh noise); the same SIGMAS drive CVD Multi-View Sampler with scheduler = mcm.

MCM releases its LoRAs as PEFT adapters (``adapter_config.json`` + ``adapter_model.safetensors``,
diffusers module paths), which ComfyUI's own LoRA loader cannot read. ``CVD_MCMLoraLoader`` merges
one into a copy of a CVD_MODEL (spatial layers and AnimateDiff motion modules);
``CVD_MCMLoraLoaderModel`` patches a core MODEL (the SD1.5 spatial part) through its ModelPatcher.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from cvd_core.mcm import (BASE_BETA_SCHEDULES, LoRAFactors, MergeReport, animatediff_path_map, load_peft_adapter,
                          lora_factors, lora_targets, mcm_sigmas, mcm_timesteps, merge_lora_into_module, merged_weight)

from ._comfy import NodeInputError, list_model_entries, model_folder_paths, register_model_folder, resolve_model_entry
from ._managed import is_managed, module_of, patched_clone
from ._schema import Input, NodeSchema, Output, Result
from .cvd_model import CVD_MODEL

CATEGORY = "CVD/sampling"
BETA_SCHEDULES = ["auto", "linear", "scaled_linear"]
LORA_FOLDERS = ("mcm", "loras")
ADAPTER_FILES = (".safetensors", ".bin")
NOTHING_FOUND = "(no MCM adapter in models/mcm or models/loras)"
DOWNLOAD_HELP = ("Download an MCM adapter folder (e.g. animatediff-laion: adapter_config.json + "
                 "adapter_model.safetensors) from the Hugging Face repo yhzhai/mcm into ComfyUI/models/mcm/ (or "
                 "models/loras/), then refresh.")

register_model_folder("mcm", ADAPTER_FILES)


# ------------------------------------------------------------------------------ scheduler

def model_sigma_table(model) -> torch.Tensor:
    """The sigma of every training timestep of a core MODEL (ComfyUI 2024: ``model.model.model_sampling``)."""
    getter = getattr(model, "get_model_object", None)
    sampling = getter("model_sampling") if callable(getter) else model.model.model_sampling
    return sampling.sigma(torch.arange(len(sampling.sigmas), dtype=torch.float32)).double().cpu()


def schedule_sigmas(steps: int, beta_schedule: str, denoise: float, model=None) -> Tuple[torch.Tensor, str]:
    """MCM SIGMAS (descending, trailing 0) and a note on which sigma table they come from."""
    timesteps = mcm_timesteps(steps, strength=denoise)
    if beta_schedule == "auto" and model is not None:
        table = model_sigma_table(model)
        if len(table) != 1000:
            raise NodeInputError(f"the model has {len(table)} sigmas; MCM needs a 1000-step discrete model (SD1.5, "
                                 "AnimateDiff)")
        sigmas = torch.cat([table[torch.tensor(timesteps)], torch.zeros(1, dtype=torch.float64)])
        return sigmas, "the model's own sigma table"
    schedule = BASE_BETA_SCHEDULES["animatediff"] if beta_schedule == "auto" else beta_schedule
    return mcm_sigmas(timesteps, schedule), f"the {schedule} beta schedule"


def _run_scheduler(steps, beta_schedule, denoise, model=None):
    try:
        sigmas, source = schedule_sigmas(steps, beta_schedule, denoise, model)
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    text = (f"MCM {steps} steps, timesteps {mcm_timesteps(steps, strength=denoise)}, sigmas from {source}: "
            + ", ".join(f"{float(s):.5f}" for s in sigmas))
    return Result((sigmas.float(),), ui={"text": [text]})


SCHEDULER = NodeSchema(
    node_id="CVD_MCMScheduler",
    display_name="CVD MCM Scheduler (few-step SIGMAS)",
    category=CATEGORY,
    description=("MCM's few-step schedule as SIGMAS (4 steps: timesteps 999, 759, 499, 259) for CVD Multi-View "
                 "Sampler (scheduler mcm, or a core lcm sampler) or for core SamplerCustom + KSampler Select (lcm) at"
                 " cfg 1 on an SD1.5 MODEL with the MCM LoRA."),
    inputs=[
        Input("steps", "INT", "Few-step count MCM is distilled for: 1, 2, 4 or 8 (4 recommended).", default=4, min=1,
              max=8),
        Input("beta_schedule", "COMBO", ("auto: the connected model's table, else linear (AnimateDiff/CVD, MCM's "
                                         "setting). scaled_linear: SD1.5 / ModelScope."), default="auto", options=BETA_SCHEDULES),
        Input("denoise", "FLOAT", "Fraction of MCM's 50-step distillation grid to use (below 1 starts at a lower "
              "noise level, for video-to-video).", default=1.0, min=0.02, max=1.0, step=0.01),
        Input("model", "MODEL", "Optional core MODEL whose sigma table to use (beta_schedule auto).", optional=True),
    ],
    outputs=[Output("SIGMAS", "sigmas", "MCM's sigmas, descending, ending in 0.")],
    run=_run_scheduler,
)


# ------------------------------------------------------------------------------ adapters

def adapter_choices() -> List[str]:
    entries = []
    for folder in LORA_FOLDERS:
        entries += list_model_entries(folder, ADAPTER_FILES, folder_markers=("adapter_config.json",))
    return sorted(set(entries)) or [NOTHING_FOUND]


def read_adapter(lora_name: str) -> Dict[str, torch.Tensor]:
    """Deltas ``{diffusers module path: tensor}`` of the adapter ``lora_name`` (alpha/r folded in)."""
    return {path: f.delta(path) for path, f in read_adapter_factors(lora_name).items()}


def read_adapter_factors(lora_name: str) -> Dict[str, LoRAFactors]:
    """The low-rank factors ``{diffusers module path: LoRAFactors}`` of the adapter ``lora_name``."""
    if lora_name == NOTHING_FOUND:
        raise NodeInputError(f"no MCM adapter found. {DOWNLOAD_HELP}")
    path = None
    for folder in LORA_FOLDERS:
        try:
            path = resolve_model_entry(folder, lora_name)
            break
        except NodeInputError:
            continue
    if path is None:
        searched = ", ".join(p for f in LORA_FOLDERS for p in model_folder_paths(f)) or "no folder registered"
        raise NodeInputError(f"{lora_name!r} not found in models/mcm or models/loras ({searched}). {DOWNLOAD_HELP}")
    try:
        state_dict, config = load_peft_adapter(path)
        return lora_factors(state_dict, config)
    except (ValueError, OSError, RuntimeError, json.JSONDecodeError) as exc:
        raise NodeInputError(f"could not read the adapter {lora_name!r}: {exc}") from None


def _report_text(report: MergeReport, target: str) -> str:
    lines = [f"{target}: {report.summary()}"]
    lines += [f"  skipped {path}: {reason}" for path, reason in report.skipped[:20]]
    if len(report.skipped) > 20:
        lines.append(f"  ... and {len(report.skipped) - 20} more")
    return "\n".join(lines)


def _require_applied(report: MergeReport, lora_name: str, target: str) -> None:
    if not report.applied:
        example = report.skipped[0] if report.skipped else ("(no keys)", "")
        raise NodeInputError(f"no layer of {lora_name!r} matched the {target} (first: {example[0]}: {example[1]}); "
                             "is it an MCM adapter for AnimateDiff / SD1.5 (PEFT, diffusers module paths)?")


def merged_copy(cvd_model, deltas: Mapping[str, torch.Tensor], strength: float):
    """A copy of ``cvd_model`` with the deltas merged; the input model is left untouched.

    Only the weights that receive a delta are copied; every other parameter and buffer is
    shared with the input (the deep copy's memo maps them to themselves), so the copy costs the
    memory of the patched layers only.
    """
    root = cvd_model.unet.unet
    patched = set()
    for path in deltas:
        try:
            module = root.get_submodule(animatediff_path_map(path))
        except AttributeError:
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            patched.add(id(weight))
    memo = {id(t): t for t in list(cvd_model.parameters()) + list(cvd_model.buffers()) if id(t) not in patched}
    model = copy.deepcopy(cvd_model, memo)
    report = merge_lora_into_module(model.unet.unet, deltas, scale=strength, path_map=animatediff_path_map)
    return model, report


def _comfy_alpha(scale: float, rank: int) -> Optional[float]:
    """An ``alpha`` for which ComfyUI's ``alpha / rank`` is exactly ``scale`` (None if no double is)."""
    first = scale * rank
    for alpha in (first, math.nextafter(first, math.inf), math.nextafter(first, -math.inf)):
        if alpha / rank == scale:
            return alpha
    return None


def lora_patches(factors: Mapping[str, LoRAFactors], targets: Mapping[str, str], prefix: str) -> Dict[str, object]:
    """ComfyUI weight patches ``{state-dict key: patch}`` in the running ComfyUI's own LoRA format.

    Built by ComfyUI's LoRA reader (``comfy.lora.load_lora``) from the few-rank factors, so the patch
    keeps ``up``/``down`` only (not a full-size delta) and ComfyUI computes
    ``W + strength * (alpha / rank) * (up @ down)`` when it loads the weights: at strength 1 that is
    bit for bit :func:`merged_copy`'s ``W + strength * ((up @ down) * scale)``; at other strengths the
    two products round differently in the last bit. A module whose scale no ``alpha / rank`` matches
    exactly keeps a full delta ("diff" patch).
    """
    import comfy.lora

    lora, to_load, diffs = {}, {}, {}
    for path, target in targets.items():
        f = factors[path]
        key = f"{prefix}{target}.weight"
        alpha = _comfy_alpha(f.scale, f.rank)
        if alpha is None:
            diffs[key] = ("diff", (f.delta(path),))
            continue
        lora[f"{path}.lora_up.weight"] = f.up
        lora[f"{path}.lora_down.weight"] = f.down
        lora[f"{path}.alpha"] = torch.tensor(alpha, dtype=torch.float64)
        to_load[path] = key
    patches = comfy.lora.load_lora(lora, to_load)
    patches.update(diffs)
    return patches


def lora_patched_copy(cvd_model, factors: Mapping[str, LoRAFactors], strength: float):
    """A clone of a managed CVD model with the LoRA as ComfyUI weight patches (the weights stay shared)."""
    root = module_of(cvd_model).unet.unet
    targets, report = lora_targets(root, {p: f.delta_shape for p, f in factors.items()}, animatediff_path_map)
    for path, target in targets.items():  # ComfyUI merges when it loads the model: refuse non-finite sums now
        merged_weight(root.get_submodule(target).weight, factors[path].delta(path), strength, target)
    patches = lora_patches(factors, targets, prefix="unet.unet.")
    clone = patched_clone(cvd_model)
    added = clone.add_patches(patches, strength)
    missing = sorted(set(patches) - set(added))
    if missing:
        raise NodeInputError(f"ComfyUI did not accept the LoRA patch for {missing[0]} (and {len(missing) - 1} more)")
    return clone, report


def _run_lora_cvd(cvd_model, lora_name, strength):
    factors = read_adapter_factors(lora_name)
    if is_managed(cvd_model):
        model, report = lora_patched_copy(cvd_model, factors, strength)
    else:
        model, report = merged_copy(cvd_model, {p: f.delta(p) for p, f in factors.items()}, strength)
    _require_applied(report, lora_name, "CVD model")
    # every merge in order (chained loaders), so torch.distributed workers rebuild the same weights; on the
    # socket value (a patched clone shares its module with the unpatched model)
    model.mcm_loras = list(getattr(cvd_model, "mcm_loras", ())) + [{"name": lora_name, "strength": strength}]
    text = _report_text(report, "CVD model")
    return Result((model, text), ui={"text": [text]})


LORA_CVD = NodeSchema(
    node_id="CVD_MCMLoraLoader",
    display_name="CVD MCM LoRA Loader (CVD model)",
    category=CATEGORY,
    description=("Merges an MCM LoRA (yhzhai/mcm, e.g. animatediff-laion) into a copy of the CVD model as ComfyUI "
                 "weight patches (spatial layers and motion modules; the weights are shared). Reports applied and "
                 "skipped layers. Then sample with scheduler mcm, 4 steps, cfg 1."),
    inputs=[
        Input("cvd_model", CVD_MODEL, "The backbone from CVD Load Model."),
        Input("lora_name", "COMBO", ("An MCM adapter folder (adapter_config.json + adapter_model.safetensors) in "
                                     "models/mcm or models/loras."), options=adapter_choices),
        Input("strength", "FLOAT", "Multiplier of the LoRA delta (1.0 as MCM was trained).", default=1.0, min=-2.0,
              max=2.0, step=0.05),
    ],
    outputs=[Output(CVD_MODEL, "cvd_model", "A copy of the model with the LoRA merged."),
             Output("STRING", "report", "Applied and skipped layers.")],
    run=_run_lora_cvd,
)


# ------------------------------------------------------------------------------ core MODEL

def core_model_patches(deltas: Mapping[str, torch.Tensor], diffusers_to_ldm: Mapping[str, str],
                       model_shapes: Mapping[str, torch.Size], prefix: str = "diffusion_model.",
                       ) -> Tuple[Dict[str, tuple], MergeReport]:
    """ComfyUI "diff" patches ``{ldm key: (delta,)}`` for the deltas that map to a weight of the model.

    ``diffusers_to_ldm``: ``comfy.utils.unet_to_diffusers(unet_config)`` (diffusers key -> LDM key
    without the ``diffusion_model.`` prefix); ``model_shapes``: the model's state-dict shapes.
    Linear deltas reach SD1.5's 1x1 ``proj_in``/``proj_out`` convolutions by reshaping.
    """
    patches: Dict[str, tuple] = {}
    report = MergeReport()
    for path, delta in deltas.items():
        ldm = diffusers_to_ldm.get(f"{path}.weight")
        if ldm is None:
            reason = "motion module: not in an image MODEL" if "motion_modules" in path else "unmapped"
            report.skipped.append((path, f"{reason}: no SD1.5 counterpart"))
            continue
        key = prefix + ldm
        shape = model_shapes.get(key)
        if shape is None:
            report.skipped.append((path, f"missing: no weight {key} in the model"))
            continue
        if delta.numel() != torch.Size(shape).numel():
            report.skipped.append((path, f"shape mismatch: delta {list(delta.shape)} vs weight {list(shape)}"))
            continue
        patches[key] = (delta.reshape(shape),)
        report.applied.append(path)
    return patches, report


def _run_lora_model(model, lora_name, strength):
    import comfy.utils  # only reachable inside ComfyUI: a MODEL exists only there

    deltas = read_adapter(lora_name)
    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    weights = model.model.state_dict()
    patches, report = core_model_patches(deltas, mapping, {k: v.shape for k, v in weights.items()})
    _require_applied(report, lora_name, "MODEL")
    for key, (delta,) in patches.items():  # ComfyUI merges when it loads the model: refuse non-finite sums now
        merged_weight(weights[key], delta, strength, key)
    patched = model.clone()
    patched.add_patches(patches, strength)
    text = _report_text(report, "MODEL")
    return Result((patched, text), ui={"text": [text]})


LORA_MODEL = NodeSchema(
    node_id="CVD_MCMLoraLoaderModel",
    display_name="CVD MCM LoRA Loader (MODEL)",
    category=CATEGORY,
    description=("Applies an MCM LoRA (PEFT, diffusers paths, which core's LoRA loader cannot read) to a core SD1.5 "
                 "MODEL as weight patches; only spatial layers apply. Sample with CVD MCM Scheduler + SamplerCustom +"
                 " KSampler Select (lcm), cfg 1."),
    inputs=[
        Input("model", "MODEL", "A core SD1.5 MODEL (e.g. from Load Checkpoint)."),
        Input("lora_name", "COMBO", "An MCM adapter folder or file in models/mcm or models/loras.",
              options=adapter_choices),
        Input("strength", "FLOAT", "Multiplier of the LoRA delta.", default=1.0, min=-2.0, max=2.0, step=0.05),
    ],
    outputs=[Output("MODEL", "model", "The model with the LoRA patches added."),
             Output("STRING", "report", "Applied and skipped layers.")],
    run=_run_lora_model,
)

SCHEMAS = [SCHEDULER, LORA_CVD, LORA_MODEL]
