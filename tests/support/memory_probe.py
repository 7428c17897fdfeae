"""Watching ComfyUI's model management from outside, over HTTP (``GET /cvd/memory``, ``POST /free``).

Shared by the integration test ``tests/integration/test_memory_management.py`` and the GPU check
``benchmarks/memory_check.py``, so the check that needs a GPU runs the same code CI runs on a CPU.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable, List, Optional, Tuple

MEMORY_ROUTE = "/cvd/memory"


def memory(server) -> dict:
    """Model management's view: loaded models, the pack's models and their bytes (see nodes/_managed.py)."""
    return server.get_json(MEMORY_ROUTE)


def pack_loaded(report: dict) -> List[str]:
    """Kinds of the pack's models that model management has loaded (sorted)."""
    return sorted(m["pack_kind"] for m in report["loaded_models"] if m["pack_kind"])


def loaded_model(report: dict, kind: str) -> Optional[dict]:
    return next((m for m in report["loaded_models"] if m["pack_kind"] == kind), None)


def free(server, clear_cache: bool = False, timeout: float = 30.0) -> dict:
    """``POST /free`` with ``unload_models`` (and ``free_memory``, which also drops ComfyUI's cache of
    node outputs, when ``clear_cache``); waits until no model of the pack is loaded and returns that view."""
    body = json.dumps({"unload_models": True, "free_memory": bool(clear_cache)}).encode()
    status, answer = server._request("POST", "/free", body, {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"POST /free -> HTTP {status}: {answer[:300]!r}")
    deadline = time.monotonic() + timeout
    report = memory(server)
    while pack_loaded(report) and time.monotonic() < deadline:
        time.sleep(0.1)
        report = memory(server)
    if pack_loaded(report):
        raise RuntimeError(f"/free did not unload the pack's models within {timeout:.0f} s: {pack_loaded(report)}")
    return report


def run_polling(server, prompt: dict, interval: float = 0.02, timeout: float = 600.0,
                keep: Optional[Callable[[dict], object]] = None) -> Tuple[dict, list, float]:
    """Run ``prompt`` while a thread polls ``/cvd/memory``: ``(history entry, snapshots, seconds)``.

    ``keep(report)`` reduces each snapshot (default: keep it whole)."""
    snapshots, done = [], threading.Event()

    def poll():
        while not done.is_set():
            try:
                report = memory(server)
                snapshots.append(report if keep is None else keep(report))
            except Exception:  # noqa: BLE001 - a failed poll is only a missing sample
                pass
            time.sleep(interval)

    thread = threading.Thread(target=poll, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        entry = server.run(prompt, timeout=timeout)
    finally:
        done.set()
        thread.join(timeout=10)
    return entry, snapshots, time.monotonic() - started


def saved_latent(server, entry: dict, node: str):
    """The tensor a core ``SaveLatent`` node wrote in this run."""
    from safetensors.torch import load_file

    (item,) = entry["outputs"][node]["latents"]
    return load_file(str(server.output_dir / item["subfolder"] / item["filename"]))["latent_tensor"]
