"""Edit one component (C3V's promise): a scene layout entity's projected masks become the ``noise_mask`` of a
latent, per view and per frame, so CVD Multi-View Sampler regenerates that entity and keeps the rest exactly
(docs/masks.md).
"""

from __future__ import annotations

import torch

from . import _latent
from ._comfy import NodeInputError
from ._schema import Input, NodeSchema, Output, Result
from .scene import LAYOUT

CATEGORY = "CVD/latent"
ALL = "all"


def _layout_fields(layout):
    try:
        return (int(layout.views), int(layout.frames), int(layout.width), int(layout.height),
                list(layout.entity_ids), layout.masks)
    except (AttributeError, TypeError, ValueError):
        raise NodeInputError(f"layout must be a CVD_LAYOUT from CVD Project Layout, got {type(layout).__name__}") \
            from None


def _chosen(entity: str, ids):
    """The entity ids an ``entity`` value names: "all", an id, or an index."""
    text = entity.strip()
    if text.lower() == ALL:
        return list(ids)
    if text in ids:
        return [text]
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(ids):
        return [ids[int(text)]]
    listing = ", ".join(f"{i}={eid}" for i, eid in enumerate(ids)) or "none"
    raise NodeInputError(f"entity must be 'all', an entity id or an index of the layout's entities ({listing}), "
                         f"got {entity!r}")


def grow(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Dilate ``[N, 1, H, W]`` by ``px`` pixels (a square neighbourhood)."""
    if px <= 0:
        return mask
    return torch.nn.functional.max_pool2d(mask, kernel_size=2 * px + 1, stride=1, padding=px)


def feather(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Soften the edge over about ``px`` pixels each side (a separable Gaussian, sigma px / 2, edge-padded)."""
    if px <= 0:
        return mask
    x = torch.arange(-px, px + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / (px / 2.0)) ** 2)
    kernel = kernel / kernel.sum()
    out = torch.nn.functional.pad(mask, (px, px, px, px), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1))
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1))
    return out.clamp(0.0, 1.0)


def _run_mask(latent, layout, entity, grow_px, feather_px, invert):
    samples = _latent.samples_of(latent) if isinstance(latent, dict) else None
    if samples is None or samples.dim() != 5:
        raise NodeInputError("latent must be the pack's 5-D video latent [views, 4, frames, h, w] (CVD Multi-View "
                             f"Sampler, CVD Empty Latent), got {list(getattr(samples, 'shape', []))}")
    views, frames, width, height, ids, masks = _layout_fields(layout)
    v, _, f, h, w = (int(s) for s in samples.shape)
    if (views, frames) != (v, f) or (width, height) not in ((w * 8, h * 8), (w, h)):
        raise NodeInputError(f"layout (views {views}, frames {frames}, {width}x{height}) must match the latent "
                             f"{list(samples.shape)}: {v} views, {f} frames, {w * 8}x{h * 8} (or the latent size "
                             f"{w}x{h}); project it with the same cameras")
    union = torch.zeros(views * frames, 1, height, width)
    for entity_id in _chosen(entity, ids):
        union = torch.maximum(union, torch.as_tensor(masks[entity_id]).float().cpu().view(-1, 1, height, width))
    mask = feather(grow(union.clamp(0.0, 1.0), grow_px), feather_px)
    mask = 1.0 - mask if invert else mask
    # stored as given (core's SetLatentNoiseMask does the same); the samplers resize it per frame
    return Result((_latent.derived(latent, samples, noise_mask=mask[:, 0].contiguous()),))


MASK_FROM_LAYOUT = NodeSchema(
    node_id="CVD_MaskFromLayout",
    display_name="CVD Mask From Layout",
    category=CATEGORY,
    description=("Sets a latent's noise_mask from a scene layout (CVD Project Layout): regenerate inside the chosen "
                 "entity's mask in every view and frame, keep the rest exactly. With an earlier run's latent, a new "
                 "entity prompt and denoise 0.7: edit one thing."),
    inputs=[
        Input("latent", "LATENT", "The 5-D video latent to edit (e.g. an earlier CVD Multi-View Sampler output)."),
        Input("layout", LAYOUT, "Projected with the same cameras (views, frames; image or latent size)."),
        Input("entity", "STRING", "'all', an entity id (e.g. car) or its index in the layout's entity order.",
              default=ALL),
        Input("grow_px", "INT", "Dilate the mask by this many image pixels (room for a larger new entity).",
              default=0, min=0, max=256),
        Input("feather_px", "INT", "Soften the mask edge over this many pixels (0 = hard).", default=0, min=0, max=256),
        Input("invert", "BOOLEAN", "Regenerate everything except the entity.", default=False),
    ],
    outputs=[Output("LATENT", "latent", "The latent with its noise_mask [views x frames, H, W] (1 = regenerate).")],
    run=_run_mask,
)

SCHEMAS = [MASK_FROM_LAYOUT]
