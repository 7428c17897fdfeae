"""ComfyUI adapters of the pack: each module declares ``SCHEMAS`` (a list of ``NodeSchema``).

``build_mappings`` turns them into ``NODE_CLASS_MAPPINGS``/``NODE_DISPLAY_NAME_MAPPINGS`` with V3
classes where ``comfy_api.latest`` imports and V1 classes otherwise. A module that fails to import
(a missing optional dependency) is reported loudly and skipped, so the rest of the pack still loads.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Dict, List, Tuple

from . import _comfy
from ._schema import NodeSchema, build_node_class, load_v3_io, refuse_wrongly_typed_values

log = logging.getLogger("cvd-multiview")


def node_modules() -> List[str]:
    """Every ``nodes/<name>.py`` that is not private (``_*``): each declares ``SCHEMAS``."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def all_schemas() -> Tuple[List[NodeSchema], Dict[str, str]]:
    """Every node schema of the pack, plus ``{module: error}`` for modules that failed."""
    schemas: List[NodeSchema] = []
    failures: Dict[str, str] = {}
    for name in node_modules():
        try:
            module = importlib.import_module(f".{name}", __name__)
        except Exception as exc:  # keep the rest of the pack usable; say exactly what broke
            failures[name] = f"{type(exc).__name__}: {exc}"
            log.error("cvd-multiview: nodes/%s.py failed to import: %s", name, failures[name])
            continue
        schemas.extend(module.SCHEMAS)
    ids = [s.node_id for s in schemas]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise RuntimeError(f"duplicate node ids: {sorted(duplicates)}")
    return schemas, failures


def register_routes() -> bool:
    """The pack's HTTP routes on ComfyUI's server (``GET /cvd/memory``, ``POST /cvd/keyframes``, both without side
    effects); False outside ComfyUI."""
    from ._managed import register_routes as register_memory_route
    from .camera import register_keyframes_route

    memory = register_memory_route()
    return register_keyframes_route() and memory


def sweep_crash_leftovers():
    """Remove the staging entries a killed ComfyUI left in its output and temp folders (see _crash_cleanup)."""
    from ._crash_cleanup import sweep_at_load

    return sweep_at_load()


def build_mappings(force_v1: bool = False):
    io = None if force_v1 else load_v3_io()
    schemas, _ = all_schemas()
    by_id = {s.node_id: s for s in schemas}
    # Wrongly typed widget values are refused before the server converts them (int(3.7) == 3).
    _comfy.add_prompt_handler("cvd-multiview input types", lambda prompt: refuse_wrongly_typed_values(by_id, prompt))
    classes = {s.node_id: build_node_class(s, io) for s in schemas}
    names = {s.node_id: s.display_name for s in schemas}
    return classes, names
