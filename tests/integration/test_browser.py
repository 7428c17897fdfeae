"""The pack's web extension in a real browser against real ComfyUI servers, in three UIs: the 2024-03
server's legacy UI, and ComfyUI 0.3.64 with frontend 1.58.1 in its LiteGraph canvas and in Vue nodes
mode (``BROWSER_UIS``). The same checks (``CHECKS``) must pass in each.

Debian's ``chromium`` (apt) is driven by ``playwright-core`` (npm, pinned in
``tests/browser/package-lock.json``; it never downloads a browser of its own). The test installs
both when they are missing: ``apt-get update && apt-get install -y chromium`` (skipped with a clear
message only where apt is unavailable) and ``npm ci`` in ``tests/browser``.

The workflow: a rig of 4 cameras (custom JSON) -> CVD_CameraPreview, and the views of a small
ray-cast scene rendered through that rig (uploaded as one animated PNG, loaded by core LoadImage)
-> CVD_SaveMultiViewVideo (webm). ``tests/browser/run_browser_test.mjs`` opens the UI, loads the
workflow, queues it through the HTTP API under the page's client id, and measures; this file
asserts on the measurements and on the screenshots.

The current frontend greets a new server user with a template browser (a modal over the canvas): the
script waits for it and closes it with Escape, as a user would. Its sidebar, tabs and bars cover parts
of the canvas: the script measures the free area and puts the nodes there, and every screenshot box is
checked to be uncovered (the background crop: bare canvas only).

Timing is judged against the page's own clock (``performance.now()`` read with each sample): a loaded
machine can stall the page for a few hundred milliseconds at any round trip, and the players' loop is
only 2 s long, so "the clock moved by the time that passed" is checked, not "the clock moved far".

``test_missing_models_panel_...`` opens shipped workflows on a 0.3.64 server without any model file
(``tests/browser/missing_models.mjs``) and reads the frontend's Missing Models panel: folders and
download links come from the workflows' ``properties.models``.

``CVD_SCREENSHOT_DIR=docs/screenshots`` also copies the screenshots there (the docs' pictures) and writes
``multiview_players.webp``, the players stepped through their timeline (the README's picture).
``python -m tests.integration.test_browser --help``: the same checks outside pytest (a running server,
or the test servers started here; ``--repeat N`` for stability runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.workflow_format import api_to_ui

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"
SCRIPT = BROWSER_DIR / "run_browser_test.mjs"
CHROMIUM = Path(os.environ.get("CVD_CHROMIUM", "/usr/bin/chromium"))
VIEWS, FRAMES, SIZE, FPS = 4, 16, 128, 8.0
LABELS = ["right", "down", "left", "up"]  # where each view of synthetic_scene.make_rig moves to
MULTIVIEW_NODE, RIG_NODE = "4", "2"


# ------------------------------------------------------------------------------ dependencies

def _run(cmd, cwd=None, timeout=900):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def _apt(*packages: str) -> None:
    """Install Debian packages, or skip the test where apt itself is unavailable."""
    if shutil.which("apt-get") is None:
        pytest.skip(f"the browser test needs {', '.join(packages)} and this machine has no apt-get to install them "
                    f"(install Debian's chromium, Node.js 20+ and npm, or set CVD_CHROMIUM)")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    _run(sudo + ["apt-get", "update", "-q"])
    _run(sudo + ["apt-get", "install", "-y", "-q", *packages])


def ensure_chromium() -> Path:
    if not CHROMIUM.exists():
        _apt("chromium")
    if not CHROMIUM.exists():
        raise RuntimeError(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return CHROMIUM


def ensure_playwright() -> None:
    """``npm ci`` in tests/browser when node_modules is missing or older than the lock file."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        _apt("nodejs", "npm")
    lock = BROWSER_DIR / "package-lock.json"
    stamp = BROWSER_DIR / "node_modules" / ".cvd-lock-copy.json"
    if stamp.exists() and stamp.read_bytes() == lock.read_bytes():
        return
    _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BROWSER_DIR)
    stamp.write_bytes(lock.read_bytes())


# ------------------------------------------------------------------------------ workflow

def _render_views():
    """``[V, T, H, W, 3]`` frames of the synthetic scene and the rig (K, c2w) they were rendered with."""
    from tests.core.synthetic_scene import make_rig, make_scene, render_view

    K, c2w = make_rig(VIEWS, FRAMES, SIZE, SIZE)
    scene = make_scene(0)
    frames = np.stack([np.stack([render_view(scene, K[v, t], c2w[v, t], SIZE, SIZE, supersample=1)
                                 for t in range(FRAMES)]) for v in range(VIEWS)])
    return frames, c2w


