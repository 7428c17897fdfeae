"""What the long-video outputs hold in memory: CV-VAE decode and the save node at V x 128 frames.

    .venv/bin/python benchmarks/bench_long_outputs.py [--views 4] [--frames 33 129] [--decode-size 64]
        [--save-size 256] [--json out.json]

Each case runs in a process of its own (its peak is its own: VmHWM minus the RSS just before the call),
once with the pack's current code ("after") and once with the code path it replaced ("before", rebuilt
inside this script), in the same run:

- ``decode``: the tests' tiny CV-VAE (real network, random weights) decodes ``--views`` videos of each
  length at ``--decode-size`` px, auto tiling. Before: ``decode_video`` accumulated the whole video and the
  node converted it to ComfyUI's IMAGE layout with temporaries of the video's size. After:
  ``decode_frames`` converts each finished temporal window into the preallocated IMAGE.
  Reported: peak rise minus the IMAGE result itself. ``decode_stand_in``: the same at ``--save-size`` px
  with a stand-in decoder (nearest upsampling) whose own activations are negligible, so that what is
  left is what the tiler and the node hold.
- ``save``: the save node's path (``nodes.output._split_views`` then ``write_multiview``, mp4 + grid) on
  an IMAGE batch of ``--views`` x length frames at ``--save-size`` px that already exists (ComfyUI holds
  it as the upstream node's output). Before: the finiteness checks took the whole array at once
  (``CHECK_CHUNK_ELEMENTS`` set above the array's size). Reported: peak rise (nothing is unavoidable here
  but one frame at a time).

The ratios (after / before, and longest / shortest length) are the figures; absolute MiB depend on the
allocator.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1 << 20


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class _StandIn:
    """A decoder without activations worth the name (nearest upsampling, 4x in time): what is left of the
    peak is what the tiler and the node hold themselves."""

    latent_channels, decoder_full_res_channels, config = 4, 3, {}

    def __init__(self):
        import torch

        self.device, self.dtype = torch.device("cpu"), torch.float32

    def decode_tile(self, z):
        import torch.nn.functional as F

        video = F.interpolate(z[:, :3], size=(4 * z.shape[2] - 3, 8 * z.shape[3], 8 * z.shape[4]), mode="nearest")
        return video.tanh()


def _decode(args, frames: int, variant: str, stand_in: bool = False) -> dict:
    import torch

    from cvd_core.cvvae import TilingConfig, decode_frames, decode_video, load_cvvae, write_tiny_cvvae

    if stand_in:
        model = _StandIn()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model = load_cvvae(str(write_tiny_cvvae(Path(tmp) / "z4")), dtype="fp32", device="cpu")
    side = (args.save_size if stand_in else args.decode_size) // 8
    z = torch.randn(args.views, 4, (frames - 1) // 4 + 1, side, side, generator=torch.Generator().manual_seed(0))
    model.decode_tile(z[:1, :, :2])  # kernels warmed up before the baseline
    base, started = _status_bytes("VmRSS"), time.perf_counter()
    if variant == "after":
        images = decode_frames(model, z, TilingConfig("auto")).reshape(-1, side * 8, side * 8, 3)
    else:  # the replaced path: whole video, then ((v + 1) / 2).clamp().permute().reshape() as the node did
        video = decode_video(model, z, TilingConfig("auto"))
        images = ((video.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 4, 1)
        images = images.reshape(-1, *images.shape[2:]).cpu().contiguous()
        del video
    seconds = time.perf_counter() - started
    result = images.numel() * images.element_size()
    return {"peak_rise_mib": (_status_bytes("VmHWM") - base) / MIB, "result_mib": result / MIB,
            "held_mib": (_status_bytes("VmHWM") - base - result) / MIB, "seconds": seconds}


def _save(args, frames: int, variant: str) -> dict:
    import torch

    import cvd_core.guards as guards
    from cvd_core.io import write_multiview
    from nodes.output import _split_views

    size = args.save_size
    images = torch.rand(args.views * frames, size, size, 3, generator=torch.Generator().manual_seed(0))
    if variant == "before":
        guards.CHECK_CHUNK_ELEMENTS = images.numel() + 1
    base, started = _status_bytes("VmRSS"), time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        split, labels, _ = _split_views(images, args.views)
        write_multiview(split, out, lambda key: f"clip_{key}", fps=8, format="mp4", labels=labels)
    seconds = time.perf_counter() - started
    peak = (_status_bytes("VmHWM") - base) / MIB
    return {"peak_rise_mib": peak, "input_mib": images.numel() * 4 / MIB, "held_mib": peak, "seconds": seconds}


def _decode_stand_in(args, frames: int, variant: str) -> dict:
    return _decode(args, frames, variant, stand_in=True)


CASES = {"decode": _decode, "decode_stand_in": _decode_stand_in, "save": _save}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--frames", type=int, nargs="+", default=[33, 129])
    parser.add_argument("--decode-size", type=int, default=64)
    parser.add_argument("--save-size", type=int, default=256)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # child mode: case frames variant
    args = parser.parse_args(argv)
    if args.one:
        case, frames, variant = args.one
        print(json.dumps(CASES[case](args, int(frames), variant)))
        return 0
    rows = []
    for case in args.cases:
        for frames in args.frames:
            row = {"case": case, "frames": frames}
            for variant in ("before", "after"):
                child = [sys.executable, __file__, "--one", case, str(frames), variant, f"--views={args.views}",
                         f"--decode-size={args.decode_size}", f"--save-size={args.save_size}"]
                done = subprocess.run(child, capture_output=True, text=True, check=True, cwd=ROOT)
                row[variant] = json.loads(done.stdout.strip().splitlines()[-1])
            row["after_over_before"] = row["after"]["held_mib"] / max(row["before"]["held_mib"], 1e-9)
            rows.append(row)
            print(f"{case:6s} {args.views} views x {frames:3d} frames: held beyond the result/input "
                  f"{row['before']['held_mib']:8.1f} MiB before, {row['after']['held_mib']:8.1f} MiB after "
                  f"(x{row['after_over_before']:.3f}); {row['before']['seconds']:.1f} s vs "
                  f"{row['after']['seconds']:.1f} s", flush=True)
    for case in args.cases:
        short, long = (next(r for r in rows if r["case"] == case and r["frames"] == f)
                       for f in (min(args.frames), max(args.frames)))
        growth = long["after"]["held_mib"] / max(short["after"]["held_mib"], 1e-9)
        print(f"{case:6s} after: held at {long['frames']} frames / at {short['frames']} frames = x{growth:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
