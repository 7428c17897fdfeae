"""Declare each node once; derive the ComfyUI V1 class and, where available, the V3 class; check every
input against that declaration in one place.

A node is a ``NodeSchema`` (sockets, widgets, tooltips, description, cross-input rules) plus a plain
function ``run(**inputs) -> Result``. ``build_v1`` produces the classic ``INPUT_TYPES``/``RETURN_TYPES``
class that every ComfyUI since 2023 loads; ``build_v3`` produces a ``comfy_api.latest.io.ComfyNode``
subclass with the same id, inputs and outputs for ComfyUI builds that have the V3 API. Both call
the same ``run``, so behaviour cannot drift between the two forms.

Node ids and the order of widgets are public API (saved workflows store widget values by position):
append new inputs at the end, never rename or reorder; deprecate instead.

Input validation
----------------
``check_inputs`` checks and converts the values of a node from its schema: the type (an INT gets a
Python int: 3.7, "4", True are refused, never truncated; an integral float such as 4.0 is accepted as
4 because JSON has one number type and API clients write either), finiteness of every FLOAT, min/max,
``multiple_of`` (a real rule; ComfyUI's ``step`` is only the widget increment and is never enforced,
so saved workflows stay valid), combo membership (options evaluated now, so new files count), STRING
length caps, BOOLEAN type, then the node's own cross-input ``rules``. Every problem reads
``<display name>: <input> must be <rule>, got <value>``, e.g.
``CVD Multi-View Sampler: cfg must be a finite number between 1 and 30, got nan``.

It runs at three places, because ComfyUI's own checks have gaps (2024-03 checks only required
inputs and skips combos named by ``VALIDATE_INPUTS``; 0.3.x checks no V3 combo and no min/max for
inputs a validator names; NaN passes every min/max comparison; linked values exist only at run
time), and both servers *convert* widget values in place before any validator sees them
(``int(3.7) == 3``, ``bool("false") is True``):

1. ``refuse_wrongly_typed_values``, an on-prompt handler (installed by ``nodes/__init__.py``), sees the
   raw JSON first and replaces a value of the wrong JSON type by a ``RefusedValue`` whose conversion
   raises the same message, so the server refuses it (HTTP 400) instead of converting it;
2. ``VALIDATE_INPUTS`` (V1) / ``validate_inputs`` (V3): everything the server passes, so the server
   answers HTTP 400 with ``node_errors`` before anything runs;
3. the run wrappers of both classes, again before ``run``: optional inputs, link values, servers that
   skip validators (ComfyUI 2024-03 never validates a node whose output only reaches optional inputs,
   e.g. CVD MCM Scheduler feeding the sampler's ``sigmas``: its bad values are refused here, when it
   runs). ``NodeInputError`` raised inside ``run`` gets the display name prefixed, so run-time errors
   read the same.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from cvd_core.guards import NonFiniteError

from ._comfy import NodeInputError

# Widget types ComfyUI renders as editable widgets; everything else is a socket (link) type.
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
HIDDEN_KEYS = {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}

# STRING caps (characters) unless an input declares its own: a one-line widget holds a name or a
# short text; a multiline one holds JSON or prose (1 MB, more than any camera rig JSON we write).
MAX_LINE_CHARS = 4096
MAX_TEXT_CHARS = 1_000_000
COMBO_LISTED = 12  # combos with more options are described, not listed, in errors


@dataclass(frozen=True)
class Input:
    """One input of a node: a widget (INT/FLOAT/STRING/BOOLEAN/COMBO) or a socket type.

    ``step`` is the widget's increment only (ComfyUI's meaning); ``multiple_of`` is a rule that
    validation enforces (e.g. sizes that must be multiples of 8). ``max_length`` caps a STRING
    (default by kind, see ``MAX_LINE_CHARS``); ``choices_text`` describes a long or file-based
    COMBO in errors ("a pose file in ComfyUI's input folder ...").
    """

    name: str
    type: str
    tooltip: str
    default: Any = None
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    options: Optional[Sequence[str] | Callable[[], Sequence[str]]] = None  # COMBO choices
    multiline: bool = False
    optional: bool = False
    force_input: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)  # extra V1 option flags (e.g. upload hints)
    multiple_of: Optional[int] = None
    max_length: Optional[int] = None
    choices_text: Optional[str] = None

    def combo_options(self) -> List[str]:
        options = self.options() if callable(self.options) else self.options
        return list(options or [])

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    @property
    def length_cap(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return MAX_TEXT_CHARS if self.multiline else MAX_LINE_CHARS


@dataclass(frozen=True)
class Output:
    type: str
    name: str
    tooltip: str


@dataclass(frozen=True)
class Result:
    """What a node's ``run`` returns: output values (in schema order) and an optional ``ui`` dict."""

    values: Tuple[Any, ...] = ()
    ui: Optional[Dict[str, Any]] = None


