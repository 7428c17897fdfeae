"""Views of the tests' ray-cast scene with known cameras, as a ComfyUI input: ``input/cvd_synthetic_views.png``.

Not a model: example *input* for ``workflows/cvd_evaluate_export.json`` (evaluation and export on
views whose geometry is exactly the rig's), written by code at install time like the tiny weights,
never shipped. 3 views x 4 frames at 128 px of ``tests/core/synthetic_scene.py``, one animated PNG
in view-major order (what ComfyUI's LoadImage returns as an IMAGE batch). :func:`rig_json` is the
same rig as ``CVD Camera Trajectory``'s ``custom_json`` (intrinsics in the pack's convention, pixel
centres at +0.5), which the workflow embeds.

Outside the tests: ``python -m tests.support.models_synthetic_scene <ComfyUI>/input`` writes the file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SYNTHETIC_VIEWS = "cvd_synthetic_views.png"
VIEWS, FRAMES, SIZE = 3, 4, 128
LABELS = ("left", "up", "right")


def rig_arrays():
    """``(K in the pack's convention [V, T, 3, 3], c2w [V, T, 4, 4], K of the renderer)``."""
    from tests.core.synthetic_scene import make_rig, to_pack_convention

    K, c2w = make_rig(VIEWS, FRAMES, SIZE, SIZE)
    return to_pack_convention(K), c2w, K


def rig_json() -> str:
    """The rig as ``custom_json`` of CVD Camera Trajectory (one K for all views, c2w per view and frame)."""
    K, c2w, _ = rig_arrays()
    return json.dumps({"K": K[0, 0].tolist(),
                       "views": [{"label": LABELS[v], "c2w": c2w[v].tolist()} for v in range(VIEWS)]})


def render_views():
    """``[V, T, H, W, 3]`` uint8 views of the scene through the rig."""
    import numpy as np

    from tests.core.synthetic_scene import make_scene, render_rig

    _, c2w, K_render = rig_arrays()
    frames = render_rig(make_scene(seed=0), K_render, c2w, SIZE, SIZE)
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_views(folder: Path) -> Path:
    from PIL import Image

    target = Path(folder) / SYNTHETIC_VIEWS
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in render_views().reshape(-1, SIZE, SIZE, 3)]
    images[0].save(target, save_all=True, append_images=images[1:], compress_level=4)
    return target


def install(comfy_root: Path) -> None:
    write_views(Path(comfy_root) / "input")


if __name__ == "__main__":
    print(write_views(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("input")))
