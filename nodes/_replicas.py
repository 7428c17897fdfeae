"""Copies of a CVD_MODEL for the multi-device sampler: local replicas and the recipe for remote ones.

The one place that makes and frees replicas, so that it can follow the model's lifetime rules:

- ``replicas_for(value, model, devices)``: one denoiser per device. ``value`` is the socket value
  (inside ComfyUI a ``ModelPatcher``; its patched clones share one module, so the cache is keyed
  by the socket value, not the module), ``model`` its module as ComfyUI loaded it for this run
  (patches applied). A device the model already computes on uses the model itself (shared
  weights); any other device gets a replica (``replica_on``) of the loaded weights, made once per
  (value, device) and cached. The cache holds no reference to the value: a ``weakref.finalize``
  drops its replicas when ComfyUI frees it (its node output leaves the cache, or the workflow
  changes), and ``free_replicas()`` drops them all. A model ComfyUI loaded only partly (low VRAM:
  part of it streams from the offload device) cannot be copied whole and is refused.
- ``model_recipe(value, model)``: what a ``torch.distributed`` worker needs to rebuild the same model
  from its own model folders (files by folder and name with their SHA-256, the MCM LoRA chain, the
  feature-cache settings, the attention settings and the dtype).
"""

from __future__ import annotations

import threading
import weakref
from typing import Dict, List

import torch

from cvd_core.parallel.recipe import RecipeError, feature_cache_entry, file_ref, make_recipe, model_settings
from cvd_core.parallel.replicas import replica_on

from ._comfy import NodeInputError, resolve_model_entry
from ._managed import partially_loaded

_REPLICAS: Dict[int, Dict[str, torch.nn.Module]] = {}
_LOCK = threading.Lock()
LORA_FOLDERS = ("mcm", "loras")  # read_adapter's search order (nodes/mcm.py)


def _forget(key: int) -> None:
    with _LOCK:
        _REPLICAS.pop(key, None)


def replicas_for(value, model, devices) -> List[torch.nn.Module]:
    """The denoiser for each of ``devices`` (the model itself where it already computes)."""
    out = []
    for device in devices:
        device = torch.device(device)
        if device == model.device:
            out.append(model)
            continue
        if partially_loaded(value):
            raise NodeInputError(f"devices: ComfyUI keeps part of this CVD model off {model.device} (low VRAM mode or "
                                 f"too little room), so it cannot be copied to {device}; run on one device, or free "
                                 "memory / start ComfyUI without --lowvram / --novram")
        key = id(value)
        with _LOCK:
            known = _REPLICAS.get(key)
            if known is None:
                known = _REPLICAS[key] = {}
                weakref.finalize(value, _forget, key)
            replica = known.get(str(device))
        if replica is None:
            replica = replica_on(model, device)  # outside the lock: copying weights takes a while
            with _LOCK:
                replica = _REPLICAS.setdefault(key, {}).setdefault(str(device), replica)
        out.append(replica)
    return out


def cached_replicas(value) -> List[str]:
    """Devices that hold a replica of the socket value ``value`` now (for tests and diagnostics)."""
    with _LOCK:
        return sorted(_REPLICAS.get(id(value), {}))


def free_replicas() -> None:
    with _LOCK:
        _REPLICAS.clear()


# ------------------------------------------------------------------------------ remote replicas

def _lora_ref(name: str) -> dict:
    for folder in LORA_FOLDERS:
        try:
            return file_ref(folder, name, resolve_model_entry(folder, name))
        except NodeInputError:
            continue
    raise NodeInputError(f"the MCM adapter {name!r} merged into this model is no longer in models/mcm or "
                         "models/loras, so workers cannot be told how to rebuild the model")


def model_recipe(value, model=None) -> dict:
    """The recipe of a model from CVD Load Model (+ MCM LoRA Loader / Feature Cache Enhancer): ``value`` the
    socket value (it carries the LoRA chain), ``model`` its loaded module (default: ``value`` itself)."""
    model = value if model is None else model
    entries = getattr(model, "source_entries", None)
    paths = getattr(model, "source_files", {})
    if not entries:
        raise NodeInputError("devices 'workers': this CVD_MODEL does not say which files it was loaded from (load it "
                             "with CVD Load Model), so workers cannot rebuild it")
    try:
        files = {role: file_ref(folder, name, paths[role]) for role, (folder, name) in entries.items()}
        patches = [{"kind": "mcm_lora", "file": _lora_ref(lora["name"]), "strength": float(lora["strength"])}
                   for lora in getattr(value, "mcm_loras", ())]
        cache = feature_cache_entry(model.unet)
        if cache is not None:
            patches.append(cache)
        adapter = getattr(model, "load_report", {}).get("adapter", {})
        return make_recipe(files, model.dtype, float(adapter.get("scale", 1.0)), patches, model_settings(model))
    except (RecipeError, OSError, KeyError) as exc:
        raise NodeInputError(f"devices 'workers': cannot describe the model for the workers: {exc}") from None
