"""CV-VAE benchmarks (issue 3). Not a test: run by hand, paste the table into RESULTS_cvvae.md.

1. Speed: encode and decode of ours (``auto`` tiling, and ``manual`` 128 px tiles / 8-frame
   chunks) against the untiled reference path (``none``: one encoder/decoder call), same
   random weights, full official width config (CVVAEModel defaults, 182 M params), CPU fp32.
2. Peak memory of tiled decode at several lengths (should stay flat) against untiled (grows).
   Each case runs in a fresh subprocess; peak = ru_maxrss during the call minus RSS before it.
3. GPU (skipped without CUDA): fp16 decode throughput at 512x512 and fp16-vs-fp32 max error.

4. ``--official-src DIR`` (a local clone of github.com/AILab-CVC/CV-VAE, never copied): the official
   ``CVVAEModel`` from that checkout on the same weights and input, in default modes on both sides
   (ours ``auto``; the official config's 16-frame chunks and 576 px tiles), encode and decode timed
   in interleaved repetitions (ours, official, ours, ...) in this process; prints every time, the
   median ratio official/ours, the max output difference and the machine's load. Without xformers
   the official attention runs on an SDPA stand-in with its contract (said in the output).

Usage: python benchmarks/bench_cvvae.py [--size 256] [--frames 17] [--mem-size 256] [--tile 128]
       [--mem-frames 17 33 65] [--untiled-max-frames 65] [--skip-speed] [--skip-memory]
       python benchmarks/bench_cvvae.py --official-src ~/src/CV-VAE [--frames 17 --size 256]
       [--repeats 3] [--threads 2] [--device cpu --dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvd_core.cvvae import CVVAEModel, TilingConfig, decode_video, encode_video  # noqa: E402

TILED = TilingConfig("manual", tile_size=128, tile_overlap=0.25, temporal_chunk=8)


def build_full_model(device="cpu", dtype=torch.float32, seed=0, ch=128) -> CVVAEModel:
    """CVVAEModel with random weights (``ch=128``: the official width), materialised without a transient copy."""
    with torch.device("meta"):
        model = CVVAEModel(ch=ch)
    model = model.to_empty(device=device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.ones_like(p) if "norm" in name and name.endswith("weight") else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model.to(dtype=dtype).eval().requires_grad_(False)


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


MEM_WIDTH = 128


def child_memory(frames: int, size: int, mode: str) -> dict:
    """One decode in this (fresh) process; returns peak bytes above the pre-call RSS."""
    model = build_full_model(ch=MEM_WIDTH)
    z = torch.randn(1, 4, 1 + (frames - 1) // 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    tiling = TILED if mode == "tiled" else TilingConfig("none")
    before = _rss_bytes()
    t0 = time.perf_counter()
    out = decode_video(model, z, tiling)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(frames=frames, size=size, mode=mode, peak_gib=(peak - before) / 2**30, seconds=seconds,
                shape=list(out.shape))


def run_child(frames: int, size: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(frames), str(size), mode, "--tile", str(TILED.tile_size),
           "--mem-width", str(MEM_WIDTH)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(frames=frames, size=size, mode=mode, error=(proc.stderr.strip().splitlines() or ["killed"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed(fn, repeats: int = 1):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def speed(frames: int, size: int) -> list:
    model = build_full_model()
    x = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rows = []
    ref_t, ref_post = timed(lambda: encode_video(model, x, TilingConfig("none")))
    z = ref_post.mode()
    ref_dt, ref_x = timed(lambda: decode_video(model, z, TilingConfig("none")))
    rows.append(("none (reference, untiled)", ref_t, ref_dt, 0.0, 0.0))
    for name, tiling in (("auto", TilingConfig("auto")), (f"manual {TILED.tile_size}px/0.25, chunk 8", TILED)):
        et, post = timed(lambda: encode_video(model, x, tiling))
        dt, rec = timed(lambda: decode_video(model, z, tiling))
        rows.append((name, et, dt, (post.mode() - z).abs().max().item(), (rec - ref_x).abs().max().item()))
    return rows


def gpu_section() -> list:
    if not torch.cuda.is_available():
        return ["GPU: skipped (no CUDA device)"]
    lines = [f"GPU: {torch.cuda.get_device_name()}"]
    model32 = build_full_model(device="cuda")
    model16 = build_full_model(device="cuda", dtype=torch.float16)
    z = torch.randn(1, 4, 5, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    decode_video(model16, z, TilingConfig("auto"))  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out16 = decode_video(model16, z, TilingConfig("auto"))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out32 = decode_video(model32, z, TilingConfig("auto"))
    lines.append(f"fp16 decode 17x512x512: {seconds:.2f} s = {17 / seconds:.1f} frames/s; "
                 f"fp16 vs fp32 max abs error {(out16.float() - out32).abs().max().item():.3e}")
    return lines


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(functions: dict, repeats: int, device="cpu") -> dict:
    """Run each function once per round, in turn, ``repeats`` rounds; {name: [seconds...]}.

    Interleaving keeps a ratio meaningful when the machine's speed drifts (other jobs on the cores).
    """
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            _sync(device)
            start = time.perf_counter()
            function()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def count_flops(ours, official, frames: int, size: int) -> dict:
    """Encoder/decoder TFLOP of both implementations (torch's FlopCounterMode on the meta device: no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        mine = type(ours)(**ours.config)
        theirs = type(official)(**{k: v for k, v in official.config.items() if not k.startswith("_")})
    z = torch.empty(1, ours.latent_channels, 1 + (frames - 1) // 4, size // 8, size // 8, device="meta")
    x = torch.empty(1, 3, frames, size, size, device="meta")
    flops = {}
    for name, model in (("ours", mine), ("official", theirs)):
        for part, call in (("encode", lambda: model.encoder(x)), ("decode", lambda: model.decoder(z))):
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                call()
            flops[f"{part}_{name}_tflop"] = round(counter.get_total_flops() / 1e12, 3)
    return flops


def official_comparison(src, frames: int, size: int, repeats: int, device="cpu", dtype=torch.float32,
                        ch: int = 128) -> dict:
    """Ours (default ``auto``) vs the official CVVAEModel from ``src`` (its default chunking/tiling)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import official_code

    official_code.load_official_cvvae_package(src)
    ours = build_full_model(device=device, dtype=dtype, ch=ch)
    official = official_code.official_cvvae_like(ours)
    x = (torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device, dtype)
    results = {"frames": frames, "size": size, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
               "threads": torch.get_num_threads(), "params": sum(p.numel() for p in ours.parameters()),
               "load_before": os.getloadavg()}
    with torch.no_grad():
        z = encode_video(ours, x, TilingConfig("auto")).mode()
        outputs = {}
        encode = {"ours": lambda: outputs.__setitem__("enc_ours", encode_video(ours, x, TilingConfig("auto")).moments),
                  "official": lambda: outputs.__setitem__("enc_official", official.encode(x).latent_dist.parameters)}
        decode = {"ours": lambda: outputs.__setitem__("dec_ours", decode_video(ours, z, TilingConfig("auto"))),
                  "official": lambda: outputs.__setitem__("dec_official", official.decode(z).sample)}
        results["encode_seconds"] = interleaved(encode, repeats, device)
        results["decode_seconds"] = interleaved(decode, repeats, device)
    for part in ("encode", "decode"):
        t = results[f"{part}_seconds"]
        results[f"{part}_ratio_official_over_ours"] = median(t["official"]) / median(t["ours"])
        diff = (outputs[f"{part[:3]}_ours"].float() - outputs[f"{part[:3]}_official"].float()).abs().max().item()
        results[f"{part}_max_abs_diff"] = diff
    results["load_after"] = os.getloadavg()
    results["flops"] = count_flops(ours, official, frames, size)
    results["notes"] = list(official_code.NOTES)
    return results


def print_official(r: dict) -> None:
    print(f"\n## Ours vs official CV-VAE, {r['frames']}x{r['size']}x{r['size']}, {r['device']} {r['dtype']}, "
          f"{r['params'] / 1e6:.1f} M params, {r['threads']} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in r['load_before'])} -> {' '.join(f'{v:.1f}' for v in r['load_after'])}\n")
    print("| part | ours s (each) | official s (each) | ours median | official median | official / ours | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for part in ("encode", "decode"):
        t = r[f"{part}_seconds"]
        print(f"| {part} | {', '.join(f'{v:.1f}' for v in t['ours'])} | {', '.join(f'{v:.1f}' for v in t['official'])} "
              f"| {median(t['ours']):.2f} | {median(t['official']):.2f} | {r[f'{part}_ratio_official_over_ours']:.2f}x "
              f"| {r[f'{part}_max_abs_diff']:.2e} |")
    f = r.get("flops", {})
    if f:
        print(f"\nFLOPs (FlopCounterMode): encode ours {f['encode_ours_tflop']} / official {f['encode_official_tflop']} "
              f"TFLOP, decode ours {f['decode_ours_tflop']} / official {f['decode_official_tflop']} TFLOP")
    for note in r["notes"]:
        print(f"- {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--mem-size", type=int, default=256)
    parser.add_argument("--mem-frames", type=int, nargs="+", default=[17, 33, 65])
    parser.add_argument("--untiled-max-frames", type=int, default=65)
    parser.add_argument("--tile", type=int, default=128, help="tile px of the tiled cases (chunk stays 8 frames)")
    parser.add_argument("--mem-width", type=int, default=128,
                        help="base channels of the memory cases (128 = official; smaller runs faster, same scaling)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--official-src", help="local clone of github.com/AILab-CVC/CV-VAE: time the official "
                        "implementation side by side (only this comparison runs)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of the comparison")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--width", type=int, default=128, help="base channels of the comparison (128 = official)")
    parser.add_argument("--json", help="also write the comparison's figures to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official_src:
        from cvd_core.dtypes import resolve_dtype

        result = official_comparison(args.official_src, args.frames, args.size, args.repeats, args.device,
                                     resolve_dtype(args.dtype, args.device), ch=args.width)
        print_official(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return
    global TILED, MEM_WIDTH
    MEM_WIDTH = args.mem_width
    TILED = TilingConfig("manual", tile_size=args.tile, tile_overlap=0.25, temporal_chunk=8)
    if args.child:
        print(json.dumps(child_memory(int(args.child[0]), int(args.child[1]), args.child[2])))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    if not args.skip_speed:
        rows = speed(args.frames, args.size)
        ref = rows[0]
        print(f"\n## Speed, {args.frames}x{args.size}x{args.size}, CPU fp32, full width\n")
        print("| path | encode s | decode s | encode ratio vs none | decode ratio vs none | max |dz| | max |dx| |")
        print("|---|---|---|---|---|---|---|")
        for name, et, dt, ez, ex in rows:
            print(f"| {name} | {et:.1f} | {dt:.1f} | {et / ref[1]:.2f} | {dt / ref[2]:.2f} | {ez:.2e} | {ex:.2e} |")
    if not args.skip_memory:
        print(f"\n## Decode peak memory above baseline, {args.mem_size}x{args.mem_size}, CPU fp32, "
              f"base width {args.mem_width}\n")
        print("| frames | tiled GiB | tiled s | untiled GiB | untiled s | untiled/tiled |")
        print("|---|---|---|---|---|---|")
        for frames in args.mem_frames:
            tiled = run_child(frames, args.mem_size, "tiled")
            if frames <= args.untiled_max_frames:
                untiled = run_child(frames, args.mem_size, "untiled")
            else:
                untiled = dict(error="not run (would not fit in RAM)")

            def cell(r, key, fmt):
                return fmt.format(r[key]) if key in r else r.get("error", "?")

            ratio = (f"{untiled['peak_gib'] / tiled['peak_gib']:.2f}" if "peak_gib" in untiled and "peak_gib" in tiled
                     else "-")
            print(f"| {frames} | {cell(tiled, 'peak_gib', '{:.2f}')} | {cell(tiled, 'seconds', '{:.0f}')} | "
                  f"{cell(untiled, 'peak_gib', '{:.2f}')} | {cell(untiled, 'seconds', '{:.0f}')} | {ratio} |", flush=True)
    print()
    for line in gpu_section():
        print(line)


if __name__ == "__main__":
    main()
