"""The pack's main job, end to end: start a real headless ComfyUI with the pack loaded, queue the
full-pipeline workflows (cameras -> CVD multi-view sampler -> SD VAE decode -> save) through the HTTP
API, copy the videos to ``out/`` and print their paths.

Run through ``scripts/demo.sh`` (which installs everything first). Without real weights the server
gets tiny random weights in the official layouts (generated on the fly), so the pipeline runs in
seconds on a CPU but the videos are noise. ``--comfyui-models DIR`` points the same server at a
real ComfyUI ``models`` folder (through an ``extra_model_paths.yaml``) and the same workflows make
real videos.

Options: ``--workflow NAME`` (repeatable; default: the pipeline workflows), ``--all`` (every
workflow in workflows/api), ``--out DIR``, ``--comfyui-models DIR``, ``--frames N`` / ``--size PX``
(override the rig; with real weights the default is CVD's 16 frames at 256 px). The server runs
with ``--cpu`` (the test harness's setting): slow with real weights; for GPU speed load the same
workflows (``workflows/*.json``) in your own ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodes._model_files import FILES  # noqa: E402
from tests.support.comfy_harness import ComfyServer, output_files  # noqa: E402
from tests.support.sample_inputs import EXAMPLES, write_sample_pose_files  # noqa: E402
from tests.support import models_synthetic_scene as synthetic_views  # noqa: E402
from tests.support.model_installers import install_test_models  # noqa: E402

PIPELINE = ["cvd_two_views", "cvd_four_views_mcm", "cvd_consistency_report"]
CAMERA_NODES = ("CVD_CameraTrajectory", "CVD_LoadCameraPoses")
# ComfyUI model folders the workflows read (extra_model_paths.yaml); the files themselves and where to get
# them: nodes/_model_files.py.
MODEL_FOLDERS = ("checkpoints", "clip", "vae", "animatediff_models", "cvd", "mcm", "loras", "cvvae")
TINY_NOTICE = ("using tiny random test weights (no real weights installed): the videos are noise; put the official "
               "files into ComfyUI/models/... (checkpoints, clip, vae, animatediff_models, cvd, mcm) and run with "
               "--comfyui-models /path/to/ComfyUI/models to get real videos")


def write_extra_model_paths(models_dir: Path, target: Path) -> Path:
    """An ``extra_model_paths.yaml`` that adds every folder the workflows read from ``models_dir``."""
    lines = ["cvd_demo:", f"    base_path: {json.dumps(str(models_dir.resolve()))}"]
    lines += [f"    {folder}: {folder}" for folder in MODEL_FOLDERS]
    target.write_text("\n".join(lines) + "\n")
    return target


def where_to_get_file(name: str) -> str:
    """The direct download (or the page) of an official file or folder, from nodes/_model_files.py."""
    files = [f for f in FILES if f.name == name or f.name.startswith(name + "/")]
    if not files:
        return "not an official file: see the README's model table"
    return ", ".join(f.url or f"no direct download, see {f.page}" for f in files)


def missing_model_files(models_dir: Path, prompts) -> list:
    """``folder/name`` of every model file the prompts name that ``models_dir`` lacks."""
    wanted = {"checkpoint": "checkpoints", "clip_name": "clip", "vae_name": "vae", "motion_module":
              "animatediff_models", "cameractrl": "cvd", "cvd": "cvd", "lora_name": "mcm"}
    missing = []
    for prompt in prompts:
        for node in prompt.values():
            for key, folder in wanted.items():
                value = node["inputs"].get(key)
                if not isinstance(value, str) or value == "none":
                    continue
                candidates = [models_dir / folder / value] + ([models_dir / "loras" / value] if folder == "mcm" else [])
                if not any(c.exists() for c in candidates):
                    missing.append(f"{folder}/{value}")
    return sorted(set(missing))


def override_rig(prompt: dict, frames: int, size: int) -> dict:
    """Set frames and image size of every camera node (real weights want CVD's 16 frames, 256 px)."""
    for node in prompt.values():
        if node["class_type"] in CAMERA_NODES and node["inputs"].get("preset") != "custom_json":
            # (a custom rig describes given views, e.g. cvd_evaluate_export's: its size is not a choice)
            if frames:
                node["inputs"]["frames"] = frames
            if size:
                node["inputs"]["width"] = node["inputs"]["height"] = size
    return prompt


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", action="append", help="workflow name in workflows/api (repeatable)")
    parser.add_argument("--all", action="store_true", help="run every workflow in workflows/api")
    parser.add_argument("--out", default=str(ROOT / "out"), help="where to copy the results (default: out/)")
    parser.add_argument("--comfyui-models", type=Path, help="a ComfyUI models folder with the real weights")
    parser.add_argument("--frames", type=int, default=0, help="frames per video (default: the workflow's; 16 with "
                        "--comfyui-models)")
    parser.add_argument("--size", type=int, default=0, help="image size in pixels, multiple of 8 (default: the "
                        "workflow's; 256 with --comfyui-models)")
    return parser.parse_args()


def _load_prompts(names, args):
    prompts = []
    for name in names:
        api_path = ROOT / "workflows" / "api" / f"{name}.json"
        if not api_path.exists():
            raise SystemExit(f"[demo] no workflow named {name!r} in workflows/api")
        ui_path = ROOT / "workflows" / f"{name}.json"
        prompt = json.loads(api_path.read_text())
        real = args.comfyui_models is not None
        override_rig(prompt, args.frames or (16 if real else 0), args.size or (256 if real else 0))
        prompts.append((name, prompt, json.loads(ui_path.read_text()) if ui_path.exists() else None))
    return prompts


def _prepare(server: ComfyServer, args) -> None:
    if args.comfyui_models is None:
        install_test_models(server.root)
        print(f"[demo] {TINY_NOTICE}", flush=True)
        return
    write_sample_pose_files(server.root / "input" / "cvd_poses")  # inputs only: the weights are the user's
    for frames in sorted((EXAMPLES / "frames").glob("*.png")):
        shutil.copy(frames, server.root / "input" / frames.name)
    synthetic_views.install(server.root)  # the known-geometry views of cvd_evaluate_export
    print(f"[demo] using the real weights in {args.comfyui_models}", flush=True)


def main() -> int:
    args = _parse_args()
    names = [p.stem for p in sorted((ROOT / "workflows" / "api").glob("*.json"))] if args.all \
        else (args.workflow or PIPELINE)
    prompts = _load_prompts(names, args)
    extra_args = []
    if args.comfyui_models is not None:
        missing = missing_model_files(args.comfyui_models, [p for _, p, _ in prompts])
        if missing:
            print(f"[demo] {args.comfyui_models} lacks: {', '.join(missing)}. Where to get them:", file=sys.stderr)
            for entry in missing:
                print(f"  models/{entry}: {where_to_get_file(entry.split('/', 1)[1])}", file=sys.stderr)
            return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="cvd-demo-") as tmp:
        if args.comfyui_models is not None:
            yaml = write_extra_model_paths(args.comfyui_models, Path(tmp) / "extra_model_paths.yaml")
            extra_args += ["--extra-model-paths-config", str(yaml)]
        server = ComfyServer(Path(tmp), extra_args=extra_args)
        _prepare(server, args)
        print(f"[demo] starting ComfyUI (the real server) in {tmp} ...", flush=True)
        with server:
            print(f"[demo] ComfyUI ready at {server.url} after {server.start_seconds:.1f} s", flush=True)
            info = server.object_info()
            for name, prompt, ui in prompts:
                lacking = sorted({v["class_type"] for v in prompt.values()} - set(info))
                if lacking:  # e.g. SamplerCustomAdvanced: GUIDER sampling came after this ComfyUI (2024-03)
                    print(f"[demo] {name}: skipped, this ComfyUI has no {', '.join(lacking)} (run it in a current "
                          "ComfyUI)", flush=True)
                    continue
                started = time.monotonic()
                entry = server.run(prompt, workflow=ui, timeout=3600)
                print(f"[demo] {name}: done in {time.monotonic() - started:.1f} s", flush=True)
                written += _copy_outputs(server, entry, out_dir / name)
    if args.comfyui_models is None:
        print(f"[demo] {TINY_NOTICE}")
    print("[demo] results:")
    for path in written:
        print(f"  {path}")
    return 0 if written else 1


def _copy_outputs(server: ComfyServer, entry: dict, target_dir: Path) -> list:
    """Copy every saved file (videos of CVD_SaveMultiViewVideo included) to ``target_dir``."""
    items = [item for files in output_files(entry).values() for item in files]
    for outputs in entry.get("outputs", {}).values():
        for summary in outputs.get("cvd_multiview", []):
            items += summary["views"] + ([summary["grid"]] if summary.get("grid") else [])
    copied = []
    for item in items:
        if item.get("type", "output") != "output":
            continue
        source = server.output_dir / item.get("subfolder", "") / item["filename"]
        target = target_dir / item["filename"]
        if source.is_file() and target not in copied:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
            copied.append(target)
    return copied


if __name__ == "__main__":
    sys.exit(main())
