"""The collaborative sampler on 1 device vs 2 devices (threads) vs 2 torch.distributed ranks, same run.

Usage:
  python benchmarks/bench_scale.py                       # CPU: 1 thread vs cpu,cpu (1 thread each) vs 2 gloo ranks
  python benchmarks/bench_scale.py --width 64 --frames 16 --size 128 --steps 2 --repeat 3
  python benchmarks/bench_scale.py --devices cuda:0,cuda:1   # a multi-GPU machine (ranks: NCCL)
  python benchmarks/bench_scale.py --comm-size 16x256x256    # + the transfer of one step at that size
  python benchmarks/bench_scale.py --comm-size 16x256x256 --comm-step   # + as a share of a 1-device step there

Jobs (``--jobs``, views:strategy): 8 views ``all_pairs`` (28 pairs a step) and 16 views ``random``
(8 pairs). For each job and case: seconds per step (median of ``--repeat`` runs after a one-step
warm-up), speedup over 1 device, efficiency (speedup / devices) and, for ranks, the bytes rank 0
exchanges per step (counted by the executor) and the time those bytes take on the group alone
(a transfer-only probe of the same messages between the same two processes), as a share of the step.

Model: random weights in the official layouts at UNet width ``--width`` (the real SD1.5 is 320;
small widths keep the CPU run short and make communication look *larger* relative to compute,
so the shares measured here are upper bounds for the real model). CPU runs pin every participant
to one intra-op thread (``--threads``) so that 1 device, 2 threads and 2 ranks use 1, 2 and 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

FILES = {"unet": ("checkpoints", "bench_sd15.safetensors"), "motion_module": ("animatediff_models", "mm.ckpt"),
         "cameractrl": ("cvd", "CameraCtrl.ckpt"), "cvd": ("cvd", "CVD.ckpt")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_models(folder: Path, width: int) -> dict:
    from cvd_core.cvd import write_tiny_cvd_files

    written = write_tiny_cvd_files(folder / "written", seed=0, width=width, single_file=True)
    paths = {}
    for role, (sub, name) in FILES.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        shutil.move(written[role], folder / sub / name)
        paths[role] = str(folder / sub / name)
    return paths


class Job:
    def __init__(self, views: int, strategy: str, frames: int, size: int, cfg: float, text_width: int,
                 width: int = 0):
        from cvd_core.camera import make_preset_rig
        from cvd_core.sampling import initial_noise
        from nodes.sampling import camera_inputs

        self.views, self.strategy, self.cfg = views, strategy, cfg
        width = width or size  # size = height
        rig = make_preset_rig("circle", views, frames, width, size)
        self.plucker, self.fundamentals = camera_inputs(rig)
        g = torch.Generator().manual_seed(0)
        self.cond = torch.randn(1, 77, text_width, generator=g)
        self.uncond = torch.randn(1, 77, text_width, generator=g) if cfg != 1 else None
        self.latents = initial_noise(1, views, 4, frames, size // 8, width // 8)

    @property
    def name(self) -> str:
        return f"{self.views} views {self.strategy}"

    def run(self, model, steps: int, executor=None):
        from cvd_core.sampling import DDIMScheduler, sample_multiview

        started = time.perf_counter()
        out = sample_multiview(model, self.latents, self.cond, self.uncond, self.plucker, self.fundamentals,
                               DDIMScheduler(num_inference_steps=steps), guidance_scale=self.cfg,
                               strategy=self.strategy, seed=1, executor=executor)
        return time.perf_counter() - started, out


def timed(job: Job, model, steps: int, repeat: int, make_executor=None, threads: int = 1):
    torch.set_num_threads(threads)
    job.run(model, 1, make_executor() if make_executor else None)  # warm-up (kernels, worker model)
    times, result, executor = [], None, None
    for _ in range(repeat):
        executor = make_executor() if make_executor else None
        seconds, result = job.run(model, steps, executor)
        times.append(seconds / steps)
    return statistics.median(times), result, executor


# ------------------------------------------------------------------------------ transfer-only probe

def probe_messages(executor, job: Job):
    """The calls the worker ran in the job's first iteration (its share of the split in two)."""
    from cvd_core.sampling.batching import plan_calls_split
    from cvd_core.sampling.pairing import pair_schedule

    branches = (0, 1) if job.cfg != 1 else (1,)
    pairs = pair_schedule(job.views, job.strategy, 0, 1)
    plans = plan_calls_split(pairs, branches, 10 ** 6, 2)
    return plans[1]


