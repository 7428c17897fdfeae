"""The per-forward cache: records block outputs and blends block inputs.

One ``FeatureCacheState`` lives for exactly one forward pass of one batch (one sampling step,
one CFG call) and is then dropped, so nothing leaks between steps, between the cond and uncond
calls, or between concurrent forwards: the adapters create it at the start of a forward and keep
it in that call's own context (a local variable, or that call's ``transformer_options``).

Window rule (``record_output``): outputs are grouped by *stage*. A stage changes whenever the
caller's stage key or the tensor shape changes, so a mean never mixes resolutions or channel
counts. Inside a stage the j-th recorded output (j = 0, 1, ...):
- ``fixed``: starts a new window when ``j % m == 0``, else is appended (official stride);
- ``sliding``: is appended and only the last ``m`` outputs are kept.
Before a block runs, ``blend_input`` mixes its input with the mean of the current window. With
an empty window (the first block of the range) the mean is the input itself, exactly like the
official code's ``cache = [embedding]`` before layer 0. Such no-op blends (the window holds only
the input) are skipped for a single strength and computed for a per-block list, see
``_window_is_only``.

Entries are references to the block outputs, not copies (as in the official code): blocks must
not modify their inputs in place.
"""

from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch

from .config import FeatureCacheConfig, FeatureLayout

_RMS_EPS = 1e-12


