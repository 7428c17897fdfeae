"""The pack's models under ComfyUI's model management: the one door between a model socket and compute.

Inside ComfyUI a ``CVD_MODEL`` and a ``CVD_CVVAE`` are ``comfy.model_patcher.ModelPatcher`` objects, the
type core's ``MODEL``/``VAE`` and AnimateDiff-Evolved's motion models use. The loaders leave the weights
on ComfyUI's offload device; a node that computes calls :func:`compute_model` (or :func:`computing`),
which asks ComfyUI to load them (``load_models_gpu``): ComfyUI first offloads other models if room is
short and, when the model does not fit at once (``--lowvram``, ``--novram``, a small GPU), keeps part of
it on the offload device and streams those layers in per call. ``POST /free`` with ``unload_models``
(the UI's "Unload models") unloads them like any core model, and the next run loads them again.
Patched copies (MCM LoRA, feature cache) are clones of the patcher: they share the weights and carry
weight patches (low-rank LoRA factors) or attribute patches that ComfyUI applies on load and removes
on unload, so a copy costs its patches, not a second weight set.

Streaming needs layers that can take their weights from elsewhere per call. ComfyUI's own
``comfy.ops`` layer classes do: :func:`make_streamable` swaps the standard torch layers for them (same
parameters and the very same forward while nothing streams; that is why outputs stay bit-identical)
and wraps the pack's own convolutions (``cvd_core.cvvae.layers.WeightSource``) the same way.

Outside ComfyUI (unit tests, scripts) a model socket carries the plain module and everything here
falls back to that: :func:`compute_model` returns the module unchanged.

``GET /cvd/memory`` (registered by :func:`register_routes`) shows model management's own view: what is
loaded, on which device, how large, and how many distinct weight bytes the pack's models hold.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import weakref
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from cvd_core.cvd.model import CVDModel
from cvd_core.cvvae import CVVAEBase
from cvd_core.cvvae.layers import WeightSource

from ._comfy import comfy_available

LOG = logging.getLogger("cvd_multiview")

KINDS = {"cvd_model": CVDModel, "cvvae": CVVAEBase}
"""The pack's managed model kinds and their module classes."""

_TORCH_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "GroupNorm",
                 "LayerNorm", "Embedding")
_STREAMING_CLASSES: Dict[type, type] = {}
_PACK_PATCHERS: "weakref.WeakSet" = weakref.WeakSet()
_ACTIVE: Dict[int, str] = {}  # id(patcher) -> kind, while a node computes with it
_ACTIVE_LOCK = threading.Lock()
MEMORY_ROUTE = "/cvd/memory"


# ------------------------------------------------------------------------------ what a socket holds

def is_managed(value) -> bool:
    """True for a ComfyUI ``ModelPatcher`` (what the pack's model sockets carry inside ComfyUI)."""
    return all(hasattr(value, name) for name in ("model", "patches", "load_device", "offload_device", "clone"))


def module_of(value) -> nn.Module:
    """The module behind a model socket, to read its configuration; compute through :func:`compute_model`.

    (While ComfyUI has a patched copy loaded, the shared module carries that copy's patches.)
    """
    return value.model if is_managed(value) else value


def partially_loaded(value) -> bool:
    """True while ComfyUI keeps part of a managed model's weights on the offload device and streams them in
    (``--lowvram``, ``--novram``, a model larger than the room it has); False outside ComfyUI."""
    if not is_managed(value):
        return False
    return bool(getattr(value.model, "model_lowvram", getattr(value, "model_lowvram", False)))


def kind_of(module) -> Optional[str]:
    return next((kind for kind, cls in KINDS.items() if isinstance(module, cls)), None)