def _write_animated_png(frames: np.ndarray, path: Path) -> None:
    pixels = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8).reshape(-1, SIZE, SIZE, 3)
    images = [Image.fromarray(frame) for frame in pixels]
    images[0].save(path, save_all=True, append_images=images[1:], duration=125, loop=0)


def build_prompt(image_name: str, c2w: np.ndarray) -> dict:
    custom = {"fov_deg": 60.0, "views": [{"label": LABELS[v], "c2w": c2w[v].tolist()} for v in range(VIEWS)]}
    # perturb_seed does not change a custom rig, but it is part of ComfyUI's cache key: a fresh value
    # makes the server execute (and send "executed" to the page) even after an identical earlier run.
    seed = int(uuid.uuid4().int % 2**31)
    return {
        "1": {"class_type": "CVD_CameraTrajectory", "_meta": {"title": "Rig of the synthetic scene"},
              "inputs": {"preset": "custom_json", "views": VIEWS, "frames": FRAMES, "width": SIZE, "height": SIZE,
                         "camera_dist": 0.5, "speed": 1.0, "angle_deg": 30.0, "fov_deg": 0.0, "perturb": 0.0,
                         "perturb_seed": seed, "custom_json": json.dumps(custom)}},
        RIG_NODE: {"class_type": "CVD_CameraPreview", "_meta": {"title": "Rig preview"},
                   "inputs": {"cameras": ["1", 0], "width": 512, "height": 256}},
        "3": {"class_type": "LoadImage", "_meta": {"title": "4 views x 16 frames (view-major)"},
              "inputs": {"image": image_name}},
        MULTIVIEW_NODE: {"class_type": "CVD_SaveMultiViewVideo", "_meta": {"title": "Multi-view video"},
                         "inputs": {"images": ["3", 0], "views": 0, "filename_prefix": "cvd_browser/views",
                                    "fps": FPS, "format": "webm", "quality": 60, "save_grid": True,
                                    "cameras": ["1", 0]}},
    }


# ------------------------------------------------------------------------------ screenshots

def _foreground_fraction(image: Image.Image, background: Image.Image) -> float:
    """Share of pixels that differ clearly (> 24 of 255 in some channel) from the background crop."""
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    b = np.asarray(background.convert("RGB").resize(image.size), dtype=np.int16)
    return float((np.abs(a - b).max(axis=-1) > 24).mean())


def _distinct_colours(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("RGB").resize((96, 96))).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


# ------------------------------------------------------------------------------ one browser run

UIS = ("legacy", "litegraph", "vue")
# Where the nodes go: the two previews side by side from graph point (0, 0), which the script puts
# near the top-left of the canvas area no panel covers; the inputs off to the left, out of the way.
POSITIONS = {RIG_NODE: [0, 0], MULTIVIEW_NODE: [600, 0], "1": [-900, 0], "3": [-1400, 0]}
# The camera path editor check: view 0's last keyframe dragged by this many page pixels in the top view.
EDITOR_DRAG = (40, -30)


def prepare_ui(server, ui: str) -> dict:
    """Choose the canvas mode of the current frontend (a per-user server setting, read when the page
    loads) and tell the script whether this user is new (the frontend then opens its template browser)."""
    if ui == "legacy":
        return {"expect_first_run_dialog": False}
    server.set_setting("Comfy.VueNodes.Enabled", ui == "vue")
    return {"expect_first_run_dialog": server.setting("Comfy.TutorialCompleted") is not True}


