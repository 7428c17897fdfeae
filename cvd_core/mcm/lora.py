"""Reading PEFT LoRA adapters (MCM's release format) and merging them into torch modules.

MCM ships ``adapter_model.safetensors`` + ``adapter_config.json`` written by PEFT's
``save_pretrained``: keys ``base_model.model.<diffusers module path>.lora_A.weight`` /
``.lora_B.weight``, config ``r``, ``lora_alpha``, ``target_modules`` (and optionally
``rank_pattern``/``alpha_pattern``/``use_rslora``). The merged weight is
``W + scale · (B @ A) · alpha / r``; for convolutions A is ``[r, in, kh, kw]`` and B ``[out, r, 1, 1]``,
so the delta is ``B[:, :, 0, 0] @ A.flatten(1)`` reshaped to ``[out, in, kh, kw]``.

Paths in the adapter are diffusers paths (``UNet2DConditionModel`` / ``UNetMotionModel``).
``merge_lora_into_module`` takes an optional ``path_map`` to reach modules named differently, e.g.
``animatediff_path_map`` for motion modules in the original AnimateDiff naming that CVD uses.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..guards import NonFiniteError, require_finite

PEFT_PREFIX = "base_model.model."
DIFFUSERS_UNET_PREFIX = "unet."

# (down-suffix, up-suffix) key endings we understand, most common first.
_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
             (".lora_down.weight", ".lora_up.weight"))
_NAMED_ADAPTER = re.compile(r"^(?P<path>.+)\.lora_(?P<ab>[AB])\.(?P<name>[A-Za-z0-9_\-]+)\.weight$")

PathMap = Union[Mapping[str, str], Callable[[str], Optional[str]]]


def load_peft_adapter(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Read a PEFT adapter folder (or its ``adapter_model.*`` file): ``(state_dict, config)``.

    Safetensors first; a ``.bin`` is read with ``torch.load(weights_only=True)`` only. A missing
    ``adapter_config.json`` gives ``{}`` (scales then come from ``.alpha`` keys or default to 1).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        candidates = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
        weights = next((c for c in candidates if c.exists()), None)
        if weights is None:
            raise FileNotFoundError(f"no adapter_model.safetensors (or .bin) in {folder}")
    else:
        weights = path
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file
        state_dict = load_file(str(weights))
    else:
        state_dict = torch.load(str(weights), map_location="cpu", weights_only=True)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return state_dict, config


def _strip_prefix(key: str) -> str:
    for prefix in (PEFT_PREFIX, DIFFUSERS_UNET_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_pairs(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Dict[str, torch.Tensor]], Dict[str, float]]:
    """Group keys into ``{module_path: {"A": down, "B": up}}`` plus optional ``.alpha`` values."""
    pairs: Dict[str, Dict[str, torch.Tensor]] = {}
    alphas: Dict[str, float] = {}
    unknown = []
    for raw_key, tensor in state_dict.items():
        key = _strip_prefix(raw_key)
        if key.endswith(".alpha"):
            alphas[key[: -len(".alpha")]] = float(tensor)
            continue
        for down, up in _SUFFIXES:
            if key.endswith(down):
                pairs.setdefault(key[: -len(down)], {})["A"] = tensor
                break
            if key.endswith(up):
                pairs.setdefault(key[: -len(up)], {})["B"] = tensor
                break
        else:
            named = _NAMED_ADAPTER.match(key)  # un-stripped adapter name, e.g. ".lora_A.default.weight"
            if named:
                pairs.setdefault(named["path"], {})[named["ab"]] = tensor
            else:
                unknown.append(raw_key)
    if unknown:
        raise ValueError(f"{len(unknown)} adapter keys are not LoRA A/B weights (e.g. {unknown[:3]}); "
                         "only plain LoRA adapters can be merged (no DoRA, biases or modules_to_save)")
    incomplete = [p for p, ab in pairs.items() if set(ab) != {"A", "B"}]
    if incomplete:
        raise ValueError(f"LoRA modules missing their A or B weight: {incomplete[:3]}")
    return pairs, alphas


def _pattern_value(patterns: Mapping[str, float], path: str, default: float) -> float:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches a path suffix (regex)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return default


def _module_scale(path: str, rank: int, config: Mapping, alphas: Mapping[str, float]) -> float:
    if config:
        if config.get("use_dora"):
            raise ValueError("DoRA adapters (use_dora) cannot be merged as plain LoRA deltas")
        r = _pattern_value(config.get("rank_pattern") or {}, path, config.get("r", rank))
        alpha = _pattern_value(config.get("alpha_pattern") or {}, path, config.get("lora_alpha", r))
        if int(r) != rank:
            raise ValueError(f"adapter_config says rank {r} for {path} but its lora_A has {rank} rows")
        return alpha / (r ** 0.5 if config.get("use_rslora") else r)
    return alphas.get(path, rank) / rank  # no config: kohya/diffusers-style alpha keys, else 1


def _check_chain(a: torch.Tensor, b: torch.Tensor, path: str) -> None:
    if b.shape[1] != a.shape[0] or any(s != 1 for s in b.shape[2:]):
        raise ValueError(f"LoRA shapes for {path} do not chain: A {list(a.shape)}, B {list(b.shape)}")


def _delta(a: torch.Tensor, b: torch.Tensor, path: str) -> torch.Tensor:
    """``B @ A`` for linear (2-d) and conv (A [r,in,*k], B [out,r,1,...]) LoRA weights."""
    _check_chain(a, b, path)
    product = b.flatten(1).float() @ a.flatten(1).float()
    return product.reshape(b.shape[0], *a.shape[1:])


@dataclass(frozen=True)
class LoRAFactors:
    """One module's low-rank update ``delta = (up @ down) · scale`` (conv: ``up[:, :, 0, 0] @ down.flatten(1)``)."""

    down: torch.Tensor  # A: [r, in] or [r, in, kh, kw]
    up: torch.Tensor  # B: [out, r] or [out, r, 1, 1]
    scale: float  # alpha / r (rsLoRA: alpha / sqrt(r))

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def delta_shape(self) -> torch.Size:
        return torch.Size((self.up.shape[0], *self.down.shape[1:]))

    def delta(self, path: str = "") -> torch.Tensor:
        """The float32 delta weight (what :func:`lora_deltas` returns for this module)."""
        return _delta(self.down, self.up, path) * self.scale


