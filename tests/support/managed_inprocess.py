"""The pack's nodes against a real ComfyUI's model management, in one process (no server).

Run as ``python -m tests.support.managed_inprocess <ComfyUI root> <report.json>`` from the
repository root: it imports that ComfyUI's ``comfy`` package (``--cpu``), loads the pack as ComfyUI
does (a package) and the tiny test models through the pack's own loader nodes, then records facts
as JSON for ``tests/integration/test_memory_management.py`` to check:

- the nodes' outputs through ComfyUI-managed models are bit-identical to the same node functions on
  plain modules (the pack's behaviour before model management, still its path outside ComfyUI):
  CVD sampling with the base model, an MCM-LoRA copy, a feature-cache copy and both, interleaved so
  that ComfyUI has to switch patched clones of one model back and forth, and CV-VAE encode/decode;
- patched copies share the weights (distinct weight storages of all live copies = one model) and
  hold only their patches (the LoRA's low-rank factors);
- ``unload_all_models`` (what ``POST /free`` calls) unloads them, a next run reloads them;
- low-VRAM streaming: a partial load with a weight budget (ComfyUI's own ``LoadedModel.model_load``)
  marks layers for streaming, and the outputs (LoRA patches applied per call) stay bit-identical.
  On a CPU "streaming" casts onto the same device: the code path runs, the transfer is for the GPU
  check (``benchmarks/memory_check.py``).

A subprocess keeps the test runner free of ComfyUI's global state; one run takes a few seconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VIEWS, FRAMES, SIZE = 2, 2, 64  # the smallest job the tiny model takes (one step, one guidance branch)


def boot_comfyui(root: Path, *argv: str):
    """Import ComfyUI's ``comfy`` from ``root`` with command-line flags ``argv`` (always ``--cpu``)."""
    sys.path.insert(0, str(root))
    sys.argv = ["main.py", "--cpu", *argv]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management

    return comfy.model_management


def load_pack():
    """The pack imported as a package, as ComfyUI's custom-node loader does."""
    spec = importlib.util.spec_from_file_location("cvd_multiview_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["cvd_multiview_pack"] = module
    spec.loader.exec_module(module)
    return lambda name: importlib.import_module(f"cvd_multiview_pack.nodes.{name}")


def install_models(root: Path) -> None:
    """The integration tests' tiny CVD, MCM and CV-VAE files, registered as extra model folders."""
    import folder_paths

    from tests.support import models_cvd, models_cvvae, models_mcm

    for installer in (models_cvd, models_mcm, models_cvvae):
        installer.install(root)
    for folder in sorted(p.name for p in (root / "models").iterdir() if p.is_dir()):
        folder_paths.add_model_folder_path(folder, str(root / "models" / folder))


def _conditioning(seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 768, generator=generator), {}]]


