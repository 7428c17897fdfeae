"""Where and in which precision the core tests compute: ``CVD_TEST_DEVICE`` and ``CVD_TEST_DTYPES``.

- ``CVD_TEST_DEVICE``: ``cpu`` (default), ``cuda`` (or ``cuda:N``), or both comma-separated
  (``cpu,cuda``). Tests that take the ``compute_device`` fixture are collected once per device kind
  (ids ``cpu`` / ``cuda``); a kind that is not selected skips with a message naming the variable.
  Selecting ``cuda`` where torch sees no GPU fails (the request cannot be honoured silently).
- ``CVD_TEST_DTYPES``: the precisions to run, comma-separated from ``fp32,bf16,fp16``. Default:
  what the device supports: on ``cuda`` fp32, fp16 and bf16 (where the GPU has bf16); on ``cpu``
  fp32, plus bf16 where the CPU has it natively (oneDNN's bf16 kernels: AVX512-BF16, AMX or
  AVX-NE-CONVERT). Elsewhere torch still computes bf16, by conversion and ~25x slower than fp32 for
  a matmul, so it is opt-in there (``CVD_TEST_DTYPES=fp32,bf16``), as fp16 on every CPU is.

On ``cuda`` the fp32 parity tests run with TF32 off (cuDNN convolutions default to TF32 on Ampere
and later, which rounds inputs to 10 mantissa bits: not fp32). Tests never change the setting for
half precision, where TF32 does not apply.
"""

from __future__ import annotations

import os
from typing import List, Tuple

import torch

DEVICE_VAR = "CVD_TEST_DEVICE"
DTYPES_VAR = "CVD_TEST_DTYPES"
DEVICE_KINDS = ("cpu", "cuda")
HALF_NAMES = ("bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def selected_devices() -> List[str]:
    """The device strings named by ``CVD_TEST_DEVICE`` (default ``["cpu"]``), validated."""
    raw = os.environ.get(DEVICE_VAR, "").strip() or "cpu"
    devices = [part.strip() for part in raw.split(",") if part.strip()]
    for device in devices:
        if device.split(":")[0] not in DEVICE_KINDS:
            raise ValueError(f"{DEVICE_VAR} must list devices from {DEVICE_KINDS} (e.g. 'cuda' or 'cpu,cuda'), "
                             f"got {raw!r}")
    return devices


def device_for_kind(kind: str) -> Tuple[str, str]:
    """(device string, '') for a selected kind, or ('', skip reason) when it is not selected."""
    for device in selected_devices():
        if device.split(":")[0] == kind:
            return device, ""
    now = os.environ.get(DEVICE_VAR) or "cpu (default)"
    return "", f"{kind} variant: set {DEVICE_VAR}={kind} to run it (now {DEVICE_VAR}={now})"


def cuda_unavailable_reason() -> str:
    """Why ``cuda`` cannot run here ('' when it can)."""
    if not torch.cuda.is_available():
        return (f"{DEVICE_VAR} selects cuda but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}: a CPU build, or no GPU visible)")
    return ""


def default_dtype_names(device: str) -> List[str]:
    """What the device supports (see the module docstring)."""
    if device.startswith("cuda"):
        names = ["fp32", "fp16"]
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            names.append("bf16")
        return names
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (else torch emulates bf16, slowly)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def selected_dtype_names(device: str) -> List[str]:
    """``CVD_TEST_DTYPES`` (validated) or the device's default list."""
    raw = os.environ.get(DTYPES_VAR, "").strip()
    if not raw:
        return default_dtype_names(device)
    names = []
    for part in raw.split(","):
        name = _ALIASES.get(part.strip().lower(), part.strip().lower())
        if name not in DTYPES:
            raise ValueError(f"{DTYPES_VAR} must list dtypes from {tuple(DTYPES)}, got {raw!r}")
        names.append(name)
    return names


def dtype_skip_reason(name: str, device: str) -> str:
    """'' when dtype ``name`` runs on ``device``, else the skip message naming the variable."""
    if name in selected_dtype_names(device):
        return ""
    now = os.environ.get(DTYPES_VAR) or f"default for {device}: {','.join(default_dtype_names(device))}"
    why = ""
    if device == "cpu" and not os.environ.get(DTYPES_VAR):
        why = ("; this CPU has no native bf16 (emulated, slow)" if name == "bf16"
               else "; fp16 on the CPU is opt-in (partial, slow kernels)")
    return f"{name} on {device}: not in {DTYPES_VAR} ({now}{why}); {DTYPES_VAR}=fp32,bf16,fp16 runs it"


def strict_fp32(device: str) -> None:
    """Make fp32 mean fp32 on CUDA (TF32 off for matmuls and cuDNN convolutions)."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def to_device(value, device, dtype=None):
    """``value`` (a tensor, or a dict/list/tuple of them) on ``device``; floating tensors cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point():
            return value.to(device=device, dtype=dtype)
        return value.to(device=device)
    if isinstance(value, dict):
        return {k: to_device(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, dtype) for v in value)
    return value
