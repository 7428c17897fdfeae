"""The one place in the pack that touches ComfyUI's runtime APIs.

Everything is imported lazily, so node modules (and their unit tests) import without ComfyUI.
``cvd_core`` never imports this module: arrows point from ``nodes`` to ``cvd_core`` only.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional

from cvd_core.guards import require_finite
from cvd_core.progress import CallbackProgress, NullProgress, Progress
from cvd_core.viz import frames_as_grid

LOG = logging.getLogger("cvd_multiview")


class NodeInputError(ValueError):
    """Bad input to a node; the message names the rule that was broken."""


_PROMPT_HANDLERS: set = set()  # (id of the server, handler name) already registered


def add_prompt_handler(name: str, handler: Callable[[object], None]) -> bool:
    """Call ``handler(api_prompt)`` on every prompt the running server receives, before it validates
    anything (``PromptServer.add_on_prompt_handler``, in ComfyUI since 2023); once per server and
    ``name``, however often the pack is imported. Only inside a running ComfyUI (its ``server`` module
    is imported before custom nodes load); False elsewhere."""
    import sys

    instance = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "add_on_prompt_handler"):
        return False
    if (id(instance), name) in _PROMPT_HANDLERS:
        return True

    def on_prompt(json_data):
        if isinstance(json_data, dict):
            handler(json_data.get("prompt"))
        return json_data

    instance.add_on_prompt_handler(on_prompt)
    _PROMPT_HANDLERS.add((id(instance), name))
    return True


def comfy_available() -> bool:
    try:
        import comfy.utils  # noqa: F401
    except Exception:
        return False
    return True


class ComfyProgress(CallbackProgress):
    """A progress that can also show a preview image (ComfyUI sends it with the bar's position)."""

    def __init__(self, on_update, on_check, on_preview):
        super().__init__(on_update, on_check)
        self._on_preview = on_preview

    def show_preview(self, preview) -> None:
        """``preview``: what ComfyUI's previewers return, ``("JPEG", PIL image, max size)``."""
        self._on_preview(self.done, self.total, preview)


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

    def update(done: int, total: int, preview=None) -> None:
        if state["bar"] is None or state["bar"].total != max(total, 1):
            try:
                state["bar"] = comfy.utils.ProgressBar(max(total, 1), node_id=node_id)
            except TypeError:  # 2024 ComfyUI: ProgressBar(total) only
                state["bar"] = comfy.utils.ProgressBar(max(total, 1))
        state["bar"].update_absolute(done, max(total, 1), preview)

    return ComfyProgress(update, mm.throw_exception_if_processing_interrupted, update)


class _CancelOnly:
    """A progress that only forwards cancellation checks (core samplers report steps through their callback)."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def start(self, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        self._progress.check()

    def check(self) -> None:
        self._progress.check()


def cancel_only_progress(progress: Progress) -> Progress:
    """``progress``'s cancel point for the denoiser calls, without counting them (core counts steps)."""
    return _CancelOnly(progress)


def sd15_latent_preview(progress: Progress) -> Optional[Callable]:
    """A ``sample_multiview`` ``preview_callback`` that shows every frame of view 0, or None.

    Uses ComfyUI's own previewer for SD1.5 latents (``--preview-method``: Latent2RGB, or TAESD
    when ``models/vae_approx`` has it), so it follows the user's preview setting; None when
    previews are off or outside ComfyUI. The denoised estimate of view 0 is laid out as a grid
    of its frames. A failing preview is logged once and never stops sampling.
    """
    show = getattr(progress, "show_preview", None)
    if show is None:
        return None
    try:
        import comfy.latent_formats
        import latent_preview
        previewer = latent_preview.get_previewer(torch_device(), comfy.latent_formats.SD15())
    except Exception as exc:
        LOG.warning("cvd-multiview: sampling previews are off (%s)", exc)
        return None
    if previewer is None:
        return None
    failed = []

    def callback(step: int, n_steps: int, x0_view0) -> None:
        if failed:
            return
        try:
            grid = frames_as_grid(x0_view0.float())[None].to(torch_device())
            image = previewer.decode_latent_to_preview_image("JPEG", grid)
        except Exception as exc:  # a preview is a nicety: sampling goes on without it
            failed.append(exc)
            LOG.warning("cvd-multiview: sampling preview failed, previews off for this run: %s", exc)
            return
        show(image)  # outside the try: a cancel raised by ComfyUI's progress hook must propagate

    return callback


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
    require_finite(array, "preview images", axes=("image",), hint="nothing was written")
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


# ------------------------------------------------------------------------------ model folders

def register_model_folder(name: str, extensions: tuple) -> None:
    """Register ``models/<name>`` with ComfyUI's ``folder_paths`` (idempotent, both API versions)."""
    try:
        import folder_paths
    except Exception:
        return
    path = os.path.join(folder_paths.models_dir, name)
    if name in folder_paths.folder_names_and_paths:
        # Already known (another pack, or the user's extra_model_paths.yaml): keep those folders and
        # make sure the default models/<name> is searched too.
        paths, known = folder_paths.folder_names_and_paths[name][:2]
        if path not in paths:
            paths.append(path)
        if isinstance(known, set):
            known.update(extensions)
        return
    folder_paths.folder_names_and_paths[name] = ([path], set(extensions))


def model_folder_paths(name: str) -> List[str]:
    try:
        import folder_paths
        return list(folder_paths.get_folder_paths(name))
    except Exception:
        return []


def list_model_entries(name: str, extensions: tuple, folder_markers: tuple = ("config.json",)) -> List[str]:
    """Single files with ``extensions`` and model folders (holding one of ``folder_markers``) in
    every registered path of ``models/<name>``, relative to that path."""
    entries = []
    for root in model_folder_paths(name):
        if not os.path.isdir(root):
            continue
        for current, dirs, files in os.walk(root, followlinks=True):
            dirs.sort()
            relative = os.path.relpath(current, root)
            if relative != "." and any(marker in files for marker in folder_markers):
                entries.append(relative.replace(os.sep, "/"))
                dirs[:] = []  # a model folder's own subfolders are not separate models
                continue
            for file in sorted(files):
                if file.lower().endswith(extensions):
                    entries.append(os.path.normpath(os.path.join(relative, file)).replace(os.sep, "/"))
    return sorted(set(entries))


def resolve_model_entry(name: str, entry: str) -> str:
    for root in model_folder_paths(name):
        candidate = os.path.realpath(os.path.join(root, entry))
        if os.path.commonpath([os.path.realpath(root), candidate]) != os.path.realpath(root):
            continue
        if os.path.exists(candidate):
            return candidate
    raise NodeInputError(f"{entry!r} not found in models/{name}/ ({', '.join(model_folder_paths(name)) or 'no folder registered'})")


# ------------------------------------------------------------------------------ metadata

def metadata_disabled() -> bool:
    """True when ComfyUI runs with ``--disable-metadata`` (savers then embed no prompt/workflow)."""
    try:
        from comfy.cli_args import args
    except Exception:
        return False
    return bool(getattr(args, "disable_metadata", False))
