"""Parity of the camera geometry with the official CVD code (fixture from CollaborativeVideoDiffusion/CVD 107f299).

The fixture's pair case is the official two-video demo: two RealEstate10K pose files "folded"
(rows 0-15 = video 0 frames 0..15, rows 16-31 = video 1) with the official validation loader's
anisotropic K (it hard-codes H, W = 1280, 720). The mv4 case is the official ``circle`` preset.
The F and Plücker parity cases also run (float64) on the device ``CVD_TEST_DEVICE`` selects.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvd_core.camera import (fundamental_matrix, load_realestate10k, make_preset_rig, pair_fundamentals,
                             plucker_embedding)
from tests._shared import shared_fixture

ATOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    path = shared_fixture("cvd_epipolar/cvd_epipolar_reference.npz")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _t(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=torch.float64)


def _pose_text(rows: np.ndarray) -> str:
    """The rows written back as a RealEstate10K file (URL line first)."""
    lines = ["https://www.youtube.com/watch?v=fixture"]
    lines += [" ".join(repr(float(v)) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def _official_pair_videos(ref):
    """Both folded videos through our loader. The official demo reverses file 1's rows (its last
    row becomes the shared start) and reads K with a portrait 720x1280 source (its H/W swap)."""
    video0 = load_realestate10k(_pose_text(ref["pair/pose_file_0_rows"]), 256, 256, source_size=(720, 1280))
    video1 = load_realestate10k(_pose_text(ref["pair/pose_file_1_rows"][::-1]), 256, 256, source_size=(720, 1280))
    return video0, video1


def test_pair_fundamental_from_stored_cameras(ref):
    c2w, K, F_ref = _t(ref["pair/c2w"]), _t(ref["pair/K"]), _t(ref["pair/F_mats"])
    F = fundamental_matrix(c2w[:16], c2w[16:], K[:16], K[16:])
    err = max((F - F_ref[:16]).abs().max().item(), (F.transpose(-1, -2) - F_ref[16:]).abs().max().item())
    assert err < ATOL, f"pair F max abs error {err:.3e}"
    assert torch.count_nonzero(F[0]) == 0, "frame 0 (shared start pose) must give F = 0 exactly"
    assert F[1:].abs().amax(dim=(-1, -2)).min() > 1e-4  # later frames have geometry (test can fail)


def test_pair_loader_reproduces_official_cameras(ref):
    video0, video1 = _official_pair_videos(ref)
    c2w_ref, K_ref = _t(ref["pair/c2w"]), _t(ref["pair/K"])
    assert (video0.c2w - c2w_ref[:16]).abs().max() < ATOL
    assert (video1.c2w - c2w_ref[16:]).abs().max() < ATOL
    assert (video0.K - K_ref[:16]).abs().max() < ATOL  # the demo uses video 0's K for both videos
    # F from the loader's rows, with video 0's K for both (as the official demo does)
    F = fundamental_matrix(video0.c2w, video1.c2w, video0.K, video0.K)
    assert (F - _t(ref["pair/F_mats"])[:16]).abs().max() < ATOL


def test_pair_loader_default_source_is_landscape(ref):
    """Without the official swap, RealEstate10K intrinsics are square-pixel (fx == fy) at 256x256."""
    video0 = load_realestate10k(_pose_text(ref["pair/pose_file_0_rows"]), 256, 256)
    fx, fy = video0.K[0, 0, 0].item(), video0.K[0, 1, 1].item()
    assert abs(fx - fy) / fx < 1e-3, (fx, fy)
    assert abs(fx - ref["pair/pose_file_0_rows"][0, 1] * 1280 * 256 / 720) < 1e-9
    assert video0.K[0, 0, 2].item() == pytest.approx(128.0) and video0.K[0, 1, 2].item() == pytest.approx(128.0)


def test_pair_plucker(ref, compute_device):
    video0, video1 = _official_pair_videos(ref)
    # Official quirk reproduced here only: the folded intrinsics list takes the shared frame 0 of
    # video 0 from file 1, so video 0 / frame 0 uses video 1's first intrinsics for its Plücker map.
    K = torch.cat([video0.K, video1.K])
    K[0] = video1.K[0]
    plucker = plucker_embedding(K.to(compute_device), _t(ref["pair/c2w"]).to(compute_device), 256, 256)
    assert plucker.shape == (32, 6, 256, 256) and plucker.device.type == compute_device.type
    plucker = plucker.cpu()
    err = (plucker[..., 3::8, 3::8] - _t(ref["pair/plucker_stride8"])).abs().max().item()
    assert err < ATOL, f"pair Plücker max abs error {err:.3e}"


def test_mv4_circle_preset_matches_official(ref):
    rig = make_preset_rig("circle", 4, 16, 256, 256)
    assert rig.c2w.shape == (4, 16, 4, 4)
    c2w_err = (rig.c2w.reshape(64, 4, 4) - _t(ref["mv4/c2w"])).abs().max().item()
    K_err = (rig.K.reshape(64, 3, 3) - _t(ref["mv4/K"])).abs().max().item()
    assert c2w_err < ATOL, f"circle c2w max abs error {c2w_err:.3e}"
    assert K_err < ATOL, f"circle K max abs error {K_err:.3e}"


def test_mv4_fundamentals(ref, compute_device):
    rig = make_preset_rig("circle", 4, 16, 256, 256)
    kv_index = torch.as_tensor(ref["mv4/kv_index"])
    F_ref = _t(ref["mv4/F_mats"])
    c2w, K = rig.c2w.reshape(64, 4, 4).to(compute_device), rig.K.reshape(64, 3, 3).to(compute_device)
    kv = kv_index.to(compute_device)
    F = fundamental_matrix(c2w, c2w[kv], K, K[kv]).cpu()
    err = (F - F_ref).abs().max().item()
    assert err < ATOL, f"mv4 F max abs error {err:.3e}"
    # the same through pair_fundamentals, view by view (kv_index pairs frame t with the partner's t)
    for src in range(4):
        tgt = int(kv_index[src * 16]) // 16
        assert (pair_fundamentals(rig, src, tgt) - F_ref[src * 16:(src + 1) * 16]).abs().max() < ATOL


def test_mv4_plucker(ref, compute_device):
    rig = make_preset_rig("circle", 4, 16, 256, 256)
    plucker = plucker_embedding(rig.K.to(compute_device), rig.c2w.to(compute_device), 256, 256)
    assert plucker.shape == (4, 16, 6, 256, 256) and plucker.device.type == compute_device.type
    plucker = plucker.cpu()
    err = (plucker.reshape(64, 6, 256, 256)[..., 3::8, 3::8] - _t(ref["mv4/plucker_stride8"])).abs().max().item()
    assert err < ATOL, f"mv4 Plücker max abs error {err:.3e}"
