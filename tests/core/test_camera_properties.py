"""Property tests: the epipolar constraint and Plücker rays hold for random cameras and points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from cvd_core.camera import (CameraSet, fundamental_matrix, make_preset_rig, pair_fundamentals,
                             plucker_embedding, relative_to_first, slerp_rotation)

SETTINGS = settings(max_examples=50, deadline=None)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _random_camera(rng: np.random.Generator, size: int = 256):
    c2w = np.eye(4)
    c2w[:3, :3] = _random_rotation(rng)
    c2w[:3, 3] = rng.uniform(-2, 2, 3)
    f = rng.uniform(0.5, 2.0) * size
    K = np.array([[f * rng.uniform(0.8, 1.25), 0, size / 2 + rng.uniform(-20, 20)],
                  [0, f, size / 2 + rng.uniform(-20, 20)], [0, 0, 1.0]])
    return torch.as_tensor(c2w), torch.as_tensor(K)


def _project(K, c2w, points):
    """Pixels [N, 2] and depths [N] of world points [N, 3] (numpy: tiny matmuls, no thread pool)."""
    K, c2w, points = (np.asarray(t, dtype=np.float64) for t in (K, c2w, points))
    w2c = np.linalg.inv(c2w)
    local = points @ w2c[:3, :3].T + w2c[:3, 3]
    pixels = local @ K.T
    return pixels[:, :2] / pixels[:, 2:3], local[:, 2]


def _points_in_front(rng, cameras, n=20):
    """Up to n random world points at positive depth in every camera (sampled in front of the first one)."""
    c2w0 = np.asarray(cameras[0][0])
    local = np.stack([rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200), rng.uniform(1, 8, 200)], 1)
    world = local @ c2w0[:3, :3].T + c2w0[:3, 3]
    keep = np.ones(len(world), dtype=bool)
    for c2w, K in cameras:
        keep &= _project(K, c2w, world)[1] > 0.1
    world = world[keep][:n]
    return world if len(world) else None


def _line_distance(F, x_src, x_tgt):
    """Pixel distance of each target point to the epipolar line of its source point."""
    F = np.asarray(F, dtype=np.float64)
    ones = np.ones((len(x_src), 1))
    lines = np.concatenate([x_src, ones], 1) @ F.T
    residual = (np.concatenate([x_tgt, ones], 1) * lines).sum(1)
    return np.abs(residual) / np.linalg.norm(lines[:, :2], axis=1)


@SETTINGS
@given(seeds)
def test_projected_points_satisfy_epipolar_constraint(seed):
    rng = np.random.default_rng(seed)
    src, tgt = _random_camera(rng), _random_camera(rng)
    if (src[0][:3, 3] - tgt[0][:3, 3]).norm() < 0.05:
        return  # (almost) no baseline: no epipolar geometry to test
    points = _points_in_front(rng, [src, tgt])
    if points is None:
        return
    x_src, _ = _project(src[1], src[0], points)
    x_tgt, _ = _project(tgt[1], tgt[0], points)
    F = fundamental_matrix(src[0], tgt[0], src[1], tgt[1])
    assert _line_distance(F, x_src, x_tgt).max() < 1e-6
    # relative algebraic residual, scale-free
    ones = np.ones((len(points), 1))
    hs, ht, Fn = np.concatenate([x_src, ones], 1), np.concatenate([x_tgt, ones], 1), F.numpy()
    algebraic = np.abs(((ht @ Fn) * hs).sum(1)) / (np.linalg.norm(Fn) * np.linalg.norm(hs, axis=1) *
                                                    np.linalg.norm(ht, axis=1))
    assert algebraic.max() < 1e-9
    # a wrong correspondence is (almost surely) off the line: the test can fail
    if len(points) >= 3:
        assert _line_distance(F, x_src, np.roll(x_tgt, 1, axis=0)).max() > 1e-3


@SETTINGS
@given(seeds, st.sampled_from(["circle", "upper_hemi", "interpolate", "orbit", "zoom"]),
       st.integers(min_value=2, max_value=5))
def test_preset_rig_pairs_satisfy_constraint_and_transpose(seed, preset, views):
    rng = np.random.default_rng(seed)
    rig = make_preset_rig(preset, views, 6, 128, 96, camera_dist=rng.uniform(0.2, 1.0))
    a, b = rng.choice(views, size=2, replace=False).tolist()
    F_ab, F_ba = pair_fundamentals(rig, a, b), pair_fundamentals(rig, b, a)
    assert torch.count_nonzero(F_ab[0]) == 0  # shared first pose
    for frame in range(1, 6):
        baseline = (rig.c2w[a, frame, :3, 3] - rig.c2w[b, frame, :3, 3]).norm()
        if baseline < 1e-6:
            continue
        # F from b to a is F from a to b transposed (up to scale: here exactly, same construction)
        scale = F_ab[frame].norm()
        assert torch.allclose(F_ba[frame].T / scale, F_ab[frame] / scale, atol=1e-9)
        cams = [(rig.c2w[a, frame], rig.K[a, frame]), (rig.c2w[b, frame], rig.K[b, frame])]
        points = _points_in_front(rng, cams, n=10)
        if points is None:
            continue
        x_a, _ = _project(rig.K[a, frame], rig.c2w[a, frame], points)
        x_b, _ = _project(rig.K[b, frame], rig.c2w[b, frame], points)
        assert _line_distance(F_ab[frame], x_a, x_b).max() < 1e-6


@SETTINGS
@given(seeds)
def test_fundamental_invariant_under_world_transform(seed):
    """F depends only on the relative pose: moving the world (or re-basing on frame 0) changes nothing."""
    rng = np.random.default_rng(seed)
    (c2w_a, K_a), (c2w_b, K_b) = _random_camera(rng), _random_camera(rng)
    world = torch.eye(4, dtype=torch.float64)
    world[:3, :3] = torch.as_tensor(_random_rotation(rng))
    world[:3, 3] = torch.as_tensor(rng.uniform(-3, 3, 3))
    F = fundamental_matrix(c2w_a, c2w_b, K_a, K_b)
    F_moved = fundamental_matrix(world @ c2w_a, world @ c2w_b, K_a, K_b)
    assert torch.allclose(F_moved, F, atol=1e-9 * max(1.0, F.abs().max().item()))
    stacked = relative_to_first(torch.stack([c2w_a, c2w_b]))
    assert torch.allclose(fundamental_matrix(stacked[0], stacked[1], K_a, K_b), F, rtol=1e-7, atol=1e-12)


@SETTINGS
@given(seeds)
def test_plucker_ray_passes_through_backprojected_point(seed):
    rng = np.random.default_rng(seed)
    c2w, K = _random_camera(rng, size=16)
    H, W = 12, 16
    plucker = plucker_embedding(K, c2w, H, W)
    assert plucker.shape == (6, H, W)
    row, col, depth = int(rng.integers(H)), int(rng.integers(W)), rng.uniform(0.5, 5.0)
    pixel = torch.tensor([col + 0.5, row + 0.5, 1.0], dtype=torch.float64)
    point = c2w[:3, :3] @ (torch.linalg.inv(K) @ pixel * depth) + c2w[:3, 3]
    moment, direction = plucker[:3, row, col], plucker[3:, row, col]
    assert direction.norm().item() == pytest.approx(1.0)
    assert torch.allclose(torch.linalg.cross(point, direction), moment, atol=1e-9)  # line through the point
    camera_dir = c2w[:3, :3] @ (torch.linalg.inv(K) @ pixel)
    assert torch.dot(camera_dir, direction) > 0  # pointing forward


@SETTINGS
@given(seeds, st.floats(min_value=0.0, max_value=1.0))
def test_slerp_matches_scipy(seed, alpha):
    transform = pytest.importorskip("scipy.spatial.transform")
    rng = np.random.default_rng(seed)
    r0, r1 = _random_rotation(rng), _random_rotation(rng)
    ours = slerp_rotation(r0, r1, [alpha])[0]
    ref = transform.Slerp([0, 1], transform.Rotation.from_matrix(np.stack([r0, r1])))([alpha]).as_matrix()[0]
    assert np.allclose(ours, ref, atol=1e-9)


@SETTINGS
@given(seeds)
def test_cameraset_dict_roundtrip_random(seed):
    rng = np.random.default_rng(seed)
    cams = [_random_camera(rng) for _ in range(3)]
    rig = CameraSet(torch.stack([K for _, K in cams])[:, None], torch.stack([c for c, _ in cams])[:, None], 256, 256)
    assert CameraSet.from_dict(rig.to_dict()) == rig
