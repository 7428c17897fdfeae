"""Checking a node's inputs: all values and cross-input rules at once (``check_inputs``), the answer
of the server-side validators, the check again before ``run``, and the on-prompt handler that refuses
wrongly typed raw values before ComfyUI converts them (docs/development.md, "Input validation")."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cvd_core.guards import NonFiniteError

from .._comfy import NodeInputError
from .declaration import HIDDEN_KEYS, NodeSchema, RefusedValue, Result, _has_json_type, check_value, rule_inputs, shown

class _Marker:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


LINKED = _Marker("LINKED")
"""The value of a connected input during validation: known only when the node runs."""


_ABSENT = _Marker("ABSENT")  # a validator parameter whose input is not in the prompt


def _run_rules(schema: NodeSchema, values: Dict[str, Any], refused: set) -> List[str]:
    problems = []
    for rule in schema.all_rules():
        names = rule_inputs(rule)
        if refused & set(names):
            continue
        args = {}
        for name in names:
            item = schema.input(name)
            value = values.get(name, item.default if item.is_widget else None)
            if value is LINKED and item.is_widget:
                break  # a linked widget value: the rule runs again when the node runs
            args[name] = value
        else:
            result = rule(**args)
            if result is not None and result is not True:
                problems.append(str(result))
    return problems


def check_inputs(schema: NodeSchema, values: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Check and convert ``values`` (input name -> value or ``LINKED``; absent names are not given).

    Returns ``(converted values, problems)``; an empty problem list means the node may run with the
    converted values. Socket values pass through unchecked (ComfyUI checks socket types).
    """
    converted = dict(values)
    problems: List[str] = []
    refused: set = set()
    for item in schema.inputs:
        if not item.is_widget or item.name not in values or values[item.name] is LINKED:
            continue
        converted[item.name], problem = check_value(item, values[item.name])
        if problem is not None:
            problems.append(problem)
            refused.add(item.name)
    return converted, problems + _run_rules(schema, converted, refused)


def json_problem(name: str, text: Any) -> Optional[str]:
    """A rule helper: None when ``text`` is empty or parses as JSON, else where it breaks."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past Python's limit
        return f"{name} must be valid JSON ({str(exc) or type(exc).__name__}), got {shown(text)}"
    return None


def node_message(schema: NodeSchema, problems: Sequence[str]) -> str:
    """The pack's error format: ``<display name>: <problem>; <problem> ...``."""
    return f"{schema.display_name}: " + "; ".join(problems)


def with_node_name(schema: NodeSchema, message: str) -> str:
    prefix = f"{schema.display_name}: "
    return message if message.startswith(prefix) else prefix + message


def validation_answer(schema: NodeSchema, given: Dict[str, Any]):
    """What ``VALIDATE_INPUTS``/``validate_inputs`` return: True or the message.

    ``given``: what the server passes; None stands for a linked input (both servers pass None for
    links while validating).
    """
    values = {name: LINKED if value is None else value for name, value in given.items() if value is not _ABSENT}
    _, problems = check_inputs(schema, values)
    return True if not problems else node_message(schema, problems)


def run_checked(schema: NodeSchema, kwargs: Dict[str, Any]) -> Result:
    """Check every given input again (links are resolved now), then run; errors carry the node's name."""
    hidden = {key: kwargs.pop(key) for key in list(kwargs) if key in HIDDEN_KEYS and key in schema.hidden}
    values, problems = check_inputs(schema, kwargs)
    if problems:
        raise NodeInputError(node_message(schema, problems))
    try:
        result = schema.run(**values, **hidden)
    except (NodeInputError, NonFiniteError) as exc:  # our own errors: the message names the rule
        raise NodeInputError(with_node_name(schema, str(exc))) from None
    if not isinstance(result, Result):
        raise TypeError(f"node run functions must return Result, got {type(result).__name__}")
    return result


def _is_link(value: Any) -> bool:
    """``[node id, output slot]``, how API prompts write a connection (any other list is a bad value)."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int) and not isinstance(value[1], bool)


def refuse_wrongly_typed_values(schemas: Dict[str, NodeSchema], prompt: Any) -> int:
    """Replace each literal widget value of a pack node whose JSON type is wrong by a ``RefusedValue``.

    ComfyUI converts INT/FLOAT/STRING (and in 0.3.x BOOLEAN) widget values in place before any
    validator runs, and that conversion hides wrong types (``int(3.7)``, ``int(True)``,
    ``bool("false")``). Called with the raw API prompt (an on-prompt handler) it makes the
    server's own conversion refuse them with the pack's message. Returns how many were replaced.
    """
    if not isinstance(prompt, dict):
        return 0
    replaced = 0
    for node in prompt.values():
        schema = schemas.get(node.get("class_type")) if isinstance(node, dict) else None
        inputs = node.get("inputs") if schema is not None else None
        if not isinstance(inputs, dict):
            continue
        for item in schema.inputs:
            if not item.is_widget or item.name not in inputs:
                continue
            value = inputs[item.name]
            if _is_link(value) or isinstance(value, RefusedValue) or (isinstance(value, dict) and "__value__" in value):
                continue  # a link [node, slot], 0.3.x's {"__value__": ...} wrapper, or done already
            if not _has_json_type(item, value):
                _, problem = check_value(item, value)
                inputs[item.name] = RefusedValue(shown(value), problem, node_message(schema, [problem]))
                replaced += 1
    return replaced

