"""Import the official CV-VAE / CVD implementations from a local checkout the user provides.

Nothing of the official code is copied into this project: ``--official-src DIR`` points at a
clone of https://github.com/AILab-CVC/CV-VAE (commit 375f18a checked) or
https://github.com/CollaborativeVideoDiffusion/CVD (commit 107f299 checked), and the modules are
imported from there, in this process, for side-by-side timing on the same weights and inputs.

Shims (injected into this process only; the checkout is not modified), each listed in ``NOTES``
when it was applied so the benchmarks print what ran:

- **xformers** (CV-VAE): the official attention blocks call ``xformers.ops.memory_efficient_attention``
  unconditionally. Without xformers a stand-in module with the same contract is registered:
  softmax(q kᵀ / √K) v on ``[B, M, K]`` or ``[B, M, H, K]`` tensors, no bias, through
  ``torch.nn.functional.scaled_dot_product_attention``.
- **diffusers module moves** (CVD, written for diffusers 0.24): ``diffusers.models.unet_2d_condition``,
  ``unet_2d_blocks``, ``transformer_2d``, ``dual_transformer_2d`` and ``vae`` moved into
  ``diffusers.models.unets`` / ``transformers`` / ``autoencoders`` (0.26+); the old names are
  aliased to the new modules.
- **USE_PEFT_BACKEND** (CVD): the official processors pass a LoRA ``scale`` to ``attn.to_q(x, scale)``
  unless diffusers' PEFT backend is on; since diffusers 0.26 those layers are plain ``nn.Linear``
  taking one argument. The official module's flag is set to True, so it calls ``to_q(x)``: the same
  computation, as no LoRA is attached (scale 1).
"""

from __future__ import annotations

import importlib
import inspect
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import List, Tuple

import torch
import torch.nn.functional as F

NOTES: List[str] = []

_DIFFUSERS_MOVES = {
    "diffusers.models.unet_2d_condition": "diffusers.models.unets.unet_2d_condition",
    "diffusers.models.unet_2d_blocks": "diffusers.models.unets.unet_2d_blocks",
    "diffusers.models.transformer_2d": "diffusers.models.transformers.transformer_2d",
    "diffusers.models.dual_transformer_2d": "diffusers.models.transformers.dual_transformer_2d",
    "diffusers.models.vae": "diffusers.models.autoencoders.vae",
}


def _note(text: str) -> None:
    if text not in NOTES:
        NOTES.append(text)


# ---------------------------------------------------------------- xformers stand-in

def sdpa_memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):
    """``xformers.ops.memory_efficient_attention``'s contract on SDPA: [B,M,K] or [B,M,H,K] in, same out."""
    if attn_bias is not None or p:
        raise NotImplementedError("the SDPA stand-in for xformers supports attn_bias=None and p=0 only "
                                  "(all the official CV-VAE uses)")
    if query.dim() == 3:
        out = F.scaled_dot_product_attention(query[:, None], key[:, None], value[:, None], scale=scale)
        return out[:, 0]
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                         scale=scale)
    return out.transpose(1, 2)


def _xformers_stand_in() -> dict:
    """``sys.modules`` entries to add while the official package imports ({} when xformers is installed)."""
    try:
        import xformers.ops  # noqa: F401
        _note(f"xformers {sys.modules['xformers'].__version__} (real) for the official CV-VAE attention")
        return {}
    except ImportError:
        pass
    package = types.ModuleType("xformers")
    package.__version__ = "0.0.24"  # the official code compares versions; >= 0.0.21 takes its batch-split path
    package.__spec__ = importlib.machinery.ModuleSpec("xformers", None)
    ops = types.ModuleType("xformers.ops")
    ops.__spec__ = importlib.machinery.ModuleSpec("xformers.ops", None)
    ops.memory_efficient_attention = sdpa_memory_efficient_attention
    package.ops = ops
    _note("xformers is not installed: the official CV-VAE attention ran on a stand-in with xformers' "
          "memory_efficient_attention contract over torch scaled_dot_product_attention")
    return {"xformers": package, "xformers.ops": ops}


