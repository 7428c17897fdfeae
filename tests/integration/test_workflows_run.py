"""Every shipped workflow runs in both real ComfyUI generations (2024-03 and 0.3.64) and produces the files
it declares. The start-latent workflows (docs/masks.md) also save their latents (SaveLatent), and their
bit-identity claims are checked on those files."""

import copy
import io

import pytest
from PIL import Image

import torch
from safetensors.torch import load as load_safetensors

from tests.support.comfy_harness import output_files
from tests.support.pack_info import CURRENT_ONLY_WORKFLOWS, RUN_ON_2024_BY_TESTS, api_workflows, needs_current_comfyui

pytestmark = pytest.mark.integration

WORKFLOWS = api_workflows()
WORKFLOWS_BY_NAME = {w[0]: w[1] for w in WORKFLOWS}


def _strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.fixture(scope="module")
def queued_ahead():
    """``{(server url, workflow name): prompt id}`` of runs queued before their own test (see below)."""
    return {}


def _current_server_alongside(request):
    """While a 2024 test runs: the 0.3.64 server, if this session also runs that workflow there, else None.

    A ComfyUI running these tiny-weight workflows keeps about one core busy; CI has two. So the 2024 test
    also queues its workflow on 0.3.64, which computes it meanwhile, and the 0.3.64 test (later: pytest
    groups the tests by server) only collects the result. The backlog on 0.3.64 stays about one workflow.
    """
    if request.node.callspec.params.get("each_comfy_server") != "2024":
        return None
    name = request.node.callspec.params["name"]
    wanted = any(getattr(item, "originalname", None) == request.node.originalname
                 and item.callspec.params.get("each_comfy_server") == "0.3.64" and item.callspec.params.get("name") == name
                 for item in request.session.items)
    if not wanted:
        return None
    try:
        return request.getfixturevalue("comfy_server_v3")
    except (pytest.skip.Exception, pytest.fail.Exception, RuntimeError):
        return None  # the 0.3.64 tests themselves report why


@pytest.mark.parametrize("name,prompt,ui", WORKFLOWS, ids=[w[0] for w in WORKFLOWS])
def test_workflow_runs_and_writes_outputs(request, each_comfy_server, queued_ahead, name, prompt, ui):
    server = each_comfy_server
    alongside = _current_server_alongside(request)
    if alongside is not None:  # also for the workflows skipped on 2024 below: 0.3.64 starts them now
        queued_ahead[(alongside.url, name)] = alongside.queue(prompt, workflow=ui)
    on_2024 = request.node.callspec.params.get("each_comfy_server") == "2024"
    if on_2024 and needs_current_comfyui(prompt):
        pytest.skip(f"{name} uses SamplerCustomAdvanced (GUIDER sampling), which ComfyUI 2024-03 lacks")
    if on_2024 and name in CURRENT_ONLY_WORKFLOWS:
        pytest.skip(f"{name} runs on ComfyUI 0.3.64 only ({CURRENT_ONLY_WORKFLOWS[name]}; nothing in it differs "
                    "between the generations)")
    prompt_id = queued_ahead.pop((server.url, name), None) or server.queue(prompt, workflow=ui)
    entry = server.wait(prompt_id, timeout=600)
    files = output_files(entry)
    save_nodes = [k for k, v in prompt.items() if v["class_type"] in ("SaveImage", "CVD_SaveMultiViewVideo")]
    for node_id in save_nodes:
        assert files.get(node_id), f"{name}: node {node_id} wrote no file; outputs: {entry.get('outputs')}"
    for node_id, items in files.items():
        for item in items:
            data = server.view(item["filename"], item.get("subfolder", ""), item.get("type", "output"))
            assert len(data) > 100, f"{name}: {item} is empty"
            if item["filename"].endswith(".png"):
                image = Image.open(io.BytesIO(data))
                image.load()
                assert image.size[0] >= 64 and image.size[1] >= 64
                extrema = image.convert("L").getextrema()
                assert extrema[1] - extrema[0] > 20, f"{name}: {item['filename']} looks blank"
    check = LATENT_CHECKS.get(name)
    if check is not None:
        check(prompt, {node_id: _saved_latent(server, items) for node_id, items in files.items()
                       if prompt[node_id]["class_type"] == "SaveLatent"})


