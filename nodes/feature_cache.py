"""Feature-cache enhancer nodes (RepVideo, Si et al. 2025) on a core ``MODEL`` and on a ``CVD_MODEL``.

One schema for both (ComfyUI sockets are typed), the same knobs and block numbers (SD1.5: input blocks
0-11, middle 12, output blocks 13-24); the input model is never modified. The method and its knobs:
docs/nodes.md, CVD/enhance.
"""

from __future__ import annotations

from typing import Dict, List

from cvd_core.cvd.network import CACHE_TARGETS, LAYER_OUTPUTS, module_with_feature_cache
from cvd_core.feature_cache import APPLY_TO, TOKEN_SCOPES, WINDOW_MODES, FeatureCacheConfig, make_unet_patches

from ._comfy import NodeInputError
from ._managed import is_managed, module_of, patched_clone
from ._schema import Input, NodeSchema, Output, Result

CATEGORY = "CVD/enhance"
CVD_MODEL = "CVD_MODEL"
MAX_BLOCK = 99  # widget bound; the real bound is the model's block count, checked when the node runs

DESCRIPTION = (
    "RepVideo's training-free feature cache: each block's input in the range is blended with the mean of the "
    "preceding outputs of its resolution stage, h = strength x mean + (1 - strength) x h. The output is a patched "
    "copy sharing the weights.")


def _inputs(model_type: str, model_tooltip: str) -> List[Input]:
    """The shared inputs: the model socket, then the knobs in their public (widget) order."""
    return [
        Input("model", model_type, model_tooltip),
        Input("strength", "FLOAT", "Blend weight of the cached mean: 0 = off (bit-identical); 0.05-0.2 is safe on "
                                   "models trained without it.", default=0.1, min=0.0, max=1.0, step=0.01),
        Input("window", "INT", "How many preceding block outputs the mean may hold (RepVideo: 6); 1 = only the "
                               "previous block.", default=6, min=1, max=64),
        Input("window_mode", "COMBO", "fixed = RepVideo's windows, restarting every 'window' outputs; sliding = "
                                      "always the last 'window' outputs.",
              default="fixed", options=list(WINDOW_MODES)),
        Input("block_start", "INT", "First block whose input is blended (SD1.5: 7 = second half of the encoder; "
                                    "lower touches fine detail).", default=7, min=0, max=MAX_BLOCK),
        Input("block_end", "INT", "Last block whose input is blended; -1 = through the last. 19 spares SD1.5's "
                                  "highest-resolution decoder blocks.", default=19, min=-1, max=MAX_BLOCK),
        Input("start_percent", "FLOAT", "Part of the sampling schedule where the cache is active: start, as a "
              "fraction (0 = first, noisiest step).", default=0.0, min=0.0, max=1.0, step=0.01),
        Input("end_percent", "FLOAT", "End of the active part of the schedule (1 = the last step); late steps "
                                      "refine detail, which blending softens.",
              default=0.6, min=0.0, max=1.0, step=0.01),
        Input("apply_to", "COMBO", "Which guidance branch is blended: both, cond (positive prompt) or uncond "
                                   "(negative).", default="both",
              options=list(APPLY_TO)),
        Input("token_scope", "COMBO", "all tokens, or video tokens only (text tokens a transformer prepends stay "
                                      "untouched; the same on UNets).", default="all", options=list(TOKEN_SCOPES)),
        Input("preserve_norm", "BOOLEAN", "Rescale each blended feature to its original length, so the blend only "
                                          "changes direction (recommended).", default=True),
    ]


KNOBS = tuple(i.name for i in _inputs("MODEL", "-")[1:])
"""The knob names in widget order (public API, the same for both nodes)."""


def _config(strength, window, window_mode, block_start, block_end, start_percent, end_percent, apply_to,
            token_scope, preserve_norm, block_count: int) -> FeatureCacheConfig:
    """The core config for a model with ``block_count`` blocks; a past-the-end block_end means 'last'."""
    if block_start >= block_count:
        raise NodeInputError(f"block_start {block_start} is past the model's last block ({block_count - 1}); "
                             f"blocks are numbered 0-{block_count - 1}")
    if block_end >= block_count:
        block_end = -1
    try:
        return FeatureCacheConfig(window=int(window), mode=window_mode, strength=float(strength),
                                  block_start=int(block_start), block_end=int(block_end),
                                  start_percent=float(start_percent), end_percent=float(end_percent),
                                  apply_to=apply_to, token_scope=token_scope, preserve_norm=bool(preserve_norm))
    except (TypeError, ValueError) as exc:
        raise NodeInputError(f"feature cache settings: {exc}") from None


