"""The classic (V1) ComfyUI class of a schema: ``INPUT_TYPES``, ``RETURN_TYPES``, ``VALIDATE_INPUTS``."""

from __future__ import annotations

import inspect
from typing import Any, Dict

from .declaration import HIDDEN_KEYS, Input, NodeSchema, Result
from .validation import _ABSENT, run_checked, validation_answer

def _v1_input_spec(item: Input) -> tuple:
    opts: Dict[str, Any] = {"tooltip": item.tooltip}
    if item.default is not None:
        opts["default"] = item.default
    for key in ("min", "max", "step"):
        value = getattr(item, key)
        if value is not None:
            opts[key] = value
    if item.multiline:
        opts["multiline"] = True
    if item.force_input:
        opts["forceInput"] = True
    opts.update(item.extra)
    if item.type == "COMBO":
        return (item.combo_options(), opts)
    return (item.type, opts)


def v1_input_types(schema: NodeSchema) -> Dict[str, Dict[str, tuple]]:
    required = {i.name: _v1_input_spec(i) for i in schema.inputs if not i.optional}
    optional = {i.name: _v1_input_spec(i) for i in schema.inputs if i.optional}
    types: Dict[str, Dict[str, tuple]] = {"required": required}
    if optional:
        types["optional"] = optional
    if schema.hidden:
        types["hidden"] = {key: HIDDEN_KEYS[key] for key in schema.hidden}
    return types


def _v1_result(result: Result):
    if result.ui is None:
        return tuple(result.values)
    return {"ui": result.ui, "result": tuple(result.values)}


def _named_validator(schema: NodeSchema):
    """``VALIDATE_INPUTS`` naming every input, each defaulting to "not given".

    ComfyUI reads the parameter names with ``inspect.getfullargspec`` and passes only the inputs the
    prompt has and the validator names (a plain ``**kwargs`` validator would receive nothing, a
    parameter without default would fail for an absent optional input), so the closure carries a
    ``__signature__`` naming them all. Naming an input also turns off 2024's own combo check for it:
    ours covers it, with its words.
    """
    names = [item.name for item in schema.inputs]

    def VALIDATE_INPUTS(cls, **given):
        return validation_answer(schema, {name: given[name] for name in names if name in given})

    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    VALIDATE_INPUTS.__signature__ = inspect.Signature(
        [inspect.Parameter("cls", keyword)] + [inspect.Parameter(name, keyword, default=_ABSENT) for name in names])
    return VALIDATE_INPUTS


def build_v1(schema: NodeSchema) -> type:
    """The classic ComfyUI node class for ``schema``."""

    def run(self, **kwargs):
        return _v1_result(run_checked(schema, kwargs))

    attrs: Dict[str, Any] = {
        "INPUT_TYPES": classmethod(lambda cls: v1_input_types(schema)),
        "RETURN_TYPES": tuple(o.type for o in schema.outputs),
        "RETURN_NAMES": tuple(o.name for o in schema.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in schema.outputs),
        "FUNCTION": "run",
        "CATEGORY": schema.category,
        "DESCRIPTION": schema.description,
        "OUTPUT_NODE": schema.is_output_node,
        "run": run,
        "VALIDATE_INPUTS": classmethod(_named_validator(schema)),
        "CVD_SCHEMA": schema,
    }
    if schema.deprecated:
        attrs["DEPRECATED"] = True
    if schema.experimental:
        attrs["EXPERIMENTAL"] = True
    if schema.fingerprint is not None:
        attrs["IS_CHANGED"] = classmethod(lambda cls, **kwargs: schema.fingerprint(**kwargs))
    return type(schema.node_id, (), attrs)

