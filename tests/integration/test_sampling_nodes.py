"""The multi-view sampler and MCM nodes in the real ComfyUI with the tiny weights and a random CLIP-L:
videos decode back with PyAV, the MCM schedule equals the reference, the LoRA report is in /history,
one view runs as plain CameraCtrl, and a run can be cancelled mid-sampling. Progress and previews over
/ws and the cancel run on both ComfyUI generations (2024-03 and 0.3.64), the rest on 2024-03. (Determinism and
max_batch invariance are unit-tested in tests/nodes/test_sampling_nodes.py.)"""

from __future__ import annotations

import copy
import io
import json
import re
import time

import numpy as np
import pytest

from tests._shared import shared_fixture
from tests.support.comfy_harness import ComfyError
from tests.support.pack_info import api_workflows

av = pytest.importorskip("av")
pytestmark = pytest.mark.integration


def _workflow(name):
    return copy.deepcopy(next(prompt for n, prompt, _ in api_workflows() if n == name))


def _decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _videos(server, entry, node_id):
    """``{label: frames}`` of every view video (and the grid) a CVD_SaveMultiViewVideo node wrote."""
    (summary,) = entry["outputs"][node_id]["cvd_multiview"]
    items = summary["views"] + ([summary["grid"]] if summary["grid"] else [])
    return {item["label"]: _decode(server.view(item["filename"], item["subfolder"], item["type"])) for item in items}


def _check_progress_and_previews(messages, binaries, steps, frames, latent_size, node="7"):
    """What the browser gets while the sampler (node 7) runs: a progress bar that ends full, and one preview
    per step (the server runs with --preview-method latent2rgb): view 0's frames as a near-square grid."""
    from PIL import Image

    progress = [m["data"] for m in messages if m.get("type") == "progress" and m["data"].get("node") in (node, None)]
    assert progress and progress[-1]["value"] == progress[-1]["max"], progress[-3:]
    previews = [payload for kind, payload in binaries if kind == 1]  # PREVIEW_IMAGE: 4-byte format + image
    assert len(previews) >= steps, f"expected a preview per step, got {len(previews)}"
    columns = int(np.ceil(np.sqrt(frames)))
    rows = int(np.ceil(frames / columns))
    image = Image.open(io.BytesIO(previews[-1][4:]))
    # ComfyUI scales previews to fit its preview size (512): the grid's aspect ratio is what survives
    assert abs(image.size[0] * rows - image.size[1] * columns) <= columns, image.size  # to a pixel of rounding
    assert max(image.size) >= columns * latent_size


