"""Scene director nodes (nodes/scene.py) called directly, without a ComfyUI server."""

import json

import numpy as np
import pytest
import torch

from cvd_core.camera import make_preset_rig
from cvd_core.scene import project_layout, validate_plan
from nodes._comfy import NodeInputError
from nodes._schema import build_v1, run_checked
from nodes.scene import LIFT, PREVIEW, PROJECT, SCENE_PLAN, SCHEMAS

PROMPT = "a red car drives past a tree in a park"
ANSWER = ("Sure! Here is the layout.\n"
          "car: Scale: 0.3, Start: (100,400), End: (400,420), Trajectory: (150,405), (200,410), (250,412), (300,415)\n"
          "tree: Scale: 0.5, Start: (256,300), End: (256,300), Trajectory: none")
PLAN_DEFAULTS = dict(frames=8, image_width=512, image_height=512, path_points=4)
VIEWS, FRAMES, SIZE = 2, 8, 64


@pytest.fixture(scope="module")
def rig():
    return make_preset_rig("circle", VIEWS, FRAMES, SIZE, SIZE)


def _plan(**overrides):
    return run_checked(SCENE_PLAN, dict(dict(prompt=PROMPT, **PLAN_DEFAULTS), **overrides))


def _lift(scene, cameras, **overrides):
    return LIFT.run(**dict(dict(scene=scene, cameras=cameras, depth_kind="disparity", depth_scale=1.0,
                                max_depth=100.0), **overrides))


def _project(scene, cameras, **overrides):
    return PROJECT.run(**dict(dict(scene=scene, cameras=cameras, width=0, height=0, occlusion=True, entity=0),
                              **overrides))


# ------------------------------------------------------------------------------ ScenePlan

def test_rule_based_plan_outputs():
    result = _plan()
    scene, director, plan_json = result.values
    assert [e["id"] for e in scene["entities"]] == ["car", "tree"]
    assert scene["frames"] == FRAMES and scene["scene"] == "a park"
    assert validate_plan(plan_json)[0] == scene  # the JSON output reads back as the same plan
    assert "car: Scale:" in director and "tree: Scale:" in director and "512x512" in director
    assert "4 intermediate points" in director
    assert "rule-based plan" in result.ui["text"][0]


def test_llm_answer_gives_2d_trajectories():
    scene = _plan(llm_answer=ANSWER).values[0]
    car = next(e for e in scene["entities"] if e["id"] == "car")
    assert car["trajectory_2d"]["image_size"] == [512, 512]
    assert car["trajectory_2d"]["start"] == [100.0, 400.0] and car["trajectory_2d"]["scale"] == 0.3
    assert len(car["trajectory_2d"]["points"]) == FRAMES
    assert "trajectory_3d" not in car  # the stale rule-based 3D path is dropped: lift again


def test_garbage_llm_answer_quotes_the_bad_part():
    with pytest.raises(NodeInputError) as caught:
        _plan(llm_answer="car: Scale: huge, Start: somewhere on the left")
    message = str(caught.value)
    assert message.startswith("CVD Scene Plan: llm_answer:") and "somewhere on the left" in message


def test_plan_json_errors_name_json_paths():
    bad = {"version": 1, "frames": 8, "entities": [
        {"id": "cat", "prompt": "a cat", "trajectory_2d": {"image_size": [512, 512], "scale": 0.2,
                                                          "start": "left", "end": [1, 2]}},
        {"id": "dog", "prompt": "", "trajectory_3d": [[0, 0, 1]]}]}
    with pytest.raises(NodeInputError) as caught:
        _plan(plan_json=json.dumps(bad))
    message = str(caught.value)
    assert "entities[0].trajectory_2d.start" in message and "entities[1].prompt" in message


def test_plan_json_replaces_the_prompt_and_is_resampled_to_frames():
    plan = {"version": 1, "frames": 4, "scene": "a beach", "entities": [
        {"id": "ball", "prompt": "a ball", "size": [0.1, 0.1, 0.1],
         "trajectory_3d": [[-0.2, 0.2, 1.0], [0.2, 0.2, 1.0]]}]}
    result = _plan(plan_json=json.dumps(plan))
    scene = result.values[0]
    assert [e["id"] for e in scene["entities"]] == ["ball"] and scene["frames"] == FRAMES
    assert len(scene["entities"][0]["trajectory_3d"]) == FRAMES
    assert "resampled to frames=8" in result.ui["text"][0]


