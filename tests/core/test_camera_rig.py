"""CameraSet validation, RealEstate10K loading, presets and JSON rigs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cvd_core.camera import (PRESETS, CameraError, CameraSet, cvd_intrinsics, load_realestate10k,
                             make_preset_rig, parse_pose_rows, preset_targets, relative_to_first,
                             rig_from_json)

# Two real rows of a RealEstate10K file (normalised intrinsics of a 1280x720 video).
_ROW_A = "0 0.470984 0.837305 0.5 0.5 0 0 0.991872 -0.0113118 0.126736 0.400534 0.0120378 0.999915 -0.00496392 -0.0474885 -0.126669 0.00644919 0.991924 -0.4145"
_ROW_B = "33366 0.470984 0.837305 0.5 0.5 0 0 0.991945 -0.0114096 0.126153 0.506975 0.0121226 0.999915 -0.00488497 -0.0694211 -0.126087 0.00637492 0.991999 -0.517326"


def _pose_text(n_rows: int) -> str:
    rows = [_ROW_A if i % 2 == 0 else _ROW_B for i in range(n_rows)]
    return "https://www.youtube.com/watch?v=test\n" + "\n".join(rows) + "\n"


def _project(K: torch.Tensor, c2w: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    local = torch.linalg.inv(c2w) @ torch.cat([point, point.new_ones(1)])
    pixel = K @ local[:3]
    return pixel[:2] / pixel[2]


# ------------------------------------------------------------------------------------ CameraSet
def test_cameraset_shapes_and_views():
    rig = make_preset_rig("circle", 3, 5, 64, 48)
    assert rig.is_rig and rig.n_views == 3 and rig.n_frames == 5
    assert rig.K.dtype == torch.float64 and rig.c2w.shape == (3, 5, 4, 4)
    single = rig.view(1)
    assert not single.is_rig and single.n_views == 1 and single.labels == ("circle 1/3",)
    assert torch.equal(single.c2w, rig.c2w[1])
    back = CameraSet.stack([rig.view(i) for i in range(3)])
    assert back == rig
    with pytest.raises(CameraError, match=r"view index must be in \[0, 2\]"):
        rig.view(3)


def test_cameraset_validation_names_the_rule():
    K, c2w = torch.eye(3).expand(4, 3, 3).clone(), torch.eye(4).expand(4, 4, 4).clone()
    K[:, 0, 0] = K[:, 1, 1] = 100.0
    CameraSet(K, c2w, 64, 64)  # valid
    with pytest.raises(CameraError, match="multiple of 8"):
        CameraSet(K, c2w, 60, 64)
    with pytest.raises(CameraError, match="height must be a multiple of 8"):
        CameraSet(K, c2w, 64, 0)
    bad = c2w.clone()
    bad[2, 0, 3] = float("nan")
    with pytest.raises(CameraError, match=r"c2w must be finite .*index \[2, 0, 3\]"):
        CameraSet(K, bad, 64, 64)
    with pytest.raises(CameraError, match="same views and frames"):
        CameraSet(K[:3], c2w, 64, 64)
    with pytest.raises(CameraError, match=r"\[F,4,4\]"):
        CameraSet(K, c2w[:, :3], 64, 64)
    with pytest.raises(CameraError, match="one name per view"):
        CameraSet(K[None], c2w[None], 64, 64, labels=("a", "b"))
    with pytest.raises(CameraError, match="positive focal"):
        CameraSet(torch.eye(3).expand(4, 3, 3) * 0 + torch.diag(torch.tensor([0.0, 1.0, 1.0])), c2w, 64, 64)


def test_stack_rejects_mismatched_sets():
    a = make_preset_rig("static", 1, 4, 64, 64)
    with pytest.raises(CameraError, match="same number of frames: set 0 has 4, set 1 has 5"):
        CameraSet.stack([a, make_preset_rig("static", 1, 5, 64, 64)])
    with pytest.raises(CameraError, match="same frame size"):
        CameraSet.stack([a, make_preset_rig("static", 1, 4, 64, 72)])


def test_to_dict_roundtrip_is_json():
    rig = make_preset_rig("interpolate", 2, 3, 64, 64)
    data = json.loads(json.dumps(rig.to_dict()))
    assert CameraSet.from_dict(data) == rig
    with pytest.raises(CameraError, match="missing the keys"):
        CameraSet.from_dict({"K": data["K"]})


def test_resized_matches_resize_and_crop_of_pixels():
    """A point's pixel in the resized set = resize-to-cover + center-crop of its original pixel."""
    rig = make_preset_rig("circle", 2, 3, 128, 64)
    small = rig.resized(48, 48)
    point = torch.tensor([0.05, -0.02, 1.3], dtype=torch.float64)
    scale = max(48 / 128, 48 / 64)
    for v in range(2):
        for f in range(3):
            original = _project(rig.K[v, f], rig.c2w[v, f], point)
            expected = original * scale - torch.tensor([(128 * scale - 48) / 2, (64 * scale - 48) / 2],
                                                       dtype=torch.float64)
            assert torch.allclose(_project(small.K[v, f], small.c2w[v, f], point), expected, atol=1e-9)


