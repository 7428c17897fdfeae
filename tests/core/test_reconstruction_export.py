"""Export for reconstruction: the files parse back to the rig, and the exported cameras triangulate
the synthetic scene's points where they are.

The projections that feed the triangulations are made with each tool's *documented* convention
(COLMAP: world-to-camera quaternion, OpenCV axes, pixel centres at +0.5; nerfstudio: camera-to-world
in OpenGL axes, z-up world), not with the pack's readers, so a wrong convention in the writer fails.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from cvd_core.io.colmap import quaternion_to_rotation, read_colmap_text, rotation_to_quaternion
from cvd_core.io.nerfstudio import read_nerfstudio_transforms
from cvd_core.io.reconstruction import export_for_reconstruction
from tests.core.synthetic_scene import (distance_to_scene, make_rig, make_scene, render_rig, surface_points,
                                        to_pack_convention)

VIEWS, STEPS, SIZE = 3, 4, 128
ROUND_TRIP_TOL = 1e-6


@pytest.fixture(scope="module")
def scene_views():
    K_render, c2w = make_rig(VIEWS, STEPS, SIZE, SIZE)
    # View 2 zooms after frame 0 (per-image intrinsics); frame 0 stays the shared first camera.
    K_render[2, 1:] *= np.array([[1.1, 1, 1.05], [1, 1.1, 0.95], [1, 1, 1]])
    scene = make_scene(seed=0)
    frames = render_rig(scene, K_render, c2w, SIZE, SIZE)
    pixels = (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)
    return scene, K_render, to_pack_convention(K_render), c2w, pixels


@pytest.fixture(scope="module")
def exported(scene_views, tmp_path_factory):
    _, _, K, c2w, pixels = scene_views
    out = tmp_path_factory.mktemp("export")
    summary = export_for_reconstruction(pixels, K, c2w, str(out), "scene_00001", rig={"marker": 1},
                                        labels=["a", "b", "c"])
    return out / "scene_00001", summary


def test_layout_and_manifest(exported, scene_views):
    root, summary = exported
    (dataset,) = summary["datasets"]
    # Frame 0: the three views share one camera; the duplicates are left out.
    assert summary["images"] == dataset["images"] == VIEWS * STEPS - (VIEWS - 1)
    assert sorted(os.listdir(root)) == ["cvd_export.json", "images", "sparse", "transforms.json"]
    assert sorted(os.listdir(root / "sparse" / "0")) == ["cameras.txt", "images.txt", "points3D.txt"]
    names = sorted(os.listdir(root / "images"))
    assert names[:3] == ["v00_t0000.png", "v00_t0001.png", "v00_t0002.png"] and "v01_t0000.png" not in names
    manifest = json.loads((root / "cvd_export.json").read_text())
    assert manifest["rig"] == {"marker": 1} and manifest["labels"] == ["a", "b", "c"]
    assert manifest["datasets"][0]["views_frames"][:2] == [[0, 0], [0, 1]] and manifest["skipped_time_steps"] == []
    pixels = scene_views[4]
    assert np.array_equal(np.asarray(Image.open(root / "images" / "v02_t0003.png")), pixels[2, 3])  # lossless


def _rig_lookup(K, c2w):
    return {f"v{v:02d}_t{t:04d}.png": (K[v, t], c2w[v, t]) for v in range(VIEWS) for t in range(STEPS)}


def test_colmap_model_parses_back_to_the_rig(exported, scene_views):
    root, _ = exported
    _, _, K, c2w, _ = scene_views
    model = read_colmap_text(str(root / "sparse" / "0"))
    rig = _rig_lookup(K, c2w)
    assert model["points3D"] == 0 and len(model["images"]) == VIEWS * STEPS - (VIEWS - 1)
    assert len(model["cameras"]) == 2  # one K for views 0 and 1 (and frame 0), one for view 2's zoom
    for image in model["images"]:
        K_true, c2w_true = rig[image["name"]]
        assert np.abs(image["K"] - K_true).max() < ROUND_TRIP_TOL
        assert np.abs(image["c2w"] - c2w_true).max() < ROUND_TRIP_TOL
    text = (root / "sparse" / "0" / "images.txt").read_text().splitlines()
    first = next(line for line in text if not line.startswith("#"))
    qw = float(first.split()[1])
    assert first.split()[-1] == "v00_t0000.png" and qw == pytest.approx(1.0)  # frame 0: identity


def test_nerfstudio_transforms_parse_back_to_the_rig(exported, scene_views):
    root, _ = exported
    _, _, K, c2w, _ = scene_views
    meta = json.loads((root / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["applied_transform"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]]
    frame = meta["frames"][0]
    assert set(frame) >= {"file_path", "transform_matrix", "fl_x", "fl_y", "cx", "cy", "w", "h"}
    assert (frame["w"], frame["h"]) == (SIZE, SIZE) and frame["file_path"] == "images/v00_t0000.png"
    rig = _rig_lookup(K, c2w)
    for parsed in read_nerfstudio_transforms(str(root / "transforms.json")):
        K_true, c2w_true = rig[os.path.basename(parsed["file_path"])]
        assert np.abs(parsed["K"] - K_true).max() < ROUND_TRIP_TOL
        assert np.abs(parsed["c2w"] - c2w_true).max() < ROUND_TRIP_TOL
        assert (root / parsed["file_path"]).is_file()


# ------------------------------------------------------------------------------ triangulation

def _colmap_projections(root):
    """{name: 3x4 P} from images.txt/cameras.txt read as COLMAP defines them (x = K (R(q) X + t))."""
    cameras = {}
    for line in (root / "sparse" / "0" / "cameras.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            f = line.split()
            fx, fy, cx, cy = map(float, f[4:8])
            cameras[f[0]] = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    lines = [line for line in (root / "sparse" / "0" / "images.txt").read_text().split("\n")]
    projections, index = {}, 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line or line.startswith("#"):
            continue
        f = line.split()
        w, x, y, z = map(float, f[1:5])
        R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        t = np.array(list(map(float, f[5:8])))
        projections[f[9]] = cameras[f[8]] @ np.hstack([R, t[:, None]])
        index += 1  # the (empty) POINTS2D line
    return projections


def _nerfstudio_projections(root):
    """{name: 3x4 P} in nerfstudio's world from transforms.json (OpenGL camera: x right, y up, looks down -z)."""
    meta = json.loads((root / "transforms.json").read_text())
    projections = {}
    for frame in meta["frames"]:
        w2c_gl = np.linalg.inv(np.asarray(frame["transform_matrix"]))
        to_pixels_axes = np.diag([1.0, -1.0, -1.0])  # OpenGL camera -> image axes (y down, depth forward)
        K = np.array([[frame["fl_x"], 0, frame["cx"]], [0, frame["fl_y"], frame["cy"]], [0, 0, 1]])
        projections[os.path.basename(frame["file_path"])] = K @ to_pixels_axes @ w2c_gl[:3]
    return projections


