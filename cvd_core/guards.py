"""Run-time guards against non-finite values (NaN, infinity).

A NaN never announces itself: it flows through every later operation, and a video of NaN frames is
saved as black or noise. The core checks where one can appear (the sampler's steps, LoRA merges,
decoders, writers) and stops there with ``NonFiniteError`` saying what and where.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


class NonFiniteError(ValueError):
    """Values that must be finite hold NaN or infinity; the message names what, where and why."""


def precision_hint(dtype: Any = None) -> str:
    """The likely cause of a non-finite value in a model, for a model computing in ``dtype``."""
    if str(dtype) in ("torch.float16", "float16"):
        return ("the model computes in half precision (fp16), the likely cause (fp16 overflows above 65504): "
                "load it in bf16 or fp32")
    shown = str(dtype).replace("torch.", "") if dtype is not None else "its dtype"
    return (f"likely causes: half precision (fp16) overflow (load the model in bf16 or fp32; this one computes in "
            f"{shown}), or NaN in the weights or inputs")


def first_non_finite(values: Any) -> Optional[Sequence[int]]:
    """Index of the first NaN or infinite element of a tensor or array, or None when all are finite."""
    if hasattr(values, "isfinite") and hasattr(values, "is_floating_point"):  # a torch tensor (torch not imported)
        if not values.is_floating_point() and not values.is_complex():
            return None
        bad = ~values.isfinite()
        if not bool(bad.any()):
            return None
        return [int(i) for i in bad.nonzero()[0]]
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating)):
        return None
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    return [int(i) for i in np.argwhere(bad)[0]]


def require_finite(values: Any, what: str, axes: Sequence[str] = (), hint: str = "") -> None:
    """Raise ``NonFiniteError`` when ``values`` hold NaN or infinity.

    The message follows the pack's rule format: ``<what> must be finite, got nan at view 1, frame 3;
    <hint>``. ``axes`` names the leading dimensions for "at ..."; ``hint`` says what to do.
    """
    index = first_non_finite(values)
    if index is None:
        return
    value = float(values[tuple(index)])
    where = ", ".join(f"{name} {i}" for name, i in zip(axes, index))
    raise NonFiniteError(f"{what} must be finite, got {value}{f' at {where}' if where else ''}"
                         f"{f'; {hint}' if hint else ''}")
