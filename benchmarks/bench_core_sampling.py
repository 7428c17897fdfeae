"""Step cost of ComfyUI's own sampling (GUIDER + SamplerCustomAdvanced, euler on cvd_ddim sigmas) against the
pack's own loop (CVD Multi-View Sampler, DDIM), the same denoiser calls per step: only the loop differs.

    .venv/bin/python benchmarks/bench_core_sampling.py [--comfyui ROOT] [--views 2] [--steps 10] [--repeats 5]

``--comfyui``: a ComfyUI with GUIDER sampling (default: 0.3.64 from ../shared/comfyui, extracted to a temporary
folder). The models are the tests' tiny CVD files (the loop's overhead is then the largest share it can be,
so the ratio is an upper bound for real weights). Runs alternate between the two paths; the figure is the
ratio of the median seconds per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _comfyui_root(arg, work: Path) -> Path:
    if arg:
        return Path(arg)
    from tests.support.comfy_harness import current_comfyui, prepare_comfyui

    tarball, _ = current_comfyui()
    if tarball is None:
        sys.exit("no ComfyUI 0.3.64 in ../shared/comfyui: pass --comfyui ROOT (a ComfyUI with SamplerCustomAdvanced)")
    return prepare_comfyui(work / "comfyui", tarball)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from tests.support.managed_inprocess import _conditioning, boot_comfyui, install_models, load_pack

        boot_comfyui(_comfyui_root(args.comfyui, work))
        node = load_pack()
        install_models(work)
        import comfy.samplers
        from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced
        from cvd_core.camera import make_preset_rig

        model = node("cvd_model").LOADER.run(checkpoint="v1-5-pruned-emaonly.safetensors",
                                             motion_module="v3_sd15_mm.ckpt", adapter="none", adapter_scale=1.0,
                                             cameractrl="CameraCtrl.ckpt", cvd="CVD.ckpt", dtype="auto").values[0]
        sampling, guider = node("sampling"), node("guider")
        rig = make_preset_rig("circle", args.views, args.frames, args.size, args.size)
        common = dict(cvd_model=model, cameras=rig, positive=_conditioning(1), negative=_conditioning(2), cfg=8.5)

        def pack():
            sampling.SAMPLER.run(seed=1, steps=args.steps, scheduler="ddim", strategy="random", recurrence=1,
                                 max_batch=0, denoise=1.0, **common)

        sigmas = guider.SCHEDULER.run(scheduler="cvd_ddim", steps=args.steps, denoise=1.0).values[0]
        sampler = comfy.samplers.sampler_object("euler")

        def core():
            cvd_guider = guider.GUIDER.run(strategy="random", max_batch=0, **common).values[0]
            empty = guider.EMPTY_LATENT.run(cameras=rig).values[0]
            SamplerCustomAdvanced().sample(guider.NOISE.run(noise_seed=1).values[0], cvd_guider, sampler, sigmas, empty)

        times = {"pack": [], "core": []}
        pack(), core()  # warm-up: model load, first-call allocations
        for _ in range(args.repeats):
            for name, run in (("pack", pack), ("core", core)):
                started = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - started) / args.steps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {"views": args.views, "frames": args.frames, "size": args.size, "steps": args.steps,
              "repeats": args.repeats, "seconds_per_step": medians,
              "ratio_core_over_pack": medians["core"] / medians["pack"], "all": times}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