# ------------------------------------------------------------------------------------ RealEstate10K
def test_loader_landscape_source_crop():
    cams = load_realestate10k(_pose_text(3), 256, 256)  # default 1280x720 source
    scale = 256 / 720
    assert cams.K.shape == (3, 3, 3) and cams.c2w.shape == (3, 4, 4)
    assert cams.K[0, 0, 0].item() == pytest.approx(0.470984 * 1280 * scale)
    assert cams.K[0, 1, 1].item() == pytest.approx(0.837305 * 720 * scale)
    assert cams.K[0, 0, 2].item() == pytest.approx(128.0) and cams.K[0, 1, 2].item() == pytest.approx(128.0)
    assert torch.equal(cams.c2w[0], torch.eye(4, dtype=torch.float64))
    # wide output: the 16:9 frame is scaled to the output width only if that covers the height
    wide = load_realestate10k(_pose_text(3), 384, 128)
    scale = max(384 / 1280, 128 / 720)
    assert wide.K[0, 0, 0].item() == pytest.approx(0.470984 * 1280 * scale)
    assert wide.K[0, 0, 2].item() == pytest.approx(192.0) and wide.K[0, 1, 2].item() == pytest.approx(64.0)


def test_loader_portrait_source_and_portrait_output():
    cams = load_realestate10k(_pose_text(2), 256, 256, source_size=(720, 1280))
    assert cams.K[0, 0, 0].item() == pytest.approx(0.470984 * 720 * 256 / 720)
    assert cams.K[0, 1, 1].item() == pytest.approx(0.837305 * 1280 * 256 / 720)
    tall = load_realestate10k(_pose_text(2), 128, 256)  # portrait output from a landscape source
    scale = max(128 / 1280, 256 / 720)
    assert tall.K[0, 0, 0].item() == pytest.approx(0.470984 * 1280 * scale)
    assert tall.K[0, 0, 2].item() == pytest.approx(64.0) and tall.K[0, 1, 2].item() == pytest.approx(128.0)


def test_loader_poses_are_inverse_w2c_relative_to_first(tmp_path):
    path = tmp_path / "clip.txt"
    path.write_text(_pose_text(2))
    cams = load_realestate10k(path, 64, 64)
    assert cams.labels == ("clip",)
    rows = parse_pose_rows(path)
    w2c = [np.vstack([r[7:].reshape(3, 4), [0, 0, 0, 1]]) for r in rows]
    expected = np.linalg.inv(np.linalg.inv(w2c[0])) @ np.linalg.inv(w2c[1])  # inv(c2w0) @ c2w1
    assert np.allclose(cams.c2w[1].numpy(), expected, atol=1e-12)


