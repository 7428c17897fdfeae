"""Registration: one schema per node gives the V1 class (and the V3 class where available)."""

import json
from pathlib import Path

import pytest

from nodes._schema import WIDGET_TYPES, Input, NodeSchema, Output, Result, build_v1, v1_input_types
from tests.support.pack_info import pack_schemas

FROZEN = json.loads((Path(__file__).parent / "widget_order.json").read_text())


def test_mappings_export_every_schema(pack):
    ids = [s.node_id for s in pack_schemas()]
    assert sorted(pack.NODE_CLASS_MAPPINGS) == sorted(ids)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(ids)
    assert all(pack.NODE_DISPLAY_NAME_MAPPINGS[i] for i in ids)


def test_naming_tooltips_and_descriptions():
    for schema in pack_schemas():
        assert schema.node_id.startswith("CVD_") and schema.category.startswith("CVD/")
        assert len(schema.description) > 40, f"{schema.node_id} needs a real description"
        for item in schema.inputs:
            assert len(item.tooltip) > 10, f"{schema.node_id}.{item.name} needs a real tooltip"
        for output in schema.outputs:
            assert output.tooltip


def test_widget_order_is_append_only():
    """Widget order is public API: the frozen prefix must stay exactly as released."""
    current = {s.node_id: [i.name for i in s.inputs if i.type in WIDGET_TYPES and not i.force_input]
               for s in pack_schemas()}
    for node_id, frozen in FROZEN.items():
        if node_id.startswith("_"):
            continue
        assert node_id in current, f"{node_id} was removed: deprecate released nodes instead"
        assert current[node_id][:len(frozen)] == frozen, f"{node_id}: widgets reordered or renamed"
    unfrozen = sorted(set(current) - set(FROZEN))
    assert not unfrozen, f"add the widget order of new nodes to tests/nodes/widget_order.json: {unfrozen}"


def _toy_schema(**overrides):
    fields = dict(node_id="CVD_Toy", display_name="Toy", category="CVD/test", description="A toy node for tests.",
                  inputs=[Input("count", "INT", "how many", default=2, min=1, max=8),
                          Input("mode", "COMBO", "which mode", default="a", options=["a", "b"]),
                          Input("extra", "IMAGE", "optional image", optional=True)],
                  outputs=[Output("INT", "doubled", "twice count")],
                  run=lambda count, mode, extra=None: Result((count * 2,), ui={"text": [mode]}))
    fields.update(overrides)
    return NodeSchema(**fields)


def test_v1_class_from_schema():
    cls = build_v1(_toy_schema())
    types = cls.INPUT_TYPES()
    assert types["required"]["count"] == ("INT", {"tooltip": "how many", "default": 2, "min": 1, "max": 8})
    assert types["required"]["mode"][0] == ["a", "b"]
    assert "extra" in types["optional"]
    assert cls.RETURN_TYPES == ("INT",) and cls.FUNCTION == "run" and cls.CATEGORY == "CVD/test"
    assert cls().run(count=3, mode="b") == {"ui": {"text": ["b"]}, "result": (6,)}


def test_validator_names_every_input_for_comfyui_2024():
    """ComfyUI 2024 passes a validator only the inputs its signature names (and only those the prompt
    has): every input is named, each defaulting to 'not given'."""
    import inspect
    cls = build_v1(_toy_schema(rules=[lambda count: None if count != 3 else "count must not be 3, got 3"]))
    spec = inspect.getfullargspec(cls.VALIDATE_INPUTS)
    assert spec.args == ["cls", "count", "mode", "extra"] and spec.varkw is None
    assert cls.VALIDATE_INPUTS(count=3) == "Toy: count must not be 3, got 3"
    assert cls.VALIDATE_INPUTS(count=99) == "Toy: count must be an integer from 1 to 8, got 99"
    assert cls.VALIDATE_INPUTS(count=2, mode="a") is True
    assert cls.VALIDATE_INPUTS(count=None, mode="a") is True  # a linked input: checked when it runs