def test_empty_prompt_without_plan_is_refused():
    with pytest.raises(NodeInputError, match="prompt must describe the scene"):
        _plan(prompt="  ")


def test_prompt_without_entities_still_plans():
    result = _plan(prompt="a sunset over the ocean")
    assert result.values[0]["entities"] == []
    assert result.values[1].startswith("(no director prompt")


# ------------------------------------------------------------------------------ Lift

def test_lift_without_depth_stands_on_the_ground(rig):
    scene = _plan(llm_answer=ANSWER).values[0]
    lifted, lifted_json = _lift(scene, rig, depth_scale=1.5).values
    assert json.loads(lifted_json) == lifted
    for entity in lifted["entities"]:
        bottoms = np.asarray(entity["trajectory_3d"])[:, 1] + entity["size"][1] / 2
        # the ground is depth_scale units below the camera (OpenCV: +y is down); bilinear sampling of
        # the per-row depth (1/y along the image column) is not exact between pixel centres
        np.testing.assert_allclose(bottoms, 1.5, rtol=2e-3)


@pytest.mark.parametrize("as_image", [False, True])
def test_lift_reads_disparity_from_mask_or_image(rig, as_image):
    scene = _plan(llm_answer=ANSWER).values[0]
    disparity = torch.full((1, 32, 48), 0.5)
    wired = {"depth": disparity[..., None].expand(-1, -1, -1, 3)} if as_image else {"depth_mask": disparity}
    lifted = _lift(scene, rig, depth_scale=2.0, **wired).values[0]
    for entity in lifted["entities"]:
        # constant disparity 0.5 with depth_scale 2: every bottom point is 2 / 0.5 = 4 units deep
        np.testing.assert_allclose(np.asarray(entity["trajectory_3d"])[:, 2], 4.0, atol=1e-9)


def test_lift_depth_kind_depth(rig):
    scene = _plan(llm_answer=ANSWER).values[0]
    lifted = _lift(scene, rig, depth_kind="depth", depth_scale=3.0, depth_mask=torch.full((1, 8, 8), 0.5)).values[0]
    np.testing.assert_allclose(np.asarray(lifted["entities"][0]["trajectory_3d"])[:, 2], 1.5, atol=1e-9)


def test_lift_refuses_two_depth_maps(rig):
    scene = _plan(llm_answer=ANSWER).values[0]
    with pytest.raises(NodeInputError, match="either 'depth'"):
        _lift(scene, rig, depth=torch.ones(1, 8, 8, 3), depth_mask=torch.ones(1, 8, 8))


def test_lift_passes_3d_plans_through(rig):
    scene = _plan().values[0]
    result = _lift(scene, rig)
    assert result.values[0] == scene and "nothing to lift" in result.ui["text"][0]


@pytest.mark.parametrize("node", ["lift", "project"])
def test_frames_mismatch_is_a_clear_error(rig, node):
    scene = _plan(frames=FRAMES + 4).values[0]
    with pytest.raises(NodeInputError) as caught:
        (_lift if node == "lift" else _project)(scene, rig)
    assert f"the scene plan has {FRAMES + 4} frames but the cameras have {FRAMES}" in str(caught.value)


# ------------------------------------------------------------------------------ Project

def test_project_outputs(rig):
    scene = _plan().values[0]
    layout, entity_mask, union, prompt, layout_json = _project(scene, rig, entity=1).values
    assert entity_mask.shape == (VIEWS * FRAMES, SIZE, SIZE) and entity_mask.dtype == torch.float32
    assert torch.equal(entity_mask, layout.masks["tree"]) and prompt == "a tree"
    assert torch.equal(union, torch.maximum(layout.masks["car"], layout.masks["tree"]))
    assert entity_mask.sum() > 0 and (union >= entity_mask).all()
    data = json.loads(layout_json)
    assert data["views"] == VIEWS and [e["id"] for e in data["entities"]] == ["car", "tree"]
    # what the node returns is what the core projects
    direct = project_layout(scene, rig, SIZE, SIZE)
    assert torch.equal(direct.masks["car"], layout.masks["car"])