def run_browser_check(server, work: Path, ui: str = "legacy") -> dict:
    """Render inputs, upload them to ``server`` and drive the browser; returns the script's report.

    ``server`` needs ``url``, ``upload(path)``, ``object_info()``, ``setting(id)``,
    ``set_setting(id, value)`` and ``log_tail(n)`` (the ``comfy_server`` fixtures, or
    :class:`LiveServer` for a ComfyUI started by hand). ``ui``: ``legacy`` (the 2024 UI), or the
    current frontend's ``litegraph`` canvas or ``vue`` nodes mode.
    """
    if ui not in UIS:
        raise ValueError(f"ui must be one of {UIS}, got {ui!r}")
    started = time.monotonic()
    ensure_chromium()
    ensure_playwright()
    deps_seconds = time.monotonic() - started

    frames, c2w = _render_views()
    image_path = work / f"cvd_browser_views_{uuid.uuid4().hex[:8]}.png"
    _write_animated_png(frames, image_path)
    server.upload(image_path)
    prompt = build_prompt(image_path.name, c2w)
    workflow = api_to_ui(prompt, server.object_info())
    for node in workflow["nodes"]:
        node["pos"] = POSITIONS.get(str(node["id"]), node["pos"])
    out_dir = work / "out"
    config = {"url": server.url, "prompt": {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
                                            for k, v in prompt.items()},
              "workflow": workflow, "multiview_node": MULTIVIEW_NODE, "rig_node": RIG_NODE, "views": VIEWS,
              "rerun_seed_node": "1", "fps": FPS, "frames": FRAMES, "out_dir": str(out_dir), "chromium": str(CHROMIUM),
              "ui": ui, "editor": {"node": "1", "preview": RIG_NODE, "view": 0, "drag": list(EDITOR_DRAG),
                                   "frames": FRAMES, "width": SIZE, "height": SIZE},
              **prepare_ui(server, ui)}
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))

    browser_started = time.monotonic()
    result = subprocess.run(["node", str(SCRIPT), str(config_path)], cwd=BROWSER_DIR, capture_output=True,
                            text=True, timeout=180)
    browser_seconds = time.monotonic() - browser_started
    report_path = out_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if result.returncode != 0 or not report.get("ok"):
        raise AssertionError(f"browser script failed (exit {result.returncode}): {report.get('error')}\n"
                             f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}\n"
                             f"--- server log\n{server.log_tail(30)}")
    report["timing"] = {"deps_s": round(deps_seconds, 2), "browser_s": round(browser_seconds, 2),
                        "total_s": round(time.monotonic() - started, 2)}
    print(f"[browser] timings: {report['timing']}; script phases (s): {report.get('phases')}")
    screenshots = os.environ.get("CVD_SCREENSHOT_DIR")
    if screenshots:
        target = Path(screenshots)
        target = target if target.is_absolute() else ROOT / target
        target.mkdir(parents=True, exist_ok=True)
        for name in ("multiview_grid.png", "rig_view.png", "camera_editor.png"):
            # 128 colours without dithering: the README pictures stay small in the repository.
            picture = Image.open(out_dir / name).convert("RGB")
            picture.quantize(colors=128, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
                target / name, optimize=True)
        save_players_animation(out_dir, report["animation"], target / "multiview_players.webp")
    report["out_dir"] = out_dir
    return report


def save_players_animation(out_dir: Path, animation: dict, target: Path) -> None:
    """The players stepped through their timeline as a small looping WebP: cropped to the players, their
    labels and the timeline, at 60 % size; every other frame, so 4 fps keep the 2 s loop."""
    x0 = min(x for x, _, _, _ in animation["videos"])
    y0 = min(y for _, y, _, _ in animation["videos"])
    x1 = max(x + w for x, _, w, _ in animation["videos"])
    y1 = max(y + h for _, y, _, h in animation["videos"])
    box = (max(x0 - 4, 0), max(y0 - 18, 0), x1 + 4, y1 + 26)  # the labels above, the timeline below
    images = []
    for name in animation["files"]:
        crop = Image.open(out_dir / name).convert("RGB").crop(box)
        images.append(crop.resize((round(crop.width * 0.6), round(crop.height * 0.6)), Image.Resampling.LANCZOS))
    images[0].save(target, save_all=True, append_images=images[1:], duration=int(2000 / FPS), loop=0,
                   quality=50, method=6)


# ------------------------------------------------------------------------------ checks

FRAME = 1.0 / FPS
LOOP = FRAMES / FPS


def check_extension_registered(report: dict) -> None:
    assert report["extension_registered"], "app.extensions has no 'cvd.multiview'"
    assert report["pack_nodes_marked"], "nodeCreated did not run for the pack's nodes"
    ours = [e for e in report["console_errors"] if "cvd" in e.lower()]
    assert not ours, f"errors from the extension in the browser console: {ours}"


def check_grid(report: dict) -> None:
    grid = report["grid"]
    assert grid["videos"] == VIEWS, grid
    assert grid["labels"] == [f"view {i}: {LABELS[i]}" for i in range(VIEWS)], grid["labels"]
    assert all(ready >= 2 for ready in grid["ready_states"]), grid["ready_states"]
    assert all(w > 40 and h > 40 for w, h in grid["video_boxes"]), f"players too small to see: {grid['video_boxes']}"
    # One download link per view and one for the grid video, all served by /view.
    assert len(grid["downloads"]) == VIEWS + 1, grid["downloads"]
    assert all(status == 200 for status in grid["download_status"]), grid["download_status"]


