"""The declaration of a node (``NodeSchema``: inputs, outputs, rules, a ``run`` function) and what a
valid value of one input is (``check_value``, one message format for every rule).

Node ids and widget order are public API: append inputs, never rename or reorder. Why the checks
are what they are: docs/development.md, "Input validation".
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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
# One value against its input
# ---------------------------------------------------------------------------------------------

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