def _triangulate(P_a, P_b, x_a, x_b):
    import cv2

    homogeneous = cv2.triangulatePoints(P_a, P_b, x_a.T.astype(np.float64), x_b.T.astype(np.float64))
    return (homogeneous[:3] / homogeneous[3]).T


def _project(P, points):
    pixels = np.hstack([points, np.ones((len(points), 1))]) @ P.T
    return pixels[:, :2] / pixels[:, 2:]


@pytest.fixture(scope="module")
def scene_points(scene_views):
    """Points of the scene seen by view 0 at frame 3 (a grid of its pixels, ray-cast)."""
    scene, K_render, _, c2w, _ = scene_views
    grid = np.stack(np.meshgrid(np.arange(8, SIZE, 12), np.arange(8, SIZE, 12)), -1).reshape(-1, 2).astype(float)
    points = surface_points(scene, K_render[0, 3], c2w[0, 3], grid)
    return points[np.all(np.isfinite(points), axis=1)]


@pytest.mark.parametrize("tool", ["colmap", "nerfstudio"])
def test_exact_projections_triangulate_back_to_the_scene_points(exported, scene_views, scene_points, tool):
    root, _ = exported
    _, _, K, c2w, _ = scene_views
    world = scene_points if tool == "colmap" else scene_points @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    projections = _colmap_projections(root) if tool == "colmap" else _nerfstudio_projections(root)
    P_a, P_b = projections["v00_t0003.png"], projections["v02_t0003.png"]
    # Observations made with the rig itself (pack convention): K (R X + t) in pixels whose centres are at +0.5.
    def observe(view):
        w2c = np.linalg.inv(c2w[view, 3])
        camera = scene_points @ w2c[:3, :3].T + w2c[:3, 3]
        pixels = camera @ K[view, 3].T
        return pixels[:, :2] / pixels[:, 2:]

    triangulated = _triangulate(P_a, P_b, observe(0), observe(2))
    assert np.abs(triangulated - world).max() < ROUND_TRIP_TOL * np.abs(world).max()  # float64 DLT on exact data
    assert np.abs(_project(P_a, world) - observe(0)).max() < 1e-6


