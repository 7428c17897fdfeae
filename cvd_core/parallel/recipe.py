"""How to rebuild the exact CVD model on another machine: the model recipe.

A ``torch.distributed`` worker never receives weights: it reads the same official files from its
own model folders and applies the same patch chain. The recipe names every file by model folder
and entry (as ComfyUI lists them: ``checkpoints/v1-5-pruned-emaonly.safetensors``) with its
SHA-256, and the patches in order:

- ``mcm_lora``: an MCM PEFT adapter (folder or file, with its hash) merged with a strength;
- the feature cache (RepVideo) settings and window target;
- the model's attention settings (epipolar bias, first-frame slope, pose adaptor scale, the CVSM
  chunk budget) and its dtype.

``verify`` compares a worker's files with the recipe before anything is loaded (a mismatch names
the file and both hashes); ``build`` loads and patches. Both are ComfyUI-free: the recipe is
plain JSON, written by ``nodes/_replicas.py`` from the model a node holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..dtypes import DTYPES

MODEL_ROLES = ("unet", "motion_module", "cameractrl", "cvd", "adapter")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json")
SETTINGS = ("first_frame_slope", "bias_mode", "pixel_band", "decay_alpha", "attention_score_budget",
            "pose_adaptor_scale")


class RecipeError(ValueError):
    """A recipe that cannot be rebuilt here (missing file, different hash, unknown patch)."""


# ------------------------------------------------------------------------------ hashing

_HASH_CACHE: Dict[Tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = value
    return value


def entry_sha256(path) -> str:
    """SHA-256 of a model file, or of a model folder's weight and config files (names and contents).

    Hashes are cached per (path, size, modification time), so a 4 GB checkpoint is read once.
    """
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    if not path.is_dir():
        raise RecipeError(f"{path} does not exist")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + _file_sha256(file).encode() + b"\0")
    return digest.hexdigest()


# ------------------------------------------------------------------------------ the recipe

def file_ref(folder: str, name: str, path) -> dict:
    """A recipe entry for ``name`` in model folder ``folder`` (its hash read from ``path``)."""
    return {"folder": folder, "name": name, "sha256": entry_sha256(path)}


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def feature_cache_entry(unet) -> Optional[dict]:
    """The feature-cache patch of a ``CVDUNet`` (None when it has none)."""
    config = getattr(unet, "feature_cache", None)
    if config is None:
        return None
    return {"kind": "feature_cache", "config": {k: _plain(v) for k, v in dataclasses.asdict(config).items()},
            "target": getattr(unet, "feature_cache_target", "layers")}


def model_settings(model) -> dict:
    settings = {name: getattr(model, name) for name in SETTINGS if hasattr(model, name)}
    if settings.get("first_frame_slope") == "random":
        raise RecipeError("first_frame_slope 'random' draws from a generator per call, so ranks would draw "
                          "different slopes: use a fixed slope (or None) to sample on several devices")
    return settings


def make_recipe(files: Mapping[str, dict], dtype: torch.dtype, adapter_scale: float = 1.0,
                patches: Sequence[dict] = (), settings: Optional[Mapping] = None) -> dict:
    """A recipe from file entries (``file_ref``), the model dtype, its patches and settings."""
    unknown = set(files) - set(MODEL_ROLES)
    if unknown:
        raise RecipeError(f"unknown model file roles {sorted(unknown)}; roles are {MODEL_ROLES}")
    for role in ("unet", "motion_module", "cameractrl"):
        if role not in files:
            raise RecipeError(f"the recipe needs the {role} file")
    return {"version": 1, "files": {k: dict(v) for k, v in files.items()},
            "dtype": str(dtype).replace("torch.", ""), "adapter_scale": float(adapter_scale),
            "patches": [dict(p) for p in patches], "settings": dict(settings or {})}


def recipe_digest(recipe: Mapping) -> str:
    """One hash of everything the recipe says (files by hash, patches, settings, dtype)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def _refs(recipe: Mapping) -> List[Tuple[str, dict]]:
    refs = [(role, ref) for role, ref in recipe["files"].items()]
    refs += [(f"patch {n} ({p['kind']})", p["file"]) for n, p in enumerate(recipe.get("patches", []))
             if "file" in p]
    return refs


def resolve(ref: Mapping, roots: Sequence) -> Path:
    """The path of ``ref`` (folder/name) under the first model root that has it."""
    tried = []
    for root in roots:
        candidate = Path(root) / ref["folder"] / ref["name"]
        tried.append(str(candidate))
        if candidate.exists():
            return candidate
    raise RecipeError(f"{ref['folder']}/{ref['name']} is not in this worker's model folders (looked at "
                      f"{', '.join(tried) or 'no folder: pass --models'})")


def verify(recipe: Mapping, roots: Sequence) -> Dict[str, Path]:
    """Resolve and hash every file of the recipe here; raise ``RecipeError`` naming the first mismatch."""
    paths = {}
    for role, ref in _refs(recipe):
        path = resolve(ref, roots)
        found = entry_sha256(path)
        if found != ref["sha256"]:
            raise RecipeError(f"{ref['folder']}/{ref['name']} ({role}) differs from the server's: sha256 "
                              f"{found[:16]}... here ({path}), {ref['sha256'][:16]}... on the server")
        paths[role] = path
    return paths


def build(recipe: Mapping, roots: Sequence, device) -> torch.nn.Module:
    """Load the recipe's files from ``roots`` onto ``device`` and apply its patches, in order."""
    from ..cvd import load_cvd_model
    from ..cvd.network import module_with_feature_cache
    from ..feature_cache import FeatureCacheConfig
    from ..mcm import animatediff_path_map, load_peft_adapter, lora_deltas, merge_lora_into_module

    paths = verify(recipe, roots)
    dtype = DTYPES.get(recipe["dtype"])
    if dtype is None:
        raise RecipeError(f"recipe dtype {recipe['dtype']!r} is not one of {sorted(set(DTYPES))}")
    files = {role: str(paths[role]) for role in recipe["files"]}
    model = load_cvd_model(unet=files["unet"], motion_module=files["motion_module"], cameractrl=files["cameractrl"],
                           cvd=files.get("cvd"), adapter=files.get("adapter"),
                           adapter_scale=float(recipe.get("adapter_scale", 1.0)), dtype=dtype, device=device)
    for n, patch in enumerate(recipe.get("patches", [])):
        kind = patch.get("kind")
        if kind == "mcm_lora":
            state, config = load_peft_adapter(paths[f"patch {n} (mcm_lora)"])
            report = merge_lora_into_module(model.unet.unet, lora_deltas(state, config),
                                            scale=float(patch["strength"]), path_map=animatediff_path_map)
            if not report.applied:
                raise RecipeError(f"the MCM adapter {patch['file']['name']} matched no layer of the model")
        elif kind == "feature_cache":
            model = module_with_feature_cache(model, FeatureCacheConfig(**patch["config"]),
                                              target=patch.get("target", "layers"))
        else:
            raise RecipeError(f"unknown patch kind {kind!r} in the recipe (this worker is older than the server?)")
    for name, value in recipe.get("settings", {}).items():
        if name not in SETTINGS:
            raise RecipeError(f"unknown model setting {name!r} in the recipe")
        setattr(model, name, value)
    return model.eval()


def default_model_roots() -> List[str]:
    """``$CVD_DIST_MODELS`` (``os.pathsep``-separated ComfyUI ``models`` folders)."""
    value = os.environ.get("CVD_DIST_MODELS", "")
    return [p for p in value.split(os.pathsep) if p]
