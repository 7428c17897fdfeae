"""One check for every input (``nodes/_schema/``): types converted, never truncated; NaN refused;
ranges, rule steps, combos, caps and cross-input rules; one message format at validation and at run
time; wrongly typed raw values refused before ComfyUI converts them."""

import json
import math

import pytest

from nodes._comfy import NodeInputError
from nodes._schema import (LINKED, Input, NodeSchema, Output, RefusedValue, Result, build_v1, check_inputs,
                           check_value, refuse_wrongly_typed_values, run_checked)
from tests.support.pack_info import pack_schemas


def _toy(**overrides):
    def run(count, gain, mode, flag, name, size, image=None):
        if gain > 1.5:
            raise NodeInputError(f"gain must be at most 1.5 for this image, got {gain}")
        return Result((count, gain, mode, flag, name, size))

    fields = dict(
        node_id="CVD_Toy", display_name="Toy Node", category="CVD/test", description="A toy node for validation tests.",
        inputs=[Input("count", "INT", "how many", default=2, min=1, max=8),
                Input("gain", "FLOAT", "how strong", default=1.0, min=0.0, max=2.0, step=0.01),
                Input("mode", "COMBO", "which mode", default="a", options=["a", "b"]),
                Input("flag", "BOOLEAN", "on or off", default=True),
                Input("name", "STRING", "a name", default="x", max_length=10),
                Input("size", "INT", "a size", default=64, min=8, max=256, step=8, multiple_of=8),
                Input("image", "IMAGE", "an optional image", optional=True)],
        outputs=[Output("INT", "count", "the count")],
        run=run,
        rules=[lambda count, size: None if count * size <= 1024 else f"size must be at most {1024 // count} with "
                                                                      f"count {count}, got {size}"])
    fields.update(overrides)
    return NodeSchema(**fields)


GOOD = dict(count=2, gain=1.0, mode="a", flag=False, name="x", size=64)


@pytest.mark.parametrize("name,value,words", [
    ("count", 3.7, "count must be an integer from 1 to 8, got 3.7"),
    ("count", "4", "count must be an integer from 1 to 8, got '4'"),
    ("count", True, "count must be an integer from 1 to 8, got True"),
    ("count", None, "count must be an integer from 1 to 8, got None"),
    ("count", 10 ** 30, "count must be an integer from 1 to 8, got 1000000000000000000000000000000"),
    ("count", float("inf"), "count must be an integer from 1 to 8, got inf"),
    ("gain", float("nan"), "gain must be a finite number between 0 and 2, got nan"),
    ("gain", float("-inf"), "gain must be a finite number between 0 and 2, got -inf"),
    ("gain", 10 ** 400, "gain must be a finite number between 0 and 2, got 1" + "0" * 39 + "... (a int)"),
    ("gain", "0.5", "gain must be a finite number between 0 and 2, got '0.5'"),
    ("gain", -0.01, "gain must be a finite number between 0 and 2, got -0.01"),
    ("mode", "c", "mode must be one of 'a', 'b', got 'c'"),
    ("mode", 1, "mode must be one of 'a', 'b', got 1"),
    ("flag", "false", "flag must be true or false, got 'false'"),
    ("flag", 0, "flag must be true or false, got 0"),
    ("name", "y" * 11, "name must be text (valid Unicode) of at most 10 characters, got 'yyyyyyyyyyy'"),
    ("name", "z" * 100_000, "name must be text (valid Unicode) of at most 10 characters, got "
                            "'zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz'... (100000 characters)"),
    ("name", 5, "name must be text (valid Unicode) of at most 10 characters, got 5"),
    ("name", "a\ud800", "name must be text (valid Unicode) of at most 10 characters, got 'a\\ud800'"),
    ("size", 60, "size must be a multiple of 8 from 8 to 256, got 60"),
])
def test_bad_values_are_refused_with_one_message_at_validation_and_at_run_time(name, value, words):
    schema = _toy()
    answer = build_v1(schema).VALIDATE_INPUTS(**dict(GOOD, **{name: value})) if value is not None else None
    if value is not None:  # (None stands for a linked input while validating)
        assert answer == f"Toy Node: {words}"
    with pytest.raises(NodeInputError) as caught:
        run_checked(schema, dict(GOOD, **{name: value}))
    assert str(caught.value) == f"Toy Node: {words}"


