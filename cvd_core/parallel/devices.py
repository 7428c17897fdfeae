"""The ``devices`` setting of the multi-view sampler: which local devices run the denoiser rows.

Grammar (comma-separated, spaces ignored, case-insensitive):

- ``''`` (empty): the default device only (ComfyUI's compute device; the sampler's old path);
- ``cpu``, ``cuda``/``cuda:N``, ``mps``: one replica per entry; ``cuda`` alone means ``cuda:0``;
- ``all``: every CUDA GPU torch sees (an error where there is none);
- ``workers``: also every ``torch.distributed`` worker connected to this server (see
  ``cvd_core.parallel.cluster``); it adds remote ranks, not a local device, and a job with no
  worker connected runs on the local devices alone.

``cpu`` may repeat (``cpu,cpu`` = two threads sharing the CPU's cores, which is how a machine
without GPUs tests the multi-device path); a GPU may not (one replica per GPU is all a GPU can use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

WORKERS = "workers"
ALL_GPUS = "all"


class DeviceSpecError(ValueError):
    """A ``devices`` string that cannot be used on this machine; the message says why."""


@dataclass(frozen=True)
class DevicePlan:
    """The parsed setting: local devices (empty = the default device only) and whether to use workers."""

    devices: tuple
    use_workers: bool

    def local_devices(self, default: torch.device) -> List[torch.device]:
        return list(self.devices) or [torch.device(default)]


def _cuda_count() -> int:
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver reads as no GPU
        return 0


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _one(token: str, cuda_count: int) -> List[torch.device]:
    if token == ALL_GPUS:
        if cuda_count == 0:
            raise DeviceSpecError("'all' means every CUDA GPU, but torch sees none here (no GPU, or a CPU-only "
                                  "torch build); leave devices empty for the default device, or use e.g. cpu,cpu")
        return [torch.device("cuda", i) for i in range(cuda_count)]
    if token == "cpu":
        return [torch.device("cpu")]
    if token == "mps":
        if not _mps_available():
            raise DeviceSpecError("'mps' is not available on this machine")
        return [torch.device("mps")]
    if token == "cuda" or token.startswith("cuda:"):
        index_text = token[5:] if token.startswith("cuda:") else "0"
        if not index_text.isdigit():
            raise DeviceSpecError(f"'{token}' is not a device: write cuda:N with N a GPU index (cuda:0, cuda:1)")
        index = int(index_text)
        if cuda_count == 0:
            raise DeviceSpecError(f"'{token}' needs a CUDA GPU, but torch sees none here (no GPU, or a CPU-only "
                                  "torch build)")
        if index >= cuda_count:
            raise DeviceSpecError(f"'{token}' does not exist: torch sees {cuda_count} GPU(s), "
                                  f"cuda:0 to cuda:{cuda_count - 1}")
        return [torch.device("cuda", index)]
    raise DeviceSpecError(f"unknown device '{token}': use cpu, cuda:N, mps, all (every GPU) or workers, "
                          "comma-separated (e.g. cuda:0,cuda:1)")


def parse_devices(text: Optional[str], cuda_count: Optional[int] = None) -> DevicePlan:
    """Parse and check a ``devices`` string (see the module doc); raises ``DeviceSpecError``."""
    if text is None:
        return DevicePlan((), False)
    if not isinstance(text, str):
        raise DeviceSpecError(f"devices must be a string such as 'cuda:0,cuda:1', got {type(text).__name__}")
    count = _cuda_count() if cuda_count is None else int(cuda_count)
    tokens = [t.strip().lower() for t in text.split(",")]
    if tokens == [""]:
        return DevicePlan((), False)
    if any(t == "" for t in tokens):
        raise DeviceSpecError(f"devices {text!r} has an empty entry: separate devices by single commas")
    devices: List[torch.device] = []
    use_workers = False
    for token in tokens:
        if token == WORKERS:
            if use_workers:
                raise DeviceSpecError(f"devices {text!r} names 'workers' twice")
            use_workers = True
            continue
        devices += _one(token, count)
    seen = set()
    for device in devices:
        if device.type != "cpu" and device in seen:
            raise DeviceSpecError(f"devices {text!r} lists {device} twice: one replica per GPU (only cpu may repeat)")
        seen.add(device)
    return DevicePlan(tuple(devices), use_workers)


def describe(devices: Sequence[torch.device]) -> str:
    return ",".join(str(d) for d in devices)
