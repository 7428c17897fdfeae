"""One rule for the "auto" | "fp32" | "fp16" | "bf16" precision choice every model loader offers."""

from __future__ import annotations

from typing import Union

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: Union[str, torch.device] = "cpu") -> torch.dtype:
    """Map "auto" | "fp32" | "fp16" | "bf16" (or a ``torch.dtype``; None = "auto") to a dtype for ``device``.

    "auto" is bf16 on CUDA GPUs that support it (fp16's range can overflow in VAE decoders and
    attention), fp16 on other GPUs and MPS, fp32 on the CPU (half precision is slow and partial there).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    name = "auto" if dtype is None else str(dtype).lower().replace("torch.", "")
    if name in DTYPES:
        return DTYPES[name]
    if name != "auto":
        raise ValueError(f"dtype must be 'auto', 'fp32', 'fp16' or 'bf16' (or a torch.dtype), got {dtype!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


class ParameterPlacement:
    """``dtype`` and ``device`` of an ``nn.Module`` read from its parameters (the compute dtype/device).

    ``device`` can be set: a memory manager that keeps part of the weights on another device and
    streams them in (ComfyUI's low-VRAM mode sets ``model.device`` when it loads a model) tells the
    model where to compute that way; inputs then go there, whatever device the first parameter is on.
    """

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        placed = self.__dict__.get("_compute_device")
        return placed if placed is not None else next(self.parameters()).device

    @device.setter
    def device(self, value) -> None:
        self.__dict__["_compute_device"] = None if value is None else torch.device(value)
