"""The CVD loader reads the official file layouts in the real ComfyUI and reports what it loaded;
bad files give errors that say where each file goes."""

import json

import pytest

from tests.support.comfy_harness import ComfyError
from tests.support.pack_info import api_workflows

pytestmark = pytest.mark.integration


def _workflow(name):
    return next(prompt for n, prompt, _ in api_workflows() if n == name)


def test_model_info_reports_every_part(comfy_server):
    entry = comfy_server.run(_workflow("cvd_model_info"), timeout=300)
    info = json.loads(entry["outputs"]["2"]["text"][0])
    assert info["cross_view_modules"] is True
    assert all(info["parameters"][part] > 0 for part in ("sd15_unet", "motion_modules", "pose_encoder", "cvsm"))
    for role, report in info["load_report"].items():
        assert not report.get("missing"), f"{role}: {report}"
    assert info["dtype"] == "float32" and info["device"] == "cpu"


def test_cameractrl_only_when_cvd_is_none(comfy_server):
    prompt = _workflow("cvd_model_info")
    prompt["1"]["inputs"]["cvd"] = "none"
    entry = comfy_server.run(prompt, timeout=300)
    info = json.loads(entry["outputs"]["2"]["text"][0])
    assert info["cross_view_modules"] is False and info["parameters"]["cvsm"] == 0


def test_wrong_file_in_a_slot_names_the_file(comfy_server):
    prompt = _workflow("cvd_model_info")
    prompt["1"]["inputs"]["cvd"] = "CameraCtrl.ckpt"  # a real file, but not a CVD checkpoint
    with pytest.raises(ComfyError) as caught:
        comfy_server.run(prompt, timeout=300)
    assert "CameraCtrl.ckpt" in str(caught.value) and "unet_trainable_dict" in str(caught.value)
    assert comfy_server.get_json("/system_stats")