def lora_factors(state_dict: Mapping[str, torch.Tensor], config: Optional[Mapping] = None) -> Dict[str, LoRAFactors]:
    """``{diffusers module path: LoRAFactors}``: the adapter's A, B and scale per module, not multiplied out
    (a memory manager can keep these few-rank factors and apply them when it loads the weights)."""
    pairs, alphas = _split_pairs(state_dict)
    config = dict(config or {})
    if config.get("fan_in_fan_out"):
        raise ValueError("fan_in_fan_out adapters (GPT-2 Conv1D layers) do not apply to UNets")
    factors = {}
    for path, ab in sorted(pairs.items()):
        _check_chain(ab["A"], ab["B"], path)
        rank = ab["A"].shape[0]
        for name in ("A", "B"):
            require_finite(ab[name], f"the LoRA factor {name} of {path}",
                           hint="the adapter file is damaged or not a LoRA")
        factors[path] = LoRAFactors(ab["A"], ab["B"], _module_scale(path, rank, config, alphas))
    return factors


def lora_deltas(state_dict: Mapping[str, torch.Tensor], config: Optional[Mapping] = None) -> Dict[str, torch.Tensor]:
    """``{diffusers module path: float32 delta weight}`` with the adapter's alpha/r folded in."""
    return {path: f.delta(path) for path, f in lora_factors(state_dict, config).items()}


@dataclass
class MergeReport:
    """What a merge did: module paths applied, and ``(path, reason)`` for the ones skipped."""

    applied: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and node outputs."""
        reasons: Dict[str, int] = {}
        for _, reason in self.skipped:
            kind = reason.split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        detail = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items()))
        return f"LoRA merged into {len(self.applied)} modules, skipped {len(self.skipped)}" + \
            (f" ({detail})" if detail else "")


def _target_path(path: str, path_map: Optional[PathMap]) -> Optional[str]:
    if path_map is None:
        return path
    if callable(path_map):
        return path_map(path)
    return path_map.get(path, path)


def _shapes_fit(delta_shape, weight_shape) -> bool:
    """Whether a delta reshapes onto the weight: equal, or 1×1 convs and linears (interchangeable)."""
    def core(shape):
        dims = list(shape)
        while len(dims) > 2 and dims[-1] == 1:
            dims.pop()
        return dims

    return tuple(delta_shape) == tuple(weight_shape) or core(delta_shape) == core(weight_shape)


def _fit_delta(delta: torch.Tensor, weight: torch.Tensor) -> Optional[torch.Tensor]:
    """The delta in the weight's shape; 1×1 convs and linears are interchangeable, else None."""
    if delta.shape == weight.shape:
        return delta
    return delta.reshape(weight.shape) if _shapes_fit(delta.shape, weight.shape) else None


def _target_module(root: nn.Module, path: str, delta_shape, path_map: Optional[PathMap]):
    """``(target path, module)`` that ``path``'s delta applies to, or ``(None, reason)`` for the report."""
    target = _target_path(path, path_map)
    if target is None:
        return None, "unmapped: no counterpart in this model"
    try:
        module = root.get_submodule(target)
    except AttributeError:
        return None, f"missing: no module {target}"
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None, f"no weight: {target} is {type(module).__name__}"
    if not _shapes_fit(delta_shape, weight.shape):
        return None, f"shape mismatch: delta {list(delta_shape)} vs weight {list(weight.shape)} at {target}"
    return target, module


