"""nerfstudio datasets (``transforms.json``) from known cameras, and back.

nerfstudio's conventions (docs.nerf.studio, "Data conventions"; ``nerfstudio_dataparser.py``):
- ``transform_matrix`` is camera-to-world with **OpenGL/Blender camera axes** (x right, y up,
  z backwards; the camera looks along -z). The pack's rigs use OpenCV axes, so the camera's y and z
  columns are negated: ``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)``.
- The world is z-up. The pack's world is its rig's (the shared first camera: OpenCV axes, y down,
  z forward), so the world is rotated by ``A``: ``(x, y, z) -> (x, z, -y)``, exactly what
  nerfstudio's own COLMAP import (``ns-process-data``, ``colmap_to_json``) applies to a COLMAP world;
  ``applied_transform`` records ``A`` as that importer does. So this file equals what nerfstudio
  would make from the COLMAP model written next to it.
- Intrinsics in pixels with pixel centres at +0.5 (nerfstudio shoots pixel (0, 0)'s ray through
  (0.5, 0.5)): the pack's convention, written unchanged as per-frame ``fl_x, fl_y, cx, cy, w, h``
  (per-frame, because a rig may change its intrinsics per view or frame); ``camera_model`` OPENCV
  with zero distortion.
- ``file_path`` is relative to the folder holding ``transforms.json``.
Every number goes through ``json`` as its shortest round-trip repr: reading back is exact.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from .colmap import check_pinhole

OPENCV_TO_OPENGL_CAMERA = np.diag([1.0, -1.0, -1.0, 1.0])  # right-multiplied: flips the camera's y and z axes
WORLD_FROM_RIG = np.array([[1.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 1.0, 0.0],
                           [0.0, -1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])  # rig world (y down, z forward) -> nerfstudio world (z up)


def to_nerfstudio_c2w(c2w_opencv: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world in the rig's world -> nerfstudio's ``transform_matrix``."""
    return WORLD_FROM_RIG @ np.asarray(c2w_opencv, dtype=np.float64) @ OPENCV_TO_OPENGL_CAMERA


def from_nerfstudio_c2w(transform_matrix: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_nerfstudio_c2w` (both fixed matrices are orthogonal, so inverses are transposes)."""
    matrix = np.asarray(transform_matrix, dtype=np.float64)
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    return WORLD_FROM_RIG.T @ matrix @ OPENCV_TO_OPENGL_CAMERA.T


def nerfstudio_transforms(intrinsics: Sequence[np.ndarray], c2w: Sequence[np.ndarray], file_paths: Sequence[str],
                          width: int, height: int, colmap_ids: Sequence[int] = ()) -> dict:
    """The ``transforms.json`` content for images with pixel ``K`` and OpenCV ``c2w`` (rig world)."""
    if not (len(intrinsics) == len(c2w) == len(file_paths)):
        raise ValueError(f"need one K, one pose and one file per image, got {len(intrinsics)}, {len(c2w)}, "
                         f"{len(file_paths)}")
    frames = []
    for index, (K, pose, path) in enumerate(zip(intrinsics, c2w, file_paths)):
        K = np.asarray(K, dtype=np.float64)
        check_pinhole(K, f"K of image {path}")
        frame = {"file_path": path, "transform_matrix": to_nerfstudio_c2w(pose).tolist(),
                 "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
                 "w": int(width), "h": int(height)}
        if colmap_ids:
            frame["colmap_im_id"] = int(colmap_ids[index])
        frames.append(frame)
    return {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
            "applied_transform": WORLD_FROM_RIG[:3].tolist(), "frames": frames}


def write_nerfstudio_transforms(path: str, transforms: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(transforms, handle, indent=2, allow_nan=False)
        handle.write("\n")


def read_nerfstudio_transforms(path: str) -> list[dict]:
    """``[{"file_path", "K", "c2w", "w", "h"}]`` with ``c2w`` back in OpenCV axes and the rig's world.

    Reads per-frame intrinsics, falling back to top-level ones (both layouts are valid nerfstudio).
    """
    with open(path, encoding="utf-8") as handle:
        meta = json.load(handle)
    applied = np.asarray(meta.get("applied_transform", WORLD_FROM_RIG[:3]), dtype=np.float64)
    if not np.allclose(applied, WORLD_FROM_RIG[:3]):
        raise ValueError(f"{path}: applied_transform {applied.tolist()} is not this pack's world rotation")
    frames = []
    for frame in meta["frames"]:
        value = {key: frame.get(key, meta.get(key)) for key in ("fl_x", "fl_y", "cx", "cy", "w", "h")}
        K = np.array([[value["fl_x"], 0.0, value["cx"]], [0.0, value["fl_y"], value["cy"]], [0.0, 0.0, 1.0]])
        frames.append({"file_path": frame["file_path"], "K": K, "c2w": from_nerfstudio_c2w(frame["transform_matrix"]),
                       "w": int(value["w"]), "h": int(value["h"])})
    return frames
