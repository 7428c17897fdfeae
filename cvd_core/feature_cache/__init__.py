"""RepVideo-style cross-layer feature cache, as a training-free patch (issue 6).

RepVideo (Si et al. 2025; ``sat/transformer_gating.py``) steadies a video DiT by blending each
layer's input with the mean of the raw outputs of the preceding layers in a window:
``h <- g_i * mean(cache) + (1 - g_i) * h``, one gate per layer, the cache restarting every
``m = 6`` layers. ``FeatureCacheConfig(window=6, mode="fixed", strength=<trained gates>)``
with ``run_blocks_with_cache`` reproduces that loop exactly; on other models (not fine-tuned
with it) keep the strength small (0.05-0.2).

Pieces:
- ``config``: ``FeatureCacheConfig`` (the knobs), ``FeatureLayout`` (how a model lays out
  hidden states), ``UNET_LAYOUT``, ``SEQUENCE_LAYOUT``.
- ``selection``: which rows (``rows_for_apply_to``) and steps (``fraction_from_timestep``,
  ``SigmaRange``) are touched.
- ``state``: ``FeatureCacheState``, the per-forward cache (``record_output``, ``blend_input``).
- ``loop``: ``run_blocks_with_cache`` for block loops we own.
- ``unet_patches``: ``make_unet_patches`` for SD-family UNets through ComfyUI's block patches.

Windows for the CVD backbone (SD1.5 UNet3D: each layer = resnet -> spatial transformer ->
motion module -> CVSM; 2 layers per down block, 3 per up block, none with CVSM in the mid).
Two choices, both served by ``FeatureCacheState`` with a ``stage`` key per block output:
1. *Layer outputs per resolution stage* (default, same rule and numbering as
   ``make_unet_patches``, so one config means the same on both targets): number every layer
   with ``sd15_block_index`` (conv_in 0, down layers, downsamplers, mid 12, up layers 13-24),
   call ``state.blend_input(k, x)`` before layer ``k`` (before the ``cat`` with the skip for up
   layers: only the main path is blended) and ``state.record_output(k, x, stage="down")``
   after it (``"up"`` from the mid block on); the shape-based reset then keeps each window
   inside the stage input plus the layers of one resolution level.
2. *Motion-module outputs of consecutive layers* (``CVDUNet.feature_cache_target =
   "motion_modules"``): record the motion-module output of each layer (stage key per down/up
   block) and blend the next layer's motion-module input (``blend_input(k, x, stage=...)``, so
   an up block never reads the encoder's window of the same shape); this targets the temporal
   features RepVideo measures (adjacent-frame cosine) and leaves the spatial path alone.
"""

from .config import (
    APPLY_TO,
    SEQUENCE_LAYOUT,
    TOKEN_SCOPES,
    UNET_LAYOUT,
    WINDOW_MODES,
    FeatureCacheConfig,
    FeatureLayout,
)
from .loop import run_blocks_with_cache
from .selection import SigmaRange, combine_rows, fraction_from_timestep, rows_for_apply_to
from .state import FeatureCacheState
from .unet_patches import INPUT_PATCH_NAME, OUTPUT_PATCH_NAME, UNetFeatureCache, make_unet_patches, sd15_block_index

__all__ = [
    "APPLY_TO",
    "INPUT_PATCH_NAME",
    "OUTPUT_PATCH_NAME",
    "SEQUENCE_LAYOUT",
    "TOKEN_SCOPES",
    "UNET_LAYOUT",
    "WINDOW_MODES",
    "FeatureCacheConfig",
    "FeatureCacheState",
    "FeatureLayout",
    "SigmaRange",
    "UNetFeatureCache",
    "combine_rows",
    "fraction_from_timestep",
    "make_unet_patches",
    "rows_for_apply_to",
    "run_blocks_with_cache",
    "sd15_block_index",
]
