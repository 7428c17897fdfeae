"""The V3 (``comfy_api.latest``) class of a schema, where that API imports; ``build_node_class`` picks."""

from __future__ import annotations

from typing import Any, Dict, Sequence

from .declaration import Input, NodeSchema
from .v1 import build_v1
from .validation import run_checked, validation_answer

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
