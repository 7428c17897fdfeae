"""Lifting 2D trajectories with a depth map (C3V bottom-centre rule) and the facing rule."""

import math

import numpy as np
import pytest
import torch

from cvd_core.scene.lift import entity_yaws, ground_plane_depth, lift_trajectories
from cvd_core.scene.plan import ScenePlanError

K = np.array([[100.0, 0.0, 64.0], [0.0, 100.0, 64.0], [0.0, 0.0, 1.0]])
CAMERA_HEIGHT = 0.8


def _plan(points_start=(40.5, 80.5), points_end=(100.5, 68.5), scale=0.25, size=None, frames=4):
    entity = {"id": "dog", "prompt": "a dog",
              "trajectory_2d": {"image_size": [128, 128], "scale": scale, "start": list(points_start),
                                "end": list(points_end)}}
    if size is not None:
        entity["size"] = size
    return {"version": 1, "scene": "", "frames": frames, "entities": [entity]}


def _check_on_ground(plan, scale=0.25, image_h=128):
    entity = plan["entities"][0]
    centres = np.array(entity["trajectory_3d"])
    width, height, depth = entity["size"]
    # bottom of the 3D box on the ground plane (y down: centre y + half height = camera height)
    assert np.allclose(centres[:, 1] + height / 2, CAMERA_HEIGHT, atol=1e-9)
    # each bottom point projects back onto the 2D bottom-centre
    for (u, v), centre in zip(entity["trajectory_2d"]["points"], centres):
        bottom = centre + np.array([0.0, height / 2, 0.0])
        p = K @ bottom
        assert p[0] / p[2] == pytest.approx(u) and p[1] / p[2] == pytest.approx(v + scale * image_h / 2)
    # height from the LLM scale at the start frame: scale * H * z / fy
    assert height == pytest.approx(scale * image_h * centres[0, 2] / K[1, 1])
    return centres, (width, height, depth)


def test_bottom_centre_rule_on_a_synthetic_ground_plane():
    depth = ground_plane_depth(K, 128, 128, camera_height=CAMERA_HEIGHT)
    # points chosen so every frame's bottom-centre falls on a pixel centre of the depth map
    lifted = lift_trajectories(_plan(), depth, K)
    centres, size = _check_on_ground(lifted)
    assert size[0] == size[1] == size[2]  # no size given: a cube
    start_z = CAMERA_HEIGHT * K[1, 1] / (80.5 + 16 - 64)
    assert centres[0, 2] == pytest.approx(start_z)
    assert centres[-1, 2] > centres[0, 2]  # the end point is higher in the image: farther away


def test_size_proportions_and_fixed_size():
    depth = ground_plane_depth(K, 128, 128, camera_height=CAMERA_HEIGHT)
    lifted = lift_trajectories(_plan(size=[1.0, 2.0, 3.0]), depth, K)
    _, (w, h, d) = _check_on_ground(lifted)
    assert (w / h, d / h) == (pytest.approx(0.5), pytest.approx(1.5))
    kept = lift_trajectories(_plan(size=[1.0, 2.0, 3.0]), depth, K, size_from_scale=False)
    assert kept["entities"][0]["size"] == [1.0, 2.0, 3.0]
    assert np.allclose(np.array(kept["entities"][0]["trajectory_3d"])[:, 1] + 1.0, CAMERA_HEIGHT)


def test_disparity_maps_torch_layouts_and_intrinsics_of_another_size():
    depth = ground_plane_depth(K, 128, 128, camera_height=CAMERA_HEIGHT)
    reference = lift_trajectories(_plan(), depth, K)["entities"][0]["trajectory_3d"]
    disparity = torch.from_numpy(2.0 / depth)[None, ..., None].expand(1, 128, 128, 3)  # ComfyUI IMAGE
    lifted = lift_trajectories(_plan(), disparity, K, depth_kind="disparity", depth_scale=2.0)
    assert np.allclose(lifted["entities"][0]["trajectory_3d"], reference)
    K_256 = K.copy()
    K_256[:2] *= 2.0
    lifted = lift_trajectories(_plan(), torch.from_numpy(depth)[None], K_256, k_size=(256, 256))  # MASK layout
    assert np.allclose(lifted["entities"][0]["trajectory_3d"], reference)
    scaled = lift_trajectories(_plan(), depth / 4.0, K, depth_scale=4.0)  # relative depth + scale knob
    assert np.allclose(scaled["entities"][0]["trajectory_3d"], reference)


def test_depth_map_of_another_resolution_is_sampled_at_the_same_place():
    depth = ground_plane_depth(K, 128, 128, camera_height=CAMERA_HEIGHT)
    half = depth.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    lifted = lift_trajectories(_plan(), half, K)["entities"][0]["trajectory_3d"]
    reference = lift_trajectories(_plan(), depth, K)["entities"][0]["trajectory_3d"]
    assert np.allclose(lifted, reference, rtol=0.05)


def test_bad_depth_and_untouched_3d_entities():
    plan = _plan()
    plan["entities"].append({"id": "tree", "prompt": "a tree", "size": [1, 2, 1], "trajectory_3d": [[0, 0, 5]]})
    with pytest.raises(ScenePlanError, match=r"entities\[0\] \(dog\).trajectory_2d frame 0: depth 0"):
        lift_trajectories(plan, np.zeros((8, 8)), K)
    warnings = []
    lifted = lift_trajectories(plan, np.zeros((8, 8)), K, depth_kind="disparity", max_depth=50.0, warnings=warnings)
    assert np.allclose(np.array(lifted["entities"][0]["trajectory_3d"])[:, 2], 50.0)
    assert any("capped" in w for w in warnings)
    assert lifted["entities"][1]["trajectory_3d"] == [[0, 0, 5]] * 4
    with pytest.raises(ValueError, match="depth_kind"):
        lift_trajectories(plan, np.ones((8, 8)), K, depth_kind="inverse")


def test_yaw_faces_the_next_point():
    path = [[0, 0, 1], [1, 0, 1], [1, 0, 2], [1, 0, 2]]  # right, then away, then a pause
    yaws = entity_yaws(path, "next_point")
    assert np.allclose(yaws, [math.pi / 2, 0.0, 0.0, 0.0])
    assert np.allclose(entity_yaws([[0, 0, 1]] * 3, "next_point"), 0.0)
    assert np.allclose(entity_yaws([[0, 0, 1], [0, 0, 1], [-1, 0, 1]], "next_point"), -math.pi / 2)
    assert np.allclose(entity_yaws(path, 180.0), math.pi)