Rule = Callable[..., Any]
"""A cross-input rule: its parameter names are the inputs it reads; it returns None (or True) when
they agree, else the problem as ``"<input> must ..., got <value>"``. Widget parameters get checked,
converted values (the rule is skipped while one of them is linked or already refused); socket
parameters get the value, ``LINKED`` (connected, value not known yet) or None (not connected)."""


@dataclass(frozen=True)
class NodeSchema:
    node_id: str
    display_name: str
    category: str
    description: str
    inputs: Sequence[Input]
    outputs: Sequence[Output]
    run: Callable[..., Result]
    is_output_node: bool = False
    hidden: Sequence[str] = ()  # subset of HIDDEN_KEYS
    deprecated: bool = False
    experimental: bool = False
    rules: Sequence[Rule] = ()
    validate: Optional[Callable[..., Any]] = None  # older form of one rule: True or an error string
    fingerprint: Optional[Callable[..., Any]] = None  # ComfyUI IS_CHANGED

    def __post_init__(self):
        if not self.node_id.startswith("CVD_"):
            raise ValueError(f"node ids must start with 'CVD_', got {self.node_id!r}")
        if not self.category.startswith("CVD/"):
            raise ValueError(f"{self.node_id}: categories must start with 'CVD/', got {self.category!r}")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.node_id}: duplicate input names {names}")
        for item in self.inputs:
            if not item.tooltip:
                raise ValueError(f"{self.node_id}.{item.name}: every input needs a tooltip")
            if not item.name.isidentifier():
                raise ValueError(f"{self.node_id}: input name {item.name!r} is not an identifier")
            if item.multiple_of is not None and item.type != "INT":
                raise ValueError(f"{self.node_id}.{item.name}: multiple_of applies to INT inputs only")
            _check_default(self, item)
        for key in self.hidden:
            if key not in HIDDEN_KEYS:
                raise ValueError(f"{self.node_id}: unknown hidden input {key!r}")
        for rule in self.all_rules():
            unknown = set(rule_inputs(rule)) - set(names)
            if unknown:
                raise ValueError(f"{self.node_id}: rule {getattr(rule, '__name__', rule)} reads unknown inputs "
                                 f"{sorted(unknown)}")

    def all_rules(self) -> List[Rule]:
        return list(self.rules) + ([self.validate] if self.validate is not None else [])

    def input(self, name: str) -> Input:
        for item in self.inputs:
            if item.name == name:
                return item
        raise KeyError(f"{self.node_id} has no input {name!r}")


def _check_default(schema: NodeSchema, item: Input) -> None:
    """A schema whose own default breaks its rule is a bug in the schema: refuse it at import."""
    if not item.is_widget or item.default is None or (item.type == "COMBO" and callable(item.options)):
        return
    _, problem = check_value(item, item.default)
    if problem is not None:
        raise ValueError(f"{schema.node_id}.{item.name}: the default breaks the input's own rule: {problem}")


# ---------------------------------------------------------------------------------------------
# Validation: one check for every input, one message format
# ---------------------------------------------------------------------------------------------

class _Marker:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


LINKED = _Marker("LINKED")
"""The value of a connected input during validation: known only when the node runs."""


class RefusedValue(str):
    """A raw prompt value of the wrong JSON type, replaced before ComfyUI converts it.

    A ``str`` so that the server can still JSON-encode it in its answer (as the original value's
    text); converting it to a number or a boolean (what ComfyUI does to INT/FLOAT/BOOLEAN widget
    values) raises the pack's message, and ``str()`` keeps it, so our validators still see it.
    """

    def __new__(cls, text: str, problem: str, message: str):
        refused = super().__new__(cls, text)
        refused.problem = problem
        refused.message = message
        return refused

    def __getnewargs__(self):  # copy/deepcopy/pickle (ComfyUI copies prompts) rebuild it whole
        return str.__str__(self), self.problem, self.message

    def _refuse(self, *args):
        raise ValueError(self.message)

    __int__ = __float__ = __index__ = __bool__ = _refuse

    def __str__(self):
        return self


