"""Scene director nodes in the real ComfyUI: the LLM path with a depth MASK from a core node, masks that
core mask nodes consume, and bad inputs (clear errors, the server keeps answering). The shipped
workflow scene_layout_preview.json runs in test_workflows_run.py."""

import io
import json

import pytest
from PIL import Image

from tests.support.comfy_harness import output_files

pytestmark = pytest.mark.integration

VIEWS, FRAMES = 2, 8
ANSWER = ("Here is my layout:\n"
          "1. **car**: Scale: 0.3, Start: (100,400), End: (400,420), Trajectory: (150,405), (200,410), (300,415)\n"
          "2. **tree**: Scale: 0.5, Start: (256,300), End: (256,300), Trajectory: none")


def _graph(plan_inputs=None, lift_inputs=None, project_inputs=None, rig_frames=FRAMES, depth_value=None):
    """Rig -> Scene Plan -> Lift -> Project -> (entity mask as images -> SaveImage) + Layout Preview."""
    plan = {"prompt": "a red car drives past a tree in a park", "frames": FRAMES, "image_width": 512,
            "image_height": 512, "path_points": 4, "plan_json": "", "llm_answer": ""}
    lift = {"scene": ["2", 0], "cameras": ["1", 0], "depth_kind": "disparity", "depth_scale": 1.0,
            "max_depth": 100.0}
    project = {"scene": ["3", 0], "cameras": ["1", 0], "width": 0, "height": 0, "occlusion": True, "entity": 0}
    prompt = {
        "1": {"class_type": "CVD_CameraTrajectory",
              "inputs": {"preset": "circle", "views": VIEWS, "frames": rig_frames, "width": 128, "height": 128,
                         "camera_dist": 0.5, "speed": 1.0, "angle_deg": 30.0, "fov_deg": 0.0, "perturb": 0.0,
                         "perturb_seed": 0, "custom_json": ""}},
        "2": {"class_type": "CVD_ScenePlan", "inputs": dict(plan, **(plan_inputs or {}))},
        "3": {"class_type": "CVD_LiftTrajectory3D", "inputs": dict(lift, **(lift_inputs or {}))},
        "4": {"class_type": "CVD_ProjectLayout", "inputs": dict(project, **(project_inputs or {}))},
        "5": {"class_type": "CVD_LayoutPreview", "inputs": {"layout": ["4", 0], "mode": "every_frame", "alpha": 0.35}},
        "6": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 1]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "cvd_test/entity_mask"}},
    }
    if depth_value is not None:
        prompt["8"] = {"class_type": "SolidMask", "inputs": {"value": depth_value, "width": 96, "height": 96}}
        prompt["3"]["inputs"]["depth_mask"] = ["8", 0]
    return prompt


def _text(entry, node_id):
    return "\n".join(entry["outputs"][node_id]["text"])


def test_llm_answer_lifted_with_a_core_depth_mask(comfy_server):
    prompt = _graph(plan_inputs={"llm_answer": ANSWER}, project_inputs={"entity": 1}, depth_value=0.5)
    entry = comfy_server.run(prompt, timeout=300)
    assert "LLM answer read: 2D trajectories for 2 entities" in _text(entry, "2")
    # constant disparity 0.5 at depth_scale 1: every entity stands 2 units from the reference camera
    assert "car: height" in _text(entry, "3") and "distance 2 to 2 units" in _text(entry, "3")
    assert "tree: visible in" in _text(entry, "4")
    files = output_files(entry)
    assert len(files["5"]) == VIEWS * FRAMES  # every_frame preview: one image per view and frame
    masks = files["7"]
    assert len(masks) == VIEWS * FRAMES  # the entity MASK is a [views x frames, H, W] batch core nodes accept
    first = Image.open(io.BytesIO(comfy_server.view(masks[0]["filename"], masks[0]["subfolder"]))).convert("L")
    assert first.size == (128, 128) and first.getextrema() == (0, 255)  # the tree, white on black


def test_garbage_llm_answer_is_quoted(comfy_server):
    message = comfy_server.failure_of(_graph(plan_inputs={"llm_answer": "car: Scale: enormous, Start: over yonder"}))
    assert "CVD_ScenePlan" in message and "llm_answer" in message and "over yonder" in message
    assert comfy_server.answers()


def test_plan_json_errors_name_json_paths(comfy_server):
    plan = {"version": 1, "frames": FRAMES, "entities": [
        {"id": "car", "prompt": "a car", "trajectory_3d": [[0, 0, "far"]]},
        {"id": "car", "prompt": "another car", "trajectory_2d": {"image_size": [512, 512], "scale": -1,
                                                                 "start": [1, 2], "end": [3, 4]}}]}
    message = comfy_server.failure_of(_graph(plan_inputs={"plan_json": json.dumps(plan)}))
    for path in ("entities[0].trajectory_3d[0]", "entities[1].trajectory_2d.scale", "entities[1].id"):
        assert path in message, message
    assert comfy_server.answers()


def test_frames_mismatch_between_plan_and_cameras(comfy_server):
    message = comfy_server.failure_of(_graph(rig_frames=FRAMES + 8))
    assert f"the scene plan has {FRAMES} frames but the cameras have {FRAMES + 8}" in message
    assert comfy_server.answers()


def test_entity_index_out_of_range(comfy_server):
    message = comfy_server.failure_of(_graph(project_inputs={"entity": 7}))
    assert "entity must be below the number of entities (2: 0=car, 1=tree), got 7" in message
    assert comfy_server.answers()


def test_projecting_unlifted_answers_is_refused(comfy_server):
    prompt = _graph(plan_inputs={"llm_answer": ANSWER})
    prompt["4"]["inputs"]["scene"] = ["2", 0]  # skip the lift
    message = comfy_server.failure_of(prompt)
    assert "lift it to 3D first" in message
    assert comfy_server.answers()
    assert comfy_server.run(_graph(), timeout=300)["outputs"]["7"]["images"]  # and it still runs good graphs
