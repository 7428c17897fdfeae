"""C3V prompt templates and the LLM answer parser: good, partial and garbage answers."""

import json

import numpy as np
import pytest

from cvd_core.scene.decompose import decompose_prompt
from cvd_core.scene.llm import c3v_prompt_templates, parse_llm_answer
from cvd_core.scene.plan import ScenePlanError

SIZE = (1024, 768)


@pytest.fixture(scope="module")
def plan():
    return decompose_prompt("a red car drives past a tree in a park", frames=8)


def _traj(result, entity_id):
    return next(e for e in result["entities"] if e["id"] == entity_id)["trajectory_2d"]


def test_template_asks_step_by_step_on_the_reference_image(plan):
    text = c3v_prompt_templates(plan, image_size=(640, 384), path_points=3)
    assert "640x384" in text
    order = [text.index(step) for step in ("Step 1 - Scale", "Step 2 - Start", "Step 3 - End", "Step 4 - Trajectory")]
    assert order == sorted(order)
    assert '"a red car"' in text and "drives past" in text and '"a tree"' in text
    assert "car: Scale: <s>, Start: (<x>,<y>), End: (<x>,<y>), Trajectory: (<x>,<y>), (<x>,<y>), (<x>,<y>)" in text
    # the template's own example parses (the format it teaches is the format we read)
    example = text.split("Example: ", 1)[1]
    parsed = parse_llm_answer(example, plan, (640, 384), warnings=[])
    assert _traj(parsed, "car")["scale"] == 0.25
    # a bare prompt is split by rules first
    assert '"a tree"' in c3v_prompt_templates("a red car drives past a tree in a park")


def test_c3v_answer_format(plan):
    answer = ("car: Scale: 0.33, Start: (380,450), End: (704,652), Trajectory: (400,470), (450,500), (520,560)\n"
              "tree: Scale: 0.5, Start: (800,300), End: (800,300), Trajectory: none")
    warnings = []
    result = parse_llm_answer(answer, plan, SIZE, warnings=warnings)
    car = _traj(result, "car")
    assert car["scale"] == 0.33 and car["start"] == [380, 450] and car["end"] == [704, 652]
    assert car["path"] == [[400, 470], [450, 500], [520, 560]]
    assert car["image_size"] == [1024, 768] and len(car["points"]) == 8
    tree = _traj(result, "tree")
    assert tree["path"] == [] and tree["points"] == [[800, 300]] * 8
    # the stale 3D layout is dropped: the answer must be lifted again
    assert all("trajectory_3d" not in e for e in result["entities"])
    assert warnings == []


def test_robust_to_case_markdown_brackets_and_sections(plan):
    answer = """Sure! Here is the plan.

**Tree** (static)
- SCALE = 45%
- start point: [600, 320]
- End: {600, 320}

### 1. A red car
*Scale*: .2 ;  START:(100 , 500)
end: 900,520
Path: [300,505] [500, 510]; (700,515)
"""
    result = parse_llm_answer(answer, plan, SIZE, warnings=[])
    car, tree = _traj(result, "car"), _traj(result, "tree")
    assert car["scale"] == pytest.approx(0.2) and car["start"] == [100, 500] and car["end"] == [900, 520]
    assert car["path"] == [[300, 505], [500, 510], [700, 515]]
    assert tree["scale"] == pytest.approx(0.45) and tree["start"] == [600, 320] and tree["path"] == []


def test_json_answers(plan):
    fenced = "```json\n" + json.dumps({"car": {"scale": 0.3, "start": [10, 20], "end": [30, 40],
                                                "trajectory": [[20, 30]]},
                                        "tree": {"Scale": "50%", "start": "(500, 400)", "end": [500, 400]}}) + "\n```"
    result = parse_llm_answer(fenced, plan, SIZE)
    assert _traj(result, "car")["path"] == [[20, 30]] and _traj(result, "tree")["scale"] == 0.5
    listed = json.dumps([{"id": "tree", "scale": 0.4, "start": {"x": 1, "y": 2}, "end": [3, 4]},
                         {"name": "red car", "scale": 0.1, "start": [5, 6], "end": [7, 8], "path": []}])
    result = parse_llm_answer(listed, plan, SIZE)
    assert _traj(result, "tree")["start"] == [1, 2] and _traj(result, "car")["start"] == [5, 6]
    # a whole plan as the answer is validated as such
    whole = {"version": 1, "frames": 3, "scene": "a park", "entities": [
        {"id": "dog", "prompt": "a dog", "trajectory_2d": {"image_size": [64, 64], "scale": 0.2,
                                                          "start": [0, 0], "end": [10, 10]}}]}
    result = parse_llm_answer(json.dumps(whole), plan, SIZE)
    assert [e["id"] for e in result["entities"]] == ["dog"] and result["frames"] == plan["frames"]