def check_shared_clock(report: dict) -> None:
    """All views within one frame of each other and of the clock, in every phase; while playing, the
    clock and every player move with the page's wall clock (measured in the page, so a stalled page
    cannot pass for a stalled clock, nor the reverse); desync is repaired; a seek lands on its frame."""
    sync = report["sync"]
    for phase in ("playing", "after_desync", "after_seek", "playing_after_seek"):
        facts = sync[phase]
        assert facts["spread"] <= FRAME, f"{phase}: views disagree by {facts['spread']:.3f} s (> one frame): {facts}"
        assert facts["drift"] <= FRAME, f"{phase}: a player is {facts['drift']:.3f} s off the clock (> one frame): {facts}"
    for phase in ("playing", "playing_after_seek"):
        facts = sync[phase]
        assert 2 * FRAME < facts["elapsed"] < LOOP / 2, (
            f"{phase}: no usable observation window ({facts['elapsed']:.3f} s; the page stalled every time)")
        assert facts["playing"] and not any(facts["paused"]), f"{phase}: not playing: {facts}"
        assert facts["clock_error"] <= FRAME / 2, (
            f"{phase}: the clock moved {facts['elapsed'] - facts['clock_error']:.3f}/{facts['elapsed']:.3f} s of wall time: {facts}")
        assert max(facts["player_errors"]) <= FRAME, f"{phase}: a player did not advance with the clock: {facts}"
        assert min(facts["decoded"]) >= 1, f"{phase}: a player decoded no new frame while playing: {facts}"
    assert sync["after_desync"]["resyncs"] >= 1, "a player pushed off the clock was not seeked back"
    seek = sync["after_seek"]
    assert seek["paused"] and seek["frame_text"].startswith(f"frame {seek['frame'] + 1}/{FRAMES}"), seek
    assert seek["frame"] == 5, f"the timeline was set to frame 5 but the clock is at {seek['frame']}"
    target = (seek["frame"] + 0.5) * FRAME
    assert max(abs(t - target) for t in seek["times"]) <= FRAME / 2, seek


def check_scrub(report: dict) -> None:
    """Dragging the timeline with the mouse scrubs all players; the node and the graph stay put."""
    scrub = report["scrub"]
    frames = [step["frame"] for step in scrub["path"]]
    assert all(step["frame"] == step["value"] for step in scrub["path"]), f"the clock does not follow the slider: {scrub}"
    assert all(a < b for a, b in zip(frames, frames[1:])) and frames[-1] == FRAMES - 1, (
        f"dragging the timeline to its end did not move the frame forward to {FRAMES - 1}: {frames}")
    assert scrub["paused"] and scrub["final_frame"] == FRAMES - 1, scrub
    assert scrub["spread"] <= FRAME / 2 and scrub["drift"] <= FRAME / 2, f"the players did not follow the scrub: {scrub}"
    assert not scrub["node_moved"], "dragging the timeline dragged the node"
    assert not scrub["canvas_moved"], "dragging the timeline panned or zoomed the graph"


def check_rerun(report: dict) -> None:
    rerun = report["rerun"]
    assert rerun["widgets"] == 1, f"re-execution added a second player widget: {rerun}"
    assert rerun["videos_in_widget"] == VIEWS and rerun["videos_in_page"] == VIEWS, rerun
    assert rerun["old_disposed"] and rerun["old_videos_released"], f"the old players were not stopped: {rerun}"
    assert rerun["playing"], rerun


def check_resize(report: dict) -> None:
    """The node grew to hold its players; setSize and writes to node.size resize it, players follow."""
    resize = report["resize"]
    assert resize["fits"]["inside"], f"the players overflow their node: {resize['fits']}"
    # The extension widens a preview node to its MIN_NODE_WIDTH: a 2 x 2 grid stays legible.
    assert resize["fits"]["node_width"] >= resize["fits"]["min_width"] - 1, (
        f"the node was not widened for its players: {resize['fits']}")
    assert resize["after"] >= resize["before"] + 150, f"the players did not follow the node's new width: {resize}"
    assert abs(resize["restored"] - resize["before"]) <= 2, f"writing node.size did not resize the node back: {resize}"
    assert resize["same_players"] and resize["videos"] == VIEWS and resize["video_height"] > 40, resize


def check_rig_view(report: dict) -> None:
    rig = report["rig"]
    assert rig["draw_count"] >= 1
    assert rig["ink_fraction"] > 0.01, f"the 3-D rig view is almost empty: {rig}"
    assert rig["view_colours_found"] == VIEWS, rig
    assert rig["changed_after_drag"], "dragging the rig view did not change the drawing"


def check_wheel_zoom(report: dict) -> None:
    """The wheel over the (clicked) rig view zooms the rig in and out, not the graph behind it."""
    wheel = report["wheel"]
    assert wheel["zoomed_in"] > wheel["before"] * 1.2, f"wheel up did not zoom the rig in: {wheel}"
    assert wheel["zoomed_out"] < wheel["zoomed_in"] / 1.2, f"wheel down did not zoom the rig out: {wheel}"
    assert wheel["canvas_scale_after"] == wheel["canvas_scale_before"] and not wheel["canvas_moved"], (
        f"the wheel over the rig view also zoomed or panned the graph: {wheel}")


