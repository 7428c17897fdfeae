"""Feature cache around a block loop that we own (our transformers, the CVD UNet's layers)."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Optional, Sequence

import torch

from .config import FeatureCacheConfig, FeatureLayout
from .state import FeatureCacheState


def run_blocks_with_cache(
    blocks: Sequence[Callable[..., torch.Tensor]],
    h: torch.Tensor,
    cfg: FeatureCacheConfig,
    *,
    layout: FeatureLayout,
    active_rows: Optional[Sequence[bool]] = None,
    step_fraction: Optional[float] = None,
    stage_of: Optional[Callable[[int], Hashable]] = None,
    block_args: Sequence[Any] = (),
    block_kwargs: Optional[Mapping[str, Any]] = None,
) -> torch.Tensor:
    """Run ``h`` through ``blocks`` in order, blending each block's input with the cache.

    Each block is called as ``block(h, *block_args, **block_kwargs)`` and must return the new
    hidden state (wrap blocks with other signatures in a lambda). A fresh cache is made for
    this call only, so concurrent or repeated calls never share state.

    - ``layout``: how ``h`` is laid out (``UNET_LAYOUT``, ``SEQUENCE_LAYOUT`` or a custom one).
    - ``active_rows``: per-row booleans of the rows to blend (see ``rows_for_apply_to``);
      ``None`` = every row.
    - ``step_fraction``: where this call sits in the sampling schedule (0 = first step); needed
      when the config restricts the timestep range. Outside the range the blocks run plainly.
    - ``stage_of(i)``: stage key of block ``i``'s output (e.g. ``("down", 2)``); windows never
      span two stages. Without it, stages change only where the tensor shape changes, so a
      constant-width transformer is one stage and the official convention is reproduced.
    """
    kwargs = dict(block_kwargs or {})
    if step_fraction is None and not cfg.full_schedule:
        raise ValueError(f"timestep range {cfg.start_percent}..{cfg.end_percent} is set, so the caller must "
                         "pass step_fraction (0 = first step, 1 = end)")
    cfg.validate_for(len(blocks))
    skip = cfg.never_blends or (step_fraction is not None and not cfg.active_at(step_fraction))
    if skip:
        for block in blocks:
            h = block(h, *block_args, **kwargs)
        return h
    state = FeatureCacheState(cfg, layout=layout, active_rows=active_rows)
    last = len(blocks) - 1
    for index, block in enumerate(blocks):
        h = state.blend_input(index, h)
        h = block(h, *block_args, **kwargs)
        if index < last:  # the last output feeds no block: do not hold it
            state.record_output(index, h, stage=None if stage_of is None else stage_of(index))
    return h
