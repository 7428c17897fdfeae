"""Projection of 3D boxes through a camera rig: geometry, epipolar consistency, behind-camera boxes,
occlusion, latent-size masks, preview and JSON."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cvd_core.scene.plan import ScenePlanError
from cvd_core.scene.preview import render_layout_preview
from cvd_core.scene.project import box_corners, project_layout

F_PX = 100.0


def _static_rig(frames=2, width=128, height=128, views=1):
    """Duck-typed rig: every camera at the origin looking down +z."""
    K = torch.tensor([[F_PX, 0, width / 2], [0, F_PX, height / 2], [0, 0, 1]], dtype=torch.float64)
    return SimpleNamespace(K=K.expand(views, frames, 3, 3).clone(),
                           c2w=torch.eye(4, dtype=torch.float64).expand(views, frames, 4, 4).clone(),
                           width=width, height=height)


def _plan(entities, frames=2):
    return {"version": 1, "scene": "test", "frames": frames, "entities": [
        {"id": eid, "prompt": f"a {eid}", "size": size, "trajectory_3d": [centre], "facing": yaw}
        for eid, centre, size, yaw in entities]}


def test_box_corners_and_yaw():
    corners = box_corners([0, 0, 0], [2, 4, 6], 0.0)
    assert np.allclose(corners.min(0), [-1, -2, -3]) and np.allclose(corners.max(0), [1, 2, 3])
    turned = box_corners([0, 0, 0], [2, 4, 6], math.pi / 2)  # facing +x: depth now along x
    assert np.allclose(turned.min(0), [-3, -2, -1]) and np.allclose(turned.max(0), [3, 2, 1])


def test_box_in_front_projects_to_the_analytic_square():
    layout = project_layout(_plan([("cube", [0, 0, 2], [0.5, 0.5, 0.5], 0)]), _static_rig(), 128, 128)
    half = 0.25 / 1.75 * F_PX  # the front face (z = 1.75) bounds the silhouette
    assert np.allclose(layout.boxes["cube"][0][0], [64 - half, 64 - half, 64 + half, 64 + half])
    assert layout.centers["cube"][0][0] == [64.0, 64.0] and layout.depths["cube"][0][0] == 2.0
    mask = layout.masks["cube"][0].numpy()
    assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
    ys, xs = np.nonzero(mask)
    assert xs.min() + 0.5 >= 64 - half and xs.max() + 0.5 <= 64 + half  # pixel centres inside the box
    assert mask.sum() == pytest.approx((2 * half) ** 2, rel=0.08)
    # latent-size masks: the rig's K is rescaled, boxes scale by 1/8
    small = project_layout(_plan([("cube", [0, 0, 2], [0.5, 0.5, 0.5], 0)]), _static_rig(), 16, 16)
    assert np.allclose(np.array(small.boxes["cube"][0][0]) * 8, layout.boxes["cube"][0][0])
    assert small.masks["cube"].shape == (2, 16, 16)


def test_box_behind_the_camera_projects_to_nothing():
    layout = project_layout(_plan([("ghost", [0, 0, -2], [0.5, 0.5, 0.5], 0),
                                   ("side", [5, 0, 1], [0.2, 0.2, 0.2], 0)]), _static_rig(), 64, 64)
    assert layout.masks["ghost"].sum() == 0 and layout.boxes["ghost"] == [[None, None]]
    assert layout.centers["ghost"] == [[None, None]] and layout.order == [[["side"], ["side"]]]
    # in front but outside the image: centre known, no box, no mask
    assert layout.boxes["side"] == [[None, None]] and layout.masks["side"].sum() == 0
    assert layout.centers["side"][0][0][0] > 64


def test_box_straddling_the_camera_plane_is_clipped_not_mirrored():
    # half of a wide box is behind the camera; the visible part lies to the right of the image centre
    layout = project_layout(_plan([("wall", [1.0, 0, 0], [1.0, 0.5, 2.0], 0)]), _static_rig(), 128, 128)
    box = layout.boxes["wall"][0][0]
    assert box is not None and box[0] > 64 and box[2] == 128
    mask = layout.masks["wall"][0].numpy()
    assert mask[:, :64].sum() == 0 and mask.sum() > 0


def test_occlusion_nearer_entities_subtract_from_farther_ones():
    plan = _plan([("far", [0, 0, 3], [1.5, 1.5, 0.5], 0), ("near", [0, 0, 1.5], [0.3, 0.3, 0.3], 0)])
    layout = project_layout(plan, _static_rig(), 128, 128)
    far, near = layout.masks["far"][0], layout.masks["near"][0]
    assert (far * near).sum() == 0 and near.sum() > 0
    assert layout.order[0][0] == ["near", "far"]
    assert 0 < layout.visible_fraction["far"][0][0] < 1 and layout.visible_fraction["near"][0][0] == 1.0
    full = project_layout(plan, _static_rig(), 128, 128, occlusion=False)
    assert torch.equal(full.masks["far"][0] * (1 - near), far)  # visible = silhouette minus nearer ones
    assert torch.equal(full.masks["near"], layout.masks["near"])
    labels = layout.label_map()
    assert set(labels.unique().tolist()) == {0, 1, 2} and int((labels[0] == 2).sum()) == int(near.sum())


def test_masks_in_two_views_obey_the_rig_epipolar_geometry():
    camera = pytest.importorskip("cvd_core.camera")
    rig = camera.make_preset_rig("circle", 2, 5, 128, 128)
    plan = _plan([("box", [0.05, 0.02, 1.1], [0.25, 0.2, 0.3], 30.0)], frames=5)
    layout = project_layout(plan, rig, 128, 128)
    frame = 4  # largest baseline; frame 0 is shared (F = 0)
    F = camera.fundamental_matrix(rig.c2w[0, frame], rig.c2w[1, frame], rig.K[0, frame], rig.K[1, frame]).numpy()
    # the projected box centres satisfy x_b^T F x_a = 0
    xa = np.array(layout.centers["box"][0][frame] + [1.0])
    xb = np.array(layout.centers["box"][1][frame] + [1.0])
    line = F @ xa
    assert abs(xb @ line) / np.hypot(*line[:2]) < 1e-6
    # every pixel of the box in view 0 has its epipolar line cross the box's mask in view 1
    mask_a = layout.masks["box"][layout.index(0, frame)].numpy()
    mask_b = layout.masks["box"][layout.index(1, frame)].numpy()
    box_b = layout.boxes["box"][1][frame]
    assert box_b[0] > 0 and box_b[1] > 0 and box_b[2] < 128 and box_b[3] < 128  # fully in view
    ya, xa_pix = np.nonzero(mask_a)
    yb, xb_pix = np.nonzero(mask_b)
    pts_b = np.stack([xb_pix + 0.5, yb + 0.5, np.ones_like(yb, dtype=float)], axis=1)
    rng = np.random.default_rng(0)
    for k in rng.choice(len(ya), size=40, replace=False):
        line = F @ np.array([xa_pix[k] + 0.5, ya[k] + 0.5, 1.0])
        distance = np.abs(pts_b @ line) / np.hypot(*line[:2])
        assert distance.min() < 1.0
    # and a pixel far from the box in view 0 has a line that misses the box in view 1 (the test can fail)
    line = F @ np.array([5.5, 5.5, 1.0])
    assert (np.abs(pts_b @ line) / np.hypot(*line[:2])).min() > 1.0


def test_frame_mismatch_and_unlifted_entities_are_errors():
    with pytest.raises(ScenePlanError, match="the plan has 3 frames but the camera rig has 2"):
        project_layout(_plan([("a", [0, 0, 2], [1, 1, 1], 0)], frames=3), _static_rig(frames=2), 32, 32)
    plan = {"version": 1, "frames": 2, "entities": [
        {"id": "a", "prompt": "a",
         "trajectory_2d": {"image_size": [8, 8], "scale": 0.5, "start": [1, 1], "end": [2, 2]}}]}
    with pytest.raises(ScenePlanError, match="lift it to 3D first"):
        project_layout(plan, _static_rig(), 32, 32)


def test_preview_and_json():
    rig = _static_rig(frames=3, views=2)
    plan = _plan([("far", [0, 0, 3], [1.5, 1.5, 0.5], 0), ("near", [0, 0, 1.5], [0.3, 0.3, 0.3], 0)], frames=3)
    layout = project_layout(plan, rig, 64, 64)
    frames = render_layout_preview(layout)
    assert frames.shape == (6, 64, 64, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0.05
    views = render_layout_preview(layout, per_frame=False)
    assert views.shape == (2, 64, 64, 3)
    on_images = render_layout_preview(layout, images=torch.zeros(6, 32, 32, 3))
    assert on_images.shape == (6, 64, 64, 3) and on_images[:, 32, 32].max() > 0  # mask tint over black
    with pytest.raises(ValueError, match="V\\*F = 6"):
        render_layout_preview(layout, images=torch.zeros(5, 64, 64, 3))
    data = json.loads(json.dumps(layout.to_dict()))
    assert data["format"] == "cvd_layout/1" and [e["id"] for e in data["entities"]] == ["far", "near"]
    assert data["entities"][1]["mask_area"][0][0] == int(layout.masks["near"][0].sum())