def test_loader_frames_and_stride():
    assert load_realestate10k(_pose_text(12), 64, 64, frames=5).n_frames == 5
    assert load_realestate10k(_pose_text(12), 64, 64, stride=3).n_frames == 4
    with pytest.raises(CameraError, match="pose file has 12 frames, 16 requested"):
        load_realestate10k(_pose_text(12), 64, 64, frames=16)
    with pytest.raises(CameraError, match=r"has 6 frames \(12 rows at stride 2\), 8 requested"):
        load_realestate10k(_pose_text(12), 64, 64, frames=8, stride=2)
    with pytest.raises(CameraError, match="stride must be an integer >= 1"):
        load_realestate10k(_pose_text(4), 64, 64, stride=0)


@pytest.mark.parametrize("text, message", [
    ("https://x\n" + _ROW_A + "\n" + " ".join(_ROW_B.split()[:-1]) + "\n", r"line 3: expected 19 numbers.*got 18"),
    ("https://x\n" + _ROW_A.replace("0.991872", "nan") + "\n", r"line 2: values must be finite"),
    ("https://x\n" + _ROW_A.replace("0.400534", "abc") + "\n", r"line 2: 'abc' is not a number"),
    ("https://x\n\n", r"has no camera rows"),
    ("https://x\n" + "0 0.4 0.8 0.5 0.5 0 0 " + " ".join(["0"] * 12) + "\n", r"rotation of frame 0 is singular"),
    ("https://x\n" + _ROW_A.replace("0.470984", "-0.47", 1) + "\n", r"focal lengths"),
])
def test_loader_bad_files(text, message):
    with pytest.raises(CameraError, match=message):
        load_realestate10k(text, 64, 64)


def test_loader_missing_file_and_bad_size(tmp_path):
    with pytest.raises(CameraError, match="pose file not found"):
        load_realestate10k(tmp_path / "nope.txt", 64, 64)
    with pytest.raises(CameraError, match="width must be a multiple of 8"):
        load_realestate10k(_pose_text(2), 100, 64)


def test_loader_without_url_line_keeps_first_row():
    text = _ROW_A + "\n" + _ROW_B + "\n"
    assert load_realestate10k(text, 64, 64).n_frames == 2


# ------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("views", [1, 2, 5])
def test_every_preset_is_a_valid_rig(preset, views):
    rig = make_preset_rig(preset, views, 6, 96, 64)
    assert rig.c2w.shape == (views, 6, 4, 4) and rig.K.shape == (views, 6, 3, 3)
    assert torch.allclose(rig.c2w[:, 0], torch.eye(4, dtype=torch.float64).expand(views, 4, 4), atol=1e-12)
    rotation = rig.c2w[..., :3, :3]
    assert torch.allclose(rotation @ rotation.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(rotation),
                          atol=1e-9)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(views, 6, dtype=torch.float64), atol=1e-9)
    assert rig.labels == tuple(f"{preset} {i}/{views}" for i in range(views))


@pytest.mark.parametrize("preset", ["circle", "upper_hemi", "interpolate"])
def test_look_at_presets_reach_target_looking_at_point(preset):
    rig = make_preset_rig(preset, 4, 5, 64, 64, camera_dist=0.7)
    for v, target in enumerate(preset_targets(preset, 4, 0.7)):
        last = rig.c2w[v, -1].numpy()
        assert np.allclose(last[:3, 3], target[:3, 3], atol=1e-12)
        direction = np.array([0.0, 0.0, 1.0]) - last[:3, 3]
        assert np.allclose(last[:3, 2], direction / np.linalg.norm(direction), atol=1e-9)  # z looks at (0,0,1)
    if preset == "circle":
        angles = [2 * math.pi * i / 4 for i in range(4)]
        positions = [rig.c2w[v, -1, :3, 3].numpy() for v in range(4)]
        assert np.allclose(positions, [[0.7 * math.cos(a), 0.7 * math.sin(a), 0.0] for a in angles], atol=1e-12)