def devices(kind: str) -> Tuple[torch.device, torch.device]:
    """``(compute device, offload device)`` ComfyUI uses for this kind of model (the same device twice
    outside ComfyUI). The CVD backbone follows the UNet's devices, the CV-VAE the VAE's (``--cpu-vae``,
    ``--gpu-only`` and ``--highvram`` apply)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    try:
        import comfy.model_management as mm
    except Exception:
        return torch.device("cpu"), torch.device("cpu")
    if kind == "cvvae":
        return torch.device(mm.vae_device()), torch.device(mm.vae_offload_device())
    return torch.device(mm.get_torch_device()), torch.device(mm.unet_offload_device())


def manage(module: nn.Module, kind: str):
    """Hand a freshly loaded module (on the offload device) to ComfyUI's model management.

    Returns the ``ModelPatcher`` inside ComfyUI, the module itself outside it.
    """
    if not comfy_available():
        return module
    import comfy.model_patcher

    pinned = make_streamable(module)
    if pinned:
        LOG.warning("cvd-multiview: %d layers of the %s cannot be streamed in low-VRAM mode and are always loaded "
                    "whole (%s)", len(pinned), kind, ", ".join(pinned[:5]))
    load_device, offload_device = devices(kind)
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)
    _PACK_PATCHERS.add(patcher)
    return patcher


CARRIED_NOTES = ("mcm_loras",)
"""Attributes the pack's nodes set on a socket value that its patched clones inherit (the MCM LoRA chain
that ``nodes/_replicas.py`` tells torch.distributed workers; ``ModelPatcher.clone`` copies none)."""


def patched_clone(value):
    """A clone of a managed model that shares its weights (ComfyUI's ``ModelPatcher.clone``)."""
    clone = value.clone()
    for name in CARRIED_NOTES:
        if hasattr(value, name):
            setattr(clone, name, getattr(value, name))
    _PACK_PATCHERS.add(clone)
    return clone


# ------------------------------------------------------------------------------ streamable layers

def make_streamable(module: nn.Module) -> List[str]:
    """Swap layer classes for ComfyUI's ``comfy.ops`` equivalents in place; return the layers left as they were.

    ``comfy.ops.disable_weight_init.Linear`` & co. are subclasses of the torch layers with the same
    parameters whose forward *is* the torch forward until ComfyUI marks a layer for streaming
    (``comfy_cast_weights``), when it casts the weight onto the input's device per call (applying
    LoRA patches there). Layers that own parameters but are neither torch layers nor
    ``WeightSource`` convs are returned: they cannot stream (none in the pack's models today).
    """
    import comfy.ops

    table = {getattr(nn, name): getattr(comfy.ops.disable_weight_init, name) for name in _TORCH_LAYERS
             if hasattr(comfy.ops.disable_weight_init, name)}
    pinned = []
    for name, layer in module.named_modules():
        if hasattr(layer, "comfy_cast_weights"):
            continue
        cls = type(layer)
        if cls in table:
            layer.__class__ = table[cls]
        elif isinstance(layer, WeightSource):
            layer.__class__ = _streaming_class(cls)
        elif next(layer.parameters(recurse=False), None) is not None:
            pinned.append(name or type(layer).__name__)
    return pinned


def _streaming_class(cls: type) -> type:
    """``cls`` (a ``WeightSource`` conv) that takes ComfyUI-cast weights when ComfyUI streams it."""
    if cls not in _STREAMING_CLASSES:
        import comfy.ops

        def weights_for(self, x):
            if self.comfy_cast_weights or self.weight_function or self.bias_function:
                weight, bias = comfy.ops.cast_bias_weight(self, x)[:2]
                return weight, bias
            return cls.weights_for(self, x)

        _STREAMING_CLASSES[cls] = type(f"Streaming{cls.__name__}", (cls, comfy.ops.CastWeightBiasOp),
                                       {"weights_for": weights_for, "__module__": __name__})
    return _STREAMING_CLASSES[cls]


def _streams(layer: nn.Module) -> bool:
    return hasattr(layer, "comfy_cast_weights")


def _place_unstreamed(module: nn.Module, device: torch.device) -> None:
    """After a partial load: tensors ComfyUI does not move (buffers such as AnimateDiff's position
    encodings, layers that cannot stream) go to the compute device; a full unload moves them back."""
    for layer in module.modules():
        tensors = list(layer._buffers.items()) + ([] if _streams(layer) else list(layer._parameters.items()))
        for name, tensor in tensors:
            if tensor is None or tensor.device == device:
                continue
            if name in layer._parameters:
                tensor.data = tensor.data.to(device)
            else:
                layer._buffers[name] = tensor.to(device)


# ------------------------------------------------------------------------------ compute

def _load_models_gpu_accepts_minimum() -> bool:
    import comfy.model_management as mm
    return "minimum_memory_required" in inspect.signature(mm.load_models_gpu).parameters


def compute_model(value, memory_required: int = 0, minimum_memory: Optional[int] = None) -> nn.Module:
    """The module on its compute device, loaded by ComfyUI: the one way the pack's nodes get a model to compute.

    ``memory_required``: bytes of activations the computation wants besides the weights (ComfyUI
    offloads other models to make that room, and sizes a partial load to leave it);
    ``minimum_memory``: the least it can work with (ComfyUI 0.3.x then keeps more weights loaded).
    Outside ComfyUI the module is returned as it is.
    """
    if not is_managed(value):
        return value
    import comfy.model_management as mm

    kwargs = {}
    if minimum_memory is not None and _load_models_gpu_accepts_minimum():
        kwargs["minimum_memory_required"] = int(minimum_memory)
    mm.load_models_gpu([value], memory_required=int(memory_required), **kwargs)
    module = value.model
    module.device = value.load_device  # where inputs go, even if part of the weights streams in
    _place_unstreamed(module, torch.device(value.load_device))
    return module


@contextlib.contextmanager
def computing(value, memory_required: int = 0, minimum_memory: Optional[int] = None) -> Iterator[nn.Module]:
    """:func:`compute_model` for the duration of a node's computation (shown as ``computing`` in ``/cvd/memory``)."""
    module = compute_model(value, memory_required, minimum_memory)
    key = id(value)
    with _ACTIVE_LOCK:
        _ACTIVE[key] = kind_of(module) or type(module).__name__
    try:
        yield module
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(key, None)


def free_bytes(device) -> Optional[int]:
    """Free memory on ``device`` as ComfyUI counts it (after what it offloaded); None outside ComfyUI."""
    try:
        import comfy.model_management as mm
    except Exception:
        return None
    return int(mm.get_free_memory(torch.device(device)))


def out_of_memory_types() -> tuple:
    """The exception types ComfyUI treats as out-of-memory (``OOM_EXCEPTION``), plus torch's."""
    types = [t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
             if isinstance(t, type)]
    try:
        import comfy.model_management as mm
        if isinstance(mm.OOM_EXCEPTION, type) and mm.OOM_EXCEPTION is not Exception:
            types.append(mm.OOM_EXCEPTION)
    except Exception:
        pass
    return tuple(types)


def describe(value) -> dict:
    """Where a model socket's weights are and what ComfyUI's model management knows of it."""
    module = module_of(value)
    info = {"managed": is_managed(value), "weights_by_device": _bytes_by_device(_tensors(module))}
    if is_managed(value):
        info.update(load_device=str(value.load_device), offload_device=str(value.offload_device),
                    size_bytes=int(value.model_size()), loaded=_is_loaded(value), patches=len(value.patches),
                    object_patches=sorted(value.object_patches))
    return info


# ------------------------------------------------------------------------------ the memory report

def _tensors(module: nn.Module) -> List[torch.Tensor]:
    return [t for t in list(module.parameters()) + list(module.buffers()) if t is not None]


def _storage_key(tensor: torch.Tensor):
    storage = tensor.untyped_storage()
    return str(tensor.device), storage.data_ptr(), storage.nbytes()


def _distinct(tensors) -> Dict[tuple, int]:
    return {key: key[2] for key in map(_storage_key, tensors) if key[2] > 0}


def _bytes_by_device(tensors) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for (device, _ptr, nbytes) in _distinct(tensors):
        out[device] = out.get(device, 0) + nbytes
    return out


def _tensors_in(obj, depth: int = 0) -> List[torch.Tensor]:
    """Tensors held in a patch or backup entry (tuples, lists, namedtuples, ComfyUI weight adapters)."""
    if depth > 6 or obj is None:
        return []
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors_in(v, depth + 1)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors_in(v, depth + 1)]
    if hasattr(obj, "weights"):  # comfy.weight_adapter.* (ComfyUI 0.3.x)
        return _tensors_in(obj.weights, depth + 1)
    return []


