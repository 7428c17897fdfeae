"""Long multi-view videos with context windows: time per generated frame and peak memory against the length.

    .venv/bin/python benchmarks/bench_long_video.py [--frames 16 32 64 128] [--views 4] [--size 64]
        [--width 32] [--context 16] [--overlap 4] [--steps 4] [--repeats 3] [--json out.json]

Each length runs in its own process (so its peak is its own): the tests' tiny CVD network (``--width`` 32; 320
is SD1.5's top width at every level), a circle rig, MCM with ``--steps`` steps at cfg 1 (the long-video
workflow's setting), windows ``--context``/``--overlap`` (standard_static, pyramid). Reported per length:
seconds of sampling per generated frame (wall clock, and the process's CPU time, which a loaded machine
disturbs less with one thread), and the peak RSS during sampling above the RSS before it (Linux's
VmHWM, reset through /proc/self/clear_refs) minus the latent-sized tensors the loop keeps (latents, the
branch sums, the prediction and the scheduler's outputs: 8 copies of V x 4 x F x h x w float32). The ratios
are medians over ``--repeats`` runs per length (lengths interleaved), taken against ``--baseline`` frames (32)
of the same run: with windows both should stay near
(windows per frame) / (windows per frame at the baseline), since a window's rows do not grow with the length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LATENT_COPIES = 8  # latents, cond sum, eps, x0, prev sample, step noise, window part, spare


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _one(args) -> dict:
    """One length in this process: build everything, reset the peak, sample, read the peak."""
    import torch

    from cvd_core.camera import make_preset_rig
    from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
    from cvd_core.mcm import MCMScheduler
    from cvd_core.sampling import CollaborativeDenoiser, PairingPlan, initial_noise, multiview_loop
    from cvd_core.sampling.context import ContextOptions
    from cvd_core.sampling.window_inputs import WindowCameras
    from nodes.sampling import camera_inputs

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_tiny_cvd_files(tmp, seed=0, width=args.width, single_file=True)
        model = load_cvd_model(**files, dtype="fp32", device="cpu")
    frames, size = args.one, args.size
    rig = make_preset_rig("circle", args.views, frames, size, size)
    _, fundamentals = camera_inputs(rig, maps=False)
    cond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    x = initial_noise(0, args.views, 4, frames, size // 8, size // 8)
    context = ContextOptions(args.context, args.overlap)
    denoiser = CollaborativeDenoiser(model, cond, None, None, fundamentals, PairingPlan(args.views, "random", 0), 1.0,
                                     max_batch=None, context=context, cameras=WindowCameras.from_rig(rig))
    sched = MCMScheduler(steps=args.steps)
    windows = len(context.windows(frames)) if context.active(frames) else 1
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _rss_kib("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    out = multiview_loop(denoiser, x, sched, seed=0)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = _rss_kib("VmHWM")
    latent_kib = LATENT_COPIES * out.numel() * 4 / 1024
    return {"frames": frames, "windows": windows, "seconds": seconds, "seconds_per_frame": seconds / frames,
            "cpu_seconds_per_frame": cpu_seconds / frames,
            "peak_above_base_mib": (peak - base) / 1024, "latents_mib": latent_kib / 1024,
            "peak_minus_latents_mib": (peak - base - latent_kib) / 1024, "finite": bool(torch.isfinite(out).all())}


def _median_row(runs) -> dict:
    """The median of every figure over the repeats of one length (the runs' own values are kept too)."""
    row = dict(runs[0])
    for key in ("seconds", "seconds_per_frame", "cpu_seconds_per_frame", "peak_above_base_mib",
                "peak_minus_latents_mib"):
        row[key] = statistics.median(r[key] for r in runs)
    row["runs"] = runs
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--baseline", type=int, default=32)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one length
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args)))
        return 0
    runs = {frames: [] for frames in args.frames}
    for repeat in range(args.repeats):  # lengths interleaved: a load change on the machine hits them all
        for frames in args.frames:
            child = [sys.executable, __file__, "--one", str(frames)] + [
                f"--{k}={getattr(args, k)}" for k in ("views", "size", "width", "context", "overlap", "steps",
                                                      "threads")]
            done = subprocess.run(child, capture_output=True, text=True, check=True, cwd=ROOT)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            runs[frames].append(r)
            print(f"[{repeat + 1}/{args.repeats}] F={frames:4d}: {r['windows']:2d} windows, {r['seconds']:7.2f} s, "
                  f"{r['seconds_per_frame']:.3f} s/frame ({r['cpu_seconds_per_frame']:.3f} CPU s), peak above base "
                  f"{r['peak_above_base_mib']:.1f} MiB (latents {r['latents_mib']:.2f} MiB)", flush=True)
    rows = [_median_row(runs[frames]) for frames in args.frames]
    base = next((r for r in rows if r["frames"] == args.baseline), rows[0])
    for r in rows:
        r["time_per_frame_ratio"] = r["seconds_per_frame"] / base["seconds_per_frame"]
        r["cpu_time_per_frame_ratio"] = r["cpu_seconds_per_frame"] / base["cpu_seconds_per_frame"]
        r["memory_ratio"] = r["peak_minus_latents_mib"] / max(base["peak_minus_latents_mib"], 1e-9)
        print(f"F={r['frames']:4d} vs {base['frames']}: time/frame x{r['time_per_frame_ratio']:.3f} "
              f"(CPU time/frame x{r['cpu_time_per_frame_ratio']:.3f}), "
              f"peak - latents x{r['memory_ratio']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
