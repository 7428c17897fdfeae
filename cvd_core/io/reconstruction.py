"""Hand generated multi-view videos to 3-D reconstruction: a nerfstudio dataset and a COLMAP model.

One export is one folder, created atomically (staged under a hidden name, renamed when complete;
an error or a cancel leaves nothing, see :mod:`cvd_core.io.staging`)::

    <name>/                      scope "whole_video": every view and frame in one dataset
      images/v00_t0000.png ...   frame t of view v (png lossless, or jpg quality 95)
      transforms.json            nerfstudio (see cvd_core.io.nerfstudio)
      sparse/0/cameras.txt       COLMAP text model (see cvd_core.io.colmap): PINHOLE cameras,
      sparse/0/images.txt        world-to-camera poses, no 2-D observations,
      sparse/0/points3D.txt      no points (fill with ``colmap point_triangulator``)
      cvd_export.json            manifest: the rig, what each image is, the conventions

    <name>/t0000/..., t0001/...  scope "per_time_step": one such dataset per frame index (the views at
                                 one instant: for a dynamic scene, each instant is a static scene)

The world is the rig's (the shared first camera: OpenCV axes); COLMAP keeps it, nerfstudio gets it
rotated to z-up as nerfstudio's own COLMAP import does. ``skip_duplicate_cameras`` leaves out an
image whose camera (pose and K) equals an earlier view's at the same frame (CVD's frame 0, where
every view starts at one pose): repeated cameras add no geometry, and their slightly different
generated images would contradict each other. A time step left with fewer than 2 images cannot be
reconstructed and is skipped (listed in the manifest).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np

from ..progress import Progress, ensure_progress
from .staging import StagedOutputs
from .colmap import camera_ids, check_pinhole, write_colmap_text
from .frames import check_multiview_frames, to_uint8
from .nerfstudio import nerfstudio_transforms, write_nerfstudio_transforms

SCOPES = ("whole_video", "per_time_step")
TARGETS = ("nerfstudio+colmap", "nerfstudio", "colmap")
IMAGE_FORMATS = ("png", "jpg")
MANIFEST = "cvd_export.json"
JPEG_QUALITY = 95
COLMAP_MODEL_DIR = os.path.join("sparse", "0")  # where `colmap mapper` puts its first model
SAME_CAMERA_TOL = 1e-9


def image_name(view: int, frame: int, image_format: str) -> str:
    return f"v{view:02d}_t{frame:04d}.{image_format}"


def _same_camera(K_a, c2w_a, K_b, c2w_b) -> bool:
    scale = max(1.0, float(np.abs(c2w_a[:3, 3]).max()), float(np.abs(c2w_b[:3, 3]).max()))
    return bool(np.allclose(c2w_a, c2w_b, rtol=0.0, atol=SAME_CAMERA_TOL * scale) and
                np.allclose(K_a, K_b, rtol=SAME_CAMERA_TOL, atol=0.0))


def _images_at(t: int, K: np.ndarray, c2w: np.ndarray, skip_duplicates: bool) -> list[tuple[int, int]]:
    """``[(view, t)]`` of frame t, without cameras that repeat an earlier view's when asked."""
    kept: list[tuple[int, int]] = []
    for view in range(K.shape[0]):
        if skip_duplicates and any(_same_camera(K[v, t], c2w[v, t], K[view, t], c2w[view, t]) for v, _ in kept):
            continue
        kept.append((view, t))
    return kept


def plan_datasets(K: np.ndarray, c2w: np.ndarray, scope: str, skip_duplicates: bool) -> tuple[list[dict], list[int]]:
    """``([{"folder", "images": [(view, frame)]}], skipped time steps)`` for the scope."""
    steps = K.shape[1]
    if scope == "whole_video":
        images = [image for t in range(steps) for image in _images_at(t, K, c2w, skip_duplicates)]
        return [{"folder": "", "images": sorted(images)}], []
    datasets, skipped = [], []
    for t in range(steps):
        images = _images_at(t, K, c2w, skip_duplicates)
        if len(images) < 2:
            skipped.append(t)
            continue
        datasets.append({"folder": f"t{t:04d}", "images": images})
    return datasets, skipped


def _write_image(path: str, pixels: np.ndarray, image_format: str) -> None:
    from PIL import Image

    image = Image.fromarray(pixels)
    if image_format == "jpg":
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="PNG", compress_level=4)