def test_preset_midpoints_follow_linear_translation_and_slerp():
    scipy_rotation = pytest.importorskip("scipy.spatial.transform")
    rig = make_preset_rig("interpolate", 3, 7, 64, 64)
    alphas = np.linspace(0, 1, 7)
    for v in range(3):
        end = rig.c2w[v, -1].numpy()
        slerp = scipy_rotation.Slerp([0, 1], scipy_rotation.Rotation.from_matrix(np.stack([np.eye(3), end[:3, :3]])))
        assert np.allclose(rig.c2w[v, :, :3, :3].numpy(), slerp(alphas).as_matrix(), atol=1e-9)
        assert np.allclose(rig.c2w[v, :, :3, 3].numpy(), alphas[:, None] * end[None, :3, 3], atol=1e-12)


def test_pan_zoom_orbit_static_semantics():
    pan = make_preset_rig("pan", 2, 3, 64, 64, angle_deg=20)
    yaw = [math.degrees(math.atan2(pan.c2w[v, -1, 0, 2].item(), pan.c2w[v, -1, 2, 2].item())) for v in range(2)]
    assert yaw == pytest.approx([-20.0, 20.0])  # left, right (+x is right)
    assert torch.count_nonzero(pan.c2w[..., :3, 3]) == 0  # rotation in place
    zoom = make_preset_rig("zoom", 1, 3, 64, 64, camera_dist=0.4)
    assert zoom.c2w[0, -1, :3, 3].tolist() == pytest.approx([0.0, 0.0, 0.4])  # one view: forward (zoom in)
    orbit = make_preset_rig("orbit", 2, 5, 64, 64, angle_deg=40, orbit_distance=2.0)
    centre = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    for v in range(2):
        for f in range(5):
            pose = orbit.c2w[v, f]
            offset = centre - pose[:3, 3]
            assert offset.norm().item() == pytest.approx(2.0)  # on the circle
            assert torch.allclose(pose[:3, 2], offset / offset.norm(), atol=1e-12)  # looking at the centre
    static = make_preset_rig("static", 3, 4, 64, 64)
    assert torch.equal(static.c2w, torch.eye(4, dtype=torch.float64).expand(3, 4, 4, 4))


def test_speed_and_perturbation():
    slow = make_preset_rig("circle", 2, 5, 64, 64, speed=0.5)
    full = make_preset_rig("circle", 2, 5, 64, 64)
    assert torch.allclose(slow.c2w[:, -1], full.c2w[:, 2], atol=1e-12)
    a = make_preset_rig("circle", 2, 5, 64, 64, perturb_traj=0.1, seed=3)
    b = make_preset_rig("circle", 2, 5, 64, 64, perturb_traj=0.1, seed=3)
    assert torch.equal(a.c2w, b.c2w) and not torch.allclose(a.c2w, full.c2w)
    assert torch.equal(a.c2w[..., :3, :3], full.c2w[..., :3, :3])  # only translations move


def test_preset_intrinsics_follow_cvd_scaling():
    rig = make_preset_rig("circle", 2, 2, 384, 256)
    assert torch.allclose(rig.K[0, 0], cvd_intrinsics(384, 256))
    assert rig.K[0, 0, 0, 0].item() == pytest.approx(223.578 * 1.5) and rig.K[0, 0, 1, 1].item() == pytest.approx(223.578)
    fov = make_preset_rig("circle", 2, 2, 384, 256, fov_deg=90)
    assert fov.K[0, 0, 0, 0].item() == pytest.approx(192.0) and fov.K[0, 0, 1, 1].item() == pytest.approx(192.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(views=0), "views must be >= 1, got 0"),
    (dict(frames=0), "frames must be >= 1, got 0"),
    (dict(width=100), "width must be a multiple of 8"),
    (dict(height=4), "height must be a multiple of 8"),
    (dict(preset="spiral"), "preset must be one of"),
    (dict(camera_dist=float("nan")), "camera_dist must be finite"),
    (dict(speed=-1), "speed must be >= 0"),
    (dict(views=2.5), "views must be an integer"),
])
def test_preset_bad_inputs(kwargs, message):
    args = dict(preset="circle", views=2, frames=4, width=64, height=64)
    args.update(kwargs)
    with pytest.raises(CameraError, match=message):
        make_preset_rig(**args)


def test_single_frame_rig_is_identity():
    rig = make_preset_rig("circle", 2, 1, 64, 64)
    assert torch.equal(rig.c2w, torch.eye(4, dtype=torch.float64).expand(2, 1, 4, 4))