def _number(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def shown(value: Any) -> str:
    """A value as an error message shows it: short, unambiguous (nan, 3.7, 'abc', True)."""
    if isinstance(value, RefusedValue):
        return str.__str__(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value)} characters)"
    if isinstance(value, float):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... (a {type(value).__name__})"


def _range_text(item: Input, between: str) -> str:
    low, high = item.min, item.max
    if low is not None and high is not None:
        return f" {between} {_number(low)} {'to' if between == 'from' else 'and'} {_number(high)}"
    if low is not None:
        return f" of at least {_number(low)}"
    if high is not None:
        return f" of at most {_number(high)}"
    return ""


def rule_text(item: Input, options: Optional[List[str]] = None) -> str:
    """What a valid value of ``item`` is, in words ("an integer from 1 to 16")."""
    if item.type == "INT":
        kind = f"a multiple of {item.multiple_of}" if item.multiple_of else "an integer"
        return kind + _range_text(item, "from")
    if item.type == "FLOAT":
        return "a finite number" + _range_text(item, "between")
    if item.type == "BOOLEAN":
        return "true or false"
    if item.type == "STRING":
        return f"text (valid Unicode) of at most {item.length_cap} characters"
    if item.type == "COMBO":
        options = item.combo_options() if options is None else options
        if item.choices_text:
            return item.choices_text
        if len(options) <= COMBO_LISTED:
            return "one of " + ", ".join(repr(o) for o in options)
        return f"one of the {len(options)} listed choices"
    raise ValueError(f"{item.name}: {item.type} is not a widget type")


def _has_json_type(item: Input, value: Any) -> bool:
    """Whether ``value`` has the JSON type the input takes (before any range or membership rule)."""
    if isinstance(value, RefusedValue):
        return False
    if item.type in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return item.type == "FLOAT" or isinstance(value, numbers.Integral) or (
            math.isfinite(value) and float(value).is_integer())
    if item.type == "BOOLEAN":
        return isinstance(value, bool)
    return isinstance(value, str)


