"""Benchmark: MCM few-step vs DDIM, and the collaborative sampler's per-step cost vs views.

1. Wall time of the same multi-view job with 25-step DDIM (CFG 8.5) and 4-step MCM (guidance 1),
   in one process. Expected ratio ≈ (25 × 2 rows) / (4 × 1 row) = 12.5 minus fixed costs (CFG
   doubles DDIM's rows; MCM has none).
2. Per-step cost for N = 1, 2, 4, 8 views with ``random`` (≈ linear in N) and ``all_pairs``
   (≈ quadratic: N(N-1)/2 pairs) pairing.

The denoiser is any object with ``predict_noise`` (the fixture contract). By default the script
builds a CVD model with random weights through ``cvd_core.cvd.write_tiny_cvd_files`` +
``load_cvd_model`` (``--width`` 32 = tiny, 320 = SD1.5 width for every level). Cameras come from
``cvd_core.camera.make_preset_rig("circle", ...)``.

Usage: ``python benchmarks/bench_mcm.py [--width 32] [--frames 16] [--size 64] [--device cpu]
[--dtype float32] [--views 1 2 4 8] [--out results.json]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvd_core.camera import make_preset_rig, pair_fundamentals, plucker_embedding  # noqa: E402
from cvd_core.mcm import MCMScheduler  # noqa: E402
from cvd_core.sampling import DDIMScheduler, initial_noise, sample_multiview  # noqa: E402


def build_model(width: int, device: str, dtype: torch.dtype, folder: Path):
    """A CVD denoiser with random weights at the given width (tiny files written to ``folder``)."""
    from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
    paths = write_tiny_cvd_files(folder, seed=0, width=width)
    return load_cvd_model(**paths, dtype=dtype, device=device)


def text_width(model) -> int:
    """Cross-attention width, read from the first cross-attention key projection."""
    for name, module in model.named_modules():
        if name.endswith("attn2.to_k"):
            return module.in_features
    raise ValueError("no cross-attention (attn2.to_k) found in the denoiser")


class Job:
    """Inputs of one multi-view generation: cameras, Plücker, F, text, start noise."""

    def __init__(self, views: int, frames: int, size: int, text_dim: int, seed: int = 0):
        rig = make_preset_rig("circle", views=views, frames=frames, width=size, height=size)
        self.plucker = plucker_embedding(rig.K, rig.c2w, size, size).float()  # [V, F, 6, H, W]
        self.plucker = self.plucker.permute(0, 2, 1, 3, 4).contiguous()  # [V, 6, F, H, W]
        self.fundamentals = {(i, j): pair_fundamentals(rig, i, j).float()
                             for i in range(views) for j in range(views) if i != j}
        g = torch.Generator().manual_seed(seed)
        self.cond = torch.randn(1, 77, text_dim, generator=g)
        self.uncond = torch.randn(1, 77, text_dim, generator=g)
        self.latents = initial_noise(seed, views, 4, frames, size // 8, size // 8)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(model, job: Job, scheduler, guidance: float, strategy: str, device: str) -> float:
    return timed(lambda: sample_multiview(model, job.latents, job.cond, job.uncond if guidance != 1 else None,
                                          job.plucker, job.fundamentals, scheduler, guidance_scale=guidance,
                                          strategy=strategy, seed=0), device)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="UNet width per level (32 tiny, 320 SD1.5)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--job-views", type=int, default=4, help="views of the DDIM vs MCM job")
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--mcm-steps", type=int, default=4)
    parser.add_argument("--per-step-steps", type=int, default=2, help="steps timed per N (MCM, no CFG)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args.width, args.device, dtype, Path(tmp))
    dim = text_width(model)
    results = {"config": vars(args) | {"out": str(args.out), "device_name": _device_name(args.device)}}

    job = Job(args.job_views, args.frames, args.size, dim)
    run(model, job, MCMScheduler(steps=1), 1.0, "random", args.device)  # warm-up (allocations, kernels)
    ddim = run(model, job, DDIMScheduler(num_inference_steps=args.ddim_steps), 8.5, "random", args.device)
    mcm = run(model, job, MCMScheduler(steps=args.mcm_steps), 1.0, "random", args.device)
    results["ddim_vs_mcm"] = {"views": args.job_views, "ddim_steps": args.ddim_steps, "ddim_s": ddim,
                              "mcm_steps": args.mcm_steps, "mcm_s": mcm, "speedup": ddim / mcm}

    per_step = []
    for n in args.views:
        job = Job(n, args.frames, args.size, dim)
        for strategy in ("random", "all_pairs"):
            try:
                sched = MCMScheduler(steps=args.per_step_steps)
                seconds = run(model, job, sched, 1.0, strategy, args.device) / args.per_step_steps
                per_step.append({"views": n, "strategy": strategy, "s_per_step": seconds})
            except (TypeError, ValueError, AttributeError, RuntimeError) as err:  # e.g. N=1 unsupported
                per_step.append({"views": n, "strategy": strategy, "error": f"{type(err).__name__}: {err}"})
    results["per_step"] = per_step
    print(_markdown(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def _markdown(results: dict) -> str:
    c, d = results["config"], results["ddim_vs_mcm"]
    lines = [f"device {c['device_name']}, {c['dtype']}, width {c['width']}, {c['frames']} frames, "
             f"{c['size']}x{c['size']} px", "",
             "| job | steps | seconds |", "|---|---|---|",
             f"| DDIM, CFG 8.5, {d['views']} views | {d['ddim_steps']} | {d['ddim_s']:.2f} |",
             f"| MCM, guidance 1, {d['views']} views | {d['mcm_steps']} | {d['mcm_s']:.2f} |",
             f"| speed-up | | {d['speedup']:.2f}x |", "",
             "| views | random s/step | all_pairs s/step |", "|---|---|---|"]
    by = {(r["views"], r["strategy"]): r for r in results["per_step"]}
    for n in c["views"]:
        cells = []
        for strategy in ("random", "all_pairs"):
            r = by[(n, strategy)]
            cells.append(f"{r['s_per_step']:.3f}" if "s_per_step" in r else "n/a (" + r["error"][:60] + ")")
        lines.append(f"| {n} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
