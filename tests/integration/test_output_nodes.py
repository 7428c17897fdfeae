"""Output nodes in the real ComfyUI: multi-view videos written, served by /view and decoded back
with PyAV, metadata embedded, the ui contract in /history, no partial files after a failed or
cancelled run (cancelling on both ComfyUI generations), and the consistency metric on synthetic true-rig
views against shuffled views.

Input: views of a textured 3-D scene rendered through a CVD-like rig (tests/core/synthetic_scene.py),
uploaded as one animated PNG (view-major frames) that ComfyUI's LoadImage reads as an IMAGE batch;
the same rig enters the graph through CVD_CameraTrajectory's custom_json preset.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from tests.support.comfy_harness import ComfyError

av = pytest.importorskip("av")
pytestmark = pytest.mark.integration

VIEWS, FRAMES, SIZE = 3, 4, 96
LABELS = ["left", "up", "right"]
SAVE = {"views": 0, "filename_prefix": "cvd_it/save", "fps": 8.0, "format": "mp4", "quality": 95,
        "save_grid": True}


@pytest.fixture(scope="module")
def scene():
    """Rendered true views ``[V, T, H, W, 3]`` uint8 and the rig as custom camera JSON."""
    from tests.core.synthetic_scene import make_rig, make_scene, render_rig, to_pack_convention

    K, c2w = make_rig(VIEWS, FRAMES, SIZE, SIZE)
    frames = render_rig(make_scene(seed=0), K, c2w, SIZE, SIZE)
    pixels = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    K = to_pack_convention(K)  # the rig's convention: pixel centres at +0.5
    rig_json = json.dumps({"views": [{"label": LABELS[v], "K": K[v].tolist(), "c2w": c2w[v].tolist()}
                                     for v in range(VIEWS)]})
    return pixels, rig_json


@pytest.fixture(scope="module")
def upload_views(scene, tmp_path_factory):
    """``upload(server)``: the view-major frames uploaded to ``server`` as ``cvd_output_views.png`` (an
    animated PNG), once per server; returns the name to give LoadImage."""
    pixels, _ = scene
    path = tmp_path_factory.mktemp("upload") / "cvd_output_views.png"
    images = [Image.fromarray(frame) for frame in pixels.reshape(-1, SIZE, SIZE, 3)]
    images[0].save(path, save_all=True, append_images=images[1:])
    names = {}

    def upload(server):
        if server.url not in names:
            names[server.url] = server.upload(path)["name"]
        return names[server.url]

    return upload


@pytest.fixture(scope="module")
def uploaded(comfy_server, upload_views):
    return upload_views(comfy_server)


def _graph(image_name, rig_json, **nodes):
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "CVD_CameraTrajectory",
              "inputs": {"preset": "custom_json", "views": VIEWS, "frames": FRAMES, "width": SIZE, "height": SIZE,
                         "camera_dist": 0.5, "speed": 1.0, "angle_deg": 30.0, "fov_deg": 0.0, "perturb": 0.0,
                         "perturb_seed": 0, "custom_json": rig_json}},
    }
    graph.update(nodes)
    return graph


def _save_node(**overrides):
    return {"class_type": "CVD_SaveMultiViewVideo",
            "inputs": dict(SAVE, images=["1", 0], cameras=["2", 0], **overrides)}


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, dirs, files in os.walk(folder)
                  for f in files + [x + "/" for x in dirs])


def _graph_of(embedded):
    """The embedded prompt without the bookkeeping ComfyUI adds to it (``is_changed``)."""
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in embedded.items()}


def _luma(rgb):
    return rgb.astype(float) @ np.array([0.2126, 0.7152, 0.0722])


def _decode(data: bytes):
    with av.open(io.BytesIO(data)) as container:
        tags = {k.lower(): v for k, v in container.metadata.items()}
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames), tags


def test_save_writes_playable_views_grid_and_metadata(comfy_server, scene, uploaded):
    pixels, rig_json = scene
    prompt = _graph(uploaded, rig_json, **{"3": _save_node()})
    workflow = {"nodes": [], "links": [], "extra": {"marker": "cvd-output-test"}}
    entry = comfy_server.run(prompt, workflow=workflow, timeout=300)
    ui = entry["outputs"]["3"]
    (summary,) = ui["cvd_multiview"]
    assert (summary["fps"], summary["frames"], summary["width"], summary["height"]) == (8.0, FRAMES, SIZE, SIZE)
    assert summary["cameras"]["labels"] == LABELS and len(summary["cameras"]["c2w"]) == VIEWS
    assert [v["view"] for v in summary["views"]] == list(range(VIEWS))
    assert [v["label"] for v in summary["views"]] == LABELS

    for view in summary["views"]:
        assert view["filename"].startswith("save_") and view["filename"].endswith(f"_v{view['view']}.mp4")
        assert (view["subfolder"], view["type"], view["format"]) == ("cvd_it", "output", "mp4")
        decoded, tags = _decode(comfy_server.view(view["filename"], view["subfolder"], view["type"]))
        assert decoded.shape == (FRAMES, SIZE, SIZE, 3)
        # Luma only: 4:2:0 chroma subsampling blurs the colours of the busy synthetic texture.
        errors = [np.abs(_luma(decoded) - _luma(pixels[v])).mean() for v in range(VIEWS)]
        assert errors[view["view"]] < 4 and min(np.delete(errors, view["view"])) > 20, \
            f"view {view['view']} does not hold its own frames (mean luma errors against each view {errors})"
        assert _graph_of(json.loads(tags["prompt"])) == prompt
        assert json.loads(tags["workflow"]) == workflow

    grid = summary["grid"]
    assert grid["view"] == "grid" and grid["filename"].endswith("_grid.mp4")
    decoded, _ = _decode(comfy_server.view(grid["filename"], grid["subfolder"], grid["type"]))
    assert decoded.shape == (FRAMES, 2 * SIZE, 2 * SIZE, 3)  # 3 views tile a 2 x 2 grid

    (poster,) = ui["images"]
    image = Image.open(io.BytesIO(comfy_server.view(poster["filename"], poster["subfolder"], poster["type"])))
    assert image.size == (2 * SIZE, 2 * SIZE) and _graph_of(json.loads(image.text["prompt"])) == prompt
    names = sorted(os.listdir(comfy_server.output_dir / "cvd_it"))
    stem = poster["filename"][: -len("_poster.png")]
    assert [n for n in names if n.startswith(stem + "_")] == sorted(
        [f"{stem}_v{v}.mp4" for v in range(VIEWS)] + [f"{stem}_grid.mp4", f"{stem}_poster.png",
                                                      f"{stem}_cameras.json"])
    assert summary["cameras_file"]["filename"] == f"{stem}_cameras.json"
    sidecar = json.loads(comfy_server.view(summary["cameras_file"]["filename"], "cvd_it"))
    assert sidecar["cameras"] == summary["cameras"] and [v["filename"] for v in sidecar["views"]] == \
        [v["filename"] for v in summary["views"]]


def test_preview_png_frames_are_served_from_temp(comfy_server, scene, uploaded):
    pixels, rig_json = scene
    prompt = _graph(uploaded, rig_json, **{"3": {"class_type": "CVD_PreviewMultiView", "inputs": {
        "images": ["1", 0], "views": VIEWS, "fps": 4.0, "format": "png", "cameras": ["2", 0]}}})
    entry = comfy_server.run(prompt, timeout=300)
    (summary,) = entry["outputs"]["3"]["cvd_multiview"]
    view = summary["views"][2]
    assert view["type"] == "temp" and view["pattern"] == "frame_%05d.png" and view["filename"] == "frame_00000.png"
    for t in range(FRAMES):
        frame = Image.open(io.BytesIO(comfy_server.view(view["pattern"] % t, view["subfolder"], "temp")))
        assert np.array_equal(np.asarray(frame.convert("RGB")), pixels[2, t])  # PNG is lossless
        assert "prompt" not in frame.text  # previews carry no metadata
    with pytest.raises(ComfyError):
        comfy_server.view(view["pattern"] % FRAMES, view["subfolder"], "temp")


def test_wrong_view_count_fails_and_writes_nothing(comfy_server, scene, uploaded):
    _, rig_json = scene
    before = _tree(comfy_server.output_dir)
    with pytest.raises(ComfyError) as caught:
        comfy_server.run(_graph(uploaded, rig_json, **{"3": _save_node(views=2)}), timeout=300)
    assert "views (2) must equal the number of views of the connected cameras (3)" in str(caught.value)
    with pytest.raises(ComfyError) as refused:
        comfy_server.queue(_graph(uploaded, rig_json, **{"3": _save_node(filename_prefix="../outside")}))
    assert refused.value.status == 400 and "inside ComfyUI's output folder" in json.dumps(refused.value.payload)
    assert _tree(comfy_server.output_dir) == before
    assert comfy_server.answers()


def test_cancel_while_writing_leaves_no_partial_file(each_comfy_server, scene, upload_views):
    """Interrupt once the first temporary file exists: the run stops and every temporary is removed."""
    server, (_, rig_json) = each_comfy_server, scene
    uploaded = upload_views(server)
    folder = server.output_dir / "cvd_it_cancel"
    long_video = {  # 3 views x 80 frames at 192 x 192: long enough to be caught while encoding
        "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 20}},
        "5": {"class_type": "ImageScaleBy", "inputs": {"image": ["4", 0], "upscale_method": "nearest-exact",
                                                       "scale_by": 2.0}},
        "3": {"class_type": "CVD_SaveMultiViewVideo",
              "inputs": dict(SAVE, images=["5", 0], views=VIEWS, filename_prefix="cvd_it_cancel/long",
                             format="webm")},
    }
    prompt_id = server.queue(_graph(uploaded, rig_json, **long_video))
    deadline = time.monotonic() + 120
    while not (folder.is_dir() and any(name.endswith(".partial") for name in os.listdir(folder))):
        assert time.monotonic() < deadline, "the save node never started writing"
        time.sleep(0.02)
    status, _ = server._request("POST", "/interrupt")
    assert status == 200
    with pytest.raises(ComfyError) as caught:
        server.wait(prompt_id, timeout=120)
    assert "execution_interrupted" in json.dumps(caught.value.payload["status"])  # cancelled, not finished
    assert os.listdir(folder) == []


def test_consistency_separates_true_rig_from_shuffled_views(comfy_server, scene, uploaded):
    _, rig_json = scene
    pick = {name: {"class_type": "ImageFromBatch", "inputs": {"image": ["1", 0], "batch_index": start,
                                                               "length": FRAMES}}
            for name, start in (("10", 0), ("11", 2 * FRAMES), ("12", FRAMES))}
    shuffled = {  # views 0, 2, 1: the images no longer match their cameras
        **pick,
        "13": {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["11", 0]}},
        "14": {"class_type": "ImageBatch", "inputs": {"image1": ["13", 0], "image2": ["12", 0]}},
    }
    settings = {"cameras": ["2", 0], "detector": "sift", "max_frames": 0, "ransac_thresh": 1.0}
    prompt = _graph(uploaded, rig_json, **shuffled, **{
        "20": {"class_type": "CVD_MultiViewConsistency", "inputs": dict(settings, images=["1", 0])},
        "21": {"class_type": "CVD_MultiViewConsistency", "inputs": dict(settings, images=["14", 0])},
    })
    entry = comfy_server.run(prompt, timeout=300)
    (good,) = entry["outputs"]["20"]["cvd_consistency"]
    (bad,) = entry["outputs"]["21"]["cvd_consistency"]
    assert good["labels"] == LABELS and len(good["pairs"]) == 3 and good["evaluated_frames"] == list(range(FRAMES))
    assert good["overall"]["sampson_median_px"] < 0.3 and good["overall"]["inlier_ratio_mean"] > 0.8
    assert bad["overall"]["sampson_median_px"] > 5 * good["overall"]["sampson_median_px"]
    assert bad["overall"]["sampson_mean_px"] > 1.5
    (text,) = entry["outputs"]["20"]["text"]
    assert "overall: Sampson mean" in text
    (plot,) = entry["outputs"]["20"]["images"]
    assert Image.open(io.BytesIO(comfy_server.view(plot["filename"], plot["subfolder"], plot["type"]))).size == (768, 768)
