"""Laying the rows of one denoising iteration out into denoiser calls.

The denoiser batch follows the CVD fixture layout (``fixtures/cvd_backbone/README.md``): rows are
(view, CFG branch), branch 0 = unconditional, 1 = conditional, and ``partner[b]`` is the row whose
same-index frames give row b's CVSM keys and values; it keeps the branch. A pair (i, j) with CFG is
therefore four rows ``[uncond-i, cond-i, uncond-j, cond-j]`` with partners ``[2, 3, 0, 1]``.

The unit that must stay inside one call is a pair *for one branch* (two rows that attend to each
other): unconditional rows never look at conditional ones, so a memory-tight ``max_batch`` of 2
still works. Units are packed greedily in pair order, so the work and the accumulation order per
view are the same for every ``max_batch``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from .pairing import Pair


@dataclass(frozen=True)
class Row:
    """One denoiser batch row: ``view`` under CFG ``branch``; ``pair`` indexes the step's pairs."""

    view: int
    branch: int
    pair: Optional[int]


@dataclass
class CallPlan:
    """The rows of one denoiser call and, per row, its partner row (``None``: no CVSM partner)."""

    rows: List[Row]
    partner: Optional[List[int]]


def _units(pairs: Sequence[Pair], branches: Sequence[int]) -> List[List[Row]]:
    if not pairs:  # a single view: no partner, one row per branch
        return [[Row(0, b, None)] for b in branches]
    return [[Row(i, b, k), Row(j, b, k)] for k, (i, j) in enumerate(pairs) for b in branches]


def min_rows_per_call(n_views: int) -> int:
    """The smallest ``max_batch`` that works: 2 (one pair, one branch) or 1 for a single view."""
    return 1 if n_views == 1 else 2


def rows_per_iteration(n_pairs: int, n_branches: int) -> int:
    """Rows that one iteration (all pairs, all branches) needs; a single view has no pairs."""
    return n_branches * (2 * n_pairs if n_pairs else 1)


def _layout(units: List[List[Row]], pairs: Sequence[Pair]) -> CallPlan:
    """Order a call's rows view-major per pair (fixture layout) and wire the partners."""
    if not pairs:
        rows = sorted((r for u in units for r in u), key=lambda r: r.branch)
        return CallPlan(rows, None)
    rows: List[Row] = []
    pair_ids = sorted({u[0].pair for u in units})
    present = {(u[0].pair, u[0].branch) for u in units}
    for k in pair_ids:
        branches = sorted(b for (kk, b) in present if kk == k)
        for view in pairs[k]:
            rows.extend(Row(view, b, k) for b in branches)
    index = {(r.pair, r.view, r.branch): n for n, r in enumerate(rows)}
    partner = []
    for r in rows:
        i, j = pairs[r.pair]
        partner.append(index[(r.pair, j if r.view == i else i, r.branch)])
    return CallPlan(rows, partner)


def _pack(units: List[List[Row]], pairs: Sequence[Pair], max_batch: int) -> List[CallPlan]:
    """Greedy packing of ``units`` (in their order) into calls of at most ``max_batch`` rows."""
    if not units:
        return []
    unit_size = len(units[0])
    if max_batch < unit_size:
        raise ValueError(f"max_batch must be at least {unit_size} (one view pair for one CFG branch "
                         f"must share a call so that its views can attend to each other), got {max_batch}")
    calls: List[List[List[Row]]] = [[]]
    for unit in units:
        if sum(len(u) for u in calls[-1]) + len(unit) > max_batch:
            calls.append([])
        calls[-1].append(unit)
    return [_layout(c, pairs) for c in calls]


def plan_calls(pairs: Sequence[Pair], branches: Sequence[int], max_batch: int) -> List[CallPlan]:
    """Split one iteration into calls of at most ``max_batch`` rows, in pair order."""
    return _pack(_units(pairs, branches), pairs, max_batch)


def plan_calls_split(pairs: Sequence[Pair], branches: Sequence[int], max_batch: int,
                     parts: int) -> List[List[CallPlan]]:
    """One iteration's rows split over ``parts`` devices, balanced by rows, then packed per device.

    The units (a pair for one branch, or a lone view's branch) are cut into ``parts`` contiguous
    runs in pair order whose sizes differ by at most one unit, so every device gets the same rows
    to within one pair, and reading the devices' calls one after the other visits every view's
    rows in the same pair order as ``plan_calls``: the sampler's per-view sums add the same terms
    in the same order whatever the split. ``parts`` = 1 is ``[plan_calls(...)]``. A device may get
    no call when there are fewer units than devices.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    units = _units(pairs, branches)
    base, extra = divmod(len(units), parts)
    plans, start = [], 0
    for part in range(parts):
        size = base + (1 if part < extra else 0)
        plans.append(_pack(units[start:start + size], pairs, max_batch))
        start += size
    if parts > 1 and units and max_batch < len(units[0]):  # an empty part must not hide a bad max_batch
        _pack(units[:1], pairs, max_batch)
    return plans


def estimate_row_bytes(view_latent_shape: Sequence[int], dtype: torch.dtype = torch.float16) -> int:
    """Rough peak activation memory of one UNet row for a latent ``[C, F, h, w]``.

    SD1.5-width heuristic: ~32 activations of 320 channels at the top resolution, plus the
    per-frame attention maps (8 heads, (h·w)² each, twice for the bias) of the spatial attention and
    the CVSMs when attention falls back to the math kernel. About 0.8 GB per row at 16×32×32 fp16.
    """
    _, frames, h, w = (int(s) for s in view_latent_shape)
    elem = torch.empty((), dtype=dtype).element_size()
    tokens = h * w
    return elem * frames * (tokens * 320 * 32 + tokens * tokens * 16)


def estimate_max_batch(view_latent_shape: Sequence[int], free_bytes: int, rows_needed: int,
                       n_views: int, dtype: torch.dtype = torch.float16, headroom: float = 0.7) -> int:
    """Rows per call that fit into ``headroom · free_bytes``; clamped to [minimum, rows_needed]."""
    per_row = estimate_row_bytes(view_latent_shape, dtype)
    fit = int(headroom * max(free_bytes, 0) // max(per_row, 1))
    return max(min_rows_per_call(n_views), min(rows_needed, fit))


def free_memory_bytes(device: torch.device) -> Optional[int]:
    """Free memory on ``device`` (CUDA: driver-reported; CPU: available RAM); None if unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def auto_max_batch(view_latent_shape: Sequence[int], rows_needed: int, n_views: int,
                   device: torch.device, dtype: torch.dtype) -> int:
    """``max_batch`` from the device's free memory; all rows when the free memory is unknown."""
    free = free_memory_bytes(device)
    if free is None:
        return rows_needed
    return estimate_max_batch(view_latent_shape, free, rows_needed, n_views, dtype)