# ---------------------------------------------------------------- diffusers aliases

class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):  # noqa: D102
        if name in _DIFFUSERS_MOVES and importlib.util.find_spec(_DIFFUSERS_MOVES[name]) is not None:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):  # noqa: D102
        _note(f"diffusers alias {spec.name} -> {_DIFFUSERS_MOVES[spec.name]} (module moved after 0.24)")
        return importlib.import_module(_DIFFUSERS_MOVES[spec.name])

    def exec_module(self, module):  # noqa: D102
        pass


def _ensure_diffusers_aliases() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


# ---------------------------------------------------------------- loaders

def _checked(src, marker: str, repo: str) -> Path:
    src = Path(src).expanduser().resolve()
    if not (src / marker).is_file():
        raise FileNotFoundError(f"--official-src {src} is not a checkout of {repo}: {marker} is missing "
                                f"(git clone https://github.com/{repo})")
    return src


def load_official_cvvae_package(src) -> types.ModuleType:
    """The checkout's ``models`` package (``modeling_vae.CVVAEModel``, ``CVVAESD3Model``) as ``_official_cvvae``."""
    src = _checked(src, "models/modeling_vae.py", "AILab-CVC/CV-VAE")
    if "_official_cvvae.modeling_vae" in sys.modules:
        return sys.modules["_official_cvvae.modeling_vae"]
    # The stand-in is visible only while the official modules import (they keep their own reference),
    # so nothing else in this process (diffusers' own xformers probe, for one) ever sees it.
    import diffusers.models.autoencoders.vae  # noqa: F401  (diffusers probes its optional packages once, here)
    import diffusers.models.modeling_utils  # noqa: F401

    stand_in = _xformers_stand_in()
    sys.modules.update(stand_in)
    try:
        spec = importlib.util.spec_from_file_location("_official_cvvae", src / "models" / "__init__.py",
                                                      submodule_search_locations=[str(src / "models")])
        package = importlib.util.module_from_spec(spec)
        sys.modules["_official_cvvae"] = package
        spec.loader.exec_module(package)
        return importlib.import_module("_official_cvvae.modeling_vae")
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)


def official_cvvae_like(ours) -> torch.nn.Module:
    """The official model class of ``ours``'s variant, same config and weights, same device and dtype."""
    module = sys.modules.get("_official_cvvae.modeling_vae")
    if module is None:
        raise RuntimeError("call load_official_cvvae_package(src) first")
    cls = module.CVVAEModel if ours.variant == "z4" else module.CVVAESD3Model
    accepted = inspect.signature(cls.__init__).parameters
    official = cls(**{k: v for k, v in ours.config.items() if k in accepted})
    official.load_state_dict(ours.state_dict(), strict=True)  # same key names: raises on any mismatch
    return official.to(device=ours.device, dtype=ours.dtype).eval().requires_grad_(False)


def load_official_cvd(src) -> Tuple[type, type]:
    """``(UNet3DConditionModelPoseCond, CameraPoseEncoder)`` from a CVD checkout (shims above)."""
    src = _checked(src, "animatediff/models/unet.py", "CollaborativeVideoDiffusion/CVD")
    _ensure_diffusers_aliases()
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    processors = importlib.import_module("animatediff.models.attention_processor")
    if not processors.USE_PEFT_BACKEND:
        processors.USE_PEFT_BACKEND = True
        _note("official attention processors: USE_PEFT_BACKEND set so to_q/to_k/to_v take no LoRA scale "
              "argument (diffusers >= 0.26 layers are nn.Linear; no LoRA attached, same computation)")
    unet = importlib.import_module("animatediff.models.unet")
    pose = importlib.import_module("animatediff.models.pose_adaptor")
    return unet.UNet3DConditionModelPoseCond, pose.CameraPoseEncoder