def check_progress(report: dict) -> None:
    progress = report["progress"]
    assert progress, "the save node sent no progress messages to the page"
    assert all(p["text"] == f"step {p['value']}/{p['max']}" for p in progress), progress


def check_messages(report: dict) -> None:
    """A preview that cannot be shown says so in the UI: a toast where the frontend has them, else a dialog;
    the previous view stays."""
    message = report["message"]
    expected = "toast" if message["toast_api"] else "dialog"
    assert message["shown"] and message["surface"] == expected, f"no {expected} told the user: {message}"
    assert message["text"], f"the message does not say what could not be shown: {message}"
    assert message["rig_kept"], "output that could not be shown removed the working rig view"


def check_no_pack_deprecations(report: dict) -> None:
    """The console shows no deprecation warning caused by the pack (by stack, by name, or a deprecated import)."""
    deprecations = report["deprecations"]
    assert deprecations["only_pack"], (
        f"other extensions are loaded, so an import warning cannot be traced: {deprecations['third_party_extensions']}")
    assert not deprecations["by_pack"], f"deprecation warnings caused by the pack: {deprecations['by_pack']}"


def check_screenshots(report: dict) -> None:
    out = Path(report["out_dir"])
    for name, shot in report["shots"].items():
        assert shot["covered"] == 0, f"{name}: {shot['covered']:.0%} of the box is covered by the UI: {shot['covered_samples']}"
    background = Image.open(out / "background.png")
    assert _distinct_colours(background) < 40, "the background crop is not plain background"
    for name in ("multiview_grid.png", "rig_view.png"):
        shot = Image.open(out / name)
        fraction = _foreground_fraction(shot, background)
        assert fraction > 0.3, f"{name}: only {fraction:.1%} of the node differs from the empty canvas"
        assert _distinct_colours(shot) > 200, f"{name} has too few colours to show videos or a rig"


def check_players_animation(report: dict) -> None:
    """Stepping the shared timeline moves every player: each captured step differs from the one before."""
    out = Path(report["out_dir"])
    frames, videos = report["animation"]["files"], report["animation"]["videos"]
    assert len(frames) == FRAMES // 2 and len(videos) == VIEWS, report["animation"]
    pictures = [np.asarray(Image.open(out / name).convert("RGB"), dtype=np.int16) for name in frames]
    for view, (x, y, w, h) in enumerate(videos):
        assert w > 40 and h > 40 and x >= 0 and y >= 0, f"player {view} is not inside the shot: {videos}"
        crops = [p[y:y + h, x:x + w] for p in pictures]
        # The rendered scene moves by several pixels per two frames: a still player changes no pixel.
        changed = [float((np.abs(a - b).max(axis=-1) > 24).mean()) for a, b in zip(crops, crops[1:])]
        assert min(changed) > 0.01, f"player {view} did not move with the timeline: changed shares {changed}"


def check_camera_editor(report: dict) -> None:
    """Edit mode turns the custom c2w rig into keyframes; a drag of (dx, dy) page pixels in the top view moves
    the keyframe by exactly (dx, -dy) / pixels-per-unit in (x, z) (one pixel of rounding allowed) and
    nothing else; the server's rig (Python expansion, /history) equals the page's (JavaScript); Ctrl+Z
    brings the previous keyframes back; a reload shows the same keyframes."""
    editor = report["editor"]
    assert not editor["initial"]["editing"], f"a c2w rig opened in edit mode: {editor['initial']}"
    opened = editor["opened"]
    assert opened["editing"] and opened["preset"] == "custom_json", opened
    doc = json.loads(opened["text"])
    assert doc["format"] == "cvd_keyframes/1" and len(doc["views"]) == VIEWS, doc
    assert [v["label"] for v in doc["views"]] == LABELS
    drag = editor["drag"]
    scale = drag["pixels_per_unit"] * drag["page_per_css"]  # page pixels per scene unit
    expected = [EDITOR_DRAG[0] / scale, 0.0, -EDITOR_DRAG[1] / scale]  # top view: x right, z up the screen
    error = max(abs(d - e) for d, e in zip(drag["delta"], expected))
    assert error <= 1.0 / scale and drag["delta"][1] == 0.0, f"the keyframe moved by {drag['delta']}, expected {expected}"
    assert drag["others_unchanged"] and drag["editor_matches_widget"], drag
    queue = editor["queue"]
    assert queue["status"] == 200 and "error" not in queue, queue
    assert queue["prompt_is_widget"], "the queued prompt did not carry the edited custom_json"
    assert (queue["views"], queue["frames"], queue["labels"]) == (VIEWS, FRAMES, LABELS), queue
    # float64 in both languages, a few dozen operations per pose: 1e-9 is a million ulps of headroom.
    assert queue["c2w_diff"] <= 1e-9 and queue["K_diff"] <= 1e-9, f"Python and JavaScript rigs differ: {queue}"
    assert max(abs(a - b) for a, b in zip(queue["last_translations"][0], drag["moved"])) <= 1e-9, (
        f"CVD Camera Preview does not end view 0 at the moved keyframe: {queue['last_translations'][0]} vs {drag['moved']}")
    assert editor["undo"]["restored"], f"Ctrl+Z did not bring the previous keyframes back: {editor['undo']}"
    assert editor["second_drag_changed"], "the drag after undo changed nothing"
    reload = editor["reload"]
    assert reload["loaded"] and reload["same_text"] and reload["same_doc"] and reload["editing"], (
        f"after a reload the editor does not show the same keyframes: {reload}")
    shot = Image.open(Path(report["out_dir"]) / "camera_editor.png")
    assert _distinct_colours(shot) > 20, "the editor screenshot shows no paths"


