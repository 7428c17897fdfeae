"""The device/dtype matrix of the core tests (``CVD_TEST_DEVICE``, ``CVD_TEST_DTYPES``).

A test that takes ``compute_device`` runs once per device kind (ids ``cpu``, ``cuda``): the one
``CVD_TEST_DEVICE`` selects computes, the other skips with a message naming the variable. A test
that takes ``half_dtype`` also runs once per half precision (ids ``bf16``, ``fp16``), skipped where
``CVD_TEST_DTYPES`` (default: what the device supports) leaves it out. See ``tests/support/devices.py``.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import devices


def pytest_configure(config):
    config.addinivalue_line("markers", "device_matrix: computes on compute_device (the GPU check runs these "
                                       "with CVD_TEST_DEVICE=cuda: pytest -m device_matrix)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "compute_device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device_matrix)


def pytest_generate_tests(metafunc):
    if "compute_device" in metafunc.fixturenames:
        metafunc.parametrize("compute_device", devices.DEVICE_KINDS, indirect=True, ids=devices.DEVICE_KINDS)
    if "half_dtype" in metafunc.fixturenames:
        metafunc.parametrize("half_dtype", devices.HALF_NAMES, indirect=True, ids=devices.HALF_NAMES)


@pytest.fixture(scope="session")
def compute_device(request) -> torch.device:
    """The torch device this variant computes on (fp32 strict on CUDA), or a skip."""
    device, reason = devices.device_for_kind(request.param)
    if reason:
        pytest.skip(reason)
    if device.startswith("cuda"):
        missing = devices.cuda_unavailable_reason()
        if missing:
            pytest.fail(missing)
        devices.strict_fp32(device)
    return torch.device(device)


@pytest.fixture(scope="session")
def half_dtype(request, compute_device) -> torch.dtype:
    """bf16 or fp16 where ``CVD_TEST_DTYPES`` selects it for ``compute_device``, else a skip."""
    reason = devices.dtype_skip_reason(request.param, compute_device.type)
    if reason:
        pytest.skip(reason)
    return devices.DTYPES[request.param]


@pytest.fixture(scope="session")
def fp32_selected(compute_device) -> None:
    """Skip fp32 tests where ``CVD_TEST_DTYPES`` leaves fp32 out (e.g. a half-only run)."""
    reason = devices.dtype_skip_reason("fp32", compute_device.type)
    if reason:
        pytest.skip(reason)
