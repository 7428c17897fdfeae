"""Declare each node once; derive the ComfyUI V1 class and, where available, the V3 class.

A node is a ``NodeSchema`` (sockets, widgets, tooltips, description) plus a plain function
``run(**inputs) -> Result``. ``build_v1`` produces the classic ``INPUT_TYPES``/``RETURN_TYPES``
class that every ComfyUI since 2023 loads; ``build_v3`` produces a ``comfy_api.latest.io.ComfyNode``
subclass with the same id, inputs and outputs for ComfyUI builds that have the V3 API. Both call
the same ``run``, so behaviour cannot drift between the two forms.

Node ids and the order of widgets are public API (saved workflows store widget values by position):
append new inputs at the end, never rename or reorder; deprecate instead.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# Widget types ComfyUI renders as editable widgets; everything else is a socket (link) type.
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
HIDDEN_KEYS = {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


@dataclass(frozen=True)
class Input:
    """One input of a node: a widget (INT/FLOAT/STRING/BOOLEAN/COMBO) or a socket type."""

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

    def combo_options(self) -> List[str]:
        options = self.options() if callable(self.options) else self.options
        return list(options or [])


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
    validate: Optional[Callable[..., Any]] = None  # returns True or an error string (ComfyUI VALIDATE_INPUTS)
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
        for key in self.hidden:
            if key not in HIDDEN_KEYS:
                raise ValueError(f"{self.node_id}: unknown hidden input {key!r}")


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
    if not isinstance(result, Result):
        raise TypeError(f"node run functions must return Result, got {type(result).__name__}")
    if result.ui is None:
        return tuple(result.values)
    return {"ui": result.ui, "result": tuple(result.values)}


def validated_input_names(schema: NodeSchema) -> List[str]:
    """The inputs a node's ``validate`` checks: the parameter names of that function."""
    return list(inspect.signature(schema.validate).parameters)


def check_ranges(schema: NodeSchema, values: Dict[str, Any]):
    """min/max of the given widget values; True or an error naming the rule.

    ComfyUI (newer versions) skips its own min/max check for inputs that ``VALIDATE_INPUTS``
    names, so our validators repeat it.
    """
    by_name = {i.name: i for i in schema.inputs}
    for name, value in values.items():
        item = by_name.get(name)
        if item is None or item.type not in ("INT", "FLOAT") or value is None or isinstance(value, (list, tuple)):
            continue  # a link (ComfyUI 2024 passes None for linked inputs): checked when it runs
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {value!r}"
        if item.min is not None and value < item.min:
            return f"{name} must be at least {item.min}, got {value}"
        if item.max is not None and value > item.max:
            return f"{name} must be at most {item.max}, got {value}"
    return True


def _named_validator(schema: NodeSchema):
    """``VALIDATE_INPUTS`` with an explicit signature.

    ComfyUI 2024 reads the parameter names with ``inspect.getfullargspec`` and passes only those
    inputs (a ``**kwargs`` validator would receive nothing), so we generate a real signature.
    """
    names = validated_input_names(schema)
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"{schema.node_id}: validator parameter {name!r} is not an identifier")

    def call(**values):
        ranges = check_ranges(schema, values)
        return ranges if ranges is not True else schema.validate(**values)

    source = (f"def VALIDATE_INPUTS(cls, {', '.join(names)}):\n"
              f"    return _call({', '.join(f'{n}={n}' for n in names)})\n")
    namespace: Dict[str, Any] = {"_call": call}
    exec(source, namespace)  # noqa: S102 - names are checked identifiers from our own schemas
    return namespace["VALIDATE_INPUTS"]


def build_v1(schema: NodeSchema) -> type:
    """The classic ComfyUI node class for ``schema``."""

    def run(self, **kwargs):
        return _v1_result(schema.run(**kwargs))

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
        "CVD_SCHEMA": schema,
    }
    if schema.deprecated:
        attrs["DEPRECATED"] = True
    if schema.experimental:
        attrs["EXPERIMENTAL"] = True
    if schema.validate is not None:
        attrs["VALIDATE_INPUTS"] = classmethod(_named_validator(schema))
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


def check_combos(schema: NodeSchema, values: Dict[str, Any], skip=()):
    """Combo widget values must be one of the options (evaluated now, so new files count)."""
    for item in schema.inputs:
        value = values.get(item.name)
        if item.type != "COMBO" or item.name in skip or value is None or isinstance(value, (list, tuple)):
            continue
        options = item.combo_options()
        if value not in options:
            shown = options if len(options) <= 20 else f"a list of {len(options)}"
            return f"{item.name}: {value!r} is not one of {shown}"
    return True


def _v3_validator(schema: NodeSchema):
    custom = validated_input_names(schema) if schema.validate is not None else []

    def validate_inputs(cls, **values):
        for check in (check_ranges(schema, values), check_combos(schema, values, skip=custom)):
            if check is not True:
                return check
        if schema.validate is None:
            return True
        return schema.validate(**{name: values.get(name) for name in custom})

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
        result = schema.run(**kwargs)
        if not isinstance(result, Result):
            raise TypeError(f"node run functions must return Result, got {type(result).__name__}")
        return io.NodeOutput(*result.values, ui=result.ui)

    attrs: Dict[str, Any] = {
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
        "CVD_SCHEMA": schema,
    }
    # V3 always gets a validator: ComfyUI 0.3.x never checks V3 combo values against their options, so
    # we check ranges and combos ourselves, exactly like V1 validation would.
    attrs["validate_inputs"] = classmethod(_v3_validator(schema))
    if schema.fingerprint is not None:
        attrs["fingerprint_inputs"] = classmethod(lambda cls, **kwargs: schema.fingerprint(**kwargs))
    return type(schema.node_id, (io.ComfyNode,), attrs)


def build_node_class(schema: NodeSchema, io=None) -> type:
    """V3 class where the V3 API is importable (pass ``io``), the V1 class otherwise."""
    return build_v3(schema, io) if io is not None else build_v1(schema)