def test_matched_pixels_of_exported_images_triangulate_onto_the_scene(exported, scene_views):
    """End to end: SIFT matches between exported images, triangulated with the exported COLMAP cameras,
    lie on the scene's surfaces within the depth precision of the pair."""
    import cv2

    root, _ = exported
    scene = scene_views[0]
    projections = _colmap_projections(root)
    a, b = "v00_t0003.png", "v01_t0003.png"  # the widest pair: baseline 1.56
    sift = cv2.SIFT_create()
    features = [sift.detectAndCompute(cv2.imread(str(root / "images" / name), cv2.IMREAD_GRAYSCALE), None)
                for name in (a, b)]
    knn = cv2.BFMatcher().knnMatch(features[0][1], features[1][1], k=2)
    good = [m for m, n in knn if m.distance < 0.75 * n.distance]
    # OpenCV keypoints put pixel centres at integers; COLMAP at +0.5.
    x_a = np.array([features[0][0][m.queryIdx].pt for m in good]) + 0.5
    x_b = np.array([features[1][0][m.trainIdx].pt for m in good]) + 0.5
    points = _triangulate(projections[a], projections[b], x_a, x_b)
    # Depth precision of a stereo pair: dZ = Z^2 / (f b) * dx; with dx one pixel, Z <= 6, f ~ 111, b = 1.56.
    centre_a = -np.linalg.inv(projections[a][:, :3]) @ projections[a][:, 3]
    centre_b = -np.linalg.inv(projections[b][:, :3]) @ projections[b][:, 3]
    focal = scene_views[2][0, 3, 0, 0]
    depth_bound = 6.0 ** 2 / (focal * np.linalg.norm(centre_a - centre_b)) * 1.0
    distances = distance_to_scene(scene, points)
    assert len(good) > 30
    assert np.mean(distances <= depth_bound) >= 0.9, (depth_bound, np.percentile(distances, [50, 90]))
    assert np.median(distances) <= depth_bound / 4


# ------------------------------------------------------------------------------ variants and rules

