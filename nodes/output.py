"""Output nodes: save / preview multi-view videos, and measure their multi-view consistency.

Thin adapters over ``cvd_core.io`` (PyAV writer, labelled grid, atomic staging) and
``cvd_core.metrics`` (SIFT/ORB matches scored under the rig's known fundamental matrices).

``ui`` contract of the save and preview nodes (every value a list, as ComfyUI 2024 concatenates
them; the web extension and API users read it from ``/history``)::

    {"images": [{"filename", "subfolder", "type"}],        # PNG poster: frame 0 of the grid
     "cvd_multiview": [{
         "views": [{"view": i, "label": str, "filename", "subfolder", "type", "format",
                    "frames", "width", "height"}, ...],
         "grid": {same keys, "view": "grid", "label": "grid"} or None,
         "fps": float, "frames": int, "width": int, "height": int,
         "cameras": CameraSet.to_dict() or None,
         "cameras_file": {"filename", "subfolder", "type"} or None}]}

Files are named by ComfyUI's counter convention: ``<name>_<counter:05>_v<i>.<ext>``,
``<name>_<counter:05>_grid.<ext>``, the poster ``<name>_<counter:05>_poster.png`` and, when cameras
are connected (save node only), ``<name>_<counter:05>_cameras.json``: the rig and the view files it
belongs to (``format`` ``cvd_multiview_save/1``, read by ``benchmarks/eval_consistency.py``). For the
``png`` format every view is a *folder* ``<name>_<counter:05>_v<i>/frame_00000.png ...``; its
entry then names frame 0 (``filename`` ``frame_00000.png``, ``subfolder`` ending in the folder,
so ``/view`` serves it) and adds ``"pattern": "frame_%05d.png"``: frame k is
``/view?filename=<pattern % k>&subfolder=<subfolder>``. ``width``/``height`` are the encoded
size (H.264/VP9 pad an odd size by one pixel).
"""

from __future__ import annotations

import json
import random
import string
from typing import Dict, List, Sequence

import numpy as np
import torch

from cvd_core.camera import CameraError
from cvd_core.io import FORMATS, frames_from_image_batch, make_grid_frames, write_multiview
from cvd_core.guards import require_finite
from cvd_core.io.staging import StagedOutputs
from cvd_core.metrics import (DETECTORS, ESTIMATORS, format_consistency_summary, multiview_report,
                              render_consistency_plot)

from . import _comfy
from ._comfy import NodeInputError
from ._schema import Input, NodeSchema, Output, Result

CATEGORY = "CVD/output"
CAMERAS = "CVD_CAMERAS"
DEFAULT_PREFIX = "cvd/multiview"
PREVIEW_QUALITY = 80
PNG_FRAME_PATTERN = "frame_%05d.png"
CAMERAS_SUFFIX = "_cameras.json"
CAMERAS_SIDECAR_FORMAT = "cvd_multiview_save/1"


# ------------------------------------------------------------------------------ shared helpers

def _split_views(images: torch.Tensor, views: int, cameras=None):
    """View-major IMAGE batch -> ``([V, T, H, W, 3] numpy, labels, rig or None)``.

    ``views`` 0 takes the count from ``cameras`` (1 without cameras); a non-zero count must agree
    with the cameras.
    """
    rig = cameras.as_rig() if cameras is not None else None
    if rig is not None and views and views != rig.n_views:
        raise NodeInputError(f"views ({views}) must equal the number of views of the connected cameras "
                             f"({rig.n_views}), or be 0 to take it from the cameras")
    count = views or (rig.n_views if rig is not None else 1)
    if images.dim() != 4 or images.shape[-1] != 3:
        raise NodeInputError(f"images must be an IMAGE batch [views x frames, H, W, 3], got {list(images.shape)}")
    try:
        frames = frames_from_image_batch(images, count)
    except ValueError as exc:
        raise NodeInputError(f"{exc} (images are view-major: all frames of view 0, then view 1, ...)") from None
    require_finite(frames, "images", axes=("view", "frame"), hint="nothing was written")
    labels = list(rig.labels) if rig is not None else [f"view {i}" for i in range(count)]
    return frames, labels, rig


def _grid_labels(labels: Sequence[str]) -> List[str]:
    """Tile captions: a default name ("view 2") adds nothing to the tile's own "view 2"."""
    return ["" if label == f"view {i}" else label for i, label in enumerate(labels)]


