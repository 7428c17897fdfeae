"""CVD's pose protocol and the reconstruction export in the real ComfyUI, on views with known cameras.

Input: ``input/cvd_synthetic_views.png`` (3 views x 4 frames of the tests' ray-cast scene, installed by
``tests/support/models_synthetic_scene.py``) and its rig through CVD_CameraTrajectory's custom_json.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.support.models_synthetic_scene import FRAMES, LABELS, SIZE, SYNTHETIC_VIEWS, VIEWS, rig_arrays, rig_json

pytest.importorskip("cv2")
pytestmark = pytest.mark.integration


def _graph(**nodes):
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": SYNTHETIC_VIEWS}},
        "2": {"class_type": "CVD_CameraTrajectory",
              "inputs": {"preset": "custom_json", "views": VIEWS, "frames": FRAMES, "width": SIZE, "height": SIZE,
                         "camera_dist": 0.5, "speed": 1.0, "angle_deg": 30.0, "fov_deg": 0.0, "perturb": 0.0,
                         "perturb_seed": 0, "custom_json": rig_json()}},
    }
    graph.update(nodes)
    return graph


def _consistency(images, **overrides):
    inputs = {"images": images, "cameras": ["2", 0], "detector": "sift", "max_frames": 0, "ransac_thresh": 1.0,
              "pose_estimator": "usac_accurate"}
    inputs.update(overrides)
    return {"class_type": "CVD_MultiViewConsistency", "inputs": inputs}


def test_pose_protocol_true_rig_vs_shuffled_views(comfy_server):
    pick = {name: {"class_type": "ImageFromBatch", "inputs": {"image": ["1", 0], "batch_index": start,
                                                               "length": FRAMES}}
            for name, start in (("10", 0), ("11", 2 * FRAMES), ("12", FRAMES))}
    shuffled = {**pick,  # views 0, 2, 1: the images no longer match their cameras
                "13": {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["11", 0]}},
                "14": {"class_type": "ImageBatch", "inputs": {"image1": ["13", 0], "image2": ["12", 0]}}}
    entry = comfy_server.run(_graph(**shuffled, **{"20": _consistency(["1", 0]), "21": _consistency(["14", 0]),
                                                   "22": _consistency(["1", 0], pose_estimator="ransac")}),
                             timeout=300)
    (good,) = entry["outputs"]["20"]["cvd_consistency"]
    (bad,) = entry["outputs"]["21"]["cvd_consistency"]
    (paper,) = entry["outputs"]["22"]["cvd_consistency"]
    assert good["labels"] == list(LABELS) and good["pose"]["pixel_offset"] == 0.5
    pose = good["pose"]["overall"]
    assert (pose["evaluated"], pose["same_pose"], pose["failures"]) == (9, 3, 0)
    # Every rotation error within one pixel's angle (atan(1/f), f = 111 px: 0.52 deg) -> AUC@5 >= 1 - 0.52/5.
    pixel_deg = np.degrees(np.arctan(1 / rig_arrays()[0][0, 0, 0, 0]))
    assert pose["rotation_auc_pct"]["5"] >= 100 * (1 - pixel_deg / 5)
    assert bad["pose"]["overall"]["rotation_auc_pct"]["5"] < pose["rotation_auc_pct"]["5"] - 50
    assert bad["pose"]["overall"]["translation_auc_pct"]["10"] < pose["translation_auc_pct"]["10"] - 50
    # Matched pixels see content, not cameras: the shuffled views share as much as the true ones.
    counts = good["match_count"]["overall"]["matched_pixels_mean"]
    assert counts > 30 and bad["match_count"]["overall"]["matched_pixels_mean"] == pytest.approx(counts, rel=0.2)
    assert paper["pose"]["estimator_name"] == "ransac" and paper["pose"]["overall"]["failures"] == 0
    (text,) = entry["outputs"]["20"]["text"]
    assert "pose (usac_accurate): AUC@5/10/20 rotation" in text
    (plot,) = entry["outputs"]["20"]["images"]
    image = Image.open(io.BytesIO(comfy_server.view(plot["filename"], plot["subfolder"], plot["type"])))
    assert image.size == (768, 768)  # the Sampson panel over the pose panel


def test_export_parses_back_to_the_rig(comfy_server):
    from cvd_core.io.colmap import read_colmap_text
    from cvd_core.io.nerfstudio import read_nerfstudio_transforms

    node = {"class_type": "CVD_ExportForReconstruction",
            "inputs": {"images": ["1", 0], "cameras": ["2", 0], "filename_prefix": "cvd_it/recon",
                       "scope": "per_time_step", "formats": "nerfstudio+colmap", "image_format": "png",
                       "skip_duplicate_cameras": True}}
    entry = comfy_server.run(_graph(**{"3": node}), timeout=300)
    ui = entry["outputs"]["3"]
    (export,) = ui["cvd_export"]
    assert export["subfolder"] == "cvd_it" and export["folder"].startswith("cvd_it/recon_")
    assert [d["folder"] for d in export["datasets"]] == ["t0001", "t0002", "t0003"]
    assert export["skipped_time_steps"] == [0]  # all views share frame 0's camera
    for item in ui["cvd_export_files"]:
        assert len(comfy_server.view(item["filename"], item["subfolder"], item["type"])) > 100
    K, c2w, _ = rig_arrays()
    root = comfy_server.output_dir / export["folder"]
    for t in (1, 2, 3):
        step = root / f"t{t:04d}"
        for parsed in read_nerfstudio_transforms(str(step / "transforms.json")):
            view = int(os.path.basename(parsed["file_path"])[1:3])
            assert np.abs(parsed["K"] - K[view, t]).max() < 1e-6 and np.abs(parsed["c2w"] - c2w[view, t]).max() < 1e-6
        images = read_colmap_text(str(step / "sparse" / "0"))["images"]
        assert [image["name"] for image in images] == [f"v{v:02d}_t{t:04d}.png" for v in range(VIEWS)]
        for view, image in enumerate(images):
            assert np.abs(image["c2w"] - c2w[view, t]).max() < 1e-6
    manifest = json.loads((root / "cvd_export.json").read_text())
    assert manifest["labels"] == list(LABELS) and manifest["rig"]["width"] == SIZE


def test_export_refuses_mismatched_frames_and_writes_nothing(comfy_server):
    before = sorted(os.listdir(comfy_server.output_dir))
    node = {"class_type": "CVD_ExportForReconstruction",
            "inputs": {"images": ["4", 0], "cameras": ["2", 0], "filename_prefix": "cvd_it_bad/recon",
                       "scope": "whole_video", "formats": "colmap", "image_format": "jpg",
                       "skip_duplicate_cameras": False}}
    cut = {"class_type": "ImageFromBatch", "inputs": {"image": ["1", 0], "batch_index": 0, "length": 5}}
    message = comfy_server.failure_of(_graph(**{"3": node, "4": cut}))
    assert "views x frames = 3 x 4 = 12 frames" in message
    assert sorted(os.listdir(comfy_server.output_dir)) == before and comfy_server.answers()
