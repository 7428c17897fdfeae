"""Bad input gets a clear error (HTTP 400 with node_errors, or an execution error naming the rule)
and the server keeps answering afterwards, on both ComfyUI generations (2024's V1 validation and
0.3.64's V3 nodes, which the modern validation leaves to the pack's own checks)."""

import copy
import json

import pytest

from tests.support.comfy_harness import ComfyError
from tests.support.pack_info import api_workflows

pytestmark = pytest.mark.integration

TRAJECTORY = {"preset": "circle", "views": 2, "frames": 16, "width": 256, "height": 256, "camera_dist": 0.5,
              "speed": 1.0, "angle_deg": 30.0, "fov_deg": 0.0, "perturb": 0.0, "perturb_seed": 0,
              "custom_json": ""}
POSES = {"pose_file": "cvd_poses/orbit_right.txt", "frames": 16, "stride": 1, "width": 256, "height": 256,
         "source_width": 1280, "source_height": 720}


def _preview_of(node_type, inputs):
    return {"1": {"class_type": node_type, "inputs": inputs},
            "2": {"class_type": "CVD_CameraPreview", "inputs": {"cameras": ["1", 0], "width": 512, "height": 256}}}


def _refused(server, prompt):
    with pytest.raises(ComfyError) as caught:
        server.queue(prompt)
    assert caught.value.status == 400, caught.value
    return json.dumps(caught.value.payload)


# The pack's own words, which both servers now carry in their 400 (2024-03 adds its own error types,
# e.g. value_smaller_than_min, beside them).
@pytest.mark.parametrize("field,value,expected", [
    ("views", 0, "CVD Camera Trajectory: views must be an integer from 1 to 16, got 0"),
    ("views", 17, "CVD Camera Trajectory: views must be an integer from 1 to 16, got 17"),
    ("frames", 0, "CVD Camera Trajectory: frames must be an integer from 1 to 512, got 0"),
    ("views", "many", "CVD Camera Trajectory: views must be an integer from 1 to 16, got 'many'"),
    ("views", 2.5, "CVD Camera Trajectory: views must be an integer from 1 to 16, got 2.5"),
    ("width", 250, "CVD Camera Trajectory: width must be a multiple of 8 from 64 to 2048, got 250"),
    ("camera_dist", float("nan"), "CVD Camera Trajectory: camera_dist must be a finite number between 0 and 10, "
                                  "got nan"),
    ("preset", "spiral", "CVD Camera Trajectory: preset must be one of 'circle', "),
])
def test_trajectory_widgets_are_validated(each_comfy_server, field, value, expected):
    inputs = dict(TRAJECTORY, **{field: value})
    answer = _refused(each_comfy_server, _preview_of("CVD_CameraTrajectory", inputs))
    assert expected in answer, answer[:2000]
    assert "node_errors" in answer
    assert each_comfy_server.answers()


def test_custom_json_errors_name_the_problem(each_comfy_server):
    inputs = dict(TRAJECTORY, preset="custom_json", custom_json='{"views": [{"c2w": [[1, 2]]}]}')
    message = each_comfy_server.failure_of(_preview_of("CVD_CameraTrajectory", inputs))
    assert "c2w" in message
    assert each_comfy_server.answers()


def test_missing_pose_file_is_refused(each_comfy_server):
    prompt = _preview_of("CVD_LoadCameraPoses", dict(POSES, pose_file="cvd_poses/nope.txt"))
    answer = _refused(each_comfy_server, prompt)
    assert ("CVD Load Camera Poses (RealEstate10K): pose_file must be a .txt pose file listed from ComfyUI's input "
            "folder") in answer and "got 'cvd_poses/nope.txt'" in answer
    assert each_comfy_server.answers()


def test_pose_file_path_cannot_escape_the_input_folder(each_comfy_server):
    answer = _refused(each_comfy_server, _preview_of("CVD_LoadCameraPoses", dict(POSES, pose_file="../../main.py")))
    assert "pose_file must be a .txt pose file listed from ComfyUI's input folder" in answer
    assert "got '../../main.py'" in answer
    assert each_comfy_server.answers()


def test_pose_file_with_too_few_rows(each_comfy_server):
    message = each_comfy_server.failure_of(_preview_of("CVD_LoadCameraPoses", dict(POSES, frames=100)))
    assert "24 frames" in message and "100 requested" in message
    assert each_comfy_server.answers()


@pytest.mark.parametrize("content,expected", [
    ("https://example\n0 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 zero\n", "'zero' is not a number"),
    ("https://example\n0 0.5 0.8 0.5 0.5 0 0 1 0 0\n", "expected 19 numbers"),
    ("https://example\n0 0.5 0.8 0.5 0.5 0 0 1 0 0 nan 0 1 0 0 0 0 1 0\n", "finite"),
])
def test_malformed_uploaded_pose_file(each_comfy_server, tmp_path, content, expected):
    path = tmp_path / "broken_poses.txt"
    path.write_text(content)
    uploaded = each_comfy_server.upload(path, subfolder="cvd_poses")
    name = f"{uploaded.get('subfolder', 'cvd_poses')}/{uploaded['name']}"
    message = each_comfy_server.failure_of(_preview_of("CVD_LoadCameraPoses", dict(POSES, pose_file=name, frames=1)))
    assert expected in message and "line 2" in message
    assert each_comfy_server.answers()


def test_uploaded_pose_file_works(each_comfy_server, tmp_path):
    source = each_comfy_server.input_dir / "cvd_poses" / "dolly_forward.txt"
    path = tmp_path / "my_dolly.txt"
    path.write_text(source.read_text())
    uploaded = each_comfy_server.upload(path, subfolder="cvd_poses")
    prompt = _preview_of("CVD_LoadCameraPoses", dict(POSES, pose_file=f"cvd_poses/{uploaded['name']}"))
    entry = each_comfy_server.run(prompt)
    assert entry["outputs"]["2"]["images"]


def test_wrong_socket_type_is_refused(each_comfy_server):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "2": {"class_type": "CVD_CameraPreview", "inputs": {"cameras": ["1", 0], "width": 512, "height": 256}}}
    answer = _refused(each_comfy_server, prompt)
    assert "return_type_mismatch" in answer, answer
    assert each_comfy_server.answers()


def test_epipolar_preview_view_out_of_range(each_comfy_server):
    name, prompt, _ = api_workflows()[0]
    prompt = copy.deepcopy(prompt)
    epi = next(k for k, v in prompt.items() if v["class_type"] == "CVD_EpipolarPreview")
    prompt[epi]["inputs"]["view_b"] = 9
    message = each_comfy_server.failure_of(prompt)
    assert "view_b must be below the number of views (4)" in message
    assert each_comfy_server.answers()


def test_bad_camera_keyframes_are_refused_before_running(each_comfy_server):
    """The editor's keyframes form is validated with the node (HTTP 400), naming place and rule."""
    keys = {"format": "cvd_keyframes/1", "views": [
        {"keyframes": [{"t": 0, "position": [0, 0, 0], "target": [0, 0, 1]},
                       {"t": 0.5, "position": [0, 0, 0], "target": [0, 0, 1]}]}]}
    inputs = dict(TRAJECTORY, preset="custom_json", custom_json=json.dumps(keys))
    answer = _refused(each_comfy_server, _preview_of("CVD_CameraTrajectory", inputs))
    assert ("custom_json keyframes: views[0].keyframes must start at t = 0 and end at t = 1 (the first and last "
            "frame), got t = 0.0 ... 0.5") in answer, answer[:2000]
    assert each_comfy_server.answers()
