"""Free-memory probes and activation-size estimates used by the "auto" tiling mode."""

from __future__ import annotations

import torch

# Without psutil or /proc/meminfo we assume this much is free on the CPU.
FALLBACK_CPU_BUDGET = 4 << 30
# Fractions of the free memory one tile may use (the rest: output buffers, fragmentation).
CUDA_FRACTION = 0.7
CPU_FRACTION = 0.5
# Peak activation bytes per (channel x frame x pixel) of the widest full-resolution stage,
# in units of the dtype size. Measured peak on CPU fp32 (benchmarks/bench_cvvae.py) is ~6x for
# decode and ~5x for encode; 8 leaves headroom for allocator slack.
ACTIVATION_MULTIPLIER = 8.0


def _cpu_available_bytes() -> int:
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_CPU_BUDGET


def usable_bytes(free_bytes: int, device: torch.device) -> int:
    """The part of ``free_bytes`` on ``device`` one tile may use (the rest: outputs, fragmentation)."""
    fraction = CUDA_FRACTION if torch.device(device).type == "cuda" else CPU_FRACTION
    return int(max(int(free_bytes), 0) * fraction)


def free_memory_bytes(device: torch.device) -> int:
    """Bytes a new computation on ``device`` may use (already scaled by a safety fraction).

    A caller with its own memory accounting (ComfyUI's, after it offloaded other models) passes
    ``usable_bytes(its free bytes, device)`` to encode/decode as ``memory_budget`` instead.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return usable_bytes(free + max(cached, 0), device)
    return usable_bytes(_cpu_available_bytes(), device)


def estimate_tile_bytes(channels: int, frames: int, height: int, width: int, dtype: torch.dtype) -> int:
    """Rough peak bytes of one encoder/decoder call whose widest full-resolution activation has
    ``channels`` channels over ``frames`` x ``height`` x ``width`` pixels."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(ACTIVATION_MULTIPLIER * channels * frames * height * width * itemsize)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA OOM and the CPU allocator's "can't allocate memory" failures."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if oom_types and isinstance(error, oom_types):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_cached_memory(device: torch.device) -> None:
    """Return freed blocks to the device after a failed attempt."""
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
