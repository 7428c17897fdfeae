"""Keyframed rigs (cvd_core.camera.keyframes): expansion maths, the frame-0 rule, validation, round trips.

Tolerances: float64 throughout; poses are built from a few dozen multiply-adds of O(1) numbers, so
agreement to 1e-12 is hundreds of ulps of headroom, independent of the CPU.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from cvd_core.camera import (PRESETS, CameraError, keyframes_from_rig, keyframes_from_settings, make_preset_rig,
                             parse_keyframes, rig_from_custom_json, rig_from_keyframes)
from cvd_core.camera.keyframes import expand_view, keyframe_rotation

TIGHT = 1e-12


def _doc(shared=True):
    start = {"t": 0.0, "position": [0, 0, 0], "target": [0, 0, 1]}
    return {"format": "cvd_keyframes/1", "shared_first_frame": shared, "views": [
        {"label": "left", "keyframes": [start, {"t": 0.4, "position": [-0.3, 0.05, 0.1], "target": [0, 0, 1.5],
                                                "roll_deg": 10}, {"t": 1, "position": [-0.5, 0, 0.4], "target": [0, 0, 2]}]},
        {"label": "right", "keyframes": [dict(start), {"t": 0.5, "position": [0.2, -0.1, 0.2], "target": [0, 0, 1]},
                                         {"t": 0.8, "position": [0.4, 0, 0.1], "target": [0.2, 0, 1]},
                                         {"t": 1, "position": [0.5, 0.1, 0.3], "target": [0, 0.2, 1.2], "roll_deg": -20}]},
    ]}


def test_endpoints_and_keyframes_are_hit_exactly():
    doc = parse_keyframes(_doc())
    for view in doc["views"]:
        frames = 11  # t = 0.1 steps: the keys at 0, 0.4 (view 0) and 0.5, 0.8 (view 1) fall on frames
        c2w, _ = expand_view(view, frames)
        for key in view["keyframes"]:
            f = int(round(key["t"] * (frames - 1)))
            assert np.abs(c2w[f, :3, 3] - key["position"]).max() <= TIGHT
            assert np.abs(c2w[f, :3, :3] - keyframe_rotation(key)).max() <= TIGHT
        assert np.array_equal(c2w[-1, :3, 3], view["keyframes"][-1]["position"])  # the last frame exactly


def test_path_is_smooth_velocity_continuous_at_keyframes():
    """C1 in time: the one-sided velocities on both sides of an inner keyframe agree to first order in dt,
    while a kink of the straight polyline would differ by O(1)."""
    view = parse_keyframes(_doc())["views"][1]
    frames = 2001
    c2w, _ = expand_view(view, frames)
    p = c2w[:, :3, 3]
    dt = 1.0 / (frames - 1)
    keys = view["keyframes"]
    for k in range(1, len(keys) - 1):
        f = int(round(keys[k]["t"] * (frames - 1)))
        left, right = (p[f] - p[f - 1]) / dt, (p[f + 1] - p[f]) / dt
        accel = np.abs(p[f + 1] - 2 * p[f] + p[f - 1]).max() / dt ** 2  # bounded second derivative
        assert np.abs(left - right).max() <= 2 * accel * dt + 1e-9
        # straight lines between the keys would turn here by O(1); the spline by O(dt)
        slope = [(np.array(keys[j + 1]["position"]) - keys[j]["position"]) / (keys[j + 1]["t"] - keys[j]["t"])
                 for j in (k - 1, k)]
        assert np.abs(slope[1] - slope[0]).max() > 100 * np.abs(left - right).max()


def test_slerp_rotations_stay_orthonormal_and_turn_evenly():
    view = parse_keyframes(_doc())["views"][0]
    c2w, _ = expand_view(view, 101)
    R = c2w[:, :3, :3]
    assert np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max() <= TIGHT
    assert np.abs(np.linalg.det(R) - 1).max() <= TIGHT
    # slerp: constant angular step inside a segment (frames 0..40 lie in the first segment)
    steps = [math.acos(np.clip((np.trace(R[f].T @ R[f + 1]) - 1) / 2, -1, 1)) for f in range(0, 40)]
    assert max(steps) - min(steps) <= 1e-6 * max(steps)


def test_two_keyframes_reproduce_cvd_presets_exactly():
    for preset in PRESETS:
        if preset == "orbit":
            continue
        rig = make_preset_rig(preset, 3, 16, 256, 128, camera_dist=0.6, speed=0.8, perturb_traj=0.1, seed=3)
        doc = keyframes_from_settings(preset, 3, 16, 256, 128, camera_dist=0.6, speed=0.8, perturb=0.1,
                                      perturb_seed=3)
        assert all(len(view["keyframes"]) == 2 for view in doc["views"])
        back = rig_from_keyframes(json.loads(json.dumps(doc)), 16, 256, 128)
        assert back.labels == rig.labels and torch.equal(back.K, rig.K)
        assert (back.c2w - rig.c2w).abs().max() <= 1e-9, preset


def test_orbit_converts_close_to_its_arc():
    rig = make_preset_rig("orbit", 2, 16, 256, 256, angle_deg=40)
    back = rig_from_keyframes(keyframes_from_settings("orbit", 2, 16, 256, 256, angle_deg=40), 16, 256, 256)
    # Five keys on a 40-degree arc of radius 1: the spline leaves the circle most near the ends, whose
    # tangents are one-sided differences (measured 2.2e-3 of the radius; the keys themselves are exact).
    assert (back.c2w - rig.c2w).abs().max() <= 3e-3
    keys = (back.c2w - rig.c2w)[:, [0, 15]].abs().max()
    assert keys <= 1e-12


def test_frame_zero_is_shared_unless_unlocked():
    rig = rig_from_keyframes(_doc(), 9, 64, 64)
    assert all(torch.equal(rig.c2w[v, 0], torch.eye(4, dtype=torch.float64)) for v in range(2))
    moved = _doc()
    moved["views"][1]["keyframes"][0]["position"] = [0.1, 0, 0]
    with pytest.raises(CameraError, match=r"views\[1\].keyframes\[0\] must equal views\[0\].keyframes\[0\].*unlock"):
        parse_keyframes(moved)
    moved["shared_first_frame"] = False
    unlocked = rig_from_keyframes(moved, 9, 64, 64)
    assert torch.equal(unlocked.c2w[0, 0], torch.eye(4, dtype=torch.float64))
    assert (unlocked.c2w[1, 0, :3, 3] - torch.tensor([0.1, 0, 0], dtype=torch.float64)).abs().max() <= TIGHT


def test_round_trip_keyframes_rig_json():
    """keyframes -> rig -> keyframes (at the key frames) -> JSON -> rig gives the same rig."""
    doc = _doc()
    rig = rig_from_keyframes(doc, 11, 64, 64)
    back = keyframes_from_rig(rig, list(range(11)))
    again = rig_from_custom_json(json.dumps(back), 11, 64, 64)
    assert again.labels == rig.labels and torch.equal(again.K, rig.K)
    assert (again.c2w - rig.c2w).abs().max() <= TIGHT
    # The c2w form read back (what the editor does with an older custom_json) keeps the poses at its keys.
    c2w_json = json.dumps({"fov_deg": 50, "views": [{"label": f"v{v}", "c2w": rig.c2w[v].tolist()} for v in range(2)]})
    read = keyframes_from_settings("custom_json", 2, 11, 64, 64, custom_json=c2w_json)
    assert [k["t"] for k in read["views"][0]["keyframes"]] == [0.0, 0.2, 0.5, 0.8, 1.0]
    assert abs(read["views"][0]["keyframes"][0]["fov_deg"] - 50) <= TIGHT


def test_fov_and_roll():
    doc = _doc()
    for view in doc["views"]:  # the first keyframes stay equal: the same fov at t = 0
        for key in view["keyframes"]:
            key["fov_deg"] = 40.0 + 40.0 * key["t"]
    rig = rig_from_keyframes(doc, 11, 64, 64)
    fx = rig.K[0, :, 0, 0]
    assert abs(float(fx[5]) - 32 / math.tan(math.radians(60) / 2)) <= 1e-9  # linear fov: 60 at t = 0.5
    roll = keyframe_rotation({"position": [0, 0, 0], "target": [0, 0, 1], "roll_deg": 90})
    assert np.abs(roll[:, 0] - [0, 1, 0]).max() <= TIGHT  # x turns towards y (down)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="cvd_keyframes/2"), "format"),
    (lambda d: d["views"][0]["keyframes"][1].update(t=1.5), r"keyframes\[1\].t must be between 0.0 and 1.0"),
    (lambda d: d["views"][0]["keyframes"][1].update(t=0.0), "strictly increasing"),
    (lambda d: d["views"][0]["keyframes"][2].update(t=0.9), "end at t = 1"),
    (lambda d: d["views"][0]["keyframes"][1].update(position=[0, 0]), r"position must be a list of 3"),
    (lambda d: d["views"][0]["keyframes"][1].update(target=[-0.3, 0.05, 0.1]), "looks at itself"),
    (lambda d: d["views"][0]["keyframes"][1].update(target=[-0.3, 5, 0.1]), "straight up or down"),
    (lambda d: d["views"][0]["keyframes"][1].update(position=[float("nan"), 0, 0]), "finite"),
    (lambda d: d["views"][0]["keyframes"][1].update(target=[1e308, 0, 0]), r"target\[0\] must be between"),
    (lambda d: d["views"][0]["keyframes"][1].update(fov_deg=50), "on every keyframe of a view or on none"),
    (lambda d: d["views"][0].update(keyframes=[d["views"][0]["keyframes"][0]]), "2 to 256 keyframes"),
    (lambda d: d["views"][0].update(extra=1), r"unknown keys \['extra'\]"),
])
def test_bad_keyframes_name_place_and_rule(change, message):
    doc = copy.deepcopy(_doc())
    change(doc)
    with pytest.raises(CameraError, match=message):
        parse_keyframes(doc)


def test_javascript_twin_expands_to_the_same_rig(tmp_path):
    """web/lib/keyframes.js (the editor's maths) against this module, run under Node (skipped without it;
    the browser test repeats the comparison in the page, against the server's own rig)."""
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the browser test installs it)")
    module = Path(__file__).resolve().parents[2] / "web" / "lib" / "keyframes.js"
    for shared in (True, False):
        doc = _doc(shared)
        if not shared:
            doc["views"][1]["keyframes"][0]["position"] = [0.1, -0.05, 0]
        for key in doc["views"][1]["keyframes"]:
            key["fov_deg"] = 50 + 20 * key["t"]
        doc["views"][0]["fov_deg"] = 50.0  # view 0 fixed, view 1 keyed: equal at frame 0
        script = (f"import {{ camerasFromKeyframes }} from {json.dumps(module.as_uri())};\n"
                  f"console.log(JSON.stringify(camerasFromKeyframes({json.dumps(doc)}, 13, 96, 64)));")
        (tmp_path / "run.mjs").write_text(script)
        out = subprocess.run([node, str(tmp_path / "run.mjs")], capture_output=True, text=True, timeout=60, check=True)
        js = json.loads(out.stdout)
        rig = rig_from_keyframes(doc, 13, 96, 64)
        assert js["labels"] == list(rig.labels)
        assert np.abs(np.array(js["c2w"]) - rig.c2w.numpy()).max() <= TIGHT
        assert np.abs(np.array(js["K"]) - rig.K.numpy()).max() <= 1e-9  # pixels: focal lengths of ~100