@pytest.mark.parametrize("bad", [dict(node_id="Toy"), dict(category="misc"),
                                 dict(inputs=[Input("x", "INT", "")])])
def test_schema_rules_are_enforced(bad):
    with pytest.raises(ValueError):
        _toy_schema(**bad)


def test_v1_input_types_of_pack_nodes_are_well_formed():
    for schema in pack_schemas():
        types = v1_input_types(schema)
        for section in types.values():
            for name, spec in section.items():
                assert isinstance(spec, (tuple, str))


def test_v3_validator_checks_ranges_combos_and_custom_rules():
    """ComfyUI 0.3.x skips combo checks for V3 nodes; the generated V3 validator does them."""
    from nodes._schema import _v3_validator
    schema = _toy_schema(rules=[lambda count: None if count != 3 else "count must not be 3, got 3"])
    validate = _v3_validator(schema)
    assert validate(None, count=2, mode="a") is True
    assert validate(None, count=2, mode="z") == "Toy: mode must be one of 'a', 'b', got 'z'"
    assert validate(None, count=9, mode="a") == "Toy: count must be an integer from 1 to 8, got 9"
    assert validate(None, count=3, mode="a") == "Toy: count must not be 3, got 3"
    assert validate(None, count=None, mode="a") is True  # a linked input: checked when it runs


def test_v1_validator_names_every_input_as_comfyui_reads_it():
    """ComfyUI passes VALIDATE_INPUTS only the inputs ``inspect.getfullargspec`` finds in its parameters."""
    import inspect

    from nodes._schema import _ABSENT

    for schema in pack_schemas():
        names = [item.name for item in schema.inputs]
        spec = inspect.getfullargspec(build_v1(schema).VALIDATE_INPUTS)
        assert spec.args == ["cls", *names] and spec.varargs is None and spec.varkw is None, (schema.node_id, spec)
        assert spec.defaults == (_ABSENT,) * len(names), schema.node_id
    validate = build_v1(_toy_schema()).VALIDATE_INPUTS
    assert validate() is True  # nothing given: nothing to refuse


# Say it once: a tooltip says what the input does in one line, a description what the node is for in a
# few, a module docstring what the code needs you to know; the explanations live in docs/.
TOOLTIP_MAX_CHARS, DESCRIPTION_MAX_CHARS, DOCSTRING_MAX_LINES = 120, 320, 30
# Modules whose texts are still being rewritten: this list only shrinks.
TEXT_LIMITS_EXEMPT = []  # every node module keeps the limits


def _schemas_by_module():
    import importlib

    import nodes

    for name in nodes.node_modules():
        if name not in TEXT_LIMITS_EXEMPT:
            yield name, importlib.import_module(f"nodes.{name}").SCHEMAS


def test_tooltips_are_one_line_and_descriptions_a_few():
    too_long = []
    for module, schemas in _schemas_by_module():
        for schema in schemas:
            if len(schema.description) > DESCRIPTION_MAX_CHARS:
                too_long.append(f"{module}: {schema.node_id} description ({len(schema.description)} chars)")
            for item in [*schema.inputs, *schema.outputs]:
                if len(item.tooltip) > TOOLTIP_MAX_CHARS or "\n" in item.tooltip:
                    too_long.append(f"{module}: {schema.node_id}.{item.name} tooltip ({len(item.tooltip)} chars)")
    assert not too_long, "move the detail to docs/nodes.md: " + "; ".join(too_long)


def test_module_docstrings_are_short():
    import ast

    folder = Path(__file__).resolve().parents[2] / "nodes"
    long = []
    for path in sorted([*folder.glob("*.py"), *folder.glob("_schema/*.py")]):
        if path.stem in TEXT_LIMITS_EXEMPT:
            continue
        lines = len((ast.get_docstring(ast.parse(path.read_text())) or "").splitlines())
        if lines > DOCSTRING_MAX_LINES:
            long.append(f"{path.relative_to(folder.parent)}: {lines} lines")
    assert not long, f"module docstrings over {DOCSTRING_MAX_LINES} lines: {long}"
