"""Scene-plan schema and validator: good, partial and garbage plans."""

import json

import numpy as np
import pytest

from cvd_core.scene.plan import ScenePlanError, plan_to_json, resample_polyline, validate_plan


def _plan(**overrides):
    plan = {
        "version": 1,
        "prompt": "a red car drives past a tree in a park",
        "scene": "a park",
        "frames": 5,
        "entities": [
            {"id": "car", "prompt": "a red car", "kind": "vehicle", "motion": "drives past",
             "size": [0.2, 0.15, 0.4],
             "trajectory_2d": {"image_size": [512, 256], "scale": 0.2, "start": [0, 100], "end": [400, 100],
                               "path": [[200, 100]]},
             "facing": "next_point"},
            {"id": "tree", "prompt": "a tree", "size": [0.3, 0.6, 0.3], "trajectory_3d": [[0.0, 0.1, 1.3]],
             "facing": 90},
        ],
    }
    plan.update(overrides)
    return plan


def test_good_plan_is_normalised_and_resampled():
    plan, warnings = validate_plan(_plan())
    assert warnings == []
    car, tree = plan["entities"]
    assert car["trajectory_2d"]["points"] == [[0, 100], [100, 100], [200, 100], [300, 100], [400, 100]]
    assert tree["trajectory_3d"] == [[0.0, 0.1, 1.3]] * 5  # one point = static, repeated per frame
    assert tree["kind"] == "object" and tree["motion"] == "" and tree["facing"] == 90.0
    # canonical form is a fixed point and survives JSON
    again, _ = validate_plan(plan_to_json(plan))
    assert again == plan


def test_arc_length_resampling_is_even_along_an_l_shaped_path():
    points = resample_polyline([[0, 0], [3, 0], [3, 4]], 8)  # total length 7 -> spacing 1
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    corner_free = np.delete(steps, 3)  # the step that cuts the corner is shorter than its arc
    assert np.allclose(corner_free, 1.0)
    assert np.allclose(points[[0, -1]], [[0, 0], [3, 4]])
    assert np.allclose(resample_polyline([[1, 2, 3]], 4), [[1, 2, 3]] * 4)
    assert np.allclose(resample_polyline([[1, 1], [1, 1]], 3), [[1, 1]] * 3)


def test_3d_trajectory_of_frame_length_is_kept_other_lengths_resampled():
    uneven = [[0, 0, 1], [0.1, 0, 1], [1.0, 0, 1]]  # a per-frame speed profile: kept as is
    plan, _ = validate_plan(_plan(frames=3, entities=[{"id": "a", "prompt": "a", "trajectory_3d": uneven}]))
    assert plan["entities"][0]["trajectory_3d"] == uneven
    plan, _ = validate_plan(_plan(frames=3, entities=[{"id": "a", "prompt": "a",
                                                       "trajectory_3d": [[0, 0, 1], [2, 0, 1]]}]))
    assert np.allclose(plan["entities"][0]["trajectory_3d"], [[0, 0, 1], [1, 0, 1], [2, 0, 1]])


def test_frames_override_resamples():
    plan, _ = validate_plan(_plan(), frames=3)
    assert plan["frames"] == 3
    assert plan["entities"][0]["trajectory_2d"]["points"] == [[0, 100], [200, 100], [400, 100]]


def test_points_outside_the_image_are_clamped_with_a_warning():
    raw = _plan()
    raw["entities"][0]["trajectory_2d"]["start"] = [-20, 300]
    plan, warnings = validate_plan(raw)
    assert plan["entities"][0]["trajectory_2d"]["start"] == [0.0, 256.0]
    assert any(w.startswith("entities[0].trajectory_2d.start:") and "clamped" in w for w in warnings)


def test_partial_plan_warnings_for_missing_version_and_unknown_keys():
    raw = _plan()
    del raw["version"]
    raw["camera"] = "orbit"
    raw["entities"][1]["colour"] = "green"
    plan, warnings = validate_plan(raw)
    assert plan["version"] == 1
    assert any(w.startswith("version:") for w in warnings)
    assert any(w.startswith("camera:") and "unknown key" in w for w in warnings)
    assert any(w.startswith("entities[1].colour:") for w in warnings)


def test_garbage_plan_lists_every_problem_with_its_path():
    raw = _plan(version=3, frames=0)
    raw["entities"][0]["trajectory_2d"]["start"] = "left"
    raw["entities"][0]["trajectory_2d"]["scale"] = -1
    raw["entities"][0]["size"] = [1, -2, 1]
    raw["entities"][1]["id"] = "car"
    raw["entities"][1]["facing"] = "the camera"
    raw["entities"].append({"prompt": ""})
    raw["entities"].append("a dog")
    with pytest.raises(ScenePlanError) as info:
        validate_plan(raw)
    problems = info.value.problems
    expected_prefixes = [
        "version:", "frames:", "entities[0].size:", "entities[0].trajectory_2d.scale:",
        "entities[0].trajectory_2d.start: expected [x, y], got \"left\"", "entities[1].facing:",
        "entities[1].id: duplicate id 'car'", "entities[2].id:", "entities[2].prompt:",
        "entities[2]: needs a trajectory",
        "entities[3]: expected an entity object",
    ]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert str(len(problems)) in str(info.value)


@pytest.mark.parametrize("raw, fragment", [
    ("not json", "not valid JSON"),
    ([1, 2], "expected a JSON object"),
    (json.dumps({"version": 1, "frames": 4}), "entities: missing"),
    ({"version": 1, "frames": 4, "entities": [{"id": "a", "prompt": "a", "trajectory_3d": [[0, 0, float("nan")]]}]},
     "entities[0].trajectory_3d[0]: expected finite numbers"),
])
def test_garbage_roots(raw, fragment):
    with pytest.raises(ScenePlanError, match=None) as info:
        validate_plan(raw)
    assert fragment in str(info.value)


def test_input_is_not_modified():
    raw = _plan()
    snapshot = json.dumps(raw, sort_keys=True)
    validate_plan(raw, frames=9)
    assert json.dumps(raw, sort_keys=True) == snapshot