def probe_rank0(port: int, latents_shape, out_rows: int, dtype: torch.dtype, plan_words: int, reps: int,
                device: str) -> float:
    """Rank 0 of the probe: the iteration's broadcasts and the worker's rows back, no compute."""
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    peer = subprocess.Popen([sys.executable, __file__, "--probe-peer", str(port), "--probe-spec",
                             json.dumps([list(latents_shape), out_rows, str(dtype).replace("torch.", ""), plan_words,
                                         reps, backend])], cwd=ROOT)
    store = dist.TCPStore("127.0.0.1", port, 2, True, timedelta(seconds=120))
    dist.init_process_group(backend, store=store, rank=0, world_size=2, timeout=timedelta(seconds=120))
    comm = torch.device(device if backend == "nccl" else "cpu")
    latents = torch.zeros(latents_shape, dtype=dtype, device=comm)
    header = torch.zeros(4, dtype=torch.int64, device=comm)
    words = torch.zeros(plan_words, dtype=torch.int64, device=comm)
    back = torch.empty((out_rows,) + tuple(latents_shape[1:]), dtype=dtype, device=comm)
    times = []
    for _ in range(reps + 1):
        started = time.perf_counter()
        for tensor in (header, words, latents):
            dist.broadcast(tensor, src=0)
        dist.recv(back, src=1)
        if backend == "nccl":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    dist.destroy_process_group()
    peer.wait(timeout=60)
    return statistics.median(times[1:])


def probe_peer(port: int, spec: str) -> None:
    import torch.distributed as dist

    shape, out_rows, dtype, plan_words, reps, backend = json.loads(spec)
    dtype = getattr(torch, dtype)
    store = dist.TCPStore("127.0.0.1", port, 2, False, timedelta(seconds=120))
    dist.init_process_group(backend, store=store, rank=1, world_size=2, timeout=timedelta(seconds=120))
    comm = torch.device("cuda:1" if backend == "nccl" else "cpu")
    latents = torch.zeros(shape, dtype=dtype, device=comm)
    header = torch.zeros(4, dtype=torch.int64, device=comm)
    words = torch.zeros(plan_words, dtype=torch.int64, device=comm)
    out = torch.zeros((out_rows,) + tuple(shape[1:]), dtype=dtype, device=comm)
    for _ in range(reps + 1):
        for tensor in (header, words, latents):
            dist.broadcast(tensor, src=0)
        dist.send(out, dst=0)
    dist.destroy_process_group()


# ------------------------------------------------------------------------------ the run

