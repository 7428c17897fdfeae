"""Rule-based prompt splitter and its default layout."""

import numpy as np
import pytest

from cvd_core.scene.decompose import NOUN_TABLE, decompose_prompt
from cvd_core.scene.plan import validate_plan


def _by_id(plan):
    return {e["id"]: e for e in plan["entities"]}


def test_issue_example_car_tree_park():
    plan = decompose_prompt("a red car drives past a tree in a park", frames=16)
    assert plan["scene"] == "a park"
    assert plan["prompt"] == "a red car drives past a tree in a park"
    entities = _by_id(plan)
    assert list(entities) == ["car", "tree"]
    car, tree = entities["car"], entities["tree"]
    assert (car["prompt"], car["motion"], car["kind"]) == ("a red car", "drives past", "vehicle")
    assert (tree["prompt"], tree["motion"], tree["kind"]) == ("a tree", "", "plant")
    car_path, tree_path = np.array(car["trajectory_3d"]), np.array(tree["trajectory_3d"])
    assert car_path.shape == (16, 3)
    assert np.all(np.diff(car_path[:, 0]) > 0)  # left to right
    assert np.ptp(tree_path, axis=0).max() == 0  # static
    assert car_path[:, 2].max() < tree_path[0, 2]  # the car passes in front of the tree
    # sizes keep the real proportions of the noun table
    real = np.array(NOUN_TABLE["car"][1])
    assert np.allclose(np.array(car["size"]) / car["size"][1], real / real[1], rtol=1e-4)
    # standing entities rest on one ground plane (y down: centre + half height)
    assert car_path[0, 1] + car["size"][1] / 2 == pytest.approx(tree_path[0, 1] + tree["size"][1] / 2)
    assert validate_plan(plan)[0] == plan


def test_deterministic():
    prompt = "a dog runs around a tree while a bird flies over the lake"
    assert decompose_prompt(prompt, frames=8) == decompose_prompt(prompt, frames=8)


def test_conjunction_shares_the_verb_and_in_place_verbs_do_not_move():
    plan = decompose_prompt("A dog and a cat play on the beach", frames=6)
    assert plan["scene"] == "the beach"
    entities = _by_id(plan)
    assert set(entities) == {"dog", "cat"}
    for entity in entities.values():
        assert entity["motion"] == "play"
        assert np.ptp(np.array(entity["trajectory_3d"]), axis=0).max() == 0


def test_direction_phrases():
    left = _by_id(decompose_prompt("a black and white cat runs from right to left in a kitchen", frames=5))
    assert list(left) == ["cat"] and left["cat"]["prompt"] == "a black and white cat"
    assert left["cat"]["motion"] == "runs from right to left"
    assert np.all(np.diff(np.array(left["cat"]["trajectory_3d"])[:, 0]) < 0)

    toward = _by_id(decompose_prompt("a man walks towards the camera", frames=5))
    assert list(toward) == ["man"]  # "the camera" is the viewer, not an entity
    assert np.all(np.diff(np.array(toward["man"]["trajectory_3d"])[:, 2]) < 0)

    up = _by_id(decompose_prompt("a balloon rises into the sky", frames=5))
    assert np.all(np.diff(np.array(up["balloon"]["trajectory_3d"])[:, 1]) < 0)  # y down: rising = y falls


def test_flying_entities_are_above_the_horizon_and_ids_are_unique():
    plan = decompose_prompt("a bird flies over the lake and a bird sits on a rock", frames=4)
    entities = plan["entities"]
    ids = [e["id"] for e in entities]
    assert len(ids) == len(set(ids))
    flyer = entities[0]
    assert flyer["motion"] == "flies" and np.array(flyer["trajectory_3d"])[:, 1].max() < 0


def test_no_entities_and_single_frame():
    plan = decompose_prompt("sunset over the ocean", frames=1)
    assert plan["entities"] == [] and plan["scene"] == "sunset over the ocean"
    single = decompose_prompt("a red car", frames=1)
    assert len(single["entities"]) == 1 and len(single["entities"][0]["trajectory_3d"]) == 1


@pytest.mark.parametrize("prompt, frames", [("", 16), ("   ", 16), ("a car", 0)])
def test_bad_arguments(prompt, frames):
    with pytest.raises(ValueError):
        decompose_prompt(prompt, frames=frames)
