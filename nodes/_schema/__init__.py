"""Declare each node once (``NodeSchema``), derive its ComfyUI V1 class and, where available, its V3
class, and check every input against the declaration in one place.

- ``declaration``: ``Input``/``Output``/``Result``/``NodeSchema`` and the rule of one value;
- ``validation``: a node's inputs and cross-input rules, the validators' answer, the check before
  ``run`` and the on-prompt handler for wrongly typed raw values;
- ``v1`` / ``v3``: the two class builders, both calling the same ``run``.

Every name of the former ``nodes/_schema.py`` stays importable from ``nodes._schema``. Where the
checks run and why: docs/development.md, "Input validation".
"""

# flake8: noqa: F401 (re-exports)
from cvd_core.guards import NonFiniteError

from .._comfy import NodeInputError
from .declaration import (COMBO_LISTED, HIDDEN_KEYS, MAX_LINE_CHARS, MAX_TEXT_CHARS, WIDGET_TYPES, Input, NodeSchema,
                          Output, RefusedValue, Result, Rule, _check_default, _converted, _has_json_type, _is_unicode,
                          _number, _range_text, check_value, rule_inputs, rule_text, shown)
from .v1 import _named_validator, _v1_input_spec, _v1_result, build_v1, v1_input_types
from .v3 import (_V3_BUILTIN_SOCKETS, _v3_hidden, _v3_input, _v3_socket, _v3_validator, build_node_class, build_v3,
                 load_v3_io)
from .validation import (_ABSENT, LINKED, _is_link, _Marker, _run_rules, check_inputs, json_problem, node_message,
                         refuse_wrongly_typed_values, run_checked, validation_answer, with_node_name)
