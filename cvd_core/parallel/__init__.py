"""Scaling the collaborative sampler out: several local devices, and ``torch.distributed`` ranks.

- ``devices.parse_devices``: the sampler's ``devices`` setting (``cuda:0,cuda:1``, ``all``,
  ``cpu,cpu``, ``workers``);
- ``replicas.replica_on``: a copy of a model on another device (weights copied once, straight there);
- ``threaded.ThreadedExecutor``: each step's rows over local replicas, a thread per device;
- ``cluster.WorkerPool`` / ``distributed.DistributedExecutor``: the server's side of a worker
  cluster, a fresh process group per job; ``worker`` is the worker process
  (``python -m cvd_core.parallel.worker``); ``recipe``: how a worker rebuilds the exact model.

All of them plug into ``sample_multiview(executor=...)`` (``cvd_core.sampling.executor``).
"""

from .devices import DevicePlan, DeviceSpecError, parse_devices
from .replicas import replica_on
from .threaded import ThreadedExecutor

__all__ = ["DevicePlan", "DeviceSpecError", "ThreadedExecutor", "parse_devices", "replica_on"]
