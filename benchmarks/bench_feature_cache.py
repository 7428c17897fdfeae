"""Cost and effect of the RepVideo feature cache on the CVD backbone (random weights).

Usage: python benchmarks/bench_feature_cache.py [--width 64] [--views 2] [--frames 8] [--size 128]
       [--repeats 5] [--device cpu|cuda] [--dtype fp32]

Measures, for the unpatched backbone and a few enhancer settings (the node defaults and stronger ones):
- step time: one ``predict_noise`` call (CFG batch, 2 rows per view), median of ``--repeats`` calls,
  the variants interleaved call by call so that machine load hits them alike; reported as the ratio
  to the unpatched median of the same run;
- peak memory of one step: CUDA ``max_memory_allocated`` per variant; on CPU the peak of the
  allocations made during the step, replayed from the profiler's memory record (weights excluded);
- feature consistency (RepVideo's diagnostic): mean cosine similarity of adjacent-frame features (per
  spatial token, over channels) at the outputs of a few layers, and of consecutive layers' outputs,
  with inputs that are temporally correlated like a video latent.

Widths are equal on every level (``write_tiny_cvd_files``); ``--width 320`` is SD1.5's first level.
A GPU section runs only with ``--device cuda`` and CUDA present; otherwise it is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cvd_core.cvd import load_cvd_model, resolve_dtype, write_tiny_cvd_files  # noqa: E402
from cvd_core.cvd.network import module_with_feature_cache  # noqa: E402
from cvd_core.feature_cache import FeatureCacheConfig  # noqa: E402

NODE_DEFAULTS = dict(window=6, mode="fixed", strength=0.1, block_start=7, block_end=19, start_percent=0.0,
                     end_percent=0.6, apply_to="both", token_scope="all", preserve_norm=True)
VARIANTS: Dict[str, Optional[dict]] = {
    "unpatched": None,
    "node defaults (0.1, blocks 7-19)": {},
    "strength 0.3, blocks 7-19": dict(strength=0.3),
    "strength 0.3, all blocks, sliding": dict(strength=0.3, block_start=0, block_end=-1, mode="sliding"),
    "motion modules, node defaults": dict(target="motion_modules"),
    "motion modules, strength 0.3": dict(strength=0.3, target="motion_modules"),
}
# layer outputs probed (ComfyUI numbering), all after the first blend of the default range (block 9):
# down level 3 layer 0, mid, up level 1 layer 1, up level 2 layer 1
PROBES = {"down 10": ("down", 3, 0), "mid 12": ("mid", 0, 0), "up 17": ("up", 1, 1), "up 20": ("up", 2, 1)}
TIMESTEP = 500  # schedule fraction 0.5: inside the default 0..0.6 range


def _config(overrides: Optional[dict]) -> Optional[FeatureCacheConfig]:
    if overrides is None:
        return None
    knobs = {key: value for key, value in overrides.items() if key != "target"}
    return FeatureCacheConfig(**{**NODE_DEFAULTS, **knobs})


def _patched(base, overrides: Optional[dict]):
    if overrides is None:
        return base
    return module_with_feature_cache(base, _config(overrides), target=overrides.get("target", "layers"))


def _inputs(views: int, frames: int, size: int, seed: int = 0):
    """CFG batch (uncond, cond per view), views paired (0,1), (2,3), ...; frames correlated like a video."""
    g = torch.Generator().manual_seed(seed)
    batch, h = 2 * views, size // 8
    base = torch.randn(batch, 4, 1, h, h, generator=g)
    drift = torch.randn(batch, 4, frames, h, h, generator=g).cumsum(dim=2) * 0.5
    latents = base + drift
    plucker = torch.randn(batch, 6, 1, size, size, generator=g).expand(-1, -1, frames, -1, -1).contiguous()
    plucker = plucker + 0.05 * torch.randn(batch, 6, frames, size, size, generator=g)
    f_mats = 1e-3 * torch.randn(batch, frames, 3, 3, generator=g)
    f_mats[:, 0] = 0
    partner = torch.tensor([2 * (v ^ 1) + c for v in range(views) for c in (0, 1)])
    text = torch.randn(batch, 77, 768, generator=g)
    return latents, text, plucker, f_mats, partner


def _predict(model, inputs, device):
    latents, text, plucker, f_mats, partner = inputs
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.predict_noise(latents, torch.tensor(TIMESTEP), text, plucker, f_mats, partner)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _probe_modules(model):
    unet = model.unet.unet
    modules = {}
    for name, (part, block, layer) in PROBES.items():
        if part == "mid":
            modules[name] = unet.mid_block.resnets[-1]  # the network calls the mid block's parts, not the block
        else:
            blocks = unet.down_blocks if part == "down" else unet.up_blocks
            modules[name] = blocks[block].epi_modules[layer]  # the last module of the layer
    return modules


def _adjacent_frame_cosine(x: torch.Tensor) -> float:
    """Mean cosine of the channel vectors at the same token in frames f and f+1 ([b c f h w])."""
    x = x.float()
    return float(torch.nn.functional.cosine_similarity(x[:, :, 1:], x[:, :, :-1], dim=1).mean())


def _consistency(model, inputs) -> Dict[str, float]:
    captured = {}
    hooks = [module.register_forward_hook(lambda _m, _a, out, name=name: captured.__setitem__(name, out))
             for name, module in _probe_modules(model).items()]
    # every layer output for the cross-layer similarity: the CVSM ends each down/up layer
    layer_outputs: List[torch.Tensor] = []
    unet = model.unet.unet
    for block in list(unet.down_blocks) + list(unet.up_blocks):
        for module in block.epi_modules:
            hooks.append(module.register_forward_hook(lambda _m, _a, out: layer_outputs.append(out)))
    try:
        latents, text, plucker, f_mats, partner = inputs
        model.predict_noise(latents, TIMESTEP, text, plucker, f_mats, partner)
    finally:
        for hook in hooks:
            hook.remove()
    result = {f"frame cos {name}": round(_adjacent_frame_cosine(out), 4) for name, out in captured.items()}
    pairs = [(a, b) for a, b in zip(layer_outputs, layer_outputs[1:]) if a.shape == b.shape]
    result["layer cos (same-shape consecutive layers)"] = round(statistics.mean(
        float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).mean()) for a, b in pairs), 4)
    return result


def _cpu_peak_bytes(model, inputs) -> int:
    """Peak of the memory allocated during one step (bytes above the start), from the profiler's record.

    Op events carry their own allocations (``self_cpu_memory_usage``, at the op's start) and the
    ``[memory]`` events the frees between ops; replayed in time order, the running sum's maximum is
    the step's peak: activations, attention scores and the cache, not the weights.
    """
    from torch.profiler import ProfilerActivity, profile

    latents, text, plucker, f_mats, partner = inputs
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model.predict_noise(latents, TIMESTEP, text, plucker, f_mats, partner)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def run(args, files: Dict[str, str], device: torch.device) -> dict:
    dtype = resolve_dtype(args.dtype, device)
    base = load_cvd_model(**files, dtype=dtype, device=device)
    models = {name: _patched(base, over) for name, over in VARIANTS.items()}
    inputs = _inputs(args.views, args.frames, args.size)
    for model in models.values():  # warm-up (first-call allocations, kernels)
        _predict(model, inputs, device)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(_predict(model, inputs, device))
    plain = statistics.median(times["unpatched"])
    report = {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "variants": {}}
    for name, model in models.items():
        entry = {"median_s": round(statistics.median(times[name]), 3),
                 "time_ratio": round(statistics.median(times[name]) / plain, 3),
                 "min_time_ratio": round(min(times[name]) / min(times["unpatched"]), 3)}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            _predict(model, inputs, device)
            entry["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        elif not args.skip_memory:
            entry["peak_mib"] = round(_cpu_peak_bytes(model, inputs) / 2**20, 2)
        entry.update(_consistency(model, inputs))
        report["variants"][name] = entry
    for key in ("peak_gib", "peak_mib"):
        if key in report["variants"]["unpatched"]:
            for entry in report["variants"].values():
                entry["peak_ratio"] = round(entry[key] / report["variants"]["unpatched"][key], 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true", help="CPU: skip the (slow) profiled memory runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
                      "torch": torch.__version__, "width": args.width, "views": args.views,
                      "frames": args.frames, "size": args.size, "repeats": args.repeats,
                      "maxrss_before_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"gpu": "skipped: CUDA is not available on this machine"}))
        return
    with tempfile.TemporaryDirectory() as folder:
        files = write_tiny_cvd_files(folder, seed=0, width=args.width, cross_attention_dim=768)
        print(json.dumps(run(args, files, device), indent=1), flush=True)


if __name__ == "__main__":
    main()
