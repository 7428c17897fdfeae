"""The feature-cache enhancer in the real ComfyUI: a small SD1.5-shaped checkpoint through the core
KSampler with and without the patch, and the CVD variant passing a CVD_MODEL through."""

import copy
import json

import pytest
import torch
from safetensors.torch import load as load_safetensors

from tests.support.comfy_harness import ComfyError, output_files
from tests.support.pack_info import api_workflows

pytestmark = pytest.mark.integration

ENHANCER, SAMPLER = "5", "7"


def _workflow():
    return next(prompt for name, prompt, _ in api_workflows() if name == "sd15_feature_cache")


def _run(server, tag, enhancer=True, **knobs):
    """Run the shipped workflow (optionally without the enhancer); return its latent and PNG bytes."""
    prompt = copy.deepcopy(_workflow())
    if enhancer:
        prompt[ENHANCER]["inputs"].update(knobs)
    else:
        del prompt[ENHANCER]
        prompt[SAMPLER]["inputs"]["model"] = ["1", 0]
    prompt["10"]["inputs"]["filename_prefix"] = f"cvd_feature_cache_test/{tag}"
    prompt["11"] = {"class_type": "SaveLatent",
                    "inputs": {"samples": [SAMPLER, 0], "filename_prefix": f"latents/cvd_feature_cache_test/{tag}"}}
    files = output_files(server.run(prompt, timeout=300))
    latent_file, = files["11"]
    image_file, = files["10"]
    latent = load_safetensors(server.view(latent_file["filename"], latent_file["subfolder"]))["latent_tensor"]
    image = server.view(image_file["filename"], image_file["subfolder"])
    return latent, image


@pytest.fixture(scope="module")
def baseline(comfy_server):
    return _run(comfy_server, "plain", enhancer=False)


def test_checkpoint_is_recognised_as_sd15(comfy_server, baseline):
    latent, _ = baseline
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()
    log = comfy_server.log_text()
    assert "no match" not in log and "clip missing" not in log


def test_strength_zero_is_bit_identical(comfy_server, baseline):
    latent, image = _run(comfy_server, "zero", strength=0.0, end_percent=1.0)
    assert torch.equal(latent, baseline[0])
    assert image == baseline[1] or _same_pixels(image, baseline[1])


def test_positive_strength_changes_the_result(comfy_server, baseline):
    strong, _ = _run(comfy_server, "strong", strength=0.3, end_percent=1.0)
    assert torch.isfinite(strong).all()
    assert (strong - baseline[0]).abs().max() > 1e-3
    default, _ = _run(comfy_server, "default")  # the shipped settings: 0.1, blocks 7-19, first 60 % of the steps
    assert (default - baseline[0]).abs().max() > 1e-5
    assert (default - strong).abs().max() > 1e-5


def test_one_guidance_branch_and_sliding_windows(comfy_server, baseline):
    uncond, _ = _run(comfy_server, "uncond", strength=0.3, end_percent=1.0, apply_to="uncond", window_mode="sliding")
    both, _ = _run(comfy_server, "both", strength=0.3, end_percent=1.0, window_mode="sliding")
    assert (uncond - baseline[0]).abs().max() > 1e-4 and (uncond - both).abs().max() > 1e-4


def test_bad_block_range_names_the_rule(comfy_server):
    prompt = copy.deepcopy(_workflow())
    prompt[ENHANCER]["inputs"].update(block_start=12, block_end=8)
    with pytest.raises(ComfyError) as caught:
        comfy_server.run(prompt, timeout=120)
    assert "block_end must be -1" in str(caught.value)


def test_cvd_variant_passes_a_cvd_model_through(comfy_server):
    info_prompt = next(prompt for name, prompt, _ in api_workflows() if name == "cvd_model_info")
    prompt = copy.deepcopy(info_prompt)
    prompt["3"] = {"class_type": "CVD_FeatureCacheEnhancerCVD",
                   "inputs": {"model": ["1", 0], "strength": 0.2, "window": 6, "window_mode": "fixed",
                              "block_start": 7, "block_end": 19, "start_percent": 0.0, "end_percent": 0.6,
                              "apply_to": "both", "token_scope": "all", "preserve_norm": True}}
    prompt["2"]["inputs"]["cvd_model"] = ["3", 0]
    entry = comfy_server.run(prompt, timeout=300)
    info = json.loads(entry["outputs"]["2"]["text"][0])
    assert info["cross_view_modules"] is True and info["total_parameters"] > 0


def _cvd_latent(server, tag, enhancer=True, **knobs):
    """The shipped CVD workflow cut to 2 sampler steps, ending in a saved latent."""
    prompt = copy.deepcopy(next(p for name, p, _ in api_workflows() if name == "cvd_feature_cache"))
    for node in ("8", "9", "10", "11"):  # decode and video saving: not needed to compare latents
        del prompt[node]
    prompt["7"]["inputs"]["steps"] = 2
    if enhancer:
        prompt["12"]["inputs"].update(knobs)
    else:
        del prompt["12"]
        prompt["7"]["inputs"]["cvd_model"] = ["1", 0]
    prompt["20"] = {"class_type": "SaveLatent",
                    "inputs": {"samples": ["7", 0], "filename_prefix": f"latents/cvd_feature_cache_test/cvd_{tag}"}}
    item, = output_files(server.run(prompt, timeout=300))["20"]
    return load_safetensors(server.view(item["filename"], item["subfolder"]))["latent_tensor"]


def test_cvd_sampler_with_the_enhancer(comfy_server):
    plain = _cvd_latent(comfy_server, "plain", enhancer=False)
    assert plain.dim() == 5 and plain.shape[0] == 2  # [views, 4, frames, h, w]
    assert torch.equal(_cvd_latent(comfy_server, "zero", strength=0.0, end_percent=1.0), plain)
    strong = _cvd_latent(comfy_server, "strong", strength=0.3, end_percent=1.0)
    assert torch.isfinite(strong).all() and (strong - plain).abs().max() > 1e-4
    # one guidance branch: the sampler tells the backbone which rows are cond
    cond_only = _cvd_latent(comfy_server, "cond", strength=0.3, end_percent=1.0, apply_to="cond")
    assert torch.isfinite(cond_only).all()
    assert (cond_only - plain).abs().max() > 1e-4 and (cond_only - strong).abs().max() > 1e-4
    # windows of motion-module outputs instead of layer outputs
    temporal = _cvd_latent(comfy_server, "motion", strength=0.3, end_percent=1.0, cache_target="motion_modules")
    assert torch.isfinite(temporal).all()
    assert (temporal - plain).abs().max() > 1e-4 and (temporal - strong).abs().max() > 1e-4


def _same_pixels(a: bytes, b: bytes) -> bool:
    import io

    import numpy as np
    from PIL import Image

    return np.array_equal(np.asarray(Image.open(io.BytesIO(a))), np.asarray(Image.open(io.BytesIO(b))))