def start_worker(pool_port: int, models: Path, device: str, threads: int):
    log = open(models / f"worker_{device.replace(':', '_')}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "cvd_core.parallel.worker", "--server",
                                f"127.0.0.1:{pool_port}", "--models", str(models), "--threads", str(threads),
                                "--device", device, "--name", f"bench-{device}"], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
    return process, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", nargs="+", default=["8:all_pairs", "16:random"], help="views:strategy")
    parser.add_argument("--width", type=int, default=32, help="UNet base width (SD1.5: 320)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cfg", type=float, default=1.0, help="1 = MCM-style (one row per view and pair)")
    parser.add_argument("--devices", default="cpu,cpu", help="the local devices of the multi-device case")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads per participant")
    parser.add_argument("--comm-size", default="", help="views x height x width (frames: --comm-frames), e.g. "
                        "16x256x256: also probe one step's transfer at that size")
    parser.add_argument("--comm-frames", type=int, default=16)
    parser.add_argument("--comm-step", action="store_true", help="also time one 1-device sampling step at "
                        "--comm-size (same model and cfg): the transfer as a share of half that step")
    parser.add_argument("--probe-reps", type=int, default=5)
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--probe-peer", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--probe-spec", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_peer:
        probe_peer(args.probe_peer, args.probe_spec)
        return

    from cvd_core.cvd import load_cvd_model
    from cvd_core.parallel import ThreadedExecutor, parse_devices, replica_on
    from cvd_core.parallel.cluster import WorkerPool
    from cvd_core.parallel.distributed import DistributedExecutor, encode_plans
    from cvd_core.parallel.recipe import file_ref, make_recipe

    devices = [str(d) for d in parse_devices(args.devices).devices] or ["cpu", "cpu"]
    workdir = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    models = workdir / "models"
    paths = write_models(models, args.width)
    model = load_cvd_model(**paths, dtype="auto", device=devices[0])
    replicas = [replica_on(model, d) for d in devices]
    recipe = make_recipe({r: file_ref(f, n, paths[r]) for r, (f, n) in FILES.items()}, model.dtype)
    pool = WorkerPool("127.0.0.1", free_port(), store_port=free_port()).start()
    workers = [start_worker(pool.port, models, d, args.threads) for d in devices[1:]]
    element = torch.empty((), dtype=model.dtype).element_size()
    finished = False
    try:
        deadline = time.monotonic() + 600
        while len(pool.workers()) < len(workers):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in workers):
                raise RuntimeError("the worker did not join; see its log in " + str(models))
            time.sleep(0.2)
        results = []
        for spec in args.jobs:
            views, strategy = spec.split(":")
            job = Job(int(views), strategy, args.frames, args.size, args.cfg, 32)
            one, ref, _ = timed(job, model, args.steps, args.repeat, threads=args.threads)
            two, split, _ = timed(job, None, args.steps, args.repeat, lambda: ThreadedExecutor(replicas),
                                  threads=args.threads * len(devices))
            ranks, dist_out, executor = timed(job, None, args.steps, args.repeat,
                                              lambda: DistributedExecutor([model], pool, recipe, timeout_s=600),
                                              threads=args.threads)
            per_step = statistics.mean(executor.stats["iteration_bytes"])
            worker_calls = probe_messages(executor, job)
            rows = sum(len(c.rows) for c in worker_calls)
            words = encode_plans([worker_calls]).numel()
            comm = probe_rank0(free_port(), tuple(job.latents.shape), rows, model.dtype, words, args.probe_reps,
                               devices[0])
            results.append({"job": job.name, "worker_rows_per_step": rows, "one_device_s": one, "threads_s": two,
                            "ranks_s": ranks, "threads_speedup": one / two, "ranks_speedup": one / ranks,
                            "threads_efficiency": one / two / len(devices),
                            "ranks_efficiency": one / ranks / len(devices), "bytes_per_step": per_step,
                            "probe_comm_s": comm, "comm_share": comm / ranks,
                            "max_diff_threads": float((split - ref).abs().max()),
                            "max_diff_ranks": float((dist_out - ref).abs().max())})
        comm_rows = []
        if args.comm_size:
            views, height, width = (int(v) for v in args.comm_size.lower().split("x"))
            shape = (views, 4, args.comm_frames, height // 8, width // 8)
            branches = (0, 1) if args.cfg != 1 else (1,)
            from cvd_core.sampling.batching import plan_calls_split
            from cvd_core.sampling.pairing import pair_schedule
            worker_calls = plan_calls_split(pair_schedule(views, "random", 0, 1), branches, 10 ** 6, 2)[1]
            rows = sum(len(c.rows) for c in worker_calls)
            words = encode_plans([worker_calls]).numel()
            view = 4 * args.comm_frames * (height // 8) * (width // 8)
            from cvd_core.parallel.distributed import transfer_bytes
            comm = {"size": f"{views} x {args.comm_frames} x {height}x{width} random",
                    "bytes_per_step": transfer_bytes(views, view, element, [rows], words),
                    "probe_comm_s": probe_rank0(free_port(), shape, rows, model.dtype, words, args.probe_reps,
                                                devices[0])}
            if args.comm_step:  # one step, no warm-up: at this size a step is long enough to swamp it
                big = Job(views, "random", args.comm_frames, height, args.cfg, 32, width)
                torch.set_num_threads(args.threads)
                comm["step_s"] = big.run(model, 1)[0]
                # against an ideal 2-rank step (half the 1-device step): the largest share it can be
                comm["comm_share"] = comm["probe_comm_s"] / (comm["step_s"] / 2)
            comm_rows.append(comm)
        finished = True
    finally:
        for process, log in workers:
            process.kill()
            process.wait()
            log.close()
        pool.stop()
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"bench_scale: kept {workdir} (models and worker logs) for a look", file=sys.stderr)

    print(f"\nbench_scale: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, width {args.width}, {args.frames} frames, {args.size}x{args.size}, cfg {args.cfg}, "
          f"{args.steps} steps, {args.threads} thread(s) per participant, devices {','.join(devices)}, "
          f"dtype {str(model.dtype).replace('torch.', '')}; load average {os.getloadavg()[0]:.1f}")
    print("| job | 1 device s/step | 2 devices (threads) s/step | speedup / efficiency | 2 ranks s/step | "
          "speedup / efficiency | bytes / step | transfer s / step (share) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['job']} | {r['one_device_s']:.3f} | {r['threads_s']:.3f} | {r['threads_speedup']:.2f}x / "
              f"{100 * r['threads_efficiency']:.0f} % | {r['ranks_s']:.3f} | {r['ranks_speedup']:.2f}x / "
              f"{100 * r['ranks_efficiency']:.0f} % | {r['bytes_per_step'] / 1e6:.3f} MB | "
              f"{r['probe_comm_s']:.4f} ({100 * r['comm_share']:.2f} %) |")
    for r in results:
        print(f"  {r['job']}: max |difference| to 1 device: threads {r['max_diff_threads']:.2e}, "
              f"ranks {r['max_diff_ranks']:.2e}")
    for r in comm_rows:
        share = (f"; 1-device step {r['step_s']:.2f} s, transfer = {100 * r['comm_share']:.2f} % of half of it "
                 "(an ideal 2-rank step)") if "step_s" in r else ""
        print(f"transfer of one step at {r['size']} ({str(model.dtype).replace('torch.', '')}, one worker): "
              f"{r['bytes_per_step'] / 1e6:.2f} MB, {r['probe_comm_s']:.4f} s on this group{share}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "jobs": results, "comm": comm_rows}, indent=2))


if __name__ == "__main__":
    main()
