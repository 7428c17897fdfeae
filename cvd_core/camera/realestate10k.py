"""RealEstate10K / CameraCtrl pose files -> :class:`CameraSet`.

File format (one camera per line after a header line holding the video URL)::

    https://www.youtube.com/watch?v=...
    timestamp fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3

``fx fy cx cy`` are normalised by the *source* video's width and height; the 12 numbers are the
world-to-camera matrix (3x4, row-major, OpenCV axes).

The generated frame is the source resized to cover ``width`` x ``height`` and center-cropped, so
the pixel intrinsics follow :func:`~cvd_core.camera.geometry.resize_crop_intrinsics` with the
*real* source aspect. The files do not store the source size; RealEstate10K videos are
1280x720 (16:9 landscape), the default of ``source_size``. (CVD's validation loader hard-codes
``H, W = 1280, 720``, i.e. a portrait source, and gets anisotropic intrinsics; passing
``source_size=(720, 1280)`` reproduces that, which the parity tests use, but it is not a default.)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .geometry import relative_to_first, resize_crop_intrinsics
from .rig import CameraError, CameraSet

__all__ = ["load_realestate10k", "parse_pose_rows", "REALESTATE10K_SOURCE_SIZE"]

REALESTATE10K_SOURCE_SIZE = (1280, 720)  # (W, H) of RealEstate10K's videos
_ROW_LENGTH = 19  # timestamp, fx, fy, cx, cy, 0, 0, 12 numbers of w2c


def _read_text(text_or_path: Union[str, os.PathLike]) -> Tuple[str, str]:
    """(text, name for messages). A str with a line break is the file's content, else a path."""
    if isinstance(text_or_path, str) and ("\n" in text_or_path or "\r" in text_or_path):
        return text_or_path, "pose file"
    path = Path(os.fspath(text_or_path))
    if not path.is_file():
        raise CameraError(f"pose file not found: {path}")
    try:
        return path.read_text(encoding="utf-8"), f"pose file {path.name}"
    except (OSError, UnicodeDecodeError) as exc:
        raise CameraError(f"pose file {path.name} cannot be read as text: {exc}") from None


def _parse_line(fields: List[str], line_no: int, name: str) -> Optional[np.ndarray]:
    values = []
    for field in fields:
        try:
            values.append(float(field))
        except ValueError:
            raise CameraError(f"{name} line {line_no}: {field!r} is not a number") from None
    if len(values) != _ROW_LENGTH:
        raise CameraError(f"{name} line {line_no}: expected {_ROW_LENGTH} numbers (timestamp fx fy cx cy 0 0 "
                          f"and a 3x4 world-to-camera matrix), got {len(values)}")
    row = np.asarray(values, dtype=np.float64)
    if not np.isfinite(row).all():
        raise CameraError(f"{name} line {line_no}: values must be finite, found NaN or inf")
    return row


def _is_numeric_line(fields: List[str]) -> bool:
    """A header (URL) has a non-numeric field; an all-numeric first line is a (validated) pose row."""
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


def parse_pose_rows(text_or_path: Union[str, os.PathLike]) -> np.ndarray:
    """The camera rows ``[N, 19]`` of a RealEstate10K pose file (or its text), validated.

    The first non-empty line is the header (video URL) unless all its fields are numbers; blank
    lines are skipped. Errors name the file and the 1-based line number.
    """
    return _parse_rows(text_or_path)[0]


def _parse_rows(text_or_path: Union[str, os.PathLike]) -> Tuple[np.ndarray, str]:
    text, name = _read_text(text_or_path)
    lines = text.splitlines()
    rows = []
    header_seen = False
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if not header_seen:
            header_seen = True
            if not _is_numeric_line(fields):
                continue  # the URL line
        rows.append(_parse_line(fields, line_no, name))
    if not rows:
        raise CameraError(f"{name} has no camera rows (expected a URL line, then one line per frame: "
                          f"timestamp fx fy cx cy 0 0 and 12 world-to-camera numbers)")
    return np.stack(rows), name


def _select_rows(rows: np.ndarray, frames: Optional[int], stride: int, name: str) -> np.ndarray:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise CameraError(f"stride must be an integer >= 1, got {stride!r}")
    picked = rows[::stride]
    if frames is None:
        return picked
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise CameraError(f"frames must be an integer >= 1, got {frames!r}")
    if len(picked) < frames:
        detail = f" ({len(rows)} rows at stride {stride})" if stride > 1 else ""
        raise CameraError(f"{name} has {len(picked)} frames{detail}, {frames} requested")
    return picked[:frames]


def load_realestate10k(text_or_path: Union[str, os.PathLike], width: int, height: int,
                       frames: Optional[int] = None, stride: int = 1,
                       source_size: Tuple[float, float] = REALESTATE10K_SOURCE_SIZE,
                       label: Optional[str] = None) -> CameraSet:
    """Load a RealEstate10K / CameraCtrl pose file as a single trajectory ``CameraSet`` (``[F, ...]``).

    ``text_or_path``: a path, or the file's text (any str containing a line break).
    ``width``, ``height``: size of the generated frames (multiples of 8); K is converted for a
    resize-to-cover + center-crop of the ``source_size`` (W, H) video, default 1280x720.
    ``frames``: take this many rows (after ``stride``); fewer available raises
    ``CameraError("pose file has 12 frames, 16 requested")``. Poses are made relative to the
    first selected frame (frame 0 = identity).
    """
    all_rows, name = _parse_rows(text_or_path)
    rows = _select_rows(all_rows, frames, stride, name)
    try:
        src_w, src_h = (float(v) for v in source_size)
    except (TypeError, ValueError):
        raise CameraError(f"source_size must be a pair (W, H), got {source_size!r}") from None
    if not (src_w > 0 and src_h > 0 and math.isfinite(src_w) and math.isfinite(src_h)):
        raise CameraError(f"source_size must be positive, got {source_size!r}")

    fx, fy, cx, cy = (torch.as_tensor(rows[:, i], dtype=torch.float64) for i in range(1, 5))
    if not ((fx > 0).all() and (fy > 0).all()):
        raise CameraError(f"{name}: focal lengths fx, fy (columns 2 and 3) must be positive")
    K_source = torch.zeros(len(rows), 3, 3, dtype=torch.float64)
    K_source[:, 0, 0] = fx * src_w
    K_source[:, 1, 1] = fy * src_h
    K_source[:, 0, 2] = cx * src_w
    K_source[:, 1, 2] = cy * src_h
    K_source[:, 2, 2] = 1.0
    K = resize_crop_intrinsics(K_source, (src_w, src_h), (width, height))

    w2c = np.repeat(np.eye(4)[None], len(rows), axis=0)
    w2c[:, :3, :] = rows[:, 7:].reshape(-1, 3, 4)
    singular = np.abs(np.linalg.det(w2c[:, :3, :3])) < 1e-9
    if singular.any():
        raise CameraError(f"{name}: the world-to-camera rotation of frame {int(np.argmax(singular))} is singular")
    c2w = relative_to_first(torch.as_tensor(np.linalg.inv(w2c), dtype=torch.float64))
    return CameraSet(K, c2w, width, height, (label if label is not None else _default_label(text_or_path),))


def _default_label(text_or_path: Union[str, os.PathLike]) -> str:
    """The file's stem (e.g. "2f25826f0d0ef09a"), or "poses" for text input."""
    if isinstance(text_or_path, str) and ("\n" in text_or_path or "\r" in text_or_path):
        return "poses"
    return Path(os.fspath(text_or_path)).stem