def test_project_mask_size_and_occlusion(rig):
    scene = _plan().values[0]
    layout, mask, *_ = _project(scene, rig, width=32, height=16, occlusion=False).values
    assert mask.shape == (VIEWS * FRAMES, 16, 32) and (layout.width, layout.height) == (32, 16)


def test_project_entity_out_of_range_lists_entities(rig):
    with pytest.raises(NodeInputError, match=r"below the number of entities \(2: 0=car, 1=tree\), got 5"):
        _project(_plan().values[0], rig, entity=5)


def test_project_without_entities_gives_empty_masks(rig):
    _, mask, union, prompt, _ = _project(_plan(prompt="a sunset over the ocean").values[0], rig).values
    assert mask.shape == (VIEWS * FRAMES, SIZE, SIZE) and mask.sum() == 0 and union.sum() == 0 and prompt == ""


def test_project_needs_3d_trajectories(rig):
    with pytest.raises(NodeInputError, match="lift it to 3D first"):
        _project(_plan(llm_answer=ANSWER).values[0], rig)


# ------------------------------------------------------------------------------ Preview

def test_preview_modes_and_images(rig):
    layout = _project(_plan().values[0], rig).values[0]
    per_view = PREVIEW.run(layout=layout, mode="one_per_view", alpha=0.35)
    assert per_view.values[0].shape == (VIEWS, SIZE, SIZE, 3) and per_view.ui == {"images": []}
    frames = torch.rand(VIEWS * FRAMES, SIZE, SIZE, 3)
    per_frame = PREVIEW.run(layout=layout, mode="every_frame", alpha=0.0, images=frames)
    image = per_frame.values[0]
    assert image.shape == (VIEWS * FRAMES, SIZE, SIZE, 3) and image.dtype == torch.float32
    # with no tint, pixels far from every box keep the frames underneath
    far = (torch.stack([_union_dilated(layout, b) for b in range(VIEWS * FRAMES)]) == 0)
    assert torch.allclose(image[far], frames[far], atol=1.5 / 255)
    with pytest.raises(NodeInputError, match="images"):
        PREVIEW.run(layout=layout, mode="one_per_view", alpha=0.35, images=frames[:3])


def _union_dilated(layout, batch_index, pad=4):
    """Pixels within ``pad`` of any entity's 2D box, label or path in that image (where the preview draws)."""
    view, frame = divmod(batch_index, layout.frames)
    marked = torch.zeros(layout.height, layout.width)
    for entity_id in layout.entity_ids:
        points = [c for c in layout.centers[entity_id][view] if c is not None]
        box = layout.boxes[entity_id][view][frame]
        spans = [box, [box[0], box[1], box[0] + 6 * len(entity_id) + 6, box[1] + 14]] if box is not None else []
        spans += [[min(p[0] for p in points), min(p[1] for p in points), max(p[0] for p in points),
                   max(p[1] for p in points)]] if points else []
        for x0, y0, x1, y1 in spans:
            marked[max(int(y0) - pad, 0):int(y1) + pad, max(int(x0) - pad, 0):int(x1) + pad] = 1
    marked[-14:, :] = 1  # the "view v frame f" label
    return marked


# ------------------------------------------------------------------------------ V1 classes

def test_v1_classes_return_ui_lists(rig):
    """ComfyUI 2024-03 concatenates ui values: each must be a list."""
    classes = {s.node_id: build_v1(s)() for s in SCHEMAS}
    out = classes["CVD_ScenePlan"].run(prompt=PROMPT, **PLAN_DEFAULTS)
    scene = out["result"][0]
    outputs = [out, classes["CVD_LiftTrajectory3D"].run(scene=scene, cameras=rig, depth_kind="disparity",
                                                        depth_scale=1.0, max_depth=100.0)]
    outputs.append(classes["CVD_ProjectLayout"].run(scene=scene, cameras=rig, width=0, height=0, occlusion=True,
                                                    entity=0))
    outputs.append(classes["CVD_LayoutPreview"].run(layout=outputs[-1]["result"][0], mode="one_per_view",
                                                    alpha=0.3))
    for item in outputs:
        assert all(isinstance(v, list) for v in item["ui"].values())
    assert [s.category for s in SCHEMAS] == ["CVD/scene"] * 4