CHECKS = [check_extension_registered, check_grid, check_shared_clock, check_scrub, check_rerun, check_resize,
          check_rig_view, check_wheel_zoom, check_progress, check_messages, check_no_pack_deprecations,
          check_screenshots, check_players_animation, check_camera_editor]


def check_ui(report: dict, ui: str) -> None:
    """The page is the UI that was asked for (and a new user's first-run dialog was met and closed)."""
    from tests.support.comfy_harness import FRONTEND_VERSION

    facts = report["ui"]
    if ui == "legacy":
        assert facts["legacy"] and not facts["vue_nodes"], facts
        return
    assert facts["frontend_version"] == FRONTEND_VERSION, f"expected frontend {FRONTEND_VERSION}: {facts}"
    assert facts["vue_nodes"] == (ui == "vue"), f"expected {'Vue nodes' if ui == 'vue' else 'the LiteGraph canvas'}: {facts}"
    dialog = report["first_run_dialog"]
    assert dialog["seen"] == dialog["expected"] and dialog["closed"] and not dialog["dialog_elements_left"], dialog


# ------------------------------------------------------------------------------ the tests

# The three UIs: the 2024 server's legacy UI, and ComfyUI 0.3.64 with frontend 1.58.1 in its two canvas modes.
BROWSER_UIS = [pytest.param(("comfy_server", "legacy"), id="legacy-2024"),
               pytest.param(("comfy_server_v3", "litegraph"), id="litegraph-1.58"),
               pytest.param(("comfy_server_v3", "vue"), id="vue-1.58")]


@pytest.fixture(scope="module", params=BROWSER_UIS)
def browser_run(request, tmp_path_factory):
    server_fixture, ui = request.param
    server = request.getfixturevalue(server_fixture)
    report = run_browser_check(server, tmp_path_factory.mktemp(f"browser-{ui}"), ui)
    report["requested_ui"] = ui
    return report


def test_the_page_is_the_ui_asked_for(browser_run):
    check_ui(browser_run, browser_run["requested_ui"])


def test_extension_registers_and_loads_without_errors(browser_run):
    check_extension_registered(browser_run)


def test_grid_widget_shows_one_labelled_player_per_view(browser_run):
    check_grid(browser_run)


def test_players_share_one_clock_after_play_desync_and_seek(browser_run):
    check_shared_clock(browser_run)


def test_dragging_the_timeline_scrubs_the_players(browser_run):
    check_scrub(browser_run)


def test_reexecution_replaces_the_players(browser_run):
    check_rerun(browser_run)


def test_node_fits_its_players_and_resizing_refits_them(browser_run):
    check_resize(browser_run)


def test_rig_view_draws_and_orbits(browser_run):
    check_rig_view(browser_run)


def test_wheel_zooms_the_rig_view_not_the_graph(browser_run):
    check_wheel_zoom(browser_run)


def test_progress_messages_are_shown_as_step_text(browser_run):
    check_progress(browser_run)


def test_a_preview_that_cannot_be_shown_tells_the_user(browser_run):
    check_messages(browser_run)


def test_console_has_no_deprecation_warning_from_the_pack(browser_run):
    check_no_pack_deprecations(browser_run)


def test_node_screenshots_are_not_blank(browser_run):
    check_screenshots(browser_run)


def test_stepping_the_timeline_moves_the_players(browser_run):
    check_players_animation(browser_run)


def test_camera_path_editor_drag_queue_undo_reload(browser_run):
    check_camera_editor(browser_run)


