"""A pytest plugin that measures how close every tolerance check comes to failing.

Load it with ``-p tests.support.tolerance_probe`` and ``CVD_TOLERANCE_LOG=file.jsonl``: every call of
``torch.testing.assert_close``, ``torch.allclose``, ``numpy.allclose`` and
``numpy.testing.assert_allclose`` made from a test file is logged with its call site and its *use*
of the tolerance, ``max(|actual - expected| / (atol + rtol * |expected|))`` (1.0 = exactly at the
bound; exact comparisons with atol = rtol = 0 are logged as 0 or inf). The checks behave exactly as
before. ``scripts/tolerance_margins.py`` runs the core tests under several CPU kernel settings with
this plugin and prints the worst use per call site, which is how the suite's bounds were checked
on one machine against kernels it would not pick by itself (README, Development).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

_LOG = os.environ.get("CVD_TOLERANCE_LOG")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEFAULTS = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7), torch.float16: (1e-3, 1e-5),
             torch.bfloat16: (1.6e-2, 1e-5)}


def _call_site():
    """``file:line`` of the direct caller of the wrapped check when it is test code, else None (the
    library's own internal uses of allclose are not tolerance checks)."""
    frame = sys._getframe(3)  # _call_site <- _record <- wrapper <- caller
    path = frame.f_code.co_filename
    if path.startswith(os.path.join(_ROOT, "tests")) and "tolerance_probe" not in path:
        return f"{os.path.relpath(path, _ROOT)}:{frame.f_lineno}"
    return None


def _use(actual, expected, rtol, atol) -> float:
    a = torch.as_tensor(np.asarray(actual) if not torch.is_tensor(actual) else actual).detach().double().cpu()
    b = torch.as_tensor(np.asarray(expected) if not torch.is_tensor(expected) else expected).detach().double().cpu()
    a, b = torch.broadcast_tensors(a, b)
    both = torch.isfinite(a) & torch.isfinite(b)
    if a.numel() == 0 or not bool(both.any()):
        return 0.0
    error = (a - b).abs()[both]
    allowed = atol + rtol * b.abs()[both]
    if float(allowed.max()) == 0.0:
        return 0.0 if float(error.max()) == 0.0 else float("inf")
    return float((error / allowed.clamp_min(1e-300)).max())


def _record(kind, actual, expected, rtol, atol):
    site = _call_site()
    if site is None:
        return
    try:
        entry = {"site": site, "kind": kind, "use": _use(actual, expected, rtol, atol), "rtol": rtol,
                 "atol": atol, "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]}
    except Exception as exc:  # never let the probe change a test's outcome
        entry = {"site": site, "kind": kind, "error": repr(exc)}
    with open(_LOG, "a") as log:
        log.write(json.dumps(entry) + "\n")


def _wrap_assert_close(original):
    def assert_close(actual, expected, *args, rtol=None, atol=None, **kwargs):
        result = original(actual, expected, *args, rtol=rtol, atol=atol, **kwargs)  # raises when it fails
        if torch.is_tensor(expected):
            default_rtol, default_atol = _DEFAULTS.get(expected.dtype, (0.0, 0.0))
        else:
            default_rtol, default_atol = _DEFAULTS[torch.float64]
        _record("assert_close", actual, expected, default_rtol if rtol is None else rtol,
                default_atol if atol is None else atol)
        return result
    return assert_close


def _wrap_allclose(original, kind, default_rtol, default_atol):
    def allclose(a, b, rtol=default_rtol, atol=default_atol, *args, **kwargs):
        result = original(a, b, rtol, atol, *args, **kwargs)
        if result:  # a check that fails fails its test; "assert not allclose(...)" uses are not bounds
            _record(kind, a, b, rtol, atol)
        return result
    return allclose


def pytest_configure(config):
    if not _LOG:
        return
    torch.testing.assert_close = _wrap_assert_close(torch.testing.assert_close)
    torch.allclose = _wrap_allclose(torch.allclose, "torch.allclose", 1e-5, 1e-8)
    np.allclose = _wrap_allclose(np.allclose, "np.allclose", 1e-5, 1e-8)
    original = np.testing.assert_allclose

    def assert_allclose(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
        result = original(actual, desired, rtol, atol, *args, **kwargs)
        _record("np.assert_allclose", actual, desired, rtol, atol)
        return result

    np.testing.assert_allclose = assert_allclose
