"""cvd-multiview: collaborative multi-view video generation nodes for ComfyUI.

Registration only. The nodes live in ``nodes/`` (thin adapters) and the math in ``cvd_core/``.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
# ``cvd_core`` is imported by absolute name from the adapters; append (never prepend) so the pack
# can never shadow a ComfyUI module.
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)


def _use_own_core() -> None:
    """Import this folder's ``cvd_core``, even where ``pip install`` put another (maybe older) copy into
    site-packages, which comes first on ``sys.path``: nodes and core must be the same version."""
    import importlib.util
    import logging

    own = os.path.join(_PACK_DIR, "cvd_core")
    loaded = sys.modules.get("cvd_core")
    if loaded is not None:
        if os.path.dirname(os.path.abspath(getattr(loaded, "__file__", "") or "")) != own:
            logging.getLogger("cvd-multiview").warning(
                "cvd-multiview: another cvd_core (%s) was imported first; the nodes use it", loaded.__file__)
        return
    spec = importlib.util.spec_from_file_location("cvd_core", os.path.join(own, "__init__.py"),
                                                  submodule_search_locations=[own])
    module = importlib.util.module_from_spec(spec)
    sys.modules["cvd_core"] = module
    spec.loader.exec_module(module)


_use_own_core()

if __package__:  # imported as a package, as ComfyUI does
    from .nodes import build_mappings, register_routes, sweep_crash_leftovers  # noqa: E402
else:  # imported as a plain module (pytest collecting the repository root)
    from nodes import build_mappings, register_routes, sweep_crash_leftovers  # noqa: E402

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings()
register_routes()  # GET /cvd/memory (model management's view), POST /cvd/keyframes (the camera editor)
sweep_crash_leftovers()  # what a killed server left half-written (nothing outside ComfyUI)
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