def _loaded_entries() -> list:
    import comfy.model_management as mm
    return list(mm.current_loaded_models)


def _entry_patcher(entry):
    try:
        return entry.model  # a weakref property in ComfyUI 0.3.x, a plain attribute in 2024
    except Exception:
        return None


def _is_loaded(patcher) -> bool:
    return any(_entry_patcher(e) is patcher for e in _loaded_entries())


def _loaded_bytes(patcher) -> int:
    """Weight bytes ComfyUI counts as loaded on the compute device (0 unless this very patcher is loaded:
    clones share one module, and only one of them is loaded at a time)."""
    if not _is_loaded(patcher):
        return 0
    if hasattr(patcher, "loaded_size"):  # ComfyUI 0.3.x keeps the count itself
        return int(patcher.loaded_size())
    load = str(torch.device(patcher.load_device))
    return int(_bytes_by_device(_tensors(patcher.model)).get(load, 0))


def _model_entry(patcher, entry=None) -> dict:
    module = patcher.model
    lowvram = partially_loaded(patcher)
    info = {
        "patcher": f"{id(patcher):x}", "module": f"{id(module):x}", "class": type(module).__name__,
        "pack_kind": kind_of(module), "load_device": str(patcher.load_device),
        "offload_device": str(patcher.offload_device), "size_bytes": int(patcher.model_size()),
        "loaded_bytes": _loaded_bytes(patcher), "weights_by_device": _bytes_by_device(_tensors(module)),
        "lowvram": bool(lowvram), "patches": len(patcher.patches),
        "patch_bytes": sum(_distinct(t for v in patcher.patches.values() for t in _tensors_in(v)).values()),
        "object_patches": sorted(patcher.object_patches),
    }
    if entry is not None:
        info["currently_used"] = getattr(entry, "currently_used", None)
    else:
        info["loaded"] = _is_loaded(patcher)
    return info


