"""A real ComfyUI SIGKILLed while it writes: during a save, an export and a preview. After a
restart no staging entry of it is left and no partial set is visible; a second ComfyUI writing into
the same output folder at the same time is never disturbed (its entries survive both the restart's
sweep and the next save's, and its save completes). The second server is paused (SIGSTOP) in the
middle of its save while that happens, so the overlap does not depend on the machine's speed.

Server A (killed and restarted) is a ComfyUI of its own whose output folder is the session server's
(server B); A needs no models (LoadImage, the camera node and the output nodes only).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvd_core.io.staging import parse_entry
from tests.support.comfy_harness import ComfyServer, free_port

av = pytest.importorskip("av")
pytestmark = pytest.mark.integration

VIEWS, FRAMES, SIZE = 3, 4, 64


def _graph(image, repeat, *output_nodes):
    """Uploaded view-major frames repeated ``repeat`` times and scaled to 3x: views x 4*repeat frames."""
    frames = FRAMES * repeat
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": repeat}},
        "3": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                       "scale_by": 3.0}},
        "4": {"class_type": "CVD_CameraTrajectory",
              "inputs": {"preset": "orbit", "views": VIEWS, "frames": frames, "width": 3 * SIZE, "height": 3 * SIZE,
                         "camera_dist": 0.5, "speed": 1.0, "angle_deg": 30.0, "fov_deg": 0.0, "perturb": 0.0,
                         "perturb_seed": 0, "custom_json": ""}},
    }
    for index, node in enumerate(output_nodes, start=10):
        graph[str(index)] = node
    return graph


def _save(prefix, format="webm"):
    return {"class_type": "CVD_SaveMultiViewVideo",
            "inputs": {"images": ["3", 0], "views": VIEWS, "filename_prefix": prefix, "fps": 8.0, "format": format,
                       "quality": 80, "save_grid": True, "cameras": ["4", 0]}}


def _export(prefix):
    return {"class_type": "CVD_ExportForReconstruction",
            "inputs": {"images": ["3", 0], "cameras": ["4", 0], "filename_prefix": prefix, "scope": "whole_video",
                       "formats": "nerfstudio+colmap", "image_format": "png", "skip_duplicate_cameras": True}}


def _preview():
    return {"class_type": "CVD_PreviewMultiView",
            "inputs": {"images": ["3", 0], "views": VIEWS, "fps": 8.0, "format": "png", "cameras": ["4", 0]}}


def _staging(folder: Path, pid=None):
    """Staging entries of this pack in ``folder`` and below (of process ``pid`` only, when given)."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = parse_entry(name)
            if entry is not None and (pid is None or entry[1].pid == pid):
                found.append(os.path.join(root, name))
    return found


def _wait_for_staging(folder: Path, server: ComfyServer, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not _staging(folder, server.process.pid):
        assert time.monotonic() < deadline, f"no staging entry appeared in {folder}:\n{server.log_tail()}"
        assert server.alive(), server.log_tail()
        time.sleep(0.02)


def _kill(server: ComfyServer) -> int:
    """SIGKILL, as the OOM killer does; returns the dead server's PID."""
    pid = server.process.pid
    os.killpg(pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    server.process = None
    return pid


def _restart(server: ComfyServer) -> None:
    server.port = free_port()
    server.url = f"http://127.0.0.1:{server.port}"
    server.start()


def _visible(folder: Path, prefix: str):
    return sorted(n for n in os.listdir(folder) if n.startswith(prefix)) if folder.is_dir() else []


@pytest.fixture(scope="module")
def views_png(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("crash_upload") / "cvd_crash_views.png"
    frames = [Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(VIEWS * FRAMES)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def test_sigkill_during_save_export_and_preview_leaves_nothing_after_a_restart(comfy_server, views_png,
                                                                               tmp_path_factory):
    folder = comfy_server.output_dir / "cvd_crash"
    a = ComfyServer(tmp_path_factory.mktemp("comfyui_crash"))
    a.output_dir = comfy_server.output_dir  # two servers, one output folder
    paused = False
    a.start()
    try:
        image = a.upload(views_png)["name"]
        a.queue(_graph(image, 10, _save("cvd_crash/a_save")))
        _wait_for_staging(folder, a)
        dead = _kill(a)
        assert _staging(folder, dead) and _visible(folder, "a_save") == []  # hidden leftovers, nothing visible

        # server B is in the middle of a save into the same folder (paused there) while A restarts
        b_id = comfy_server.queue(_graph(comfy_server.upload(views_png)["name"], 10, _save("cvd_crash/b_save")))
        _wait_for_staging(folder, comfy_server)
        os.killpg(comfy_server.process.pid, signal.SIGSTOP)
        paused = True
        b_writing = _staging(folder, comfy_server.process.pid)
        _restart(a)
        assert _staging(folder, dead) == []  # swept at pack load
        assert _staging(folder, comfy_server.process.pid) == b_writing  # a live writer's entries: untouched
        assert "entries of running writers kept" in a.log_text() or "entry of running writers kept" in a.log_text()

        # an export, killed while it writes its image folder
        a.queue(_graph(image, 10, _export("cvd_crash/a_export")))
        _wait_for_staging(folder, a)
        dead = _kill(a)
        assert _staging(folder, dead) and _visible(folder, "a_export") == []
        _restart(a)
        assert _staging(folder, dead) == [] and _visible(folder, "a_export") == []

        # a preview (ComfyUI's temp folder), killed while it writes
        temp = a.root / "temp"
        a.queue(_graph(image, 10, _preview()))
        _wait_for_staging(temp, a)
        dead = _kill(a)
        assert _staging(temp, dead)
        _restart(a)
        assert _staging(temp) == [] and _staging(folder, dead) == []

        # A's next save sweeps the shared folder before writing: B's entries are still not touched
        entry = a.run(_graph(image, 1, _save("cvd_crash/a_small")))
        (small,) = entry["outputs"]["10"]["cvd_multiview"]
        assert len(_visible(folder, "a_small")) == VIEWS + 3  # views, grid, poster, cameras
        assert small["frames"] == FRAMES
        assert set(b_writing) <= set(_staging(folder, comfy_server.process.pid))
        os.killpg(comfy_server.process.pid, signal.SIGCONT)
        paused = False
        done = comfy_server.wait(b_id, timeout=300)  # B was never disturbed
        (b_summary,) = done["outputs"]["10"]["cvd_multiview"]
        assert b_summary["frames"] == FRAMES * 10 and len(_visible(folder, "b_save")) == VIEWS + 3
        assert _staging(folder) == []  # nothing hidden is left by anyone
        with av.open(str(folder / b_summary["grid"]["filename"])) as container:
            assert sum(1 for _ in container.decode(video=0)) == FRAMES * 10
    finally:
        if paused:
            os.killpg(comfy_server.process.pid, signal.SIGCONT)
        a.stop()