def _block_range_rule(block_start, block_end):
    if block_end != -1 and block_end < block_start:
        return f"block_end must be -1 (through the last block) or at least block_start ({block_start}), got {block_end}"
    return None


def _schedule_range_rule(start_percent, end_percent):
    if start_percent > end_percent:
        return f"start_percent must not exceed end_percent ({end_percent}), got {start_percent}"
    return None


RULES = [_block_range_rule, _schedule_range_rule]


# ------------------------------------------------------------------------------ core MODEL

def unet_block_count(diffusion_model) -> int:
    """Blocks of a ComfyUI ``UNetModel`` in the patch numbering: input blocks, middle, output blocks."""
    return len(diffusion_model.input_blocks) + 1 + len(diffusion_model.output_blocks)


def _unet_of(model):
    """The ComfyUI UNet inside a ``MODEL``, or a clear error for other architectures."""
    diffusion = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not all(hasattr(diffusion, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        kind = type(diffusion).__name__ if diffusion is not None else type(model).__name__
        raise NodeInputError(f"the feature cache patches SD-family UNets (SD1.x, SD2.x, SDXL); this MODEL's "
                             f"network is {kind}, which has no UNet input/output blocks")
    return diffusion


def _run_model(model, **knobs):
    cfg = _config(**knobs, block_count=unet_block_count(_unet_of(model)))
    patched = model.clone()
    patches = make_unet_patches(cfg, percent_to_sigma=patched.model.model_sampling.percent_to_sigma)
    for name, patch in patches.items():
        patched.set_model_patch(patch, name)
    return Result((patched,))


# ------------------------------------------------------------------------------ CVD_MODEL

CACHE_TARGET = Input(
    "cache_target", "COMBO", "layers = whole layer outputs, as on a core MODEL; motion_modules = only "
                             "motion-module (temporal) outputs.", default=LAYER_OUTPUTS, options=list(CACHE_TARGETS),
    optional=True)
"""CVD-only input, appended after the shared knobs (optional, so API prompts written before it still run)."""


def _run_cvd(model, cache_target=LAYER_OUTPUTS, **knobs):
    unet = getattr(module_of(model), "unet", None)
    if not hasattr(unet, "cache_block_count"):
        raise NodeInputError(f"expected a CVD_MODEL from CVD Load Model, got {type(module_of(model)).__name__}")
    cfg = _config(**knobs, block_count=unet.cache_block_count())
    try:
        if not is_managed(model):
            return Result((module_with_feature_cache(model, cfg, target=cache_target),))
        unet.check_feature_cache(cfg, cache_target)
    except (TypeError, ValueError) as exc:
        raise NodeInputError(f"could not attach the feature cache: {exc}") from None
    # A clone of ComfyUI's patcher with the setting as attribute patches: ComfyUI sets them on the shared
    # network when it loads this copy and restores them when it loads another.
    clone = patched_clone(model)
    clone.add_object_patch("unet.feature_cache", cfg)
    clone.add_object_patch("unet.feature_cache_target", cache_target)
    return Result((clone,))


def _schema(node_id: str, display: str, model_type: str, model_tooltip: str, run, extra: str,
            more_inputs=()):
    return NodeSchema(
        node_id=node_id,
        display_name=display,
        category=CATEGORY,
        description=DESCRIPTION + extra,
        inputs=_inputs(model_type, model_tooltip) + list(more_inputs),
        outputs=[Output(model_type, "model", "The model with the feature cache (a patched copy).")],
        run=run,
        rules=RULES,
    )


ENHANCER = _schema(
    "CVD_FeatureCacheEnhancer", "CVD Feature Cache Enhancer (RepVideo)", "MODEL",
    "A core ComfyUI MODEL with an SD-family UNet (SD1.x, SD2.x, SDXL).", _run_model,
    " On a core MODEL (SD1.x/2.x/SDXL UNets); chain it before any sampler.")

ENHANCER_CVD = _schema(
    "CVD_FeatureCacheEnhancerCVD", "CVD Feature Cache Enhancer (RepVideo, CVD model)", CVD_MODEL,
    "The CVD backbone from CVD Load Model.", _run_cvd,
    " On the CVD backbone, same knobs; cache_target picks layers or motion modules.", more_inputs=[CACHE_TARGET])

SCHEMAS = [ENHANCER, ENHANCER_CVD]


def knob_values(**overrides) -> Dict[str, object]:
    """The default knob values (with ``overrides``), e.g. for tests and workflows."""
    values = {i.name: i.default for i in _inputs("MODEL", "-")[1:]}
    unknown = set(overrides) - set(values)
    if unknown:
        raise KeyError(f"unknown feature cache knobs {sorted(unknown)}; knobs are {list(values)}")
    values.update(overrides)
    return values