class FeatureCacheState:
    """Cache of one forward pass.

    ``active_rows``: per-row booleans of the batch rows to blend (``None`` = every row); rows
    outside stay bit-identical. Adapters build it from ``apply_to`` and the timestep range.
    """

    def __init__(self, cfg: FeatureCacheConfig, *, layout: FeatureLayout,
                 active_rows: Optional[Sequence[bool]] = None):
        self.cfg = cfg
        self.layout = layout
        rows = None if active_rows is None else [bool(r) for r in active_rows]
        if rows is not None and all(rows):
            rows = None  # every row: no masking needed
        self._rows = rows
        self.enabled = not cfg.never_blends and (rows is None or any(rows))
        self._cache: List[torch.Tensor] = []
        self._stage: Optional[Tuple[Hashable, torch.Size]] = None
        self._position = 0
        self._row_masks: Dict[torch.device, torch.Tensor] = {}
        self._coefficients: Dict[Tuple[float, torch.dtype], Tuple[float, float]] = {}
        self.blended_blocks: List[int] = []
        """Indices of the blocks whose input was blended (for diagnostics and tests)."""

    # -- recording ---------------------------------------------------------------------------

    def record_output(self, block_index: int, output: torch.Tensor, stage: Hashable = None) -> None:
        """Add the raw output of ``block_index`` to the window of its stage.

        ``stage`` is the caller's stage key (e.g. ``"down"``/``"up"`` for a UNet); the tensor
        shape is always part of the key. Outputs of blocks before ``block_start`` or after
        ``block_end`` are ignored: windows start at ``block_start``.
        """
        if not self.enabled or not self.cfg.block_in_range(block_index):
            return
        key = (stage, output.shape)
        if key != self._stage:
            self._stage = key
            self._cache = []
            self._position = 0
        window = self.cfg.window
        if self.cfg.mode == "fixed":
            if self._position % window == 0:
                self._cache = [output]
            else:
                self._cache.append(output)
        else:
            self._cache.append(output)
            if len(self._cache) > window:
                del self._cache[0]
        self._position += 1

    # -- blending ----------------------------------------------------------------------------

    def blend_input(self, block_index: int, h: torch.Tensor, stage: Hashable = None) -> torch.Tensor:
        """Return the input of ``block_index`` blended with the current window's mean.

        ``stage`` (optional): the stage key of the block about to run; a window recorded under
        another key then counts as empty (a new stage whose first output is not recorded yet,
        e.g. the first motion module of an up block after the encoder's of the same shape).

        Returns ``h`` itself (same object) when nothing applies: disabled state, strength 0,
        block outside the range, or (single strength) a window holding only ``h``.
        """
        if not self.enabled:
            return h
        if stage is not None and self._stage is not None and self._stage[0] != stage:
            self._cache = []  # that window is closed: outputs of this stage start a new one
        strength = self.cfg.strength_for(block_index)
        if strength == 0.0 or self._window_is_only(h):
            return h
        mean = self._window_mean(h)
        video_h, video_mean, text_h = self._token_split(h, mean)
        gate, complement = self._coefficients_for(strength, h.dtype)
        # Same operation order as the official code: g * mean(cache) + (1 - g) * h.
        mixed = gate * video_mean + complement * video_h
        if self.cfg.preserve_norm:
            mixed = _match_token_rms(mixed, video_h, self.layout.channel_dim)
        if text_h is not None:
            mixed = torch.cat([text_h, mixed], dim=self.layout.token_dim)
        if self._rows is not None:
            mixed = _select_rows_like(self._row_mask(h), mixed, h)
        self.blended_blocks.append(block_index)
        return mixed

    def _window_is_only(self, h: torch.Tensor) -> bool:
        """True when the window holds nothing but ``h`` itself, so the blend is a no-op.

        Such blends change ``h`` only by rounding (``g*h + (1-g)*h``), yet cost a full pass over
        the largest tensors of a UNet, so they are skipped. With a per-block strength list
        (trained gates) they are still computed, as the official code does, so its arithmetic
        is reproduced bit for bit.
        """
        if isinstance(self.cfg.strength, tuple):
            return False
        cache = self._cache
        return not cache or (len(cache) == 1 and cache[0] is h) or cache[0].shape != h.shape

    def _window_mean(self, h: torch.Tensor) -> torch.Tensor:
        """Mean of the window, or ``h`` when the window is empty or from another stage."""
        cache = self._cache
        if not cache or cache[0].shape != h.shape:
            return h
        mean = cache[0] if len(cache) == 1 else torch.mean(torch.stack(cache, dim=0), dim=0)
        return mean if mean.dtype == h.dtype else mean.to(h.dtype)

    def _token_split(self, h: torch.Tensor, mean: torch.Tensor):
        """Split off the prepended text tokens when ``token_scope == "video"``."""
        count = self.layout.text_tokens
        if self.cfg.token_scope != "video" or count == 0:
            return h, mean, None
        dim = self.layout.token_dim
        total = h.shape[dim]
        if count >= total:
            raise ValueError(f"token_scope='video' skips {count} text tokens, but the hidden state has only "
                             f"{total} tokens along dim {dim}")
        return h.narrow(dim, count, total - count), mean.narrow(dim, count, total - count), h.narrow(dim, 0, count)

    def _coefficients_for(self, strength: float, dtype: torch.dtype) -> Tuple[float, float]:
        """``(g, 1 - g)`` rounded to the hidden-state dtype, as a gate parameter of that dtype
        would give them (so a list of trained gates reproduces the official arithmetic)."""
        key = (strength, dtype)
        found = self._coefficients.get(key)
        if found is None:
            gate = torch.tensor(strength, dtype=dtype)
            found = (float(gate), float(1 - gate))
            self._coefficients[key] = found
        return found

    def _row_mask(self, h: torch.Tensor) -> torch.Tensor:
        """Boolean mask broadcastable to ``h`` selecting the active rows."""
        rows = self._rows
        if h.shape[0] != len(rows):
            raise ValueError(f"active rows list {len(rows)} entries but the batch has {h.shape[0]} rows")
        mask = self._row_masks.get(h.device)
        if mask is None:
            mask = torch.tensor(rows, dtype=torch.bool, device=h.device)
            self._row_masks[h.device] = mask
        return mask.view((len(rows),) + (1,) * (h.dim() - 1))


def _select_rows_like(mask: torch.Tensor, mixed: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``where(mask, mixed, h)`` laid out in memory like ``h``.

    The layout matters: the next layers pick their kernels (and so their rounding) from the
    strides of their input, and the untouched rows must come out bit-identical to a run without
    the cache. ``out=`` is not differentiable, so with autograd on (training with the cache) the
    plain ``where`` is used.
    """
    if torch.is_grad_enabled() and (mixed.requires_grad or h.requires_grad):
        return torch.where(mask, mixed, h)
    return torch.where(mask, mixed, h, out=torch.empty_like(h))


def _match_token_rms(mixed: torch.Tensor, reference: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Rescale every token of ``mixed`` to the RMS of the same token in ``reference``.

    Averaging features that point in different directions shortens them; restoring each
    token's length keeps activation statistics that the following block was trained on.
    Computed in at least float32 so half-precision squares do not overflow.
    """
    work = torch.promote_types(mixed.dtype, torch.float32)
    target = reference.to(work).pow(2).mean(dim=channel_dim, keepdim=True).sqrt()
    current = mixed.to(work).pow(2).mean(dim=channel_dim, keepdim=True).sqrt()
    return (mixed.to(work) * (target / current.clamp_min(_RMS_EPS))).to(mixed.dtype)
