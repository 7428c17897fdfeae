"""Camera nodes: preset rigs, RealEstate10K pose files, rig and epipolar previews.

Thin adapters: sockets, validation and file lookup here, all geometry in ``cvd_core.camera`` and
all drawing in ``cvd_core.viz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cvd_core.camera import (CameraError, CameraSet, PRESETS, load_realestate10k, make_preset_rig,
                             rig_from_custom_json)
from cvd_core.camera.keyframes import is_keyframes_form, parse_keyframes
from cvd_core.guards import require_finite
from cvd_core.viz import render_epipolar_preview, render_rig_preview

from ._comfy import NodeInputError, input_files, resolve_input_file, save_preview_images
from ._schema import Input, NodeSchema, Output, Result, json_problem

CAMERAS = "CVD_CAMERAS"
CATEGORY = "CVD/camera"
CUSTOM_PRESET = "custom_json"
EXAMPLE_POSES_DIR = Path(__file__).resolve().parents[1] / "examples" / "poses"
EXAMPLE_PREFIX = "examples/"
SIZE_RULE = dict(min=64, max=2048, step=8, multiple_of=8)  # the VAE works on 8x8 pixel blocks


def _as_node_error(exc: Exception) -> NodeInputError:
    return NodeInputError(str(exc))


# ------------------------------------------------------------------------------ CameraTrajectory

def _run_trajectory(preset, views, frames, width, height, camera_dist, speed, angle_deg, fov_deg,
                    perturb, perturb_seed, custom_json):
    try:
        if preset == CUSTOM_PRESET:
            rig = rig_from_custom_json(custom_json, frames, width, height)
        else:
            rig = make_preset_rig(preset, views, frames, width, height, camera_dist=camera_dist, speed=speed,
                                  angle_deg=angle_deg, perturb_traj=perturb, seed=perturb_seed,
                                  fov_deg=fov_deg if fov_deg > 0 else None)
    except CameraError as exc:
        raise _as_node_error(exc) from None
    return Result((rig,))


def _custom_json_rule(preset, custom_json):
    if preset == CUSTOM_PRESET and not custom_json.strip():
        return ("custom_json must hold the camera JSON when preset is custom_json (see docs/cameras.md, 'Custom "
                "camera JSON'), got ''")
    if preset != CUSTOM_PRESET:
        return None
    problem = json_problem("custom_json", custom_json)
    if problem is not None:
        return problem
    data = json.loads(custom_json)
    if not is_keyframes_form(data):
        return None  # the per-frame form is checked when the rig is built
    try:
        parse_keyframes(data)  # the keyframes form is checked whole here: HTTP 400 before anything runs
    except CameraError as exc:
        return f"custom_json keyframes: {exc}"
    return None


CAMERA_TRAJECTORY = NodeSchema(
    node_id="CVD_CameraTrajectory",
    display_name="CVD Camera Trajectory",
    category=CATEGORY,
    description=("A rig of camera trajectories, one per view, from a preset (as CVD's multi-view inference "
                 "builds them: every view starts at the same pose and moves to its own target) or from custom "
                 "JSON. OpenCV axes, poses relative to each view's first frame."),
    inputs=[
        Input("preset", "COMBO", "Trajectory family: CVD's circle / upper_hemi / interpolate, pan, zoom, orbit, "
                                 "static, or custom_json.", default="circle",
              options=list(PRESETS) + [CUSTOM_PRESET]),
        Input("views", "INT", "Number of videos (cameras) to generate together.", default=4, min=1, max=16),
        Input("frames", "INT", "Frames per video (CVD is trained on 16; above 32 connect CVD Context Options to the "
              "sampler).", default=16, min=1, max=512),
        Input("width", "INT", "Width of the generated frames in pixels (multiple of 8).", default=256, **SIZE_RULE),
        Input("height", "INT", "Height of the generated frames in pixels (multiple of 8).", default=256, **SIZE_RULE),
        Input("camera_dist", "FLOAT", "How far each camera travels towards its target (scene units; CVD: 0.5). "
                                      "More = more parallax, harder.", default=0.5, min=0.0, max=10.0,
              step=0.01),
        Input("speed", "FLOAT", "Fraction of the path covered by the last frame (1 = CVD; above 1 overshoots).",
              default=1.0, min=0.0, max=4.0, step=0.05),
        Input("angle_deg", "FLOAT", "Pan / orbit amplitude in degrees.", default=30.0, min=-180.0, max=180.0,
              step=1.0),
        Input("fov_deg", "FLOAT", "Horizontal field of view in degrees; 0 keeps CVD's intrinsics "
              "(about 59.6 degrees at 256x256).", default=0.0, min=0.0, max=170.0, step=0.5),
        Input("perturb", "FLOAT", "Random offset of each target position (CVD's --cam_perturb_traj), in scene "
              "units; 0 = exact presets.", default=0.0, min=0.0, max=2.0, step=0.01),
        Input("perturb_seed", "INT", "Seed of the random perturbation.", default=0, min=0, max=2**31 - 1),
        Input("custom_json", "STRING", "The rig as JSON when preset is custom_json: per-frame poses or the path editor's "
              "keyframes (docs/cameras.md).", default="",
              # JSON, not a prompt: the 2024 UI would otherwise replace every {a|b} (any JSON object) on queueing.
              multiline=True, extra={"dynamicPrompts": False}),
    ],
    outputs=[Output(CAMERAS, "cameras", "The camera rig: intrinsics and poses of every view and frame.")],
    run=_run_trajectory,
    rules=[_custom_json_rule],
)


# ------------------------------------------------------------------------------ LoadCameraPoses

def pose_file_choices():
    examples = [EXAMPLE_PREFIX + p.name for p in sorted(EXAMPLE_POSES_DIR.glob("*.txt"))]
    return input_files((".txt",)) + examples


def _pose_file_path(name: str) -> str:
    if name.startswith(EXAMPLE_PREFIX):
        path = EXAMPLE_POSES_DIR / name[len(EXAMPLE_PREFIX):]
        if path.parent != EXAMPLE_POSES_DIR or not path.is_file():
            raise NodeInputError(f"example pose file {name!r} does not exist")
        return str(path)
    return resolve_input_file(name)


def _run_load_poses(pose_file, frames, stride, width, height, source_width, source_height, cameras=None):
    try:
        trajectory = load_realestate10k(_pose_file_path(pose_file), width, height, frames=frames, stride=stride,
                                        source_size=(source_width, source_height))
        if cameras is None:
            return Result((trajectory.as_rig(),))
        if (cameras.width, cameras.height) != (width, height):
            raise NodeInputError(f"the incoming cameras are {cameras.width}x{cameras.height} but this file is "
                                 f"loaded at {width}x{height}: every view of a rig must have the same size")
        return Result((CameraSet.stack([cameras, trajectory]),))
    except CameraError as exc:
        raise _as_node_error(exc) from None


LOAD_CAMERA_POSES = NodeSchema(
    node_id="CVD_LoadCameraPoses",
    display_name="CVD Load Camera Poses (RealEstate10K)",
    category=CATEGORY,
    description=("One view's trajectory from a RealEstate10K / CameraCtrl pose file in ComfyUI's input folder "
                 "(input/ or input/cvd_poses/) or the pack's examples. Chain nodes through 'cameras' to build a "
                 "rig, one file per view. The file format: docs/cameras.md."),
    inputs=[
        Input("pose_file", "COMBO", "Pose file: a .txt in ComfyUI's input folder or input/cvd_poses/, or one of "
              "the pack's examples/.", options=pose_file_choices,
              choices_text="a .txt pose file listed from ComfyUI's input folder (input/ or input/cvd_poses/, "
                           "upload it there) or the pack's examples/"),
        Input("frames", "INT", "Frames to take from the file (it must have at least frames x stride rows).",
              default=16, min=1, max=1024),
        Input("stride", "INT", "Take every stride-th row (RealEstate10K rows are 30 fps video frames).",
              default=1, min=1, max=64),
        Input("width", "INT", "Width of the generated frames in pixels (multiple of 8).", default=256, **SIZE_RULE),
        Input("height", "INT", "Height of the generated frames in pixels (multiple of 8).", default=256, **SIZE_RULE),
        Input("source_width", "INT", "Width of the video the poses were estimated on (RealEstate10K: 1280); K "
                                     "follows resize + center-crop.",
              default=1280, min=8, max=16384),
        Input("source_height", "INT", "Height of that source video (RealEstate10K: 720).", default=720, min=8,
              max=16384),
        Input("cameras", CAMERAS, "Optional rig to append this trajectory to as one more view.", optional=True),
    ],
    outputs=[Output(CAMERAS, "cameras", "The rig with this file's trajectory as its last view.")],
    run=_run_load_poses,
)


# ------------------------------------------------------------------------------ previews

def _to_tensor_images(images) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images, dtype=np.float32)))


def _run_camera_preview(cameras, width, height):
    image = render_rig_preview(cameras, width=width, height=height)
    ui = {"images": save_preview_images(image, "cvd_camera_preview"), "cvd_cameras": [cameras.to_dict()]}
    return Result((_to_tensor_images(image[None]),), ui=ui)


CAMERA_PREVIEW = NodeSchema(
    node_id="CVD_CameraPreview",
    display_name="CVD Camera Preview",
    category=CATEGORY,
    description=("Draws the rig so you can check it at a glance: camera paths and frusta from above and from the "
                 "side, one colour per view."),
    inputs=[
        Input("cameras", CAMERAS, "The camera rig to draw."),
        Input("width", "INT", "Width of the preview image.", default=768, min=256, max=4096, step=8),
        Input("height", "INT", "Height of the preview image.", default=384, min=128, max=4096, step=8),
    ],
    outputs=[Output("IMAGE", "image", "The preview as an IMAGE batch of one.")],
    run=_run_camera_preview,
    is_output_node=True,
)


def _split_views(images: torch.Tensor, views: int, frames: int):
    expected = views * frames
    if images.shape[0] != expected:
        raise NodeInputError(f"images must hold views x frames = {views} x {frames} = {expected} frames "
                             f"(view-major), got {images.shape[0]}")
    return images.reshape(views, frames, *images.shape[1:])


def _run_epipolar_preview(cameras, view_a, view_b, frame, grid, images=None):
    rig = cameras.as_rig()
    for name, index in (("view_a", view_a), ("view_b", view_b)):
        if index >= rig.n_views:
            raise NodeInputError(f"{name} must be below the number of views ({rig.n_views}), got {index}")
    if frame >= rig.n_frames:
        raise NodeInputError(f"frame must be below the number of frames ({rig.n_frames}), got {frame}")
    image_a = image_b = None
    if images is not None:
        require_finite(images, "images", axes=("image",), hint="nothing was drawn")
        per_view = _split_views(images, rig.n_views, rig.n_frames)
        image_a = per_view[view_a, frame].cpu().numpy()
        image_b = per_view[view_b, frame].cpu().numpy()
    picture = render_epipolar_preview(rig, view_a, view_b, frame, image_a=image_a, image_b=image_b, grid=grid)
    ui = {"images": save_preview_images(picture, "cvd_epipolar_preview")}
    return Result((_to_tensor_images(picture[None]),), ui=ui)


def _two_views_rule(view_a, view_b):
    if view_a == view_b:
        return f"view_b must differ from view_a (epipolar lines relate two different views), got {view_b}"
    return None


EPIPOLAR_PREVIEW = NodeSchema(
    node_id="CVD_EpipolarPreview",
    display_name="CVD Epipolar Preview",
    category=CATEGORY,
    description=("For two views of the rig and one frame: a grid of sample pixels in view A and, in view B, the "
                 "epipolar lines where those pixels must reappear. This is the geometry CVD's cross-view "
                 "attention is biased towards. Optionally drawn over generated frames."),
    inputs=[
        Input("cameras", CAMERAS, "The camera rig."),
        Input("view_a", "INT", "View whose pixels are sampled.", default=0, min=0, max=15),
        Input("view_b", "INT", "View in which their epipolar lines are drawn.", default=1, min=0, max=15),
        Input("frame", "INT", "Frame index (frame 0 has identical poses in every view, so it has no epipolar "
              "geometry).", default=8, min=0, max=1023),
        Input("grid", "INT", "Sample pixels per side of the grid.", default=4, min=1, max=12),
        Input("images", "IMAGE", "Optional frames of all views (view-major: views x frames images) to draw on.",
              optional=True),
    ],
    outputs=[Output("IMAGE", "image", "View A with sample points beside view B with their epipolar lines.")],
    run=_run_epipolar_preview,
    rules=[_two_views_rule],
    is_output_node=True,
)

SCHEMAS = [CAMERA_TRAJECTORY, LOAD_CAMERA_POSES, CAMERA_PREVIEW, EPIPOLAR_PREVIEW]


# ------------------------------------------------------------------------------ camera path editor

KEYFRAMES_ROUTE = "/cvd/keyframes"


def editor_keyframes(values) -> tuple:
    """``(status, body)`` of ``POST /cvd/keyframes``: the keyframes the camera path editor starts from, for
    CVD Camera Trajectory's widget values (checked by the node's schema first, as a prompt would be)."""
    from ._schema import check_inputs
    from cvd_core.camera import keyframes_from_settings

    if not isinstance(values, dict):
        return 400, {"error": f"the body must be a JSON object of CVD Camera Trajectory's widget values, got "
                              f"{type(values).__name__}"}
    names = [item.name for item in CAMERA_TRAJECTORY.inputs]
    given = {name: values.get(name, CAMERA_TRAJECTORY.input(name).default) for name in names}
    if given["preset"] != CUSTOM_PRESET:
        given["custom_json"] = ""  # not used by a preset: whatever it holds must not block the editor
    converted, problems = check_inputs(CAMERA_TRAJECTORY, given)
    if problems:
        return 400, {"error": "; ".join(problems)}
    try:
        return 200, {"keyframes": keyframes_from_settings(**converted)}
    except CameraError as exc:
        return 400, {"error": str(exc)}


def register_keyframes_route() -> bool:
    """``POST /cvd/keyframes`` on ComfyUI's server (no side effects); False outside ComfyUI."""
    try:
        from aiohttp import web
        from server import PromptServer
        routes = PromptServer.instance.routes
    except Exception:
        return False
    if any(getattr(route, "path", None) == KEYFRAMES_ROUTE for route in routes):
        return True  # the pack was imported twice

    @routes.post(KEYFRAMES_ROUTE)
    async def cvd_keyframes(request):
        try:
            values = await request.json()
        except ValueError as exc:
            return web.json_response({"error": f"the body must be JSON: {exc}"}, status=400)
        status, body = editor_keyframes(values)
        return web.json_response(body, status=status)

    return True