def _check_arguments(frames, K, c2w, scope, targets, image_format):
    array = check_multiview_frames(frames)
    views, steps = array.shape[:2]
    K = np.asarray(K.detach().cpu() if hasattr(K, "detach") else K, dtype=np.float64)
    c2w = np.asarray(c2w.detach().cpu() if hasattr(c2w, "detach") else c2w, dtype=np.float64)
    if K.shape != (views, steps, 3, 3) or c2w.shape != (views, steps, 4, 4):
        raise ValueError(f"K and c2w must be [{views}, {steps}, 3, 3] and [{views}, {steps}, 4, 4] (views x frames "
                         f"of the frames), got {list(K.shape)} and {list(c2w.shape)}")
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(c2w))):
        raise ValueError("K and c2w must be finite (no NaN or inf)")
    for name, value, choices in (("scope", scope, SCOPES), ("formats", targets, TARGETS),
                                 ("image_format", image_format, IMAGE_FORMATS)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    for v in range(views):
        for t in range(steps):
            check_pinhole(K[v, t], f"K of view {v}, frame {t}")
    return array, K, c2w


def _write_dataset(root: str, dataset: dict, frames: np.ndarray, K: np.ndarray, c2w: np.ndarray, targets: str,
                   image_format: str, progress: Progress) -> dict:
    base = os.path.join(root, dataset["folder"])
    os.makedirs(os.path.join(base, "images"), exist_ok=True)
    names = []
    for view, t in dataset["images"]:
        progress.check()
        name = image_name(view, t, image_format)
        _write_image(os.path.join(base, "images", name), to_uint8(frames[view, t]), image_format)
        names.append(name)
        progress.advance(1)
    intrinsics = [K[v, t] for v, t in dataset["images"]]
    poses = [c2w[v, t] for v, t in dataset["images"]]
    height, width = frames.shape[2:4]
    entry = {"folder": dataset["folder"], "images": len(names), "transforms": None, "colmap": None}
    if "nerfstudio" in targets:
        transforms = nerfstudio_transforms(intrinsics, poses, [f"images/{n}" for n in names], width, height,
                                           colmap_ids=list(range(1, len(names) + 1)) if "colmap" in targets else ())
        write_nerfstudio_transforms(os.path.join(base, "transforms.json"), transforms)
        entry["transforms"] = os.path.join(dataset["folder"], "transforms.json").replace(os.sep, "/")
    if "colmap" in targets:
        write_colmap_text(os.path.join(base, COLMAP_MODEL_DIR), intrinsics, poses, names, width, height)
        entry["colmap"] = os.path.join(dataset["folder"], COLMAP_MODEL_DIR).replace(os.sep, "/")
        entry["colmap_cameras"] = len(camera_ids(intrinsics)[1])
    entry["views_frames"] = [[int(v), int(t)] for v, t in dataset["images"]]
    return entry


def export_for_reconstruction(
    frames: Any,
    K: Any,
    c2w: Any,
    out_dir: str,
    name: str,
    scope: str = "whole_video",
    targets: str = "nerfstudio+colmap",
    image_format: str = "png",
    skip_duplicate_cameras: bool = True,
    rig: Optional[dict] = None,
    labels: Optional[Sequence[str]] = None,
    progress: Optional[Progress] = None,
) -> dict:
    """Write the export folder ``out_dir/name`` atomically and return its summary (see the module docstring).

    Args:
        frames: ``[V, T, H, W, 3]`` float 0..1 or uint8; K ``[V, T, 3, 3]`` pixel intrinsics of these
            frames (pixel centres at +0.5); c2w ``[V, T, 4, 4]`` OpenCV camera-to-world.
        rig: the rig as ``CameraSet.to_dict()``, stored in the manifest; labels: one per view.
        progress: advanced once per written image; raising from it cancels and removes everything.
    """
    array, K, c2w = _check_arguments(frames, K, c2w, scope, targets, image_format)
    datasets, skipped = plan_datasets(K, c2w, scope, bool(skip_duplicate_cameras))
    if not datasets:
        raise ValueError("nothing to export: every time step has fewer than 2 distinct cameras (all views share "
                         "one pose); use scope whole_video or a rig whose views move apart")
    progress = ensure_progress(progress)
    progress.start(sum(len(d["images"]) for d in datasets))
    os.makedirs(out_dir, exist_ok=True)
    with StagedOutputs(out_dir) as staged:
        root = staged.stage(name, folder=True)
        entries = [_write_dataset(root, d, array, K, c2w, targets, image_format, progress) for d in datasets]
        summary = {
            "format": "cvd_reconstruction_export/1",
            "scope": scope, "formats": targets, "image_format": image_format,
            "skip_duplicate_cameras": bool(skip_duplicate_cameras),
            "views": int(array.shape[0]), "frames": int(array.shape[1]),
            "width": int(array.shape[3]), "height": int(array.shape[2]),
            "labels": list(labels) if labels is not None else None,
            "datasets": entries, "skipped_time_steps": skipped,
            "images": sum(e["images"] for e in entries),
            "conventions": {
                "world": "the rig's: its shared first camera, OpenCV axes (x right, y down, z forward)",
                "colmap": "images.txt: world-to-camera, quaternion QW QX QY QZ (Hamilton) + T; OpenCV camera axes; "
                          "PINHOLE fx fy cx cy, top-left pixel centre at (0.5, 0.5)",
                "nerfstudio": "transform_matrix: camera-to-world, OpenGL camera axes (x right, y up, z back), world "
                              "rotated (x, y, z) -> (x, z, -y) to z-up (applied_transform)",
            },
            "rig": rig,
        }
        with open(os.path.join(root, MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2, allow_nan=False)
        staged.commit()
    return {**summary, "folder": name, "path": staged.final_path(name)}
