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


# The check walks big inputs in slices of this many elements: its boolean temporaries stay a few MB
# even for a 4-view x 128-frame IMAGE batch (1.6 GB at 512x512), which a whole-tensor isfinite would
# double-count in memory.
CHECK_CHUNK_ELEMENTS = 1 << 22


def first_non_finite(values: Any) -> Optional[Sequence[int]]:
    """Index of the first NaN or infinite element of a tensor or array, or None when all are finite."""
    if hasattr(values, "isfinite") and hasattr(values, "is_floating_point"):  # a torch tensor (torch not imported)
        if not values.is_floating_point() and not values.is_complex():
            return None
        return _first_bad(values, values.numel())
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating)):
        return None
    return _first_bad(array, array.size)


def _first_bad(values: Any, count: int) -> Optional[Sequence[int]]:
    """``first_non_finite`` slice by slice along the leading axis, so no temporary grows with the input."""
    if values.ndim == 0 or count <= CHECK_CHUNK_ELEMENTS:
        return _first_bad_whole(values)
    rows = values.shape[0]
    per_row = count // rows if rows else 0
    if per_row > CHECK_CHUNK_ELEMENTS:  # one row is already big: search inside each row
        for row in range(rows):
            found = _first_bad(values[row], per_row)
            if found is not None:
                return [row, *found]
        return None
    step = max(1, CHECK_CHUNK_ELEMENTS // max(per_row, 1))
    for start in range(0, rows, step):
        found = _first_bad_whole(values[start:start + step])
        if found is not None:
            return [found[0] + start, *found[1:]]
    return None


def _first_bad_whole(values: Any) -> Optional[Sequence[int]]:
    if hasattr(values, "isfinite"):
        if bool(values.isfinite().all()):
            return None
        return [int(i) for i in (~values.isfinite()).nonzero()[0]]
    if np.isfinite(values).all():
        return None
    return [int(i) for i in np.argwhere(~np.isfinite(values))[0]]


def require_finite(values: Any, what: str, axes: Sequence[str] = (), hint: str = "",
                   offset: Sequence[int] = ()) -> None:
    """Raise ``NonFiniteError`` when ``values`` hold NaN or infinity.

    The message follows the pack's rule format: ``<what> must be finite, got nan at view 1, frame 3;
    <hint>``. ``axes`` names the leading dimensions for "at ..."; ``hint`` says what to do; ``offset``
    is added to the reported index, for ``values`` that are one block of a larger whole.
    """
    index = first_non_finite(values)
    if index is None:
        return
    value = float(values[tuple(index)])
    shifted = [i + (offset[k] if k < len(offset) else 0) for k, i in enumerate(index)]
    where = ", ".join(f"{name} {i}" for name, i in zip(axes, shifted))
    raise NonFiniteError(f"{what} must be finite, got {value}{f' at {where}' if where else ''}"
                         f"{f'; {hint}' if hint else ''}")
