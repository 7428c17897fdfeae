"""Export node: the generated views and their rig as a nerfstudio dataset and a COLMAP model.

A thin adapter over :mod:`cvd_core.io.reconstruction` (formats and conventions are documented there
and in docs/export.md). ``ui`` contract (lists, as ComfyUI 2024 concatenates them)::

    {"text": [one-line summary],
     "cvd_export": [{"folder", "subfolder", "type": "output", "scope", "formats", "image_format",
                     "images", "datasets": [{"folder", "images", "transforms", "colmap", ...}],
                     "skipped_time_steps": [...], ...}],
     "cvd_export_files": [{"filename", "subfolder", "type"}]}  # manifest, transforms.json, images.txt

The export is one folder ``<prefix>_<counter:05>`` in ComfyUI's output folder (counter naming as
ComfyUI's savers), written atomically: a failed or cancelled run leaves nothing behind.
"""

from __future__ import annotations

from cvd_core.io.reconstruction import IMAGE_FORMATS, SCOPES, TARGETS, export_for_reconstruction

from . import _comfy
from ._comfy import NodeInputError
from ._schema import Input, NodeSchema, Output, Result
from .output import CAMERAS, CATEGORY, IMAGES_INPUT, check_prefix, rig_for_frames

DEFAULT_PREFIX = "cvd/reconstruction"


def _run_export(images, cameras, filename_prefix, scope, formats, image_format, skip_duplicate_cameras,
                unique_id=None):
    # filename_prefix and the choices are checked from the schema before this runs (before any folder is made)
    rig, frames = rig_for_frames(cameras, images, min_views=1, purpose="an export needs cameras")
    height, width = frames.shape[2:4]
    try:
        folder, name, counter, subfolder, _ = _comfy.save_paths(filename_prefix, width, height,
                                                                _comfy.output_directory())
    except Exception as exc:  # ComfyUI raises a bare Exception for prefixes that leave the folder
        raise NodeInputError(f"filename_prefix {filename_prefix!r} must name a folder inside ComfyUI's output "
                             f"folder: {exc}") from None
    try:
        summary = export_for_reconstruction(
            frames, rig.K, rig.c2w, folder, f"{name}_{counter:05}", scope=scope, targets=formats,
            image_format=image_format, skip_duplicate_cameras=skip_duplicate_cameras, rig=rig.to_dict(),
            labels=list(rig.labels), progress=_comfy.progress_bar(unique_id))
    except ValueError as exc:
        raise NodeInputError(str(exc)) from None
    relative = f"{subfolder}/{summary['folder']}" if subfolder else summary["folder"]
    entry = {key: value for key, value in summary.items() if key not in ("rig", "path")}
    entry.update(folder=relative, subfolder=subfolder, type="output")
    text = (f"exported {summary['images']} images as {formats} ({scope}, {len(summary['datasets'])} dataset"
            f"{'s' if len(summary['datasets']) != 1 else ''}) to output/{relative}")
    return Result((summary["path"],), ui={"text": [text], "cvd_export": [entry],
                                          "cvd_export_files": _served_files(summary, relative)})


def _served_files(summary: dict, relative: str) -> list:
    """``/view`` entries of the manifest and of each dataset's camera files (the API's way to fetch them)."""
    files = [{"filename": "cvd_export.json", "subfolder": relative, "type": "output"}]
    for dataset in summary["datasets"]:
        base = f"{relative}/{dataset['folder']}" if dataset["folder"] else relative
        if dataset["transforms"]:
            files.append({"filename": "transforms.json", "subfolder": base, "type": "output"})
        if dataset["colmap"]:
            files.append({"filename": "images.txt", "subfolder": f"{relative}/{dataset['colmap']}", "type": "output"})
    return files


EXPORT_FOR_RECONSTRUCTION = NodeSchema(
    node_id="CVD_ExportForReconstruction",
    display_name="CVD Export For Reconstruction",
    category=CATEGORY,
    description=("Writes the views and their rig for 3-D reconstruction: a nerfstudio dataset (transforms.json + "
                 "images) and a COLMAP text model (sparse/0), in one folder <prefix>_<counter> of the output "
                 "folder, for the whole video or per time step; all files or none."),
    inputs=[
        IMAGES_INPUT,
        Input("cameras", CAMERAS, "The rig the views were generated with (same views and frames; K is rescaled to "
                                  "the frame size)."),
        Input("filename_prefix", "STRING", "Export folder inside ComfyUI's output folder; may contain subfolders. "
              "The folder is <prefix>_<counter>.", default=DEFAULT_PREFIX),
        Input("scope", "COMBO", "whole_video = one dataset of every view and frame; per_time_step = one dataset "
                                "per frame index (t0000, ...).", default="whole_video",
              options=list(SCOPES)),
        Input("formats", "COMBO", "What to write beside the images: nerfstudio's transforms.json, COLMAP's text "
                                  "model (sparse/0), or both.", default="nerfstudio+colmap", options=list(TARGETS)),
        Input("image_format", "COMBO", "png = lossless; jpg = quality 95, about 5x smaller.", default="png",
              options=list(IMAGE_FORMATS)),
        Input("skip_duplicate_cameras", "BOOLEAN", "Leave out images whose camera repeats an earlier view's at "
                                                   "the same frame (CVD's shared frame 0).", default=True),
    ],
    outputs=[Output("STRING", "folder", "Absolute path of the export folder (ns-train ... --data <folder>, or "
                    "colmap --input_path <folder>/sparse/0).")],
    run=_run_export,
    is_output_node=True,
    hidden=("unique_id",),
    rules=[check_prefix],
)

SCHEMAS = [EXPORT_FOR_RECONSTRUCTION]
