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

if __package__:  # imported as a package, as ComfyUI does
    from .nodes import build_mappings, register_routes  # noqa: E402
else:  # imported as a plain module (pytest collecting the repository root)
    from nodes import build_mappings, register_routes  # noqa: E402

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings()
register_routes()  # GET /cvd/memory: model management's view (nothing outside ComfyUI)
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