def test_partial_answers(plan):
    warnings = []
    result = parse_llm_answer("car: Scale: 0.3, Start: (100, 500)", plan, SIZE, warnings=warnings)
    car = _traj(result, "car")
    assert car["end"] == [100, 500] and car["points"] == [[100, 500]] * 8
    assert any("no End point" in w for w in warnings)
    tree = next(e for e in result["entities"] if e["id"] == "tree")
    assert "trajectory_3d" in tree and "trajectory_2d" not in tree  # unanswered: keeps its layout
    assert any(w.startswith("tree: not in the answer") for w in warnings)

    warnings = []
    result = parse_llm_answer("Scale: 0.3, Start: (0.1, 0.5), End: (0.9, 0.5)\nScale: 0.5, Start: (0.5,0.4), "
                              "End: (0.5,0.4)", plan, SIZE, warnings=warnings)
    assert _traj(result, "car")["end"] == [pytest.approx(921.6), pytest.approx(384.0)]  # unnamed: in order
    assert any("normalised" in w for w in warnings)

    warnings = []
    result = parse_llm_answer("car: Scale: 1.7, Start: (-50, 500), End: (2000, 500)", plan, SIZE, warnings=warnings)
    assert _traj(result, "car")["start"] == [0, 500] and _traj(result, "car")["scale"] == 1.0
    assert sum("clamped" in w for w in warnings) == 3


@pytest.mark.parametrize("answer, quoted", [
    ("I am sorry, I cannot see the image.", "'I am sorry, I cannot see the image.'"),
    ("car: Scale: big, Start: (1,2), End: (3,4)", "Scale: big"),
    ("car: Scale: 0.3, Start: (abc, 450), End: (3,4)", "Start: (abc, 450)"),
    ("car: Scale: 0.3, Start: (1,2), End: (3,4), Trajectory: (10,20), (450, abc), (30,40)", "(450, abc)"),
    ("car: Scale: 0.3, Start: (1,2), End: (3,4), Trajectory: follows the road", "follows the road"),
    ("car: Scale: 0.3, End: (3,4)", "no Start point"),
    ("Scale: 0.3, Start: (1,2), End: (3,4)", "cannot tell which entity"),
])
def test_garbage_answers_quote_the_unreadable_part(plan, answer, quoted):
    with pytest.raises(ScenePlanError) as info:
        parse_llm_answer(answer, plan, SIZE)
    assert quoted in str(info.value)
    assert str(info.value).startswith("cannot parse the LLM answer")


def test_empty_and_unknown(plan):
    with pytest.raises(ScenePlanError, match="empty"):
        parse_llm_answer("  \n", plan, SIZE)
    with pytest.raises(ScenePlanError, match="no entity of the plan"):
        parse_llm_answer(json.dumps({"bird": {"scale": 0.1, "start": [1, 1], "end": [2, 2]}}), plan, SIZE)
    with pytest.raises(ScenePlanError, match="answered twice"):
        parse_llm_answer("car: Scale: 0.3, Start: (1,2)\ncar: Scale: 0.2, Start: (3,4)", plan, SIZE)


def test_answer_points_follow_the_path(plan):
    result = parse_llm_answer("car: Scale: 0.2, Start: (0,100), End: (700,100), Trajectory: (350,100)",
                              plan, SIZE)
    points = np.array(_traj(result, "car")["points"])
    assert np.allclose(points[:, 0], np.linspace(0, 700, 8)) and np.allclose(points[:, 1], 100)