def run_checks(comfy_root: Path, work: Path) -> dict:
    import torch

    mm = boot_comfyui(comfy_root)
    node = load_pack()
    install_models(work)
    managed = node("_managed")
    loader, sampler = node("cvd_model").LOADER, node("sampling").SAMPLER
    lora_node, cache_node = node("mcm").LORA_CVD, node("feature_cache").ENHANCER_CVD
    vae_nodes = node("vae")
    from cvd_core.camera import make_preset_rig
    from cvd_core.cvd import load_cvd_model
    from cvd_core.cvvae import load_cvvae

    facts: dict = {"comfyui": str(comfy_root)}
    files = dict(checkpoint="v1-5-pruned-emaonly.safetensors", motion_module="v3_sd15_mm.ckpt", adapter="none",
                 adapter_scale=1.0, cameractrl="CameraCtrl.ckpt", cvd="CVD.ckpt", dtype="auto")
    base = loader.run(**files).values[0]
    models = work / "models"
    plain = load_cvd_model(unet=models / "checkpoints" / files["checkpoint"],
                           motion_module=models / "animatediff_models" / files["motion_module"],
                           cameractrl=models / "cvd" / files["cameractrl"], cvd=models / "cvd" / files["cvd"],
                           dtype="fp32", device="cpu")
    facts["loader"] = {"managed": managed.is_managed(base), "class": type(base).__name__,
                       "load_device": str(base.load_device), "offload_device": str(base.offload_device),
                       "pinned_layers": managed.make_streamable(load_cvd_model(
                           unet=models / "checkpoints" / files["checkpoint"],
                           motion_module=models / "animatediff_models" / files["motion_module"],
                           cameractrl=models / "cvd" / files["cameractrl"], cvd=models / "cvd" / files["cvd"]))}

    knobs = dict(strength=0.3, window=6, window_mode="fixed", block_start=0, block_end=-1, start_percent=0.0,
                 end_percent=1.0, apply_to="both", token_scope="all", preserve_norm=True)

    def copies(model):
        lora = lora_node.run(cvd_model=model, lora_name="animatediff-laion", strength=1.0).values[0]
        cache = cache_node.run(model=model, **knobs).values[0]
        both = cache_node.run(model=lora, **knobs).values[0]
        return {"base": model, "lora": lora, "cache": cache, "lora_cache": both}

    def sample(model, seed=7):
        kwargs = dict(cameras=make_preset_rig("circle", VIEWS, FRAMES, SIZE, SIZE), positive=_conditioning(1),
                      negative=_conditioning(2), seed=seed, steps=1, cfg=1.0, scheduler="ddim",
                      strategy="random", recurrence=1, max_batch=0, denoise=1.0)
        return sampler.run(cvd_model=model, **kwargs).values[0]["samples"]

    managed_models, plain_models = copies(base), copies(plain)
    reference = {name: sample(m) for name, m in plain_models.items()}
    order = ["base", "lora", "base", "cache", "lora_cache", "base"]  # clone switches: weights and attributes
    facts["same_outputs"] = [[name, bool(torch.equal(sample(managed_models[name]), reference[name]))]
                             for name in order]
    facts["copies_differ"] = {name: bool(not torch.equal(reference[name], reference["base"]))
                              for name in ("lora", "cache", "lora_cache")}

    # memory of the copies: one set of weights, plus the LoRA's factors
    report = managed.memory_report()
    factors = node("mcm").read_adapter_factors("animatediff-laion")
    lora_patcher = managed_models["lora"]
    patched_keys = set(lora_patcher.patches)
    state = base.model.state_dict()
    facts["memory"] = {
        "pack_weights": report["pack_weights"], "model_size": int(base.model_size()),
        "lora_factor_bytes": sum(t.nelement() * t.element_size() for f in factors.values() for t in (f.up, f.down)),
        "lora_patched_weight_bytes": sum(state[k].nelement() * state[k].element_size() for k in patched_keys),
        "lora_patches": len(patched_keys), "cache_object_patches": sorted(managed_models["cache"].object_patches),
        "loaded_kinds": [m["pack_kind"] for m in report["loaded_models"]],
    }
    # at strength 1 the loaded LoRA weights are bitwise the merged ones (the outputs above); at another
    # strength ComfyUI multiplies (strength * alpha/r) * (up @ down), which can round in the last bit
    merged = {}
    for strength in (1.0, 0.5):
        clone = lora_node.run(cvd_model=base, lora_name="animatediff-laion", strength=strength).values[0]
        loaded = {k: v.clone() for k, v in managed.compute_model(clone).state_dict().items()}
        copy = lora_node.run(cvd_model=plain, lora_name="animatediff-laion", strength=strength).values[0]
        reference_weights = copy.state_dict()
        merged[str(strength)] = max(float((loaded[k] - reference_weights[k]).abs().max()) for k in clone.patches)
    facts["lora_weights_max_diff"] = merged

    # what POST /free does: unload everything; the next run loads again, with the same result
    mm.unload_all_models()
    facts["after_free"] = {"loaded_models": len(mm.current_loaded_models),
                           "backups": sum(len(p.backup) for p in managed_models.values()),
                           "object_patches_applied": managed_models["cache"].model.unet.__dict__.get("feature_cache")
                           is not None}
    facts["rerun_same"] = bool(torch.equal(sample(managed_models["lora_cache"]), reference["lora_cache"]))
    facts["rerun_loaded_kinds"] = [managed.kind_of(e.model.model) for e in mm.current_loaded_models]
    mm.unload_all_models()

    # low VRAM: ComfyUI's partial load with a weight budget of a third of the model
    budget = int(base.model_size() // 3)
    partial = {}
    for name in ("base", "lora"):
        entry = mm.LoadedModel(managed_models[name])
        entry.model_load(lowvram_model_memory=budget)
        module = managed_models[name].model
        streaming = [n for n, m in module.named_modules() if getattr(m, "comfy_cast_weights", False)]
        with_patch = [n for n, m in module.named_modules() if getattr(m, "weight_function", None)]
        partial[name] = {"streaming_layers": len(streaming), "layers_with_lowvram_patch": len(with_patch),
                         "lowvram": bool(getattr(module, "model_lowvram", False) or
                                         getattr(managed_models[name], "model_lowvram", False)),
                         "same_output": bool(torch.equal(sample(module), reference[name]))}
        managed_models[name].unpatch_model(managed_models[name].offload_device)
        # ComfyUI 2024's cast returns the stored weight itself when source and target coincide (only
        # ever on a CPU, which ComfyUI never runs in low-VRAM mode): its LoRA patch then lands in the
        # stored weight. Recorded, so the test can tell this upstream quirk from a regression.
        restored = module.state_dict()
        partial[name]["weights_intact"] = all(torch.equal(restored[k], v) for k, v in plain.state_dict().items())
    facts["lowvram"] = partial

    # buffers and layers ComfyUI does not stream follow the compute device after a partial load
    probe = load_cvd_model(unet=models / "checkpoints" / files["checkpoint"],
                           motion_module=models / "animatediff_models" / files["motion_module"],
                           cameractrl=models / "cvd" / files["cameractrl"], cvd=models / "cvd" / files["cvd"])
    managed.make_streamable(probe)
    managed._place_unstreamed(probe, torch.device("meta"))
    facts["place_unstreamed"] = {
        "buffers_on_meta": all(b.device.type == "meta" for b in probe.buffers()),
        "streamable_params_kept": all(p.device.type == "cpu" for p in probe.parameters())}

    # CV-VAE: managed vs plain through the encode/decode nodes (tiled), then streamed
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(REPO / "examples" / "frames" / "moving_shapes_9f.png") as animation:  # 9 frames, 64x64
        frames = [np.asarray(f.convert("RGB"), dtype=np.float32) / 255.0 for f in ImageSequence.Iterator(animation)]
    images = torch.from_numpy(np.stack(frames[:5]))[:, 16:48, 16:48].contiguous()  # 5 frames of 32x32: cheap
    vae = vae_nodes.LOADER.run(vae_name="vae3d_v1-1", dtype="auto").values[0]
    vae_plain = load_cvvae(str(models / "cvvae" / "vae3d_v1-1"), dtype="fp32", device="cpu")
    # manual tiles (several tiles and windows); `auto`, sized from ComfyUI's free memory, runs through the server test
    tilings = {"manual": ("manual", 16, 0.25, 4)}

    def roundtrip(model, tiling):
        mode, tile, overlap, chunk = tilings[tiling]
        latent = vae_nodes.ENCODE.run(cvvae=model, images=images, views=1, pad_frames=False, tiling=mode,
                                      tile_size=tile, tile_overlap=overlap, temporal_chunk=chunk).values[0]
        frames_out = vae_nodes.DECODE.run(cvvae=model, latent=latent, tiling=mode, tile_size=tile,
                                          tile_overlap=overlap, temporal_chunk=chunk).values[0]
        return latent["samples"], frames_out

    facts["cvvae"] = {"managed": managed.is_managed(vae), "load_device": str(vae.load_device),
                      "pinned_layers": managed.make_streamable(load_cvvae(str(models / "cvvae" / "vae3d_v1-1")))}
    for tiling in tilings:
        ours, theirs = roundtrip(vae, tiling), roundtrip(vae_plain, tiling)
        facts["cvvae"][f"same_{tiling}"] = bool(torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]))
    mm.unload_all_models()
    entry = mm.LoadedModel(vae)
    entry.model_load(lowvram_model_memory=int(vae.model_size() // 3))
    streamed = roundtrip(vae.model, "manual")
    facts["cvvae"]["lowvram_streaming_layers"] = sum(bool(getattr(m, "comfy_cast_weights", False))
                                                     for m in vae.model.modules())
    facts["cvvae"]["lowvram_same"] = bool(all(torch.equal(a, b) for a, b in zip(streamed, roundtrip(vae_plain,
                                                                                                   "manual"))))
    vae.unpatch_model(vae.offload_device)
    mm.unload_all_models()
    facts["accounting"] = accounting_checks(mm, node, base, vae, images)
    return facts


def accounting_checks(mm, node, cvd_model, vae, images) -> dict:
    """``max_batch = 0`` and CV-VAE ``auto`` tiles are sized from ComfyUI's count of free memory.

    ``load_models_gpu`` is spied on (what each node asks ComfyUI to make room for) and, only after it
    returned, ``get_free_memory`` answers a chosen figure: the rows per denoiser call and the tile budget
    the nodes then use must follow that figure (two figures, two different plans), as the core's own
    formulas compute them from it. ComfyUI's loading itself sees its real accounting.
    """
    import functools
    import inspect

    import torch
    from cvd_core.camera import make_preset_rig
    from cvd_core.cvvae import memory_estimate, usable_bytes
    from cvd_core.sampling.batching import estimate_max_batch, estimate_row_bytes

    sampling, vae_nodes = node("sampling"), node("vae")
    real_load, real_free = mm.load_models_gpu, mm.get_free_memory
    figure, asked, used = {"bytes": 0}, [], []

    def reported_free(dev=None, torch_free_too=False):
        return real_free(dev, torch_free_too) if torch_free_too else figure["bytes"]

    @functools.wraps(real_load)  # keeps the signature: the pack checks it for minimum_memory_required
    def load_models_gpu(models, memory_required=0, *args, **kwargs):
        asked.append({"memory_required": int(memory_required), "minimum": kwargs.get("minimum_memory_required")})
        mm.get_free_memory = real_free
        try:
            return real_load(models, memory_required, *args, **kwargs)
        finally:
            mm.get_free_memory = reported_free

    def spy(module, name, record):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            used.append(record(args, kwargs))
            return real(*args, **kwargs)
        setattr(module, name, wrapper)
        return real

    real_sample = spy(sampling, "multiview_loop", lambda a, k: {"max_batch": a[0].max_batch})
    real_encode = spy(vae_nodes, "encode_video",
                      lambda a, k: {"budget": k["memory_budget"], "shape": list(a[1].shape), "tiling": k["tiling"]})
    mm.load_models_gpu, mm.get_free_memory = load_models_gpu, reported_free
    views, rig = 3, make_preset_rig("circle", 3, FRAMES, SIZE, SIZE)
    module = cvd_model.model
    rows = sampling.rows_needed(rig, "random", 7, False)
    per_row = estimate_row_bytes(sampling._view_shape(rig), module.dtype)
    out = {"sampler": [], "cvvae": [], "rows": rows}
    try:
        for free in (1 << 40, 3 * per_row):  # everything fits / only the smallest call (2 rows) fits
            figure["bytes"] = free
            asked.clear(), used.clear()
            sampling.SAMPLER.run(cvd_model=cvd_model, cameras=rig, positive=_conditioning(1), negative=_conditioning(2),
                                 seed=7, steps=1, cfg=1.0, scheduler="ddim", strategy="random", recurrence=1,
                                 max_batch=0, denoise=1.0)
            wanted, least = sampling.memory_need(rig, rows, 0, module.dtype)
            out["sampler"].append({
                "free": free, "max_batch": used[0]["max_batch"],
                "expected_max_batch": estimate_max_batch(sampling._view_shape(rig), free, rows, views, module.dtype),
                "asked": asked[0], "expected_memory_required": wanted, "expected_minimum": least})
        for free in (1 << 40, 1):  # whole frames / the smallest tiles
            figure["bytes"] = free
            asked.clear(), used.clear()
            vae_nodes.ENCODE.run(cvvae=vae, images=images, views=1, pad_frames=False, tiling="auto", tile_size=0,
                                 tile_overlap=0.25, temporal_chunk=0)
            need, least = memory_estimate(vae.model, used[0]["shape"], "encode", used[0]["tiling"])
            out["cvvae"].append({"free": free, "budget": used[0]["budget"],
                                 "expected_budget": usable_bytes(free, torch.device(vae.load_device)),
                                 "asked": asked[0], "expected_memory_required": need, "expected_minimum": least})
    finally:
        mm.load_models_gpu, mm.get_free_memory = real_load, real_free
        sampling.multiview_loop, vae_nodes.encode_video = real_sample, real_encode
    out["minimum_supported"] = "minimum_memory_required" in inspect.signature(real_load).parameters
    return out


def main(argv) -> int:
    comfy_root, out = Path(argv[1]), Path(argv[2])
    with tempfile.TemporaryDirectory() as work:
        facts = run_checks(comfy_root, Path(work))
    out.write_text(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