# ------------------------------------------------------------------------------------ JSON rigs
def test_rig_from_json_c2w_w2c_opengl_and_relative():
    start = np.eye(4)
    start[:3, 3] = [1.0, 2.0, 3.0]
    moved = start.copy()
    moved[:3, 3] += [0.1, 0.0, 0.0]
    text = json.dumps({"views": [
        {"label": "a", "fov_deg": 90, "c2w": [start.tolist(), moved.tolist()]},
        {"label": "b", "w2c": [np.linalg.inv(start).tolist(), np.linalg.inv(moved)[:3].tolist()],
         "K": [[50, 0, 32], [0, 50, 32], [0, 0, 1]], "K_size": [64, 64]},
        {"c2w": [np.eye(4).tolist(), np.eye(4).tolist()], "convention": "opengl"},
    ]})
    rig = rig_from_json(text, 128, 128)
    assert rig.labels == ("a", "b", "view 2") and rig.c2w.shape == (3, 2, 4, 4)
    assert torch.allclose(rig.c2w[0, 1, :3, 3], torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(rig.c2w[0], rig.c2w[1])
    assert rig.K[0, 0, 0, 0].item() == pytest.approx(64.0)  # 90 degrees over 128 px
    assert rig.K[1, 0, 0, 0].item() == pytest.approx(100.0) and rig.K[1, 0, 0, 2].item() == pytest.approx(64.0)
    assert torch.allclose(rig.c2w[2, 0], torch.eye(4, dtype=torch.float64))  # relative: flips cancel out
    assert torch.equal(rig.K[2, 0], cvd_intrinsics(128, 128))


@pytest.mark.parametrize("payload, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"views": []}), "non-empty 'views'"),
    (json.dumps({"views": [{"label": "x"}]}), "exactly one of 'c2w' or 'w2c'"),
    (json.dumps({"views": [{"c2w": [[[1, 0], [0, 1]]]}]}), r"c2w must be a non-empty list of 4x4"),
    (json.dumps({"views": [{"c2w": [np.eye(4).tolist()]}, {"c2w": [np.eye(4).tolist()] * 2}]}),
     r"same number of frames, got \[1, 2\]"),
    (json.dumps({"views": [{"c2w": [np.eye(4).tolist()], "fov_deg": 200}]}), "fov_deg must be in"),
    (json.dumps({"views": [{"c2w": [np.eye(4).tolist()], "zoom": 2}]}), "unknown keys"),
    (json.dumps([{"c2w": [[[1, 0, 0, "nan"], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]}]), "must be a"),
])
def test_rig_from_json_errors(payload, message):
    with pytest.raises(CameraError, match=message):
        rig_from_json(payload, 64, 64)


def test_relative_to_first_sets_exact_identity():
    rig = make_preset_rig("circle", 2, 4, 64, 64)
    world = torch.tensor([[0.0, -1, 0, 0.3], [1, 0, 0, -0.2], [0, 0, 1, 2.0], [0, 0, 0, 1]], dtype=torch.float64)
    moved = world @ rig.c2w
    assert torch.allclose(relative_to_first(moved), rig.c2w, atol=1e-12)
    assert torch.equal(relative_to_first(moved)[:, 0], torch.eye(4, dtype=torch.float64).expand(2, 4, 4))


def test_camera_modules_import_no_circle():
    """The camera package's modules import each other without a cycle (TYPE_CHECKING imports count too)."""
    import ast
    from pathlib import Path

    import cvd_core.camera as package

    folder = Path(package.__file__).parent
    modules = {path.stem: path for path in folder.glob("*.py") if path.stem != "__init__"}
    edges = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                target = (node.module or "").split(".")[0]
                imported |= {target} if target else {alias.name for alias in node.names}
        edges[name] = imported & modules.keys()

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen + (nxt,))) for nxt in edges[start])

    circles = sorted(name for name in modules if reaches(name, name))
    assert not circles, f"camera modules in an import circle: {circles} (edges {edges})"
