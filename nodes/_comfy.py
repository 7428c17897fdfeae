"""The one place in the pack that touches ComfyUI's runtime APIs.

Everything is imported lazily, so node modules (and their unit tests) import without ComfyUI.
``cvd_core`` never imports this module: arrows point from ``nodes`` to ``cvd_core`` only.
"""

from __future__ import annotations

import os
from typing import List, Optional

from cvd_core.progress import CallbackProgress, NullProgress, Progress


class NodeInputError(ValueError):
    """Bad input to a node; the message names the rule that was broken."""


def comfy_available() -> bool:
    try:
        import comfy.utils  # noqa: F401
    except Exception:
        return False
    return True


def progress_bar(node_id: Optional[str] = None) -> Progress:
    """A ``cvd_core`` progress bound to ComfyUI's ``ProgressBar``.

    Every ``advance`` goes through ``ProgressBar.update_absolute``, whose hook raises when the
    user cancels, so core loops stop between units. ``check`` is a cancellation point without
    progress. Outside ComfyUI a ``NullProgress`` is returned.
    """
    try:
        import comfy.model_management as mm
        import comfy.utils
    except Exception:
        return NullProgress()

    state = {"bar": None}

    def on_update(done: int, total: int) -> None:
        if state["bar"] is None or state["bar"].total != max(total, 1):
            try:
                state["bar"] = comfy.utils.ProgressBar(max(total, 1), node_id=node_id)
            except TypeError:  # 2024 ComfyUI: ProgressBar(total) only
                state["bar"] = comfy.utils.ProgressBar(max(total, 1))
        state["bar"].update_absolute(done, max(total, 1))

    return CallbackProgress(on_update, on_check=mm.throw_exception_if_processing_interrupted)


def torch_device():
    """The device ComfyUI computes on (``cpu`` under ``--cpu``)."""
    try:
        import comfy.model_management as mm
        return mm.get_torch_device()
    except Exception:
        import torch
        return torch.device("cpu")


def input_directory() -> str:
    import folder_paths
    return folder_paths.get_input_directory()


def output_directory() -> str:
    import folder_paths
    return folder_paths.get_output_directory()


def temp_directory() -> str:
    import folder_paths
    return folder_paths.get_temp_directory()


def save_paths(prefix: str, width: int, height: int, output_dir: Optional[str] = None):
    """ComfyUI's file-naming convention: ``(folder, stem, counter, subfolder, prefix)``."""
    import folder_paths
    directory = output_dir or folder_paths.get_output_directory()
    return folder_paths.get_save_image_path(prefix, directory, width, height)


def input_files(extensions: tuple, subfolders: tuple = ("", "cvd_poses")) -> List[str]:
    """Files in ComfyUI's input folder (and given subfolders) with one of ``extensions``.

    Returned names are relative to the input folder (``cvd_poses/a.txt``), which is what the
    ``/upload/image`` endpoint's ``subfolder`` field produces.
    """
    try:
        root = input_directory()
    except Exception:
        return []
    found = []
    for sub in subfolders:
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(extensions) and os.path.isfile(os.path.join(folder, name)):
                found.append(f"{sub}/{name}" if sub else name)
    return found


def resolve_input_file(name: str) -> str:
    """Absolute path of a file in the input folder; refuses paths that escape it."""
    root = os.path.realpath(input_directory())
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise NodeInputError(f"file {name!r} must be inside ComfyUI's input folder")
    if not os.path.isfile(path):
        raise NodeInputError(f"file {name!r} not found in ComfyUI's input folder ({root}); "
                             "put it there or upload it")
    return path


def save_preview_images(images, prefix: str = "cvd_preview") -> list:
    """Save ``[N,H,W,3]`` float images in [0,1] as PNGs in ComfyUI's temp folder.

    Returns the ``ui`` file entries (``filename``, ``subfolder``, ``type``) ComfyUI's frontend and
    ``/history`` use; outside ComfyUI returns an empty list.
    """
    import numpy as np
    from PIL import Image

    try:
        import folder_paths
    except Exception:
        return []
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    height, width = array.shape[1:3]
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(
        prefix, folder_paths.get_temp_directory(), width, height)
    entries = []
    for index, frame in enumerate(array):
        name = f"{stem}_{counter + index:05}_.png"
        pixels = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, name), compress_level=1)
        entries.append({"filename": name, "subfolder": subfolder, "type": "temp"})
    return entries