def lora_targets(root: nn.Module, delta_shapes: Mapping[str, torch.Size], path_map: Optional[PathMap] = None
                 ) -> Tuple[Dict[str, str], MergeReport]:
    """Where each delta would go, without merging: ``({path: target module path}, report)``.

    The same rules and report as :func:`merge_lora_into_module` (which merges exactly these).
    """
    targets: Dict[str, str] = {}
    report = MergeReport()
    for path, shape in delta_shapes.items():
        target, found = _target_module(root, path, shape, path_map)
        if target is None:
            report.skipped.append((path, found))
            continue
        targets[path] = target
        report.applied.append(path)
    return targets, report


def merged_weight(weight: torch.Tensor, delta: torch.Tensor, scale: float, path: str) -> torch.Tensor:
    """``weight + scale * delta`` in the weight's dtype, computed in at least float32; raises ``NonFiniteError``
    when the result is not finite there (a NaN strength, or a sum past fp16's 65504)."""
    work = torch.promote_types(weight.dtype, torch.float32)  # float32 for half weights, float64 stays float64
    merged = (weight.to(work) + scale * delta.to(weight.device, work)).to(weight.dtype)
    require_finite(merged, f"the merged weight of {path}",
                   hint=f"strength {scale} overflows {str(weight.dtype).replace('torch.', '')}: lower the strength, "
                        "or load the model in bf16 or fp32")
    return merged


def _merge_plan(root: nn.Module, deltas: Mapping[str, torch.Tensor], path_map: Optional[PathMap]):
    """``([(path, weight, fitted delta)], report with the skipped paths)``."""
    report = MergeReport()
    plan = []
    for path, delta in deltas.items():
        target, module = _target_module(root, path, delta.shape, path_map)
        if target is None:
            report.skipped.append((path, module))
            continue
        weight = module.weight
        fitted = _fit_delta(delta, weight)
        if fitted is None:
            report.skipped.append((path, f"shape mismatch: delta {list(delta.shape)} vs weight "
                                         f"{list(weight.shape)} at {target}"))
            continue
        plan.append((path, weight, fitted))
    return plan, report


@torch.no_grad()
def merge_lora_into_module(root: nn.Module, deltas: Mapping[str, torch.Tensor], scale: float = 1.0,
                           path_map: Optional[PathMap] = None) -> MergeReport:
    """Add ``scale · delta`` to the ``weight`` of each addressed submodule of ``root`` in place.

    ``path_map`` (dict or callable; a callable returning None skips the path) maps diffusers paths
    to ``root``'s paths. Modules that are missing, have no weight or a different shape are
    skipped with the reason. The sum is done in (at least) float32 and cast back to the weight's dtype.
    All or nothing: every merged weight is checked to be finite in its dtype before the first one
    is written (``NonFiniteError`` otherwise, and ``root`` is unchanged).
    """
    if not math.isfinite(float(scale)):
        raise NonFiniteError(f"LoRA strength must be a finite number, got {scale}")
    plan, report = _merge_plan(root, deltas, path_map)
    for path, weight, fitted in plan:  # check everything first (computing twice costs less than memory)
        merged_weight(weight, fitted, scale, path)
    for path, weight, fitted in plan:
        weight.copy_(merged_weight(weight, fitted, scale, path))
        report.applied.append(path)
    return report


_MOTION_MODULE = re.compile(r"^(?P<head>(?:down_blocks|up_blocks)\.\d+\.motion_modules\.\d+|"
                            r"mid_block\.motion_modules\.\d+)\.(?P<rest>.+)$")
_MOTION_RENAMES = ((r"\.attn1\.", ".attention_blocks.0."), (r"\.attn2\.", ".attention_blocks.1."),
                   (r"\.norm1$", ".norms.0"), (r"\.norm2$", ".norms.1"), (r"\.norm3$", ".ff_norm"))


def animatediff_path_map(path: str) -> str:
    """diffusers ``UNetMotionModel`` path -> original AnimateDiff path (the names CVD uses).

    Inverse of diffusers' ``convert_animatediff_checkpoint_to_diffusers``: motion modules gain a
    ``temporal_transformer`` level, ``attn1/attn2`` become ``attention_blocks.0/1`` and
    ``norm1/norm2/norm3`` become ``norms.0/norms.1/ff_norm``. Spatial paths are unchanged.
    """
    match = _MOTION_MODULE.match(path)
    if not match or match["rest"].startswith("temporal_transformer."):
        return path  # not a motion module, or already in the AnimateDiff naming
    rest = "." + match["rest"]
    for pattern, replacement in _MOTION_RENAMES:
        rest = re.sub(pattern, replacement, rest)
    return f"{match['head']}.temporal_transformer{rest}"