def test_two_views_decode_back_with_pyav(each_comfy_server):
    server = each_comfy_server
    prompt = _workflow("cvd_two_views")
    prompt["7"]["inputs"]["steps"] = 3  # the decode/save path; the full 25-step workflow runs in test_workflows_run
    for poses in ("5", "6"):
        prompt[poses]["inputs"]["frames"] = 6  # a 3 x 2 preview grid: not square, so the layout shows
    frames = prompt["5"]["inputs"]["frames"]
    size = prompt["5"]["inputs"]["width"]
    entry, messages, binaries = server.run_watching(prompt, timeout=600)
    _check_progress_and_previews(messages, binaries, steps=3, frames=frames, latent_size=size // 8)
    videos = _videos(server, entry, "11")
    assert sorted(videos) == ["dolly_forward", "grid", "orbit_right"], sorted(videos)  # labels: pose files
    for label in ("orbit_right", "dolly_forward"):
        assert videos[label].shape == (frames, size, size, 3)
        assert videos[label].std() > 1.0  # tiny random weights: noise, but not a constant image
    assert not np.array_equal(videos["orbit_right"], videos["dolly_forward"])
    assert videos["grid"].shape[0] == frames


@pytest.mark.parametrize("width,height", [(512, 288), (288, 512)], ids=["512x288", "288x512"])
def test_two_views_at_wide_and_tall_frame_sizes(each_comfy_server, width, height):
    """16:9 and 9:16: latent sides 36 and 64, so the UNet's 1/64 level has an odd side (36 -> 18 -> 9 -> 5);
    the pose features follow it (issue 24, docs/frame_sizes.md). Lean: one step, two frames, cfg 1 (half the
    rows; CFG at odd latent sides is covered in tests/nodes/test_frame_sizes_nodes.py), and the per-frame
    latents are saved with ComfyUI's SaveLatent instead of decoded: the random full-size SD VAE spends about
    a minute a 512x288 frame on this CPU, and its decode/save path runs in test_two_views_decode_back_with_pyav."""
    from PIL import Image
    from safetensors.torch import load_file

    server = each_comfy_server
    prompt = _workflow("cvd_two_views")
    prompt["7"]["inputs"].update(steps=1, cfg=1.0)
    for poses in ("5", "6"):
        prompt[poses]["inputs"].update(frames=2, width=width, height=height)
    for decode_and_save in ("9", "10", "11"):
        del prompt[decode_and_save]
    prompt["12"] = {"class_type": "SaveLatent",
                    "inputs": {"samples": ["8", 0], "filename_prefix": f"cvd_it/two_views_{width}x{height}"}}
    entry, messages, binaries = server.run_watching(prompt, timeout=600)
    (saved,) = entry["outputs"]["12"]["latents"]
    latents = load_file(str(server.output_dir / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    assert tuple(latents.shape) == (2 * 2, 4, height // 8, width // 8)  # views x frames SD image latents
    assert bool(latents.isfinite().all()) and float(latents.std()) > 0.1
    assert not bool((latents[:2] == latents[2:]).all())  # the two trajectories give two videos
    # the step preview: view 0's two latent frames side by side (2 x 1 grid), the aspect of the frames kept
    previews = [payload for kind, payload in binaries if kind == 1]
    assert previews, "no step preview"
    shown_w, shown_h = Image.open(io.BytesIO(previews[-1][4:])).size
    grid_w, grid_h = 2 * (width // 8), height // 8
    assert abs(shown_w * grid_h - shown_h * grid_w) <= max(grid_w, grid_h), (shown_w, shown_h)


def test_four_view_mcm_reports_schedule_and_lora(comfy_server):
    entry = comfy_server.run(_workflow("cvd_four_views_mcm"), timeout=600)
    (schedule,) = entry["outputs"]["7"]["text"]
    reference = json.loads(shared_fixture("mcm/reference_timesteps.json").read_text())
    expected = reference["bases"]["animatediff_sd15"]["by_steps"]["4"]["sigmas_kdiff"]
    sigmas = [float(s) for s in schedule.split(": ", 1)[1].split(", ")]
    assert sigmas == pytest.approx(expected, abs=1e-5)
    assert "[999, 759, 499, 259]" in schedule
    (report,) = entry["outputs"]["2"]["text"]
    applied = int(re.search(r"merged into (\d+) modules", report).group(1))
    assert applied > 100 and "skipped 0" in report
    videos = _videos(comfy_server, entry, "12")
    assert len(videos) == 5 and all(v.shape[0] == 8 for v in videos.values())


def test_one_view_runs_as_plain_cameractrl(comfy_server):
    prompt = _workflow("cvd_two_views")
    prompt["7"]["inputs"]["steps"] = 3
    prompt["7"]["inputs"]["cameras"] = ["5", 0]  # the first trajectory alone
    prompt["11"]["inputs"]["cameras"] = ["5", 0]
    prompt["11"]["inputs"]["filename_prefix"] = "cvd_it/one_view"
    entry = comfy_server.run(prompt, timeout=600)
    videos = _videos(comfy_server, entry, "11")
    assert sorted(videos) == ["grid", "orbit_right"]


def test_interrupt_mid_sampling_cancels_and_the_server_stays_up(each_comfy_server):
    server = each_comfy_server
    prompt = _workflow("cvd_two_views")
    prompt["7"]["inputs"]["steps"] = 1
    server.run(prompt, timeout=600)  # loader, CLIP and camera outputs are now cached
    prompt["7"]["inputs"]["steps"] = 500  # minutes of work: only a cancel ends it early
    prompt["11"]["inputs"]["filename_prefix"] = "cvd_it/interrupted"
    prompt_id = server.queue(prompt)
    time.sleep(3.0)
    status, _ = server._request("POST", "/interrupt")
    assert status == 200
    started = time.monotonic()
    with pytest.raises(ComfyError) as caught:
        server.wait(prompt_id, timeout=120)
    assert "execution_interrupted" in json.dumps(caught.value.payload["status"])
    assert time.monotonic() - started < 60
    assert server.alive() and server.get_json("/system_stats")
    assert not list((server.output_dir / "cvd_it").glob("interrupted*"))


MAP_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import comfy.utils
sd15 = dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1)
print(json.dumps(comfy.utils.unet_to_diffusers(sd15)))
"""


def test_mcm_paths_reach_every_sd15_layer_kind_through_comfyuis_key_map():
    """MCM's diffusers paths (every target module kind) map onto SD1.5's LDM keys with ComfyUI's own
    ``unet_to_diffusers`` (run in a subprocess: importing ComfyUI here would change later tests)."""
    import subprocess
    import sys

    import torch

    from nodes.mcm import core_model_patches
    from tests.support.comfy_harness import bundled_comfyui_source

    mapping = json.loads(subprocess.run([sys.executable, "-c", MAP_SCRIPT, str(bundled_comfyui_source())],
                                        check=True, capture_output=True, text=True).stdout)
    kinds = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.attentions.0.proj_in",
             "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", "down_blocks.1.resnets.0.conv_shortcut",
             "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0", "down_blocks.0.resnets.0.time_emb_proj",
             "down_blocks.0.downsamplers.0.conv", "up_blocks.1.upsamplers.0.conv", "up_blocks.0.resnets.2.conv2",
             "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"]
    deltas = {k: torch.zeros(2, 2) for k in kinds}
    shapes = {"diffusion_model." + v: torch.Size([2, 2]) for v in mapping.values()}
    patches, report = core_model_patches(deltas, mapping, shapes)
    assert len(patches) == len(kinds) - 1
    assert [path for path, _ in report.skipped] == [kinds[-1]]  # motion modules have no image-model layer
    assert "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in patches