def test_per_time_step_datasets_skip_the_shared_first_frame(scene_views, tmp_path):
    _, _, K, c2w, pixels = scene_views
    summary = export_for_reconstruction(pixels, K, c2w, str(tmp_path), "steps", scope="per_time_step",
                                        targets="colmap", image_format="jpg")
    assert [d["folder"] for d in summary["datasets"]] == ["t0001", "t0002", "t0003"]
    assert summary["skipped_time_steps"] == [0] and summary["images"] == VIEWS * (STEPS - 1)
    step = tmp_path / "steps" / "t0002"
    assert sorted(os.listdir(step)) == ["images", "sparse"]  # no transforms.json for colmap only
    assert sorted(os.listdir(step / "images")) == ["v00_t0002.jpg", "v01_t0002.jpg", "v02_t0002.jpg"]
    assert [image["name"] for image in read_colmap_text(str(step / "sparse" / "0"))["images"]] == \
        ["v00_t0002.jpg", "v01_t0002.jpg", "v02_t0002.jpg"]
    kept = export_for_reconstruction(pixels, K, c2w, str(tmp_path), "all", scope="per_time_step",
                                     targets="nerfstudio", skip_duplicate_cameras=False)
    assert [d["folder"] for d in kept["datasets"]] == ["t0000", "t0001", "t0002", "t0003"]
    assert not (tmp_path / "all" / "t0000" / "sparse").exists()


def test_nothing_to_export_is_an_error_and_writes_nothing(scene_views, tmp_path):
    _, _, K, c2w, pixels = scene_views
    with pytest.raises(ValueError, match="nothing to export"):
        export_for_reconstruction(pixels[:, :1], K[:, :1], c2w[:, :1], str(tmp_path), "x", scope="per_time_step")
    assert os.listdir(tmp_path) == []


class _CancelAt:
    def __init__(self, at):
        self.at, self.done = at, 0

    def start(self, total):
        pass

    def advance(self, n=1):
        self.done += n
        if self.done >= self.at:
            raise InterruptedError("cancelled")

    def check(self):
        pass


@pytest.mark.parametrize("at", [1, 7])
def test_a_cancel_leaves_no_file(scene_views, tmp_path, at):
    _, _, K, c2w, pixels = scene_views
    with pytest.raises(InterruptedError):
        export_for_reconstruction(pixels, K, c2w, str(tmp_path), "cancelled", progress=_CancelAt(at))
    assert os.listdir(tmp_path) == []  # not even the hidden staging folder


def test_an_existing_export_is_never_overwritten(scene_views, tmp_path):
    _, _, K, c2w, pixels = scene_views
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        export_for_reconstruction(pixels, K, c2w, str(tmp_path), "taken")
    assert os.listdir(tmp_path) == ["taken"] and os.listdir(tmp_path / "taken") == []


@pytest.mark.parametrize("change, message", [
    (dict(scope="sometimes"), "scope must be one of whole_video, per_time_step"),
    (dict(targets="blender"), "formats must be one of"),
    (dict(image_format="webp"), "image_format must be one of png, jpg"),
    (dict(K="skew"), "skew"),
    (dict(K="shape"), r"K and c2w must be \[3, 4, 3, 3\]"),
])
def test_clear_errors(scene_views, tmp_path, change, message):
    _, _, K, c2w, pixels = scene_views
    args = dict(scope="whole_video", targets="nerfstudio+colmap", image_format="png")
    args.update({k: v for k, v in change.items() if k != "K"})
    K = K.copy()
    if change.get("K") == "skew":
        K[1, 2, 0, 1] = 0.5
    elif change.get("K") == "shape":
        K = K[:, :2]
    with pytest.raises(ValueError, match=message):
        export_for_reconstruction(pixels, K, c2w, str(tmp_path), "bad", **args)
    assert os.listdir(tmp_path) == []


def test_quaternions_round_trip_for_every_kind_of_rotation():
    rng = np.random.default_rng(0)
    rotations = [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    for _ in range(200):
        q = rng.normal(size=4)
        rotations.append(quaternion_to_rotation(q))
    for R in rotations:
        q = rotation_to_quaternion(R)
        assert abs(np.linalg.norm(q) - 1) < 1e-12 and q[0] >= 0
        assert np.abs(quaternion_to_rotation(q) - R).max() < 1e-12
    # Hamilton convention: a rotation by +90 degrees about z maps x to y and has q = (cos 45, 0, 0, sin 45).
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert rotation_to_quaternion(turn) == pytest.approx([math.sqrt(0.5), 0, 0, math.sqrt(0.5)])
