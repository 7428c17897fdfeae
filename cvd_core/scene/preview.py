"""Layout preview: each entity's mask, 2D box, label and projected path drawn on every view."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .project import Layout

__all__ = ["render_layout_preview", "entity_color"]

# distinct, colour-blind-friendly-ish hues (Okabe-Ito first, then a few more)
_PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
            (204, 121, 167), (255, 255, 255), (148, 103, 189), (140, 86, 75)]


def entity_color(index: int) -> Tuple[int, int, int]:
    """RGB 0..255 colour of entity ``index`` (the same in every view and frame)."""
    return _PALETTE[index % len(_PALETTE)]


def _backgrounds(layout: Layout, images: Optional[Any]) -> np.ndarray:
    """``[V*F, H, W, 3]`` uint8 backgrounds: the given images (resized if needed) or a grid."""
    count, h, w = layout.views * layout.frames, layout.height, layout.width
    if images is None:
        base = np.full((h, w, 3), 48, dtype=np.uint8)
        step = max(8, min(h, w) // 8)
        base[::step, :, :] = 72
        base[:, ::step, :] = 72
        return np.repeat(base[None], count, axis=0)
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] != count:
        raise ValueError(f"images must be IMAGE [V*F, H, W, 3] with V*F = {count} "
                         f"({layout.views} views x {layout.frames} frames), got shape {list(arr.shape)}")
    arr = (np.clip(arr[..., :3] if arr.shape[-1] != 1 else np.repeat(arr, 3, -1), 0, 1) * 255).astype(np.uint8)
    if arr.shape[1:3] != (h, w):
        arr = np.stack([np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR)) for a in arr])
    return arr


def _draw_view_frame(layout: Layout, background: np.ndarray, view: int, frames_to_draw, mask_frame: int,
                     alpha: float) -> np.ndarray:
    """One image: masks of ``mask_frame`` tinted, boxes of ``frames_to_draw``, full paths, labels."""
    canvas = background.astype(np.float32)
    for i, entity_id in enumerate(layout.entity_ids):
        mask = layout.masks[entity_id][layout.index(view, mask_frame)].numpy()[..., None]
        canvas = canvas * (1 - alpha * mask) + np.asarray(entity_color(i), np.float32) * alpha * mask
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i, entity_id in enumerate(layout.entity_ids):
        color = entity_color(i)
        path = [tuple(c) for c in layout.centers[entity_id][view] if c is not None]
        if len(path) >= 2:
            draw.line(path, fill=color, width=1)
        for f in frames_to_draw:
            box = layout.boxes[entity_id][view][f]
            if box is None:
                continue
            draw.rectangle(box, outline=color, width=2 if f == mask_frame else 1)
            centre = layout.centers[entity_id][view][f]
            if centre is not None:
                r = 2
                draw.ellipse([centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r], fill=color)
            if f == frames_to_draw[0]:
                draw.text((box[0] + 3, box[1] + 2), entity_id, fill=color)
    draw.text((3, layout.height - 12), f"view {view}" + (f" frame {mask_frame}" if len(frames_to_draw) == 1 else ""),
              fill=(255, 255, 255))
    return np.asarray(image)


def render_layout_preview(layout: Layout, images: Optional[Any] = None, per_frame: bool = True,
                          alpha: float = 0.35) -> np.ndarray:
    """Boxes, masks and paths drawn on every view; float32 in [0, 1].

    ``per_frame=True``: ``[V*F, H, W, 3]`` (view-major, like the generated IMAGE batch), each frame
    with its masks, boxes and labels plus every entity's whole projected path in that view.
    ``per_frame=False``: ``[V, H, W, 3]``, one summary image per view on its frame 0: masks of frame
    0, boxes of the first and last frames, the paths. ``images``: optional IMAGE ``[V*F, H, W, 3]``
    in [0, 1] drawn under the layout (resized to the layout size if needed).
    """
    backgrounds = _backgrounds(layout, images)
    out = []
    for view in range(layout.views):
        if per_frame:
            for frame in range(layout.frames):
                out.append(_draw_view_frame(layout, backgrounds[layout.index(view, frame)], view, [frame], frame,
                                            alpha))
        else:
            frames = sorted({0, layout.frames - 1})
            out.append(_draw_view_frame(layout, backgrounds[layout.index(view, 0)], view, frames, 0, alpha))
    return np.stack(out).astype(np.float32) / 255.0
