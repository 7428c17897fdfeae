"""CVD Camera Trajectory's keyframes form at the node: validated by the schema (the prompt is refused
before anything runs), expanded to the node's frame count, and the editor's starting keyframes
(``POST /cvd/keyframes``, :func:`nodes.camera.editor_keyframes`)."""

import json

from nodes._schema import check_inputs
from nodes.camera import CAMERA_TRAJECTORY, editor_keyframes

BASE = dict(preset="custom_json", views=2, frames=7, width=64, height=64, camera_dist=0.5, speed=1.0,
            angle_deg=30.0, fov_deg=0.0, perturb=0.0, perturb_seed=0)
KEYS = {"format": "cvd_keyframes/1", "views": [
    {"label": "a", "keyframes": [{"t": 0, "position": [0, 0, 0], "target": [0, 0, 1]},
                                 {"t": 1, "position": [0.3, 0, 0], "target": [0, 0, 1]}]},
    {"label": "b", "keyframes": [{"t": 0, "position": [0, 0, 0], "target": [0, 0, 1]},
                                 {"t": 1, "position": [-0.3, 0, 0], "target": [0, 0, 1], "roll_deg": 5}]}]}


def test_keyframes_form_runs_at_the_node_frame_count():
    values, problems = check_inputs(CAMERA_TRAJECTORY, dict(BASE, custom_json=json.dumps(KEYS)))
    assert problems == []
    rig = CAMERA_TRAJECTORY.run(**values).values[0]
    assert (rig.n_views, rig.n_frames, rig.labels) == (2, 7, ("a", "b"))
    assert abs(float(rig.c2w[0, -1, 0, 3]) - 0.3) <= 1e-12


def test_bad_keyframes_are_refused_at_validation_with_the_rule():
    bad = json.loads(json.dumps(KEYS))
    bad["views"][1]["keyframes"][0]["position"] = [0.1, 0, 0]
    _, problems = check_inputs(CAMERA_TRAJECTORY, dict(BASE, custom_json=json.dumps(bad)))
    assert problems == ["custom_json keyframes: views[1].keyframes[0] must equal views[0].keyframes[0] (CVD starts "
                        "every view at the same pose); set shared_first_frame to false to unlock frame 0"]


def test_editor_starts_from_a_preset_or_the_json():
    status, body = editor_keyframes(dict(BASE, preset="circle", views=3, custom_json="not used by presets"))
    assert status == 200 and len(body["keyframes"]["views"]) == 3
    assert body["keyframes"]["views"][0]["label"] == "circle 0/3"
    status, body = editor_keyframes(dict(BASE, custom_json=json.dumps(KEYS)))
    assert status == 200 and body["keyframes"]["views"][1]["keyframes"][1]["roll_deg"] == 5.0
    status, body = editor_keyframes(dict(BASE, preset="circle", views=0))
    assert status == 400 and "views must be" in body["error"]