def _is_unicode(text: str) -> bool:
    """False for lone surrogates ("\\ud800", which JSON can carry): no file, log or UTF-8 encoder takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _converted(item: Input, value: Any) -> Tuple[Any, bool]:
    """``(value in the input's Python type, whether it satisfies every rule of the input)``."""
    if not _has_json_type(item, value):
        return value, False
    if item.type == "INT":
        number = int(value)
        in_range = (item.min is None or number >= item.min) and (item.max is None or number <= item.max)
        return number, in_range and (not item.multiple_of or number % item.multiple_of == 0)
    if item.type == "FLOAT":
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            return value, False
        in_range = (item.min is None or number >= item.min) and (item.max is None or number <= item.max)
        return number, math.isfinite(number) and in_range  # NaN fails no comparison: test it explicitly
    if item.type == "STRING":
        return value, len(value) <= item.length_cap and _is_unicode(value)
    if item.type == "COMBO":
        return value, value in item.combo_options()
    return value, True  # BOOLEAN


def check_value(item: Input, value: Any) -> Tuple[Any, Optional[str]]:
    """``(converted value, None)`` or ``(value, "<input> must be <rule>, got <value>")``."""
    if isinstance(value, RefusedValue):
        return value, value.problem
    converted, ok = _converted(item, value)
    if ok:
        return converted, None
    return value, f"{item.name} must be {rule_text(item)}, got {shown(value)}"


def rule_inputs(rule: Rule) -> List[str]:
    """The inputs a rule reads: its parameter names."""
    return list(inspect.signature(rule).parameters)


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


# ---------------------------------------------------------------------------------------------
# V1
# ---------------------------------------------------------------------------------------------

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


_ABSENT = _Marker("ABSENT")  # default of the generated validator's parameters: input not in the prompt


def _named_validator(schema: NodeSchema):
    """``VALIDATE_INPUTS`` naming every input, each defaulting to "not given".

    ComfyUI 2024 reads the parameter names with ``inspect.getfullargspec`` and passes only those
    inputs that the prompt has (a ``**kwargs`` validator would receive nothing, a parameter
    without default would fail for an absent optional input), so we generate a real signature.
    Naming an input also turns off 2024's own combo check for it: ours covers it, with its words.
    """
    names = [item.name for item in schema.inputs]
    source = (f"def VALIDATE_INPUTS(cls, {', '.join(f'{n}=_ABSENT' for n in names)}):\n"
              f"    return _answer(_schema, {{{', '.join(f'{n!r}: {n}' for n in names)}}})\n")
    namespace: Dict[str, Any] = {"_answer": validation_answer, "_schema": schema, "_ABSENT": _ABSENT}
    exec(source, namespace)  # noqa: S102 - names are identifiers checked by NodeSchema
    return namespace["VALIDATE_INPUTS"]


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


# ---------------------------------------------------------------------------------------------
# V3 (comfy_api.latest), only where that module imports
# ---------------------------------------------------------------------------------------------

def load_v3_io():
    """Return ``comfy_api.latest.io`` or ``None`` (2024 ComfyUI, or outside ComfyUI)."""
    try:
        from comfy_api.latest import io  # type: ignore
    except Exception:
        return None
    return io


_V3_BUILTIN_SOCKETS = {
    "IMAGE": "Image", "MASK": "Mask", "LATENT": "Latent", "CONDITIONING": "Conditioning",
    "MODEL": "Model", "VAE": "Vae", "CLIP": "Clip", "SIGMAS": "Sigmas", "NOISE": "Noise",
    "SAMPLER": "Sampler", "GUIDER": "Guider",
}


def _v3_socket(io, type_name: str):
    attr = _V3_BUILTIN_SOCKETS.get(type_name)
    if attr is not None and hasattr(io, attr):
        return getattr(io, attr)
    return io.Custom(type_name)


def _v3_input(io, item: Input):
    common = {"tooltip": item.tooltip, "optional": item.optional}
    if item.type == "INT":
        return io.Int.Input(item.name, default=item.default, min=item.min, max=item.max, step=item.step,
                            force_input=item.force_input or None, **common)
    if item.type == "FLOAT":
        return io.Float.Input(item.name, default=item.default, min=item.min, max=item.max, step=item.step,
                              force_input=item.force_input or None, **common)
    if item.type == "STRING":
        return io.String.Input(item.name, default=item.default, multiline=item.multiline,
                               force_input=item.force_input or None, **common)
    if item.type == "BOOLEAN":
        return io.Boolean.Input(item.name, default=item.default, force_input=item.force_input or None, **common)
    if item.type == "COMBO":
        return io.Combo.Input(item.name, options=item.combo_options(), default=item.default, **common)
    return _v3_socket(io, item.type).Input(item.name, **common)


def _v3_hidden(io, keys: Sequence[str]):
    mapping = {"unique_id": io.Hidden.unique_id, "prompt": io.Hidden.prompt, "extra_pnginfo": io.Hidden.extra_pnginfo}
    return [mapping[k] for k in keys]


def _v3_validator(schema: NodeSchema):
    """V3 ``validate_inputs``: 0.3.x passes every input of the prompt (``**kwargs``) and then runs
    none of its own min/max checks, and never checks V3 combos, so this is the whole check."""

    def validate_inputs(cls, **values):
        return validation_answer(schema, values)

    return validate_inputs


def build_v3(schema: NodeSchema, io) -> type:
    """A ``ComfyNode`` subclass equivalent to ``build_v1(schema)``."""

    def define_schema(cls):
        return io.Schema(
            node_id=schema.node_id,
            display_name=schema.display_name,
            category=schema.category,
            description=schema.description,
            inputs=[_v3_input(io, item) for item in schema.inputs],
            outputs=[_v3_socket(io, o.type).Output(display_name=o.name, tooltip=o.tooltip) for o in schema.outputs],
            hidden=_v3_hidden(io, schema.hidden),
            is_output_node=schema.is_output_node,
            is_deprecated=schema.deprecated,
            is_experimental=schema.experimental,
        )

    def execute(cls, **kwargs):
        for key in schema.hidden:
            kwargs[key] = getattr(cls.hidden, key, None)
        result = run_checked(schema, kwargs)
        return io.NodeOutput(*result.values, ui=result.ui)

    attrs: Dict[str, Any] = {
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
        "validate_inputs": classmethod(_v3_validator(schema)),
        "CVD_SCHEMA": schema,
    }
    if schema.fingerprint is not None:
        attrs["fingerprint_inputs"] = classmethod(lambda cls, **kwargs: schema.fingerprint(**kwargs))
    return type(schema.node_id, (io.ComfyNode,), attrs)


def build_node_class(schema: NodeSchema, io=None) -> type:
    """V3 class where the V3 API is importable (pass ``io``), the V1 class otherwise."""
    return build_v3(schema, io) if io is not None else build_v1(schema)
