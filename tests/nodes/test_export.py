"""CVD Export For Reconstruction called directly (no server): naming by ComfyUI's counter, the ui
contract, intrinsics of resized frames, argument rules and cancel-safety. ComfyUI's path lookups are
replaced by a temporary folder that follows ComfyUI's counter convention."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cvd_core.camera import CameraSet
from cvd_core.io.colmap import read_colmap_text
from cvd_core.io.nerfstudio import read_nerfstudio_transforms
from nodes import _comfy, export
from nodes._comfy import NodeInputError
from nodes._schema import WIDGET_TYPES, build_v1, run_checked
from tests.nodes.test_output import FailingProgress, comfy_dirs  # noqa: F401 (a fixture)

VIEWS, FRAMES, SIZE = 2, 3, 32


def _rig():
    K = torch.tensor([[40.0, 0, SIZE / 2], [0, 40.0, SIZE / 2], [0, 0, 1]])
    c2w = torch.eye(4).expand(VIEWS, FRAMES, 4, 4).clone()
    c2w[:, :, 0, 3] = torch.arange(FRAMES)[None, :] * 0.1 * torch.arange(VIEWS)[:, None]  # frame 0 shared
    return CameraSet(K.expand(VIEWS, FRAMES, 3, 3), c2w, SIZE, SIZE, ("left", "right"))


def _images(size=SIZE):
    return torch.rand(VIEWS * FRAMES, size, size, 3, generator=torch.Generator().manual_seed(0))


def _export(**overrides):
    args = dict(images=_images(), cameras=_rig(), filename_prefix="cvd/recon", scope="whole_video",
                formats="nerfstudio+colmap", image_format="png", skip_duplicate_cameras=True, unique_id="3")
    args.update(overrides)
    return run_checked(export.EXPORT_FOR_RECONSTRUCTION, args)  # the node's own run path: checks, then run


def test_widgets_and_class():
    widgets = [i.name for i in export.EXPORT_FOR_RECONSTRUCTION.inputs if i.type in WIDGET_TYPES]
    assert widgets == ["filename_prefix", "scope", "formats", "image_format", "skip_duplicate_cameras"]
    node = build_v1(export.EXPORT_FOR_RECONSTRUCTION)
    assert node.OUTPUT_NODE and node.RETURN_TYPES == ("STRING",) and node.CATEGORY == "CVD/output"
    assert node.INPUT_TYPES()["required"]["scope"][0] == ["whole_video", "per_time_step"]


def test_export_writes_one_counted_folder_with_the_ui_contract(comfy_dirs):  # noqa: F811
    out, _ = comfy_dirs
    result = _export()
    (path,) = result.values
    assert path == str(out / "cvd" / "recon_00001") and os.path.isdir(path)
    (entry,) = result.ui["cvd_export"]
    assert (entry["folder"], entry["subfolder"], entry["type"]) == ("cvd/recon_00001", "cvd", "output")
    assert entry["images"] == VIEWS * FRAMES - 1 and entry["scope"] == "whole_video" and "rig" not in entry
    assert result.ui["text"] == ["exported 5 images as nerfstudio+colmap (whole_video, 1 dataset) to "
                                 "output/cvd/recon_00001"]
    json.dumps(result.ui, allow_nan=False)
    assert [(f["filename"], f["subfolder"]) for f in result.ui["cvd_export_files"]] == [
        ("cvd_export.json", "cvd/recon_00001"), ("transforms.json", "cvd/recon_00001"),
        ("images.txt", "cvd/recon_00001/sparse/0")]
    assert all((out / f["subfolder"] / f["filename"]).is_file() for f in result.ui["cvd_export_files"])
    manifest = json.loads((out / "cvd" / "recon_00001" / "cvd_export.json").read_text())
    assert CameraSet.from_dict(manifest["rig"]) == _rig() and manifest["labels"] == ["left", "right"]
    again = _export(scope="per_time_step", formats="colmap")
    assert again.values[0].endswith("recon_00002")  # ComfyUI's counter counts the export folders
    assert sorted(os.listdir(out / "cvd" / "recon_00002")) == ["cvd_export.json", "t0001", "t0002"]


def test_frames_of_another_size_get_rescaled_intrinsics(comfy_dirs):  # noqa: F811
    out, _ = comfy_dirs
    _export(images=_images(64))  # the rig describes 32 px frames
    frames = read_nerfstudio_transforms(str(out / "cvd" / "recon_00001" / "transforms.json"))
    expected = np.array([[80.0, 0, 32], [0, 80.0, 32], [0, 0, 1]])  # twice the size: K doubles (centres at +0.5)
    assert all(np.allclose(frame["K"], expected) and (frame["w"], frame["h"]) == (64, 64) for frame in frames)
    model = read_colmap_text(str(out / "cvd" / "recon_00001" / "sparse" / "0"))
    assert model["cameras"][1][1:3] == (64, 64)


def test_argument_rules(comfy_dirs):  # noqa: F811
    out, _ = comfy_dirs
    with pytest.raises(NodeInputError, match=r"views x frames = 2 x 3 = 6 frames"):
        _export(images=_images()[:4])
    with pytest.raises(NodeInputError, match="scope must be one of"):
        _export(scope="weekly")
    with pytest.raises(NodeInputError, match="no '..'"):
        _export(filename_prefix="../outside")
    validate = build_v1(export.EXPORT_FOR_RECONSTRUCTION).VALIDATE_INPUTS
    assert validate(filename_prefix="cvd/ok") is True and "must not be empty" in validate(filename_prefix=" ")
    assert os.listdir(out) == []


@pytest.mark.parametrize("fail_at", [1, 4])
def test_a_cancel_leaves_nothing(comfy_dirs, monkeypatch, fail_at):  # noqa: F811
    out, _ = comfy_dirs
    monkeypatch.setattr(_comfy, "progress_bar", lambda unique_id=None: FailingProgress(fail_at))
    with pytest.raises(InterruptedError):
        _export()
    assert [name for _, _, names in os.walk(out) for name in names] == []
    assert os.listdir(out / "cvd") == []  # not even the hidden staging folder


def test_example_workflow_embeds_the_synthetic_rig():
    """workflows/api/cvd_evaluate_export.json describes exactly the views the installer renders."""
    from tests.support.models_synthetic_scene import SYNTHETIC_VIEWS, rig_json
    from tests.support.pack_info import WORKFLOWS

    prompt = json.loads((WORKFLOWS / "api" / "cvd_evaluate_export.json").read_text())
    by_type = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert by_type["LoadImage"]["image"] == SYNTHETIC_VIEWS
    assert json.loads(by_type["CVD_CameraTrajectory"]["custom_json"]) == json.loads(rig_json())
    assert by_type["CVD_SaveMultiViewVideo"]["cameras"] == ["2", 0]  # writes the sidecar eval_consistency.py reads