def _metadata(prompt, extra_pnginfo) -> Dict[str, str]:
    """The prompt and workflow as JSON tags, as ComfyUI's own savers embed them."""
    if _comfy.metadata_disabled():
        return {}
    tags: Dict[str, str] = {}
    if prompt is not None:
        tags["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        tags[str(key)] = json.dumps(value)
    return tags


def _write_poster(path: str, frames: np.ndarray, labels: Sequence[str], metadata: Dict[str, str]) -> None:
    """Frame 0 of the labelled grid as a PNG: any frontend can show it (and reload the workflow)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value)
    grid = make_grid_frames(frames[:, :1], labels)[0]
    Image.fromarray(grid).save(path, format="PNG", pnginfo=info, compress_level=4)


def _file_entry(written: dict, label: str, subfolder: str, kind: str) -> dict:
    entry = {"view": written["view"], "label": label, "filename": written["filename"], "subfolder": subfolder,
             "type": kind, "format": written["format"], "frames": written["frames"], "width": written["width"],
             "height": written["height"]}
    if written["format"] == "png":  # a folder of frames: point at frame 0 inside it
        entry["subfolder"] = f"{subfolder}/{written['filename']}" if subfolder else written["filename"]
        entry["filename"] = PNG_FRAME_PATTERN % 0
        entry["pattern"] = PNG_FRAME_PATTERN
    return entry


def _write_cameras_sidecar(path: str, written: list, labels: Sequence[str], rig, n_frames: int) -> None:
    """``<base>_cameras.json``: the rig and the files it belongs to, so a folder of saved runs can be
    evaluated or reconstructed later (``benchmarks/eval_consistency.py``). File names are relative
    to the sidecar's folder; a png "file" is a folder of ``frame_%05d.png``."""
    views = [{"view": w["view"], "label": labels[w["view"]], "filename": w["filename"], "format": w["format"],
              **({"pattern": PNG_FRAME_PATTERN} if w["format"] == "png" else {})}
             for w in written if w["view"] != "grid"]
    grid = [w["filename"] for w in written if w["view"] == "grid"]
    sidecar = {"format": CAMERAS_SIDECAR_FORMAT, "fps": float(written[0]["fps"]), "frames": int(n_frames),
               "views": views, "grid": grid[0] if grid else None, "cameras": rig.to_dict()}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(sidecar, handle, indent=1, allow_nan=False)


def _save_multiview(images, views, cameras, prefix: str, fps, format, quality, save_grid, kind: str,
                    metadata: Dict[str, str], unique_id) -> Result:
    """Write every view (+ grid + poster) under ComfyUI's counter convention; all or nothing."""
    frames, labels, rig = _split_views(images, views, cameras)
    n_views, n_frames, height, width, _ = frames.shape
    root = _comfy.output_directory() if kind == "output" else _comfy.temp_directory()
    try:
        folder, name, counter, subfolder, _ = _comfy.save_paths(prefix, width, height, root)
    except Exception as exc:  # ComfyUI raises a bare Exception for prefixes that leave the folder
        raise NodeInputError(f"filename_prefix {prefix!r} must name a file inside ComfyUI's {kind} folder: "
                             f"{exc}") from None
    base = f"{name}_{counter:05}"
    grid_labels = _grid_labels(labels)
    poster_name = f"{base}_poster.png"
    cameras_name = f"{base}{CAMERAS_SUFFIX}" if rig is not None and kind == "output" else None
    # One commit for the whole set; the poster and the sidecar, which name the videos, are renamed last.
    with StagedOutputs(folder) as staged:
        _write_poster(staged.stage(poster_name, last=True), frames, grid_labels, metadata)
        if cameras_name is not None:
            staged.check_free(cameras_name)  # fail before any encoding work
        try:
            written = write_multiview(frames, folder, lambda key: f"{base}_{key}" if key == "grid" else f"{base}_v{key}",
                                      fps=fps, format=format, quality=quality, labels=grid_labels, metadata=metadata,
                                      write_grid=save_grid, progress=_comfy.progress_bar(unique_id), staged=staged)
        except ValueError as exc:
            raise NodeInputError(str(exc)) from None
        if cameras_name is not None:
            _write_cameras_sidecar(staged.stage(cameras_name, last=True), written, labels, rig, n_frames)
        staged.commit()
    view_entries = [_file_entry(w, labels[w["view"]], subfolder, kind) for w in written if w["view"] != "grid"]
    grid_entries = [_file_entry(w, "grid", subfolder, kind) for w in written if w["view"] == "grid"]
    summary = {"views": view_entries, "grid": grid_entries[0] if grid_entries else None,
               "fps": float(written[0]["fps"]), "frames": int(n_frames),
               "width": int(view_entries[0]["width"]), "height": int(view_entries[0]["height"]),
               "cameras": rig.to_dict() if rig is not None else None,
               "cameras_file": (None if cameras_name is None else
                                {"filename": cameras_name, "subfolder": subfolder, "type": kind})}
    poster = {"filename": poster_name, "subfolder": subfolder, "type": kind}
    return Result((), ui={"images": [poster], "cvd_multiview": [summary]})


def check_prefix(filename_prefix):
    if filename_prefix is None:  # a linked value: checked when the node runs
        return None
    text = str(filename_prefix).replace("\\", "/")
    if not text.strip():
        return f"filename_prefix must not be empty (e.g. cvd/multiview), got {filename_prefix!r}"
    if text.startswith("/") or ".." in text.split("/"):
        return ("filename_prefix must stay inside ComfyUI's output folder (no leading '/', no '..'), "
                f"got {filename_prefix!r}")
    if any(ord(c) < 32 for c in text):
        return f"filename_prefix must be a file name without control characters, got {filename_prefix!r}"
    return None


IMAGES_INPUT = Input("images", "IMAGE", "Frames of all views, view-major (all frames of view 0, then view 1, "
                                        "...), as the sampler and decoders return them.")
VIEWS_INPUT = Input("views", "INT", "How many videos the batch holds; 0 = the connected cameras' count (1 "
                                    "without), otherwise it must match them.", default=0, min=0,
                    max=64)
FPS_INPUT = Input("fps", "FLOAT", "Frame rate of the written videos (CVD and AnimateDiff videos play at 8).",
                  default=8.0, min=0.1, max=240.0, step=0.01)
CAMERAS_INPUT = Input("cameras", CAMERAS, "Optional rig of the views: gives the view count and the grid's labels, "
                                          "and goes to the multi-view player.",
                      optional=True)


# ------------------------------------------------------------------------------ SaveMultiViewVideo

def _run_save(images, views, filename_prefix, fps, format, quality, save_grid, cameras=None, prompt=None,
              extra_pnginfo=None, unique_id=None):
    return _save_multiview(images, views, cameras, filename_prefix, fps, format, quality, save_grid, "output",
                           _metadata(prompt, extra_pnginfo), unique_id)


SAVE_MULTIVIEW_VIDEO = NodeSchema(
    node_id="CVD_SaveMultiViewVideo",
    display_name="CVD Save Multi-View Video",
    category=CATEGORY,
    description=("Writes one video per view and a labelled grid video (mp4, webm or PNG frames) to the output "
                 "folder, with the workflow embedded, all files or none; with cameras also the rig as JSON. The "
                 "node plays the views in sync."),
    inputs=[
        IMAGES_INPUT,
        VIEWS_INPUT,
        Input("filename_prefix", "STRING", "Name inside ComfyUI's output folder (subfolders allowed); files are "
                                           "<prefix>_<counter>_v<i>, _grid, _poster.png.",
              default=DEFAULT_PREFIX, max_length=200),
        FPS_INPUT,
        Input("format", "COMBO", "mp4 = H.264 (plays everywhere), webm = VP9, png = a folder of lossless PNG frames "
              "per view.", default="mp4", options=list(FORMATS)),
        Input("quality", "INT", "0 (smallest file) to 100 (best); mapped to the codec's crf. PNG is always lossless.",
              default=80, min=0, max=100),
        Input("save_grid", "BOOLEAN", "Also write the grid video with all views side by side, labelled.",
              default=True),
        CAMERAS_INPUT,
    ],
    outputs=[],
    run=_run_save,
    is_output_node=True,
    hidden=("prompt", "extra_pnginfo", "unique_id"),
    rules=[check_prefix],
)


# ------------------------------------------------------------------------------ PreviewMultiView

def _preview_prefix() -> str:
    # A random part as ComfyUI's PreviewImage uses, so servers sharing a temp folder never collide.
    return "cvd_preview_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))


def _run_preview(images, views, fps, format, cameras=None, unique_id=None):
    return _save_multiview(images, views, cameras, _preview_prefix(), fps, format, PREVIEW_QUALITY, True, "temp",
                           {}, unique_id)


PREVIEW_MULTIVIEW = NodeSchema(
    node_id="CVD_PreviewMultiView",
    display_name="CVD Preview Multi-View",
    category=CATEGORY,
    description=("Shows all views as synchronized players (and a grid video) without keeping them: the files go to "
                 "ComfyUI's temp folder, which is emptied on restart, and carry no metadata. Same ui output as "
                 "CVD Save Multi-View Video."),
    inputs=[
        IMAGES_INPUT,
        VIEWS_INPUT,
        FPS_INPUT,
        Input("format", "COMBO", "mp4 = H.264, webm = VP9 (plays in every browser build), png = frame folders.",
              default="mp4", options=list(FORMATS)),
        CAMERAS_INPUT,
    ],
    outputs=[],
    run=_run_preview,
    is_output_node=True,
    hidden=("unique_id",),
)


# ------------------------------------------------------------------------------ MultiViewConsistency

def rig_for_frames(cameras, images: torch.Tensor, min_views: int = 2, purpose: str = "consistency compares views"):
    """The rig and the frames ``[V, T, H, W, 3]``; K rescaled when the frames have another size."""
    rig = cameras.as_rig()
    if rig.n_views < min_views:
        raise NodeInputError(f"{purpose}, so the cameras need at least {min_views} views, got {rig.n_views}")
    expected = rig.n_views * rig.n_frames
    if images.dim() != 4 or images.shape[0] != expected:
        raise NodeInputError(f"images must hold views x frames = {rig.n_views} x {rig.n_frames} = {expected} frames "
                             f"of the cameras (view-major), got a batch of {images.shape[0]}")
    frames = frames_from_image_batch(images, rig.n_views)
    height, width = frames.shape[2:4]
    if (width, height) != (rig.width, rig.height):
        try:
            rig = rig.resized(width, height)
        except CameraError as exc:
            raise NodeInputError(f"the frames are {width}x{height} but the cameras are {cameras.width}x"
                                 f"{cameras.height}, and the intrinsics cannot be rescaled: {exc}") from None
    return rig, frames


def _run_consistency(images, cameras, detector, max_frames, ransac_thresh, pose_estimator="usac_accurate",
                     unique_id=None):
    rig, frames = rig_for_frames(cameras, images)
    try:
        report = multiview_report(frames, rig, detector=detector, max_frames=max_frames or None,
                                  ransac_thresh=ransac_thresh, estimator=pose_estimator,
                                  progress=_comfy.progress_bar(unique_id))
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    report["intrinsics_rescaled_from"] = (None if (rig.width, rig.height) == (cameras.width, cameras.height)
                                          else [cameras.width, cameras.height])
    plot = render_consistency_plot(report)
    summary = format_consistency_summary(report)
    # The full report also goes to ui, so API users find the numbers in /history.
    ui = {"text": [summary], "images": _comfy.save_preview_images(plot, "cvd_consistency"),
          "cvd_consistency": [report]}
    plot_tensor = torch.from_numpy(np.ascontiguousarray(plot, dtype=np.float32))[None]
    return Result((json.dumps(report, indent=2, allow_nan=False), plot_tensor), ui=ui)


MULTIVIEW_CONSISTENCY = NodeSchema(
    node_id="CVD_MultiViewConsistency",
    display_name="CVD Multi-View Consistency",
    category=CATEGORY,
    description=("Scores how well the views agree with their cameras: Sampson epipolar error and RANSAC inlier "
                 "ratio of SIFT/ORB matches, and CVD's paper protocol (pose AUC@5/10/20, precision, matching "
                 "score) with matched pixels. Returns a JSON report and a plot."),
    inputs=[
        IMAGES_INPUT,
        Input("cameras", CAMERAS, "The rig the views were generated with (same views and frames; K is rescaled to "
                                  "the frame size)."),
        Input("detector", "COMBO", "sift = more accurate matches, orb = faster.", default="sift",
              options=list(DETECTORS)),
        Input("max_frames", "INT", "Evaluate at most this many frames, spread evenly over the video "
              "(0 = every frame).", default=8, min=0, max=1024),
        Input("ransac_thresh", "FLOAT", "RANSAC inlier threshold in pixels for the inlier ratio.", default=1.0,
              min=0.1, max=20.0, step=0.1),
        Input("pose_estimator", "COMBO", "Pose estimator: usac_accurate (RANSAC + local optimisation, default) or "
                                         "ransac (as CVD's paper, noisier).",
              default="usac_accurate", options=list(ESTIMATORS), optional=True),
    ],
    outputs=[Output("STRING", "report", "The full report as JSON: per pair and frame, the pose protocol, matched "
                                        "pixels, and summaries."),
             Output("IMAGE", "plot", "Per frame and view pair: mean Sampson error, rotation error with its AUCs, "
                                     "and matched pixels.")],
    run=_run_consistency,
    is_output_node=True,
    hidden=("unique_id",),
)

SCHEMAS = [SAVE_MULTIVIEW_VIDEO, PREVIEW_MULTIVIEW, MULTIVIEW_CONSISTENCY]