def test_long_video_windows_on_2024_shortened(comfy_server):
    """cvd_long_video runs on 0.3.64 only; its context node (V1 class on 2024-03) runs here on 2 views x 24
    frames (two windows of 16/4), up to the sampler's latent."""
    assert "CVD_ContextOptions" in RUN_ON_2024_BY_TESTS
    prompt = copy.deepcopy(WORKFLOWS_BY_NAME["cvd_long_video"])
    cameras = next(k for k, v in prompt.items() if v["class_type"] == "CVD_CameraTrajectory")
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "CVD_MultiViewSampler")
    assert isinstance(prompt[sampler]["inputs"].get("context"), list)
    prompt[cameras]["inputs"].update(views=2, frames=24)
    prompt = {k: v for k, v in prompt.items() if v["class_type"] not in ("CVD_LatentFramesToImageLatents", "VAELoader",
                                                                         "VAEDecode", "CVD_SaveMultiViewVideo")}
    prompt["90"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": "long_2024"}}
    latent = _saved_latent(comfy_server, output_files(comfy_server.run(prompt, timeout=600))["90"])
    assert latent.shape == (2, 4, 24, 8, 8) and torch.isfinite(latent).all() and latent.std() > 0.1


# ------------------------------------------------------------------------------ start latents and masks

def _saved_latent(server, items):
    (item,) = items
    data = server.view(item["filename"], item.get("subfolder", ""), item.get("type", "output"))
    return load_safetensors(data)["latent_tensor"].float()


def _evaluate(prompt, node_id, cache=None):
    """A pure pack node of ``prompt`` (scene plan, cameras, layout, mask) computed here, as the server did."""
    from tests.support.pack_info import pack_schemas

    cache = {} if cache is None else cache
    if node_id not in cache:
        schema = next(s for s in pack_schemas() if s.node_id == prompt[node_id]["class_type"])
        inputs = {k: (_evaluate(prompt, v[0], cache)[v[1]] if isinstance(v, list) else v)
                  for k, v in prompt[node_id]["inputs"].items()}
        cache[node_id] = schema.run(**inputs).values
    return cache[node_id]


def _saved_by_prefix(prompt, latents, suffix):
    return next(latents[k] for k, v in prompt.items() if v["class_type"] == "SaveLatent"
                and v["inputs"]["filename_prefix"].endswith(suffix))


def _check_image_to_multiview(prompt, latents):
    start, out = _saved_by_prefix(prompt, latents, "_start"), _saved_by_prefix(prompt, latents, "multiview")
    assert start.shape == out.shape and start.shape[0] == 4
    assert torch.equal(out[:, :, 0], start[:, :, 0])  # frame 0 of every view is the encoded image, bitwise
    assert all(torch.equal(start[v, :, 0], start[0, :, 0]) for v in range(4)) and start[:, :, 0].abs().max() > 0
    assert (out[:, :, 1:] - start[:, :, 1:]).abs().max() > 1e-2


def _check_edit_entity(prompt, latents):
    """The mask is recomputed here from the workflow's own scene and camera inputs (pure pack nodes)."""
    from nodes._latent import resize_noise_mask
    from nodes.layout_mask import MASK_FROM_LAYOUT

    before, after = _saved_by_prefix(prompt, latents, "_before"), _saved_by_prefix(prompt, latents, "_after")
    mask_node = next(k for k, v in prompt.items() if v["class_type"] == "CVD_MaskFromLayout")
    layout_link = prompt[mask_node]["inputs"]["layout"]
    layout = _evaluate(prompt, layout_link[0])[layout_link[1]]
    options = {k: v for k, v in prompt[mask_node]["inputs"].items() if k not in ("latent", "layout")}
    mask = MASK_FROM_LAYOUT.run(latent={"samples": before}, layout=layout, **options).values[0]["noise_mask"]
    mask = resize_noise_mask(mask, before.shape).expand_as(before)
    assert (mask == 0).any() and (mask == 1).any(), "the entity must be partly in view"
    assert torch.equal(after[mask == 0], before[mask == 0])  # identical outside the entity
    assert (after[mask == 1] - before[mask == 1]).abs().min() > 0  # every value inside was re-rendered


def _check_video_to_views(prompt, latents):
    start, out = _saved_by_prefix(prompt, latents, "_start"), _saved_by_prefix(prompt, latents, "video_to_views")
    assert out.shape[0] == 3 and out.shape[2] == 16
    assert torch.equal(out[0], start[0]) and start[0].abs().max() > 0  # the given video, all 16 frames, bitwise
    assert (out[1:] - start[1:]).abs().max() > 1e-2


LATENT_CHECKS = {"cvd_image_to_multiview": _check_image_to_multiview, "cvd_edit_entity": _check_edit_entity,
                 "cvd_video_to_views": _check_video_to_views}


def test_a_mask_of_the_wrong_size_is_refused_with_the_shapes(each_comfy_server):
    """Core's Set Latent Noise Mask with a 48x48 mask on the 64x64 rig's start latent: the sampler refuses it before
    sampling, naming the mask's and the latent's shapes."""
    prompt = copy.deepcopy(_strip_meta(WORKFLOWS_BY_NAME["cvd_image_to_multiview"]))  # the shipped one stays as is
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "CVD_MultiViewSampler")
    prompt["90"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 48, "height": 48}}
    prompt["91"] = {"class_type": "SetLatentNoiseMask",
                    "inputs": {"samples": prompt[sampler]["inputs"]["latent"], "mask": ["90", 0]}}
    prompt[sampler]["inputs"]["latent"] = ["91", 0]
    message = each_comfy_server.failure_of(prompt, timeout=300)
    # core stores the mask as [1, 1, 48, 48] (its [-1, 1, H, W] reshape)
    assert "CVD Multi-View Sampler" in message and "noise_mask [1, 1, 48, 48] does not fit the latent [4, 4, 8, 8, 8]" \
        in message and "[32, 64, 64]" in message, message
