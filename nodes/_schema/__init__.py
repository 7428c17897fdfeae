"""Declare each node once (``NodeSchema``), derive its ComfyUI V1 class and, where available, its V3
class, and check every input against the declaration in one place.

- ``declaration``: ``Input``/``Output``/``Result``/``NodeSchema`` and the rule of one value;
- ``validation``: a node's inputs and cross-input rules, the validators' answer, the check before
  ``run`` and the on-prompt handler for wrongly typed raw values;
- ``v1`` / ``v3``: the two class builders, both calling the same ``run``.

Every name stays importable from ``nodes._schema``. Where the checks run and why:
docs/development.md, "Input validation".
"""

from .declaration import (COMBO_LISTED, HIDDEN_KEYS, MAX_LINE_CHARS, MAX_TEXT_CHARS, WIDGET_TYPES, Input, NodeSchema,
                          Output, RefusedValue, Result, Rule, _check_default, _converted, _has_json_type, _is_unicode,
                          _number, _range_text, check_value, rule_inputs, rule_text, shown)
from .v1 import _named_validator, _v1_input_spec, _v1_result, build_v1, v1_input_types
from .v3 import (_V3_BUILTIN_SOCKETS, _v3_hidden, _v3_input, _v3_socket, _v3_validator, build_node_class, build_v3,
                 load_v3_io)
from .validation import (_ABSENT, LINKED, _is_link, _Marker, _run_rules, check_inputs, json_problem, node_message,
                         refuse_wrongly_typed_values, run_checked, validation_answer, with_node_name)
from .._comfy import NodeInputError
from cvd_core.guards import NonFiniteError

__all__ = [
    "WIDGET_TYPES", "HIDDEN_KEYS", "MAX_LINE_CHARS", "MAX_TEXT_CHARS", "COMBO_LISTED", "Input", "Output", "Result",
    "Rule", "NodeSchema", "LINKED", "RefusedValue", "shown", "rule_text", "check_value", "rule_inputs",
    "check_inputs", "json_problem", "node_message", "with_node_name", "validation_answer", "run_checked",
    "refuse_wrongly_typed_values", "v1_input_types", "build_v1", "load_v3_io", "build_v3", "build_node_class",
    "NodeInputError", "NonFiniteError",
]