def test_values_are_converted_to_the_declared_type():
    values, problems = check_inputs(_toy(), dict(GOOD, count=4.0, gain=1))
    assert problems == []
    assert values["count"] == 4 and type(values["count"]) is int  # an integral float is the integer
    assert values["gain"] == 1.0 and type(values["gain"]) is float
    assert run_checked(_toy(), dict(GOOD, count=4.0)).values[0] == 4


def test_ui_steps_are_not_rules_but_multiple_of_is():
    assert check_value(_toy().input("gain"), 0.123)[1] is None  # step 0.01 is the widget increment only
    assert check_value(_toy().input("size"), 72)[1] is None
    assert "multiple of 8" in check_value(_toy().input("size"), 70)[1]


def test_every_problem_of_a_node_is_listed_once():
    answer = build_v1(_toy()).VALIDATE_INPUTS(**dict(GOOD, count=0, gain=math.nan))
    assert answer == ("Toy Node: count must be an integer from 1 to 8, got 0; "
                      "gain must be a finite number between 0 and 2, got nan")


def test_cross_input_rules_run_when_their_inputs_are_known():
    validate = build_v1(_toy()).VALIDATE_INPUTS
    assert validate(**dict(GOOD, count=8, size=256)) == "Toy Node: size must be at most 128 with count 8, got 256"
    assert validate(**dict(GOOD, count=None, size=256)) is True  # count is linked: checked at run time
    assert validate(**dict(GOOD, count=0, size=256)) == "Toy Node: count must be an integer from 1 to 8, got 0"
    with pytest.raises(NodeInputError, match="size must be at most 128 with count 8, got 256"):
        run_checked(_toy(), dict(GOOD, count=8, size=256))  # the link's value, now known


def test_errors_raised_inside_run_carry_the_node_name():
    with pytest.raises(NodeInputError) as caught:
        run_checked(_toy(), dict(GOOD, gain=1.8))
    assert str(caught.value) == "Toy Node: gain must be at most 1.5 for this image, got 1.8"


def test_wrongly_typed_raw_values_are_refused_before_comfyui_converts_them():
    prompt = {"1": {"class_type": "CVD_Toy", "inputs": dict(GOOD, count=3.7, flag="false", gain=["2", 0],
                                                            name=None)},
              "2": {"class_type": "KSampler", "inputs": {"steps": 3.7}}}
    assert refuse_wrongly_typed_values({"CVD_Toy": _toy()}, prompt) == 3
    inputs = prompt["1"]["inputs"]
    assert prompt["2"]["inputs"]["steps"] == 3.7 and inputs["gain"] == ["2", 0]  # other nodes, links: untouched
    for name, shown in (("count", "3.7"), ("flag", "'false'"), ("name", "None")):
        assert isinstance(inputs[name], RefusedValue) and inputs[name] == shown
    # ComfyUI's own conversions (int(), float(), bool(), str()) now refuse with the pack's words ...
    with pytest.raises(ValueError, match=r"^Toy Node: count must be an integer from 1 to 8, got 3.7$"):
        int(inputs["count"])
    with pytest.raises(ValueError, match="flag must be true or false, got 'false'"):
        bool(inputs["flag"])
    assert str(inputs["name"]) is inputs["name"]
    # ... its answer stays JSON, and our validator, run after the conversion, says the same
    assert json.loads(json.dumps(inputs))["count"] == "3.7"
    assert build_v1(_toy()).VALIDATE_INPUTS(**dict(inputs, gain=None)) == (  # the server passes None for a link
        "Toy Node: count must be an integer from 1 to 8, got 3.7; flag must be true or false, got 'false'; "
        "name must be text (valid Unicode) of at most 10 characters, got None")
    assert refuse_wrongly_typed_values({"CVD_Toy": _toy()}, prompt) == 0  # idempotent


def test_a_schema_whose_default_breaks_its_own_rule_is_refused():
    with pytest.raises(ValueError, match="default breaks"):
        _toy(inputs=[Input("count", "INT", "how many", default=0, min=1, max=8)], rules=[])
    with pytest.raises(ValueError, match="unknown inputs"):
        _toy(rules=[lambda nope: None])


def test_pack_rules_read_declared_inputs_and_defaults_pass():
    """Every pack node's defaults pass its own checks (a node placed as is must validate)."""
    for schema in pack_schemas():
        values = {i.name: i.default for i in schema.inputs
                  if i.is_widget and i.default is not None and not (i.type == "COMBO" and callable(i.options))}
        values.update({i.name: LINKED for i in schema.inputs if not i.is_widget and not i.optional})
        _, problems = check_inputs(schema, values)
        assert problems == [], f"{schema.node_id}: {problems}"
