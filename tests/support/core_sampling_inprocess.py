"""ComfyUI's own samplers against the pack's loop, in one process (a real ComfyUI's ``comfy``, no server).

Run as ``python -m tests.support.core_sampling_inprocess <ComfyUI root> <report.json> [case ...]`` from the
repository root. It loads the tiny test models through the pack's loader nodes and records, as JSON, for
``tests/integration/test_core_sampling.py``:

- ``parity``: CVD Multi-View Sampler (DDIM-25, cfg 8.5) against the same seed through core's ``euler`` and
  ``ddim`` samplers on CVD Scheduler ``cvd_ddim`` sigmas: with the GUIDER + SamplerCustomAdvanced where the
  ComfyUI has them, else through the sampler node's ``sampler`` input. Each case also records the float32
  floor of the computation, measured: the same pack sampler run with another ``max_batch`` (other batch
  sizes round differently; the result is the same up to that rounding), and a deliberately wrong pairing
  (strategy ``fixed``) as the size of a real mismatch.
- ``lcm``: core ``lcm`` at 1 and 4 steps on MCM sigmas against the pack's MCM (MCM LoRA merged); between
  steps both add the pack's per-view step noise (``ViewNoiseSampler``).
- ``windows``: 2 views x 12 frames in context windows of 8 (standard_uniform, FreeNoise): core ``euler`` on
  ``cvd_ddim`` sigmas against the pack's DDIM, both through CVD Context Options (the same denoiser windows).
- ``masks``: a start latent with a ``noise_mask`` (docs/masks.md) on the core path (GUIDER on 0.3.64, the sampler
  input on 2024-03) with euler on ``cvd_ddim`` sigmas: mask all 0 -> the start latent, all 1 -> the unmasked core
  run (both bitwise), a half mask -> the start latent bitwise outside, and the pack's masked loop within the
  float32 floor inside; every accepted mask form -> the same latent.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tests.support.managed_inprocess import _conditioning, boot_comfyui, install_models, load_pack

FRAMES, SIZE, STEPS = 2, 64, 25
CASES = {  # name: (views, strategy, regional, devices)
    "2v_random": (2, "random", False, ""),
    "3v_all_pairs": (3, "all_pairs", False, ""),
    "3v_random_regional": (3, "random", True, ""),
    "2v_random_cpu_cpu": (2, "random", False, "cpu,cpu"),
}


def _diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def _regional(node, rig, views):
    """A layout with one entity covering the left half of every view and frame, and its prompt."""
    import torch

    class Layout:  # what CVD Project Layout outputs (the fields the sampler reads)
        entity_ids = ["thing"]

        def __init__(self):
            self.views, self.frames, self.width, self.height = views, FRAMES, SIZE, SIZE
            mask = torch.zeros(views * FRAMES, SIZE, SIZE)
            mask[:, :, : SIZE // 2] = 1.0
            self.masks = {"thing": mask}

    return Layout(), _conditioning(3)


def run_case(node, model, name: str, seed: int = 5) -> dict:
    import torch
    from cvd_core.camera import make_preset_rig

    views, strategy, regional, devices = CASES[name]
    sampling, guider, core = node("sampling"), node("guider"), node("_core_sampling")
    rig = make_preset_rig("circle", views, FRAMES, SIZE, SIZE)
    layout, entities = _regional(node, rig, views) if regional else (None, None)
    common = dict(cvd_model=model, cameras=rig, positive=_conditioning(1), negative=_conditioning(2), cfg=8.5,
                  layout=layout, entity_prompts=entities, devices=devices)

    def pack(max_batch, strategy=strategy):
        return sampling.SAMPLER.run(seed=seed, steps=STEPS, scheduler="ddim", strategy=strategy, recurrence=1,
                                    max_batch=max_batch, denoise=1.0, **common).values[0]["samples"]

    reference = pack(0)
    floor = _diff(pack(2), reference)
    wrong = _diff(pack(0, "fixed"), reference) if views > 2 else None  # two views have one pairing only
    import comfy.samplers

    sigmas = guider.SCHEDULER.run(scheduler="cvd_ddim", steps=STEPS, denoise=1.0).values[0]
    out = {"floor": floor, "wrong_pairing": wrong, "max_abs": float(reference.abs().max()),
           "guider_api": core.has_guider_api()}
    for sampler_name in ("euler", "ddim") if name == "2v_random" else ("euler",):  # core's ddim is euler
        sampler = comfy.samplers.sampler_object(sampler_name)
        if core.has_guider_api():
            from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced

            cvd_guider = guider.GUIDER.run(strategy=strategy, max_batch=0, **common).values[0]
            empty = guider.EMPTY_LATENT.run(cameras=rig).values[0]
            noise = guider.NOISE.run(noise_seed=seed).values[0]
            result = SamplerCustomAdvanced().sample(noise, cvd_guider, sampler, sigmas, empty)
            samples = result[0]["samples"] if isinstance(result, tuple) else result.result[0]["samples"]
        else:
            samples = sampling.SAMPLER.run(seed=seed, steps=STEPS, scheduler="ddim", strategy=strategy, recurrence=1,
                                           max_batch=0, denoise=1.0, sigmas=sigmas, sampler=sampler,
                                           **common).values[0]["samples"]
        out[sampler_name] = _diff(samples, reference)
        out[f"{sampler_name}_finite"] = bool(torch.isfinite(samples).all())
    return out


MASK_STEPS = 4


def _core_run(node, common, rig, strategy, seed, latent, sampler_name="euler"):
    """One core-sampler run from ``latent`` (a dict, maybe with noise_mask) on cvd_ddim sigmas."""
    import comfy.samplers

    sampling, guider, core = node("sampling"), node("guider"), node("_core_sampling")
    sigmas = guider.SCHEDULER.run(scheduler="cvd_ddim", steps=MASK_STEPS, denoise=1.0).values[0]
    sampler = comfy.samplers.sampler_object(sampler_name)
    if core.has_guider_api():
        from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced

        cvd_guider = guider.GUIDER.run(strategy=strategy, max_batch=0, **common).values[0]
        noise = guider.NOISE.run(noise_seed=seed).values[0]
        result = SamplerCustomAdvanced().sample(noise, cvd_guider, sampler, sigmas, latent)
        return result[0]["samples"] if isinstance(result, tuple) else result.result[0]["samples"]
    return sampling.SAMPLER.run(seed=seed, steps=MASK_STEPS, scheduler="ddim", strategy=strategy, recurrence=1,
                                max_batch=0, denoise=1.0, sigmas=sigmas, sampler=sampler, latent=latent,
                                **common).values[0]["samples"]


def run_masks(node, model, name: str, seed: int = 5) -> dict:
    import torch
    from cvd_core.camera import make_preset_rig

    views, strategy, regional, devices = CASES[name]
    sampling = node("sampling")
    rig = make_preset_rig("circle", views, FRAMES, SIZE, SIZE)
    layout, entities = _regional(node, rig, views) if regional else (None, None)
    common = dict(cvd_model=model, cameras=rig, positive=_conditioning(1), negative=_conditioning(2), cfg=8.5,
                  layout=layout, entity_prompts=entities, devices=devices)
    h = SIZE // 8
    start = torch.randn(views, 4, FRAMES, h, h, generator=torch.Generator().manual_seed(3)) * 0.8
    half = torch.zeros(views * FRAMES, SIZE, SIZE)
    half[:, SIZE // 2:, :] = 1.0  # regenerate the bottom half (the regional entity is the left half)

    def latent(mask=None):
        out = {"samples": start.clone()}
        if mask is not None:
            out["noise_mask"] = mask
        return out

    def pack(mask, max_batch=0):
        return sampling.SAMPLER.run(seed=seed, steps=MASK_STEPS, scheduler="ddim", strategy=strategy, recurrence=1,
                                    max_batch=max_batch, denoise=1.0, latent=latent(mask),
                                    **common).values[0]["samples"]

    unmasked = _core_run(node, common, rig, strategy, seed, latent())
    zeros = _core_run(node, common, rig, strategy, seed, latent(torch.zeros(views * FRAMES, SIZE, SIZE)))
    ones = _core_run(node, common, rig, strategy, seed, latent(torch.ones(views * FRAMES, SIZE, SIZE)))
    core_half = _core_run(node, common, rig, strategy, seed, latent(half))
    pack_half = pack(half)
    top, bottom = (slice(None),) * 3 + (slice(0, h // 2),), (slice(None),) * 3 + (slice(h // 2, h),)
    out = {"zeros_equal_start": bool(torch.equal(zeros, start)),
           "ones_equal_unmasked": bool(torch.equal(ones, unmasked)),
           "half_outside_equal_start": bool(torch.equal(core_half[top], start[top])),
           "half_inside_moved": float((core_half[bottom] - start[bottom]).abs().min()),
           "unmasked_moved": _diff(unmasked, start),
           "pack_vs_core_half": _diff(pack_half, core_half),
           "pack_outside_equal_start": bool(torch.equal(pack_half[top], start[top])),
           "floor": _diff(pack(half, max_batch=2), pack_half), "max_abs": float(pack_half.abs().max())}
    if name == "2v_random":  # [V*F, 1, h, w], [V, 1, F, h, w] and one mask for all (every frame's is the same half)
        small = half[:, ::8, ::8]
        forms = [small[:, None], small.view(views, FRAMES, 1, h, h).permute(0, 2, 1, 3, 4), half[:1]]
        out["forms_equal"] = all(torch.equal(_core_run(node, common, rig, strategy, seed, latent(form)), core_half)
                                 for form in forms)
    return out


def run_lcm(node, model, steps: int, seed: int = 9) -> dict:
    import comfy.samplers
    from cvd_core.camera import make_preset_rig
    from cvd_core.mcm import MCMScheduler

    sampling, core, mcm = node("sampling"), node("_core_sampling"), node("mcm")
    merged = mcm.LORA_CVD.run(cvd_model=model, lora_name="animatediff-laion", strength=1.0).values[0]
    rig = make_preset_rig("circle", 2, FRAMES, SIZE, SIZE)
    common = dict(cvd_model=merged, cameras=rig, positive=_conditioning(1), negative=_conditioning(2), seed=seed,
                  cfg=1.0, strategy="random", recurrence=1, denoise=1.0)
    reference = sampling.SAMPLER.run(steps=steps, scheduler="mcm", max_batch=0, **common).values[0]["samples"]
    floor = _diff(sampling.SAMPLER.run(steps=steps, scheduler="mcm", max_batch=2, **common).values[0]["samples"],
                  reference)
    sigmas = core.timesteps_to_sigmas(MCMScheduler(steps=steps).timesteps)
    samples = sampling.SAMPLER.run(steps=steps, scheduler="mcm", max_batch=0, sigmas=sigmas,
                                   sampler=comfy.samplers.sampler_object("lcm"), **common).values[0]["samples"]
    return {"floor": floor, "lcm": _diff(samples, reference), "max_abs": float(reference.abs().max())}


def run_windows(node, model, seed: int = 4, frames: int = 12, steps: int = 4) -> dict:
    """Context windows (moving offsets, FreeNoise) in both loops: the pack's DDIM and core euler on cvd_ddim
    sigmas (GUIDER where the ComfyUI has it, else the sampler's ``sampler`` input) share the denoiser's windows."""
    import comfy.samplers
    import torch
    from cvd_core.camera import make_preset_rig

    sampling, guider, core = node("sampling"), node("guider"), node("_core_sampling")
    context = node("context").CONTEXT_OPTIONS.run(context_length=8, context_overlap=2, schedule="standard_uniform",
                                                  fuse="pyramid", freenoise=True).values[0]
    rig = make_preset_rig("circle", 2, frames, SIZE, SIZE)
    common = dict(cvd_model=model, cameras=rig, positive=_conditioning(1), negative=_conditioning(2), cfg=8.5)

    def pack(max_batch):
        return sampling.SAMPLER.run(seed=seed, steps=steps, scheduler="ddim", strategy="random", recurrence=1,
                                    max_batch=max_batch, denoise=1.0, context=context, **common).values[0]["samples"]

    reference = pack(0)
    sigmas = guider.SCHEDULER.run(scheduler="cvd_ddim", steps=steps, denoise=1.0).values[0]
    sampler = comfy.samplers.sampler_object("euler")
    if core.has_guider_api():
        from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced

        cvd_guider = guider.GUIDER.run(strategy="random", max_batch=0, context=context, **common).values[0]
        empty = guider.EMPTY_LATENT.run(cameras=rig).values[0]
        noise = guider.NOISE.run(noise_seed=seed).values[0]
        result = SamplerCustomAdvanced().sample(noise, cvd_guider, sampler, sigmas, empty)
        samples = result[0]["samples"] if isinstance(result, tuple) else result.result[0]["samples"]
    else:
        samples = sampling.SAMPLER.run(seed=seed, steps=steps, scheduler="ddim", strategy="random", recurrence=1,
                                       max_batch=0, denoise=1.0, sigmas=sigmas, sampler=sampler, context=context,
                                       **common).values[0]["samples"]
    no_freenoise = node("context").CONTEXT_OPTIONS.run(context_length=8, context_overlap=2,
                                                       schedule="standard_uniform", fuse="pyramid",
                                                       freenoise=False).values[0]
    other = sampling.SAMPLER.run(seed=seed, steps=steps, scheduler="ddim", strategy="random", recurrence=1,
                                 max_batch=0, denoise=1.0, context=no_freenoise, **common).values[0]["samples"]
    return {"floor": _diff(pack(2), reference), "euler": _diff(samples, reference), "frames": int(samples.shape[2]),
            "max_abs": float(reference.abs().max()), "finite": bool(torch.isfinite(samples).all()),
            "wrong_noise": _diff(other, reference), "guider_api": core.has_guider_api()}


MASK_CASES = ["2v_random", "3v_random_regional", "2v_random_cpu_cpu"]


def main(argv) -> int:
    comfy_root, out = Path(argv[1]), Path(argv[2])
    cases = argv[3:] or list(CASES)
    boot_comfyui(comfy_root)
    node = load_pack()
    with tempfile.TemporaryDirectory() as work:
        install_models(Path(work))
        files = dict(checkpoint="v1-5-pruned-emaonly.safetensors", motion_module="v3_sd15_mm.ckpt", adapter="none",
                     adapter_scale=1.0, cameractrl="CameraCtrl.ckpt", cvd="CVD.ckpt", dtype="auto")
        model = node("cvd_model").LOADER.run(**files).values[0]
        facts = {"parity": {name: run_case(node, model, name) for name in cases if name in CASES}}
        masks = [c for c in cases if c.startswith("masks")] or (["masks"] if not argv[3:] else [])
        if masks:  # "masks" = every mask case, "masks=2v_random,..." = those
            names = masks[0].split("=")[1].split(",") if "=" in masks[0] else MASK_CASES
            facts["masks"] = {name: run_masks(node, model, name) for name in names}
        if "lcm" in cases or not argv[3:]:
            facts["lcm"] = {str(steps): run_lcm(node, model, steps) for steps in (1, 4)}
        if "windows" in cases or not argv[3:]:
            facts["windows"] = run_windows(node, model)
    out.write_text(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
