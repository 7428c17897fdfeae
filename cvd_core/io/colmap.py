"""COLMAP text models (``cameras.txt``, ``images.txt``, ``points3D.txt``) from known cameras, and back.

COLMAP's conventions (colmap.github.io/format.html, /cameras.html):
- ``images.txt`` stores the world-to-camera pose of each image as a unit quaternion ``QW QX QY QZ``
  (Hamilton convention, scalar first) and a translation ``TX TY TZ``: ``x_cam = R(q) X_world + t``;
  the camera centre is ``-R^T t``. Camera axes are OpenCV's (x right, y down, z forward), the
  same as the pack's rigs, so no axis flip is needed.
- ``PINHOLE`` cameras have ``fx fy cx cy`` in pixels, with the centre of the top-left pixel at
  ``(0.5, 0.5)``: the pack's convention (CameraCtrl's Plücker rays sample pixel centres at +0.5),
  so the rig's ``K`` is written unchanged.
- Each image takes two lines; the second (its 2-D observations) is empty here, and ``points3D.txt``
  holds no point: the model is the "known poses" input that ``colmap point_triangulator`` fills in.
Numbers are written with Python's shortest round-trip ``repr``, so reading back is exact.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

CAMERA_MODEL = "PINHOLE"
SKEW_TOL = 1e-9  # relative to fx: COLMAP's pinhole models have no skew parameter


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``[w, x, y, z]`` (Hamilton, ``w >= 0``) of a rotation matrix.

    Shepperd's method: branch on the largest of ``w, x, y, z`` so the division is always by a
    quantity of at least 1/2, which keeps the result accurate for every rotation angle.
    """
    m = np.asarray(R, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    candidates = [trace, m[0, 0], m[1, 1], m[2, 2]]
    largest = int(np.argmax(candidates))
    if largest == 0:
        s = 2.0 * math.sqrt(max(1.0 + trace, 0.0))
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = largest - 1
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 0.0))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    quaternion = np.asarray(q) / np.linalg.norm(q)
    return -quaternion if quaternion[0] < 0 else quaternion


def quaternion_to_rotation(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix of a (not necessarily unit) quaternion ``[w, x, y, z]``."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _number(value: float) -> str:
    return repr(float(value))


def check_pinhole(K: np.ndarray, what: str) -> None:
    """COLMAP's PINHOLE and nerfstudio's OPENCV models have no skew: refuse a K that needs one."""
    if abs(K[0, 1]) > SKEW_TOL * abs(K[0, 0]):
        raise ValueError(f"{what} has skew K[0,1] = {K[0, 1]!r}; COLMAP and nerfstudio pinhole cameras have no skew")


def camera_ids(intrinsics: Sequence[np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """One COLMAP camera per distinct ``K`` (exact float equality): ``(camera id per image, K per camera)``."""
    unique: list[np.ndarray] = []
    ids = []
    for K in intrinsics:
        for index, known in enumerate(unique):
            if np.array_equal(known, K):
                ids.append(index + 1)
                break
        else:
            unique.append(np.asarray(K, dtype=np.float64))
            ids.append(len(unique))
    return ids, unique


def write_colmap_text(folder: str, intrinsics: Sequence[np.ndarray], c2w: Sequence[np.ndarray],
                      names: Sequence[str], width: int, height: int) -> None:
    """Write ``cameras.txt``, ``images.txt`` and an empty ``points3D.txt`` into ``folder`` (created).

    ``intrinsics`` / ``c2w``: one ``3x3`` pixel K and one ``4x4`` OpenCV camera-to-world per image;
    ``names``: image file names relative to COLMAP's image folder. Image ids are 1, 2, ... in order.
    """
    if not (len(intrinsics) == len(c2w) == len(names)):
        raise ValueError(f"need one K, one pose and one name per image, got {len(intrinsics)}, {len(c2w)}, "
                         f"{len(names)}")
    for index, K in enumerate(intrinsics):
        check_pinhole(np.asarray(K), f"K of image {names[index]}")
    os.makedirs(folder, exist_ok=True)
    ids, cameras = camera_ids([np.asarray(K, dtype=np.float64) for K in intrinsics])
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(cameras)}"]
    for camera_id, K in enumerate(cameras, start=1):
        params = " ".join(_number(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        lines.append(f"{camera_id} {CAMERA_MODEL} {int(width)} {int(height)} {params}")
    _write_lines(os.path.join(folder, "cameras.txt"), lines)

    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(names)}, mean observations per image: 0"]
    for image_id, (pose, camera_id, name) in enumerate(zip(c2w, ids, names), start=1):
        if any(ch.isspace() for ch in name):
            raise ValueError(f"COLMAP image names cannot contain spaces, got {name!r}")
        w2c = np.linalg.inv(np.asarray(pose, dtype=np.float64))
        q = rotation_to_quaternion(w2c[:3, :3])
        values = " ".join(_number(v) for v in (*q, *w2c[:3, 3]))
        lines += [f"{image_id} {values} {camera_id} {name}", ""]  # no 2-D observations
    _write_lines(os.path.join(folder, "images.txt"), lines)

    _write_lines(os.path.join(folder, "points3D.txt"), [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        "# Number of points: 0, mean track length: 0"])


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n".join(lines) + "\n")


def _data_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def read_colmap_text(folder: str) -> dict:
    """Read a text model back: ``{"cameras": {id: (model, w, h, params)}, "images": [{"id", "name",
    "camera_id", "K", "c2w"}], "points3D": n}`` with ``K`` 3x3 and ``c2w`` 4x4 (OpenCV axes)."""
    cameras = {}
    for line in _data_lines(os.path.join(folder, "cameras.txt")):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        cameras[int(fields[0])] = (fields[1], int(fields[2]), int(fields[3]), [float(v) for v in fields[4:]])
    images = []
    lines = _data_lines(os.path.join(folder, "images.txt"))
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        q, t = [float(v) for v in fields[1:5]], np.array([float(v) for v in fields[5:8]])
        index += 1  # the POINTS2D line that always follows an image line (empty here)
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = quaternion_to_rotation(q), t
        model, _, _, params = cameras[int(fields[8])]
        if model != CAMERA_MODEL:
            raise ValueError(f"only {CAMERA_MODEL} cameras are read here, got {model}")
        fx, fy, cx, cy = params
        images.append({"id": int(fields[0]), "name": " ".join(fields[9:]), "camera_id": int(fields[8]),
                       "K": np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), "c2w": np.linalg.inv(w2c)})
    points = [line for line in _data_lines(os.path.join(folder, "points3D.txt"))
              if line.strip() and not line.startswith("#")]
    return {"cameras": cameras, "images": images, "points3D": len(points)}
