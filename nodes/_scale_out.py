"""The sampler's ``devices`` setting -> a row executor; the worker pool of this ComfyUI server.

``executor_for(model, devices)`` returns None for the default (the ComfyUI device only: the
sampler's single-device path, unchanged), a ``ThreadedExecutor`` over local replicas, or a
``DistributedExecutor`` when ``devices`` names ``workers``.

Workers join this server when it is started with ``CVD_DIST_LISTEN=host:port`` (e.g.
``0.0.0.0:29650``): the pool listens there from the moment the pack is imported, hosts the job
store on the next port (``CVD_DIST_STORE_PORT``), and survives worker restarts (a fresh process
group per job). ``CVD_DIST_TIMEOUT`` (s, default 600) bounds every wait for a worker's answer,
``CVD_DIST_LOAD_TIMEOUT`` (s, default 600) the model loading on the workers, and
``CVD_DIST_BACKEND`` (gloo or nccl) overrides the automatic choice (nccl when every rank computes
on CUDA, gloo otherwise).

Access: ``CVD_DIST_TOKEN`` (or ``CVD_DIST_TOKEN_FILE``) is the shared secret every worker must prove
it holds; without one the pool listens on a loopback address only, unless ``CVD_DIST_INSECURE=1``.
See docs/security.md.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from cvd_core.parallel.auth import load_token
from cvd_core.parallel.cluster import DEFAULT_PORT, WorkerPool
from cvd_core.parallel.control import parse_address
from cvd_core.parallel.devices import DeviceSpecError, parse_devices
from cvd_core.parallel.distributed import DistributedExecutor
from cvd_core.parallel.threaded import ThreadedExecutor

from ._comfy import LOG, NodeInputError
from ._replicas import model_recipe, replicas_for

_POOL: Optional[WorkerPool] = None
_POOL_LOCK = threading.Lock()


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        LOG.warning("cvd-multiview: %s=%r is not a number of seconds; using %s", name, value, default)
        return default


def worker_pool() -> Optional[WorkerPool]:
    """This server's worker pool, started on first use when ``CVD_DIST_LISTEN`` is set (else None)."""
    global _POOL
    listen = os.environ.get("CVD_DIST_LISTEN", "").strip()
    if not listen:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            host, port = parse_address(listen, DEFAULT_PORT)
            store_port = int(os.environ.get("CVD_DIST_STORE_PORT", "0") or 0) or None
            _POOL = WorkerPool(host, port, store_port,
                               heartbeat_timeout=_env_seconds("CVD_DIST_HEARTBEAT_TIMEOUT", 30.0),
                               token=load_token(),
                               hello_timeout=_env_seconds("CVD_DIST_HELLO_TIMEOUT", 5.0)).start()
        return _POOL


def start_pool_from_environment() -> None:
    """Called at import: workers can join before the first job. Never stops ComfyUI from starting."""
    try:
        worker_pool()
    except Exception as exc:
        LOG.error("cvd-multiview: CVD_DIST_LISTEN=%r: could not listen for sampler workers: %s",
                  os.environ.get("CVD_DIST_LISTEN"), exc)


def executor_for(cvd_model, model, devices: str):
    """The row executor for the sampler's ``devices`` input (None = the default single-device path).

    ``cvd_model``: the socket value (a ComfyUI ``ModelPatcher`` inside ComfyUI, which names the replicas'
    cache and carries the MCM LoRA chain); ``model``: its module as ComfyUI loaded it for this run
    (``_managed.compute_model``), which replicas copy, patches applied."""
    try:
        plan = parse_devices(devices)
    except DeviceSpecError as exc:
        raise NodeInputError(f"devices: {exc}") from None
    local = plan.local_devices(model.device)
    if not plan.use_workers:
        if local == [model.device]:
            return None
        return ThreadedExecutor(replicas_for(cvd_model, model, local))
    try:
        pool = worker_pool()
    except (ValueError, OSError) as exc:  # AuthError is a ValueError, as is a bad CVD_DIST_LISTEN
        raise NodeInputError(f"devices: 'workers': this server cannot listen for workers ({exc})") from None
    if pool is None:
        raise NodeInputError("devices: 'workers' needs this ComfyUI started with CVD_DIST_LISTEN=host:port (e.g. "
                             "0.0.0.0:29650) and workers started with python -m cvd_core.parallel.worker; see "
                             "docs/scaling.md")
    return DistributedExecutor(replicas_for(cvd_model, model, local), pool, lambda: model_recipe(cvd_model, model),
                               timeout_s=_env_seconds("CVD_DIST_TIMEOUT", 600.0),
                               load_timeout_s=_env_seconds("CVD_DIST_LOAD_TIMEOUT", 600.0),
                               backend=os.environ.get("CVD_DIST_BACKEND") or None)


start_pool_from_environment()
