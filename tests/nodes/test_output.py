"""Output nodes called directly (no server): argument rules, file naming, the ui contract, atomicity,
metadata, and the consistency node on synthetic views. ComfyUI's path lookups are replaced by a
temporary folder that follows ComfyUI's counter convention."""

from __future__ import annotations

import json
import os

import pytest
import torch

av = pytest.importorskip("av")

from cvd_core.camera import CameraSet
from cvd_core.io import read_video_metadata
from nodes import _comfy, output
from nodes._comfy import NodeInputError
from nodes._schema import WIDGET_TYPES, build_v1, run_checked

VIEWS, FRAMES, SIZE = 2, 3, 32


def _counter_save_paths(prefix, width, height, output_dir=None):
    """ComfyUI's get_save_image_path naming rule: next counter after the highest ``<name>_<n>_...``."""
    subfolder, name = os.path.split(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    os.makedirs(folder, exist_ok=True)
    counters = [int(f[len(name) + 1:].split("_")[0]) for f in os.listdir(folder)
                if f.startswith(name + "_") and f[len(name) + 1:].split("_")[0].isdigit()]
    return folder, name, max(counters, default=0) + 1, subfolder, prefix


class FailingProgress:
    """Raises on the n-th advance, as ComfyUI's ProgressBar hook does when the user cancels."""

    def __init__(self, fail_at):
        self.fail_at, self.done = fail_at, 0

    def start(self, total):
        pass

    def advance(self, n=1):
        self.done += n
        if self.done >= self.fail_at:
            raise InterruptedError("cancelled by the test")

    def check(self):
        pass


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    out, temp = tmp_path / "output", tmp_path / "temp"
    out.mkdir()
    temp.mkdir()
    monkeypatch.setattr(_comfy, "output_directory", lambda: str(out))
    monkeypatch.setattr(_comfy, "temp_directory", lambda: str(temp))
    monkeypatch.setattr(_comfy, "save_paths", _counter_save_paths)
    monkeypatch.setattr(_comfy, "metadata_disabled", lambda: False)
    return out, temp


def _images(views=VIEWS, frames=FRAMES, size=SIZE, seed=0):
    """Distinct random frames, view-major ``[V*T, H, W, 3]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(views * frames, size, size, 3, generator=generator)


def _rig(views=VIEWS, frames=FRAMES, size=SIZE, labels=("left", "right")):
    K = torch.tensor([[40.0, 0, size / 2], [0, 40.0, size / 2], [0, 0, 1]]).expand(views, frames, 3, 3)
    c2w = torch.eye(4).expand(views, frames, 4, 4).clone()
    c2w[:, :, 0, 3] = torch.arange(frames)[None, :] * 0.1 * torch.arange(views)[:, None]
    return CameraSet(K, c2w, size, size, labels)


def _save(**overrides):
    args = dict(images=_images(), views=VIEWS, filename_prefix="cvd/test", fps=8.0, format="mp4", quality=80,
                save_grid=True, prompt={"1": {"class_type": "X", "inputs": {}}},
                extra_pnginfo={"workflow": {"nodes": [], "links": []}}, unique_id="7")
    args.update(overrides)
    return run_checked(output.SAVE_MULTIVIEW_VIDEO, args)  # the node's own run path: checks, then run


def _all_files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def test_widget_orders_are_as_reported():
    widgets = {s.node_id: [i.name for i in s.inputs if i.type in WIDGET_TYPES] for s in output.SCHEMAS}
    assert widgets == {
        "CVD_SaveMultiViewVideo": ["views", "filename_prefix", "fps", "format", "quality", "save_grid"],
        "CVD_PreviewMultiView": ["views", "fps", "format"],
        "CVD_MultiViewConsistency": ["detector", "max_frames", "ransac_thresh", "pose_estimator"],
    }
    save = build_v1(output.SAVE_MULTIVIEW_VIDEO)
    assert save.OUTPUT_NODE and save.RETURN_TYPES == ()
    assert save.INPUT_TYPES()["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO",
                                            "unique_id": "UNIQUE_ID"}
    assert save.INPUT_TYPES()["required"]["format"][0] == ["mp4", "webm", "png"]


def test_save_writes_views_grid_and_poster_with_the_ui_contract(comfy_dirs):
    out, _ = comfy_dirs
    result = _save(cameras=_rig())
    ui = result.ui
    assert all(isinstance(value, list) for value in ui.values())  # ComfyUI 2024 concatenates ui lists
    json.dumps(ui, allow_nan=False)
    assert ui["images"] == [{"filename": "test_00001_poster.png", "subfolder": "cvd", "type": "output"}]
    (summary,) = ui["cvd_multiview"]
    assert [v["filename"] for v in summary["views"]] == ["test_00001_v0.mp4", "test_00001_v1.mp4"]
    assert [v["label"] for v in summary["views"]] == ["left", "right"]
    assert summary["views"][1] == {"view": 1, "label": "right", "filename": "test_00001_v1.mp4", "subfolder": "cvd",
                                   "type": "output", "format": "mp4", "frames": FRAMES, "width": SIZE,
                                   "height": SIZE}
    assert summary["grid"]["view"] == "grid" and summary["grid"]["filename"] == "test_00001_grid.mp4"
    assert (summary["grid"]["width"], summary["grid"]["height"]) == (2 * SIZE, SIZE)  # 2 views: 1 x 2 tiles
    assert (summary["fps"], summary["frames"], summary["width"], summary["height"]) == (8.0, FRAMES, SIZE, SIZE)
    assert CameraSet.from_dict(summary["cameras"]) == _rig()
    assert _all_files(out) == ["cvd/test_00001_cameras.json", "cvd/test_00001_grid.mp4", "cvd/test_00001_poster.png",
                               "cvd/test_00001_v0.mp4", "cvd/test_00001_v1.mp4"]
    assert summary["cameras_file"] == {"filename": "test_00001_cameras.json", "subfolder": "cvd", "type": "output"}
    sidecar = json.loads((out / "cvd" / "test_00001_cameras.json").read_text())
    assert sidecar["format"] == "cvd_multiview_save/1" and (sidecar["fps"], sidecar["frames"]) == (8.0, FRAMES)
    assert [(v["view"], v["label"], v["filename"]) for v in sidecar["views"]] == [
        (0, "left", "test_00001_v0.mp4"), (1, "right", "test_00001_v1.mp4")]
    assert sidecar["grid"] == "test_00001_grid.mp4" and CameraSet.from_dict(sidecar["cameras"]) == _rig()
    with av.open(str(out / "cvd" / "test_00001_v0.mp4")) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == FRAMES and (decoded[0].width, decoded[0].height) == (SIZE, SIZE)
    tags = read_video_metadata(str(out / "cvd" / "test_00001_grid.mp4"))
    assert json.loads(tags["prompt"]) == {"1": {"class_type": "X", "inputs": {}}}
    assert json.loads(tags["workflow"]) == {"nodes": [], "links": []}
    poster = read_video_metadata(str(out / "cvd" / "test_00001_poster.png"))
    assert json.loads(poster["workflow"]) == {"nodes": [], "links": []}


def test_counter_advances_and_metadata_can_be_disabled(comfy_dirs, monkeypatch):
    out, _ = comfy_dirs
    _save(save_grid=False)
    monkeypatch.setattr(_comfy, "metadata_disabled", lambda: True)
    second = _save(save_grid=False, format="webm")
    (summary,) = second.ui["cvd_multiview"]
    assert summary["grid"] is None and summary["cameras_file"] is None  # no cameras: no sidecar
    assert [v["filename"] for v in summary["views"]] == ["test_00002_v0.webm", "test_00002_v1.webm"]
    assert "prompt" not in read_video_metadata(str(out / "cvd" / "test_00002_v0.webm"))
    assert "prompt" in read_video_metadata(str(out / "cvd" / "test_00001_v0.mp4"))


def test_png_format_points_at_frame_zero_with_a_pattern(comfy_dirs):
    out, _ = comfy_dirs
    (summary,) = _save(format="png", cameras=_rig()).ui["cvd_multiview"]
    view = summary["views"][0]
    assert (view["filename"], view["subfolder"], view["pattern"]) == ("frame_00000.png", "cvd/test_00001_v0",
                                                                      "frame_%05d.png")
    for k in range(FRAMES):
        assert (out / view["subfolder"] / (view["pattern"] % k)).is_file()
    assert summary["grid"]["subfolder"] == "cvd/test_00001_grid"
    sidecar = json.loads((out / "cvd" / "test_00001_cameras.json").read_text())
    assert sidecar["views"][1] == {"view": 1, "label": "right", "filename": "test_00001_v1", "format": "png",
                                   "pattern": "frame_%05d.png"}


def test_views_default_and_count_rules(comfy_dirs):
    single = _save(images=_images(views=1), views=0)  # no cameras: one video
    assert len(single.ui["cvd_multiview"][0]["views"]) == 1
    from_cameras = _save(views=0, cameras=_rig())
    assert len(from_cameras.ui["cvd_multiview"][0]["views"]) == VIEWS
    with pytest.raises(NodeInputError, match=r"views \(3\) must equal the number of views of the connected cameras \(2\)"):
        _save(views=3, cameras=_rig())
    with pytest.raises(NodeInputError, match="does not split into 4 views"):
        _save(views=4)


def test_bad_prefix_is_refused_before_running():
    validate = build_v1(output.SAVE_MULTIVIEW_VIDEO).VALIDATE_INPUTS
    assert validate(filename_prefix="cvd/ok") is True
    assert "must not be empty" in validate(filename_prefix="  ")
    assert "inside ComfyUI's output folder" in validate(filename_prefix="../escape")
    with pytest.raises(NodeInputError, match="no '..'"):
        _save(filename_prefix="a/../../b")


@pytest.mark.parametrize("fail_at", [1, FRAMES + 1, 3 * FRAMES])  # first frame, second view, last (grid) frame
def test_a_cancel_in_the_middle_leaves_no_file(comfy_dirs, monkeypatch, fail_at):
    out, _ = comfy_dirs
    monkeypatch.setattr(_comfy, "progress_bar", lambda unique_id=None: FailingProgress(fail_at))
    with pytest.raises(InterruptedError):
        _save()
    assert _all_files(out) == []  # no poster, no view, no hidden .partial file


def test_preview_goes_to_temp_without_metadata(comfy_dirs):
    out, temp = comfy_dirs
    result = output._run_preview(images=_images(), views=VIEWS, fps=12.0, format="mp4", cameras=None)
    (summary,) = result.ui["cvd_multiview"]
    assert all(entry["type"] == "temp" for entry in summary["views"] + [summary["grid"]] + result.ui["images"])
    assert summary["fps"] == 12.0 and summary["cameras"] is None
    assert [v["label"] for v in summary["views"]] == ["view 0", "view 1"]
    assert _all_files(out) == []
    with_cameras = output._run_preview(images=_images(), views=VIEWS, fps=12.0, format="mp4", cameras=_rig())
    assert with_cameras.ui["cvd_multiview"][0]["cameras_file"] is None  # previews keep no sidecar
    assert not [name for name in _all_files(temp) if name.endswith(".json")]
    path = temp / summary["views"][0]["subfolder"] / summary["views"][0]["filename"]
    assert path.is_file() and "prompt" not in read_video_metadata(str(path))


# ------------------------------------------------------------------------------ consistency

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def synthetic():
    from tests.core.synthetic_scene import make_rig, make_scene, render_rig, to_pack_convention

    K, c2w = make_rig(3, 3, 64, 64)
    frames = render_rig(make_scene(seed=1), K, c2w, 64, 64)
    return torch.from_numpy(frames.reshape(-1, 64, 64, 3)), to_pack_convention(K), c2w


def _consistency(images, cameras, **overrides):
    args = dict(detector="sift", max_frames=0, ransac_thresh=1.0)
    args.update(overrides)
    return run_checked(output.MULTIVIEW_CONSISTENCY, dict(images=images, cameras=cameras, **args))


@pytest.fixture
def no_preview_files(monkeypatch):
    monkeypatch.setattr(_comfy, "save_preview_images", lambda images, prefix="": [])


def test_consistency_on_true_rig_vs_shuffled_views(synthetic, no_preview_files):
    images, K, c2w = synthetic
    rig = CameraSet(K, c2w, 64, 64, ("a", "b", "c"))
    good = _consistency(images, rig)
    text, plot = good.values
    report = json.loads(text)
    assert report["labels"] == ["a", "b", "c"] and report["intrinsics_rescaled_from"] is None
    assert len(report["pairs"]) == 3 and plot.shape == (1, 768, 768, 3) and plot.dtype == torch.float32
    assert good.ui["text"][0].startswith("multi-view consistency (sift")
    assert good.ui["cvd_consistency"] == [report] and good.ui["images"] == []
    shuffled_images = images.reshape(3, 3, 64, 64, 3)[[0, 2, 1]].reshape(-1, 64, 64, 3)
    bad = json.loads(_consistency(shuffled_images, rig).values[0])
    assert report["overall"]["sampson_median_px"] < 0.3
    assert bad["overall"]["sampson_median_px"] > 5 * report["overall"]["sampson_median_px"]


def test_consistency_rescales_intrinsics_of_a_larger_rig(synthetic, no_preview_files):
    images, K, c2w = synthetic
    K_big = K.copy()
    K_big[..., :2, :] *= 2.0  # the same cameras described for 128 x 128 frames; resized() halves K again
    report = json.loads(_consistency(images, CameraSet(K_big, c2w, 128, 128)).values[0])
    assert report["intrinsics_rescaled_from"] == [128, 128]
    assert report["overall"]["sampson_median_px"] < 0.3


def test_consistency_argument_rules(synthetic, no_preview_files):
    images, K, c2w = synthetic
    rig = CameraSet(K, c2w, 64, 64)
    with pytest.raises(NodeInputError, match=r"views x frames = 3 x 3 = 9 frames"):
        _consistency(images[:6], rig)
    with pytest.raises(NodeInputError, match="at least 2 views"):
        _consistency(images[:3], CameraSet(K[0], c2w[0], 64, 64))
    with pytest.raises(NodeInputError, match="detector must be one of 'sift', 'orb', got"):
        _consistency(images, rig, detector="akaze")
    odd = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(60, 60)).permute(0, 2, 3, 1)
    with pytest.raises(NodeInputError, match="cannot be rescaled"):
        _consistency(odd, rig)
    only_two = json.loads(_consistency(images, rig, max_frames=2, detector="orb").values[0])
    assert only_two["evaluated_frames"] == [0, 2] and only_two["detector"] == "orb"


def test_metadata_switch_reads_comfyui_cli_args(monkeypatch):
    import sys
    import types

    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(disable_metadata=True)
    comfy = types.ModuleType("comfy")
    comfy.cli_args = cli_args
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
    assert _comfy.metadata_disabled() is True
    assert output._metadata({"1": {}}, {"workflow": {}}) == {}
    cli_args.args.disable_metadata = False
    assert output._metadata({"1": {}}, {"workflow": {"a": 1}}) == {"prompt": '{"1": {}}', "workflow": '{"a": 1}'}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_frames_that_are_not_finite_are_refused_and_nothing_is_written(comfy_dirs, bad):
    out, temp = comfy_dirs
    images = _images()
    images[FRAMES + 1, 3, 4, 0] = bad  # view 1, frame 1
    with pytest.raises(NodeInputError, match=rf"^CVD Save Multi-View Video: images must be finite, got {bad} at view 1, "
                                             r"frame 1; nothing was written$"):
        _save(images=images)
    with pytest.raises(NodeInputError, match="CVD Preview Multi-View: images must be finite"):
        run_checked(output.PREVIEW_MULTIVIEW, dict(images=images, views=VIEWS, fps=8.0, format="mp4"))
    assert _all_files(out) == [] and _all_files(temp) == []