def test_pure_modules_under_node():
    """The extension's DOM-free modules (shared clock, rig geometry, layout) under ``node --test``."""
    if shutil.which("node") is None:
        _apt("nodejs")
    result = subprocess.run(["node", "--test", "pure_modules.test.mjs"], cwd=BROWSER_DIR, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


# ------------------------------------------------------------------------------ missing models

# Shipped workflows that together use every loader (the pack's and core's) and every official file.
MISSING_MODEL_WORKFLOWS = ("cvd_four_views_mcm", "cvvae_roundtrip", "sd15_feature_cache")
# What frontend 1.58.1 counts as a model file name (missingModelScan: isModelFileName).
MODEL_FILE_ENDINGS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")


def run_missing_models_check(server, work: Path) -> dict:
    """Open the workflows in ``server``'s frontend and read its Missing Models panel (no clicks on Download)."""
    ensure_chromium()
    ensure_playwright()
    workflows = {name: json.loads((ROOT / "workflows" / f"{name}.json").read_text()) for name in MISSING_MODEL_WORKFLOWS}
    out_dir = work / "missing-models"
    config_path = work / "missing_models_config.json"
    config_path.write_text(json.dumps({"url": server.url, "workflows": workflows, "out_dir": str(out_dir),
                                       "chromium": str(CHROMIUM)}))
    result = subprocess.run(["node", str(BROWSER_DIR / "missing_models.mjs"), str(config_path)], cwd=BROWSER_DIR,
                            capture_output=True, text=True, timeout=180)
    report_path = out_dir / "missing_models.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if result.returncode != 0 or not report.get("ok"):
        raise AssertionError(f"missing-models script failed (exit {result.returncode}): {report.get('error')}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{server.log_tail(30)}")
    report["workflows"] = workflows
    return report


def expected_missing_models(workflow: dict):
    """``({(name, directory, has_download)}, [folder values the panel cannot list])`` for a UI workflow."""
    from nodes._model_files import LOADER_WIDGETS

    expected, folders = set(), []
    for node in workflow["nodes"]:
        entries = {e["name"]: e for e in node["properties"].get("models", [])}
        for value in node["widgets_values"]:
            if not isinstance(value, str) or node["type"] not in LOADER_WIDGETS:
                continue
            if value in entries and value.lower().endswith(MODEL_FILE_ENDINGS):
                expected.add((value, entries[value]["directory"], "url" in entries[value]))
            elif any(name.startswith(value + "/") for name in entries):
                folders.append(value)
    return expected, folders


@pytest.fixture(scope="module")
def bare_server_v3(tmp_path_factory):
    """ComfyUI 0.3.64 with frontend 1.58.1 and the pack, but no model files at all."""
    from tests.support.comfy_harness import V3_COMFYUI_VERSION, ComfyServer, current_comfyui, shared_dir

    tarball, problems = current_comfyui()
    if tarball is None or problems:
        pytest.skip(f"needs ComfyUI {V3_COMFYUI_VERSION} from {shared_dir() / 'comfyui'}: {'; '.join(problems)}")
    server = ComfyServer.current(tmp_path_factory.mktemp("comfyui-v3-bare"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_missing_models_panel_lists_every_file_with_its_folder_and_download(bare_server_v3, tmp_path):
    """Each file a workflow's loaders name appears with its own folder (never 'Unknown'); those with a
    direct link offer Download, CVD.ckpt does not; folder models are not listed (1.58.1 only lists file
    names: docs/nodes.md says so); nothing is downloaded (every outside request was aborted, none a GET
    of a model file)."""
    from tests.support.comfy_harness import FRONTEND_VERSION

    report = run_missing_models_check(bare_server_v3, tmp_path)
    assert report["frontend_version"] == FRONTEND_VERSION
    for name, workflow in report["workflows"].items():
        rows = report["panels"][name]
        expected, folders = expected_missing_models(workflow)
        seen = {(r["name"], r["directory"], r["download"] is not None) for r in rows}
        assert seen == expected, f"{name}: the panel shows {rows}, expected {sorted(expected)}"
        assert all(r["download"] in (None, f"Download {r['name']}") for r in rows), rows
        assert not [r for r in rows if r["directory"] in ("Unknown", "")], rows
        assert not [r for r in rows if r["name"] in folders], f"{name}: a folder model is listed now: update docs/nodes.md"
    shown = {r["name"] for rows in report["panels"].values() for r in rows}
    assert {"CVD.ckpt", "CameraCtrl.ckpt", "v3_sd15_mm.ckpt", "clip_l.safetensors"} <= shown, shown
    model_urls = {e["url"] for w in report["workflows"].values() for n in w["nodes"]
                  for e in n["properties"].get("models", []) if "url" in e}
    fetched = [r for r in report["external"] if r["url"] in model_urls and r["method"] != "HEAD"]
    assert not fetched, f"the page tried to download model files: {fetched}"


# ------------------------------------------------------------------------------ any running ComfyUI

def _serves_current_frontend(url: str) -> bool:
    """Whether ``url`` is a ComfyUI of the current generation (it names the frontend it wants), not 2024's."""
    with urllib.request.urlopen(url.rstrip("/") + "/system_stats", timeout=60) as response:
        return "required_frontend_version" in json.loads(response.read()).get("system", {})


class LiveServer:
    """The few calls :func:`run_browser_check` makes, against a ComfyUI started by hand."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def object_info(self) -> dict:
        with urllib.request.urlopen(self.url + "/object_info", timeout=60) as response:
            return json.loads(response.read())

    def upload(self, path: Path) -> None:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url + "/upload/image", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        urllib.request.urlopen(request, timeout=60).read()

    def setting(self, setting_id: str):
        with urllib.request.urlopen(f"{self.url}/api/settings/{setting_id}", timeout=60) as response:
            return json.loads(response.read())

    def set_setting(self, setting_id: str, value) -> None:
        request = urllib.request.Request(f"{self.url}/api/settings/{setting_id}", data=json.dumps(value).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).read()

    def log_tail(self, lines: int = 30) -> str:
        return "(log of a server started by hand: see its console)"


def failed_checks(report: dict, ui: str) -> list:
    """``[(check name, message)]`` of the checks ``report`` fails (``check_ui`` first, then ``CHECKS``)."""
    checks = [("check_ui", lambda r: check_ui(r, ui))] + [(check.__name__, check) for check in CHECKS]
    failures = []
    for name, check in checks:
        try:
            check(report)
        except AssertionError as exc:
            failures.append((name, str(exc)))
    return failures


def _started_servers(which: str, work: Path):
    """Start the test server(s) as the fixtures do: ``2024``, ``0.3.64`` or ``both``."""
    from tests.support.comfy_harness import ComfyServer
    from tests.support.model_installers import install_test_models

    servers = []
    for name in (("2024", "0.3.64") if which == "both" else (which,)):
        folder = work / f"comfyui-{name}"
        args = ("--preview-method", "latent2rgb")
        server = ComfyServer(folder, extra_args=args) if name == "2024" else ComfyServer.current(folder, extra_args=args)
        install_test_models(server.root)
        servers.append(server.start())
    return servers


def main(argv=None) -> int:
    """Run the browser checks outside pytest: ``--url http://127.0.0.1:8188`` against a running ComfyUI
    that has this pack in custom_nodes, or ``--server 2024|0.3.64|both`` to start the test servers as the
    fixtures do. ``--repeat N`` runs every UI N times and prints a PASS/FAIL table (stability)."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url")
    target.add_argument("--server", choices=("2024", "0.3.64", "both"))
    parser.add_argument("--ui", choices=(*UIS, "all"), default=None,
                        help="legacy (a 2024 ComfyUI), or the current frontend's litegraph canvas or vue nodes; "
                             "all: every UI of each server (default: litegraph on the current frontend, else legacy)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--new-user", action="store_true",
                        help="with --server: forget the server user's settings before every run, so the current "
                             "frontend greets a new user (its first-run dialog) each time")
    parser.add_argument("--keep", help="folder to keep the reports and screenshots in (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        servers = [LiveServer(args.url)] if args.url else _started_servers(args.server, work)
        results = []
        try:
            for repeat in range(args.repeat):
                for server in servers:
                    current = _serves_current_frontend(server.url)
                    uis = ((("litegraph", "vue") if current else ("legacy",)) if args.ui == "all"
                           else (args.ui or ("litegraph" if current else "legacy"),))
                    for ui in uis:
                        if args.new_user and hasattr(server, "forget_user_settings"):
                            server.forget_user_settings()
                        run_dir = work / f"run{repeat}-{ui}"
                        run_dir.mkdir(parents=True, exist_ok=True)
                        report = run_browser_check(server, run_dir, ui)
                        failures = failed_checks(report, ui)
                        sync = report["sync"]["playing"]
                        results.append((repeat, ui, failures))
                        print(f"[browser] run {repeat} {ui}: {'PASS' if not failures else 'FAIL'} "
                              f"(first-run dialog {report['first_run_dialog']['seen']}, clock window "
                              f"{sync['elapsed']:.3f} s, clock error {sync['clock_error']:.4f} s, "
                              f"browser {report['timing']['browser_s']} s)")
                        for name, message in failures:
                            print(f"    FAIL {name}: {message[:2000]}")
        finally:
            for server in servers:
                getattr(server, "stop", lambda: None)()
    print(f"[browser] {sum(not f for _, _, f in results)}/{len(results)} runs passed every check")
    return 1 if any(f for _, _, f in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
