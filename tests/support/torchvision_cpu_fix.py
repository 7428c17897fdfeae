"""Make the PyPI ``torchvision`` wheel importable beside a CPU-only ``torch``.

The only torchvision wheel on PyPI for torch 2.13 is a CUDA build. Its compiled ``_C`` fails to
load next to CPU torch (harmless), but ``torchvision/_meta_registrations.py`` then registers fake
kernels for ``torchvision::nms``/``qnms`` and dies with ``operator torchvision::nms does not
exist``. ComfyUI imports torchvision at start-up, so the test server would not start.

This module is installed into the *test* virtual environment's site-packages together with a
one-line ``.pth`` file that imports it at interpreter start. It puts a finder on ``sys.meta_path``
that, on the first ``import torchvision`` with a CPU build of torch, defines the two missing
operator schemas (so the registrations succeed) and then steps aside. Transforms, models and io
work afterwards; only the compiled ``torchvision.ops`` kernels are unavailable.
It is test tooling only: the node pack itself never needs torchvision.
"""

from __future__ import annotations

import importlib.abc
import sys

_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_libraries = []  # keep the Library objects alive for the life of the process


def _define_missing_schemas() -> None:
    import torch

    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        return  # a GPU build of torch loads torchvision's real kernels
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_SCHEMAS:
        try:
            library.define(schema)
        except RuntimeError:
            pass  # already defined (a real CPU torchvision build, or a second call)
    _libraries.append(library)


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)  # one shot: never intercept again
        try:
            _define_missing_schemas()
        except Exception:  # never break interpreter start-up over a test convenience
            pass
        return None  # let the normal import machinery load torchvision


def install() -> None:
    if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())