def _weight_accounting(patchers) -> dict:
    """Distinct storages behind ``patchers``: their modules' weights, the patches they carry, and ComfyUI's
    backups of patched weights (held while a patched copy is loaded)."""
    modules = {id(p.model): p.model for p in patchers}
    sizes = {id(p.model): int(p.model_size()) for p in patchers}  # ComfyUI's own count (state-dict bytes, cached)
    weights = _distinct(t for m in modules.values() for t in _tensors(m))
    patches = _distinct(t for p in patchers for v in p.patches.values() for t in _tensors_in(v))
    backups = _distinct(t for p in patchers for v in p.backup.values() for t in _tensors_in(v))
    backups = {k: v for k, v in backups.items() if k not in weights}
    by_device: Dict[str, int] = {}
    for (device, _ptr, nbytes) in weights:
        by_device[device] = by_device.get(device, 0) + nbytes
    return {"patchers": len(patchers), "modules": len(modules), "weight_bytes": sum(weights.values()),
            "weight_bytes_by_device": by_device, "patch_bytes": sum(patches.values()),
            "backup_bytes": sum(backups.values()),
            "state_dict_bytes": sum(sizes.values())}


def _pack_modules(patchers) -> list:
    """One entry per module: the patchers (a model and its patched copies) that share it, and their bytes."""
    groups: Dict[int, list] = {}
    for patcher in patchers:
        groups.setdefault(id(patcher.model), []).append(patcher)
    return [{"module": f"{key:x}", "pack_kind": kind_of(group[0].model), **_weight_accounting(group)}
            for key, group in groups.items()]


def _torch_memory(device: torch.device) -> dict:
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    return {"allocated": int(torch.cuda.memory_allocated(device)), "reserved": int(torch.cuda.memory_reserved(device)),
            "max_allocated": int(torch.cuda.max_memory_allocated(device))}


def memory_report() -> dict:
    """Model management's view: every loaded model (core's and the pack's), every live pack model,
    and the distinct weight bytes the pack's models hold (patched copies share their source's)."""
    import comfy.model_management as mm

    device = torch.device(mm.get_torch_device())
    loaded = []
    for entry in _loaded_entries():
        patcher = _entry_patcher(entry)
        if patcher is not None:
            loaded.append(_model_entry(patcher, entry))
    pack = list(_PACK_PATCHERS)
    with _ACTIVE_LOCK:
        active = [{"patcher": f"{key:x}", "kind": kind} for key, kind in _ACTIVE.items()]
    vram_state = getattr(mm, "vram_state", None)
    return {
        "device": str(device), "vram_state": getattr(vram_state, "name", str(vram_state)),
        "free_memory": int(mm.get_free_memory(device)), "total_memory": int(mm.get_total_memory(device)),
        "torch_memory": _torch_memory(device), "loaded_models": loaded,
        "pack_models": [_model_entry(p) for p in pack], "pack_modules": _pack_modules(pack),
        "pack_weights": _weight_accounting(pack), "computing": active,
    }


def register_routes() -> bool:
    """``GET /cvd/memory`` on ComfyUI's server (read-only JSON of :func:`memory_report`); False outside ComfyUI."""
    try:
        from aiohttp import web
        from server import PromptServer
        routes = PromptServer.instance.routes
    except Exception:
        return False
    if any(getattr(route, "path", None) == MEMORY_ROUTE for route in routes):
        return True  # the pack was imported twice: aiohttp refuses a second GET on the same path


    @routes.get(MEMORY_ROUTE)
    async def cvd_memory(request):  # noqa: ARG001 - aiohttp handler signature
        # The prompt worker may load or unload a model meanwhile: retry a torn read once.
        for _ in range(2):
            try:
                return web.json_response(memory_report())
            except Exception as exc:  # noqa: BLE001 - reported to the caller, never raised into the server
                error = f"{type(exc).__name__}: {exc}"
        return web.json_response({"error": error}, status=500)

    return True
