"""The CVD model and the CV-VAE under ComfyUI's model management, seen through ComfyUI itself.

Two views of the same thing:

- through the real server (``GET /cvd/memory`` is model management's own list of loaded models):
  before a run nothing of the pack is loaded, while the sampler runs and after the run ComfyUI holds
  the pack's models like its own, patched copies (MCM LoRA, feature cache) add no second weight set,
  ``POST /free`` unloads them, and re-running the sampler loads them again with bit-identical
  outputs, which equal the node functions on plain modules in this process (the pack's path before
  model management, still its path outside ComfyUI) to within 16 float32 ulps (``_process_floor``);
- in one process against each ComfyUI version's model-management code (2024-03 and 0.3.64):
  ``tests/support/managed_inprocess.py`` switches patched clones back and forth, frees, reloads and
  partially loads (low-VRAM streaming) with a weight budget, and compares every output bitwise.

VRAM itself cannot be seen on a CPU (``--cpu`` disables ComfyUI's VRAM modes): the GPU figures come
from ``benchmarks/memory_check.py`` on a GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.comfy_harness import PACK_ROOT
from tests.support.memory_probe import free, loaded_model, memory, pack_loaded, run_polling, saved_latent

pytestmark = pytest.mark.integration

VIEWS, FRAMES, SIZE = 2, 2, 64
ZERO_TEXT = torch.zeros(1, 77, 768)  # ConditioningZeroOut of any CLIP-L prompt: reproducible outside the server
FEATURE_CACHE = dict(strength=0.3, window=6, window_mode="fixed", block_start=0, block_end=-1, start_percent=0.0,
                     end_percent=1.0, apply_to="both", token_scope="all", preserve_norm=True, cache_target="layers")
MODEL_FILES = dict(checkpoint="v1-5-pruned-emaonly.safetensors", motion_module="v3_sd15_mm.ckpt", adapter="none",
                   adapter_scale=1.0, cameractrl="CameraCtrl.ckpt", cvd="CVD.ckpt", dtype="auto")
CAMERAS = dict(preset="circle", views=VIEWS, frames=FRAMES, width=SIZE, height=SIZE, camera_dist=0.5, speed=1.0,
               angle_deg=30.0, fov_deg=0.0, perturb=0.0, perturb_seed=0, custom_json="")


def _prompt(max_batch: int = 0, tile_overlap: float = 0.25) -> dict:
    """CVD loader -> MCM LoRA -> feature cache -> sampler -> SaveLatent, and CV-VAE encode/decode.

    ``max_batch`` 0 and 2 (and ``tile_overlap`` with tiling ``none``) give the very same computation:
    changing them makes ComfyUI run the sampler and the encoder again while its cached models stay.
    (Not ``auto``: its tiles follow free memory, which differs between the server and this process on a
    loaded machine, and differently placed tiles round differently.)"""
    from nodes.camera import CAMERA_TRAJECTORY

    cameras = {i.name: i.default for i in CAMERA_TRAJECTORY.inputs if not i.optional}
    cameras.update(CAMERAS)
    return {
        "1": {"class_type": "CVD_ModelLoader", "inputs": dict(MODEL_FILES)},
        "2": {"class_type": "CVD_MCMLoraLoader", "inputs": {"cvd_model": ["1", 0], "lora_name": "animatediff-laion",
                                                             "strength": 1.0}},
        "3": {"class_type": "CVD_FeatureCacheEnhancerCVD", "inputs": {"model": ["2", 0], **FEATURE_CACHE}},
        "4": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a room", "clip": ["4", 0]}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "CVD_CameraTrajectory", "inputs": cameras},
        "8": {"class_type": "CVD_MultiViewSampler", "inputs": {
            "cvd_model": ["3", 0], "cameras": ["7", 0], "positive": ["6", 0], "negative": ["6", 0], "seed": 7,
            "steps": 3, "cfg": 1.0, "scheduler": "ddim", "strategy": "random", "recurrence": 1,
            "max_batch": max_batch, "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "cvd_memory/sampled"}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "moving_shapes_9f.png"}},
        "11": {"class_type": "CVD_CVVAELoader", "inputs": {"vae_name": "vae3d_v1-1", "dtype": "auto"}},
        "12": {"class_type": "CVD_CVVAEEncode", "inputs": {
            "cvvae": ["11", 0], "images": ["10", 0], "views": 1, "pad_frames": False, "tiling": "none",
            "tile_size": 0, "tile_overlap": tile_overlap, "temporal_chunk": 0}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "cvd_memory/encoded"}},
    }


def _reference(server):
    """The same sampling and encoding by the node functions on plain modules in this process (no ComfyUI
    here: the pack's unmanaged path, i.e. its behaviour before model management)."""
    from PIL import Image, ImageSequence

    from cvd_core.cvd import load_cvd_model
    from cvd_core.cvvae import load_cvvae
    from nodes.camera import CAMERA_TRAJECTORY
    from nodes.feature_cache import ENHANCER_CVD
    from cvd_core.mcm import load_peft_adapter, lora_deltas
    from nodes.mcm import merged_copy
    from nodes.sampling import SAMPLER
    from nodes.vae import ENCODE

    models = server.models_dir
    plain = load_cvd_model(unet=models / "checkpoints" / MODEL_FILES["checkpoint"],
                           motion_module=models / "animatediff_models" / MODEL_FILES["motion_module"],
                           cameractrl=models / "cvd" / MODEL_FILES["cameractrl"], cvd=models / "cvd" / MODEL_FILES["cvd"],
                           dtype="fp32", device="cpu")
    lora, _ = merged_copy(plain, lora_deltas(*load_peft_adapter(models / "mcm" / "animatediff-laion")), 1.0)
    cached = ENHANCER_CVD.run(model=lora, **FEATURE_CACHE).values[0]
    cameras = {i.name: i.default for i in CAMERA_TRAJECTORY.inputs if not i.optional}
    cameras.update(CAMERAS)
    rig = CAMERA_TRAJECTORY.run(**cameras).values[0]
    zero = [[ZERO_TEXT.clone(), {}]]
    sampled = SAMPLER.run(cvd_model=cached, cameras=rig, positive=zero, negative=zero, seed=7, steps=3, cfg=1.0,
                          scheduler="ddim", strategy="random", recurrence=1, max_batch=0,
                          denoise=1.0).values[0]["samples"]
    with Image.open(server.input_dir / "moving_shapes_9f.png") as animation:  # what LoadImage reads
        frames = [np.asarray(f.convert("RGB")).astype(np.float32) / 255.0 for f in ImageSequence.Iterator(animation)]
    vae = load_cvvae(str(models / "cvvae" / "vae3d_v1-1"), dtype="fp32", device="cpu")
    encoded = ENCODE.run(cvvae=vae, images=torch.from_numpy(np.stack(frames)), views=1, pad_frames=False,
                         tiling="none", tile_size=0, tile_overlap=0.25, temporal_chunk=0).values[0]["samples"]
    return sampled, encoded


def test_model_management_view_before_during_after_and_after_free(each_comfy_server):
    comfy_server = each_comfy_server
    before = free(comfy_server, clear_cache=True)
    assert before["device"] == "cpu" and before["vram_state"] == "DISABLED"  # --cpu: no VRAM mode applies
    assert not pack_loaded(before), before["loaded_models"]

    # a loader alone registers its model with ComfyUI but loads nothing onto the compute device
    info_prompt = {"1": {"class_type": "CVD_ModelLoader", "inputs": dict(MODEL_FILES)},
                   "2": {"class_type": "CVD_ModelInfo", "inputs": {"cvd_model": ["1", 0]}}}
    info = json.loads(comfy_server.run(info_prompt)["outputs"]["2"]["text"][0])
    assert info["memory"]["managed"] is True and info["memory"]["loaded"] is False
    assert not pack_loaded(memory(comfy_server))

    entry, snapshots, _ = run_polling(comfy_server, _prompt())
    during = [s for s in snapshots if any(c["kind"] == "cvd_model" for c in s["computing"])]
    assert during, f"no /cvd/memory answer while the sampler computed ({len(snapshots)} polls)"
    computing = loaded_model(during[0], "cvd_model")
    assert computing["load_device"] == "cpu" and computing["loaded_bytes"] == computing["size_bytes"]
    after = memory(comfy_server)
    assert pack_loaded(after) == ["cvd_model", "cvvae"], after["loaded_models"]  # kept loaded, like core models
    loaded = loaded_model(after, "cvd_model")
    group = next(g for g in after["pack_modules"] if g["module"] == loaded["module"])
    # the base model, its LoRA copy and the feature-cache copy of that: one module, its weights once
    assert group["patchers"] == 3 and group["weight_bytes"] == group["state_dict_bytes"] == loaded["size_bytes"]
    from cvd_core.mcm import load_peft_adapter, lora_factors

    factors = lora_factors(*load_peft_adapter(comfy_server.models_dir / "mcm" / "animatediff-laion"))
    factor_bytes = sum(t.nelement() * t.element_size() for f in factors.values() for t in (f.up, f.down))
    assert 0 < group["patch_bytes"] <= factor_bytes  # the copies hold the LoRA's low-rank factors, once
    copies = [m for m in after["pack_models"] if m["module"] == loaded["module"]]
    assert sorted(m["patches"] > 0 for m in copies) == [False, True, True]
    assert sorted(m["object_patches"] != [] for m in copies) == [False, False, True]

    freed = free(comfy_server)
    mine = [m for m in freed["pack_models"] if m["module"] == loaded["module"]]
    assert len(mine) == 3 and not any(m["loaded"] or m["loaded_bytes"] for m in mine)  # cached, only unloaded
    assert all(g["backup_bytes"] == 0 for g in freed["pack_modules"])

    again = comfy_server.run(_prompt(max_batch=2, tile_overlap=0.3), timeout=300)
    assert pack_loaded(memory(comfy_server)) == ["cvd_model", "cvvae"]  # loaded again, transparently
    first = (saved_latent(comfy_server, entry, "9"), saved_latent(comfy_server, entry, "13"))
    second = (saved_latent(comfy_server, again, "9"), saved_latent(comfy_server, again, "13"))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

    sampled, encoded = _reference(comfy_server)
    for served, here in zip(first, (sampled, encoded)):
        assert float((served - here).abs().max()) <= _process_floor(here), float((served - here).abs().max())


def _process_floor(reference: torch.Tensor) -> float:
    """Same computation, another process: 16 float32 ulps of the largest value. The server's weights sit
    at other addresses than this process's, and on AVX-512 CPUs the kernels can round differently by
    memory alignment (measured on a Xeon with AMX: 8.6e-6 at a largest value of 14, i.e. 5 ulps;
    0 on the AMD EPYC VM). Inside one process the runs above stay bit-identical."""
    return 16 * torch.finfo(torch.float32).eps * float(reference.abs().max())


# ------------------------------------------------------------------------------ in-process, both versions

@pytest.fixture(scope="session", params=["2024", "0.3.64"])
def inprocess_facts(request, tmp_path_factory):
    root = request.getfixturevalue("comfyui_2024_source" if request.param == "2024" else "comfyui_v3_source")
    out = tmp_path_factory.mktemp("managed") / "facts.json"
    result = subprocess.run([sys.executable, "-m", "tests.support.managed_inprocess", str(root), str(out)],
                            cwd=PACK_ROOT, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return request.param, json.loads(out.read_text())


def test_nodes_give_bit_identical_outputs_through_managed_models(inprocess_facts):
    version, facts = inprocess_facts
    assert facts["loader"]["managed"] and facts["loader"]["class"] == "ModelPatcher"
    assert facts["loader"]["pinned_layers"] == [] and facts["cvvae"]["pinned_layers"] == []  # every layer streams
    assert all(facts["copies_differ"].values())  # the copies compute something else than the base ...
    assert [name for name, same in facts["same_outputs"] if not same] == []  # ... and exactly what they did before
    assert facts["lora_weights_max_diff"]["1.0"] == 0.0
    assert facts["lora_weights_max_diff"]["0.5"] <= 1e-6  # other strengths: at most the last bit of a weight
    assert facts["cvvae"]["managed"] and facts["cvvae"]["same_manual"]


def test_patched_copies_share_the_weights_and_free_unloads(inprocess_facts):
    version, facts = inprocess_facts
    memory = facts["memory"]
    weights = memory["pack_weights"]
    assert weights["patchers"] >= 4 and weights["modules"] == 1  # base, LoRA, cache, LoRA+cache: one module
    assert weights["weight_bytes"] == memory["model_size"]  # no second weight set
    assert weights["patch_bytes"] == memory["lora_factor_bytes"]  # the LoRA copies keep only its factors
    assert memory["lora_factor_bytes"] < memory["lora_patched_weight_bytes"] / 2
    assert memory["cache_object_patches"] == ["unet.feature_cache", "unet.feature_cache_target"]
    assert facts["after_free"] == {"loaded_models": 0, "backups": 0, "object_patches_applied": False}
    assert facts["rerun_same"] and facts["rerun_loaded_kinds"] == ["cvd_model"]


def test_low_vram_partial_load_streams_layers_with_the_same_outputs(inprocess_facts):
    version, facts = inprocess_facts
    for name, partial in facts["lowvram"].items():
        assert partial["lowvram"] and partial["streaming_layers"] > 0, (name, partial)
        assert partial["same_output"], (name, partial)
    assert facts["lowvram"]["lora"]["layers_with_lowvram_patch"] > 0  # LoRA applied per call on streamed layers
    assert facts["lowvram"]["base"]["weights_intact"]
    if version != "2024":  # see managed_inprocess.py: ComfyUI 2024 on a CPU adds the patch into the stored weight
        assert facts["lowvram"]["lora"]["weights_intact"]
    assert facts["place_unstreamed"] == {"buffers_on_meta": True, "streamable_params_kept": True}
    assert facts["cvvae"]["lowvram_streaming_layers"] > 0 and facts["cvvae"]["lowvram_same"]


def test_max_batch_and_auto_tiles_follow_comfyuis_count_of_free_memory(inprocess_facts):
    version, facts = inprocess_facts
    accounting = facts["accounting"]
    for kind, used in (("sampler", "max_batch"), ("cvvae", "budget")):
        runs = accounting[kind]
        for run in runs:  # what the node asked ComfyUI to make room for, and what it then used
            assert run["asked"]["memory_required"] == run["expected_memory_required"] > 0, (kind, run)
            if accounting["minimum_supported"]:  # ComfyUI 0.3.x: the least the node can work with
                assert run["asked"]["minimum"] == run["expected_minimum"] > 0, (kind, run)
            assert run[used] == run[f"expected_{used}"], (kind, run)
        assert runs[0][used] != runs[1][used], (kind, runs)  # another free figure, another plan
    assert [r["max_batch"] for r in accounting["sampler"]] == [accounting["rows"], 2]
    assert accounting["minimum_supported"] == (version != "2024")
