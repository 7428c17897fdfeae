"""Feature cache for SD-family UNets through ComfyUI's block-patch protocol (no ComfyUI import).

ComfyUI's ``UNetModel`` forward (``comfy/ldm/modules/diffusionmodules/openaimodel.py``, same
protocol in the 2024-03 copy CI runs and in 0.3.x) calls, with one ``transformer_options`` dict
per forward:

- after input block ``id`` (``transformer_options["block"] == ("input", id)``), once the output
  has been pushed as a skip connection: every ``input_block_patch_after_skip`` as
  ``h = p(h, transformer_options)``; ``h`` then feeds input block ``id + 1`` (or the middle);
- before output block ``id`` (``("output", id)``): every ``output_block_patch`` as
  ``h, hsp = p(h, hsp, transformer_options)``, where ``h`` is the output of the middle block
  (``id == 0``) or of output block ``id - 1``, and ``hsp`` the popped skip.

Block numbering (the ``block_start``/``block_end``/strength-list index): input blocks first,
then the middle block, then output blocks. SD1.5/SD2: input 0-11, middle 12, output 13-24;
SDXL: input 0-8, middle 9, output 10-18. The index is the block whose *input* is blended;
input block 0 (``conv_in``) has no hook before it and is never blended.

Design choices:
- Only the main path is blended: ``after_skip`` leaves the skip tensors raw, and ``hsp`` is
  returned untouched, so the decoder still receives the encoder's unblended detail.
- Stages: encoder outputs (stage ``"down"``) and middle/decoder outputs (stage ``"up"``) never
  share a window, and every change of tensor shape (downsample, upsample, channel change)
  starts a new one. For SD1.5 the windows are {in0,in1,in2} {in3} {in4,in5} {in6} {in7,in8}
  {in9,in10,in11} | {mid,out0,out1} {out2,out3,out4} {out5} {out6,out7} {out8} {out9,out10},
  i.e. the stage input plus the layers of one resolution level.
- Per-forward state lives in that forward's ``transformer_options`` under a key unique to this
  patch set, and is rebuilt at input block 0: each step and each CFG call starts empty, two
  enhancers can be chained, and concurrent forwards (separate dicts) never meet.
- The patch objects hold only immutable settings (plain floats, tuples), so ComfyUI's
  ``ModelPatcher.clone`` (which deep-copies ``model_options``) copies them safely.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Dict, List, MutableMapping, Optional, Tuple

import torch

from .config import UNET_LAYOUT, FeatureCacheConfig, FeatureLayout
from .selection import SigmaRange, combine_rows, rows_for_apply_to
from .state import FeatureCacheState

INPUT_PATCH_NAME = "input_block_patch_after_skip"
OUTPUT_PATCH_NAME = "output_block_patch"

_DOWN = "down"
_UP = "up"


class _UNetForward:
    """What one UNet forward remembers: its cache and how many input blocks it has seen."""

    __slots__ = ("state", "input_blocks")

    def __init__(self, state: FeatureCacheState):
        self.state = state
        self.input_blocks = 0


class UNetFeatureCache:
    """Shared settings of one enhancer; builds the per-forward state inside the forward's dict."""

    def __init__(self, cfg: FeatureCacheConfig, sigma_range: SigmaRange, layout: FeatureLayout = UNET_LAYOUT):
        self.cfg = cfg
        self.sigma_range = sigma_range
        self.layout = layout
        # Unique per enhancer (and kept by deepcopy), so chained enhancers keep separate states.
        self.state_key = f"cvd_feature_cache/{uuid.uuid4().hex}"

    def forward_state(self, h: torch.Tensor, transformer_options: MutableMapping[str, Any]) -> _UNetForward:
        """The state of the current forward; a new one at input block 0."""
        part, index = transformer_options.get("block", (None, None))
        found = transformer_options.get(self.state_key)
        if found is None or (part == "input" and index == 0):
            found = _UNetForward(FeatureCacheState(self.cfg, layout=self.layout,
                                                   active_rows=self._active_rows(h, transformer_options)))
            transformer_options[self.state_key] = found
        return found

    def _active_rows(self, h: torch.Tensor, transformer_options: MutableMapping[str, Any]) -> Optional[List[bool]]:
        """Rows to blend in this forward: ``apply_to`` rows that are inside the sigma range."""
        if self.cfg.never_blends:
            return [False] * h.shape[0]
        batch = h.shape[0]
        rows = rows_for_apply_to(self.cfg.apply_to, transformer_options.get("cond_or_uncond"), batch)
        return combine_rows(rows, self._rows_in_sigma_range(batch, transformer_options.get("sigmas")))

    def _rows_in_sigma_range(self, batch: int, sigmas: Any) -> Optional[List[bool]]:
        if self.sigma_range.unbounded:
            return None
        if sigmas is None:
            raise ValueError("the feature cache has a timestep range but transformer_options has no 'sigmas' "
                             "(the UNet was called outside a ComfyUI sampler); use the full range 0..1")
        values = [float(s) for s in torch.as_tensor(sigmas).flatten().tolist()]
        if not values or batch % len(values) != 0:
            raise ValueError(f"{len(values)} sigmas cannot be matched to a batch of {batch} rows")
        # ComfyUI passes one sigma per row of a cond/uncond chunk; chunks repeat the same sigmas.
        inside = [self.sigma_range.contains(s) for s in values]
        return [inside[row % len(values)] for row in range(batch)]

    def after_input_block(self, h: torch.Tensor, transformer_options: MutableMapping[str, Any]) -> torch.Tensor:
        """``input_block_patch_after_skip``: record input block ``id``, blend the next input."""
        forward = self.forward_state(h, transformer_options)
        if not forward.state.enabled:
            return h
        _, index = transformer_options["block"]
        forward.input_blocks = max(forward.input_blocks, index + 1)
        forward.state.record_output(index, h, stage=_DOWN)
        return forward.state.blend_input(index + 1, h)

    def before_output_block(self, h: torch.Tensor, hsp: torch.Tensor,
                            transformer_options: MutableMapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``output_block_patch``: record the middle/previous output, blend output block ``id``'s input."""
        forward = self.forward_state(h, transformer_options)
        if not forward.state.enabled:
            return h, hsp
        _, index = transformer_options["block"]
        producer = forward.input_blocks + index  # middle block for id 0, else output block id - 1
        forward.state.record_output(producer, h, stage=_UP)
        return forward.state.blend_input(producer + 1, h), hsp


class _InputPatch:
    """Callable with ComfyUI's ``input_block_patch_after_skip`` signature."""

    def __init__(self, cache: UNetFeatureCache):
        self.cache = cache

    def __call__(self, h: torch.Tensor, transformer_options: MutableMapping[str, Any]) -> torch.Tensor:
        return self.cache.after_input_block(h, transformer_options)


class _OutputPatch:
    """Callable with ComfyUI's ``output_block_patch`` signature."""

    def __init__(self, cache: UNetFeatureCache):
        self.cache = cache

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor,
                 transformer_options: MutableMapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.cache.before_output_block(h, hsp, transformer_options)


def sd15_block_index(part: str, block: int = 0, layer: int = 0) -> int:
    """Global block index, in the numbering above, of a layer of a diffusers-layout SD1.5 UNet.

    Lets a UNet whose loop we own (the CVD backbone) use the same ``block_start``/``block_end``
    and windows as ``make_unet_patches``: ``part`` is ``"conv_in"``, ``"down"`` (block 0-3,
    layer 0-1), ``"downsample"`` (block 0-2), ``"mid"``, or ``"up"`` (block 0-3, layer 0-2; an
    up block's upsampler belongs to its layer 2, as in ComfyUI).
    """
    if part == "conv_in":
        return 0
    if part == "down" and 0 <= block <= 3 and 0 <= layer <= 1:
        return 1 + 3 * block + layer
    if part == "downsample" and 0 <= block <= 2:
        return 3 + 3 * block
    if part == "mid":
        return 12
    if part == "up" and 0 <= block <= 3 and 0 <= layer <= 2:
        return 13 + 3 * block + layer
    raise ValueError(f"no SD1.5 UNet layer {part!r} block {block} layer {layer}: parts are conv_in, down "
                     "(block 0-3, layer 0-1), downsample (block 0-2), mid, up (block 0-3, layer 0-2)")


def make_unet_patches(cfg: FeatureCacheConfig, *,
                      percent_to_sigma: Optional[Callable[[float], float]] = None,
                      layout: FeatureLayout = UNET_LAYOUT) -> Dict[str, Callable[..., Any]]:
    """ComfyUI block patches that apply ``cfg`` to an SD-family UNet.

    Returns ``{"input_block_patch_after_skip": f, "output_block_patch": g}``; register each on a
    cloned ``ModelPatcher`` with ``set_model_patch(fn, name)`` (or
    ``set_model_input_block_patch_after_skip`` / ``set_model_output_block_patch``).
    ``percent_to_sigma`` is ``model.get_model_object("model_sampling").percent_to_sigma``; it is
    needed only when ``cfg`` restricts the timestep range (evaluated once, here).
    """
    cache = UNetFeatureCache(cfg, SigmaRange.from_config(cfg, percent_to_sigma), layout)
    return {INPUT_PATCH_NAME: _InputPatch(cache), OUTPUT_PATCH_NAME: _OutputPatch(cache)}
