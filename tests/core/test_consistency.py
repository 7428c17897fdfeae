"""Multi-view consistency metric on views rendered from a synthetic textured 3D scene."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("cv2")

from cvd_core.metrics import (format_consistency_summary, is_degenerate_fundamental, multiview_consistency,
                              render_consistency_plot, sampson_distance)
from cvd_core.metrics.plot import PALETTE
from tests.core.synthetic_scene import make_rig, make_scene, render_rig, rig_fundamentals

VIEWS, STEPS, SIZE = 3, 4, 96


@pytest.fixture(scope="module")
def rig():
    """Rendered true views ``[V, T, H, W, 3]``, K, c2w and the rig's fundamentals for all pairs."""
    K, c2w = make_rig(VIEWS, STEPS, SIZE, SIZE)
    frames = render_rig(make_scene(seed=0), K, c2w, SIZE, SIZE)
    return frames, K, c2w, rig_fundamentals(K, c2w)


@pytest.fixture(scope="module")
def good_report(rig):
    frames, _, _, fundamentals = rig
    return multiview_consistency(frames, fundamentals)


def test_true_views_have_small_sampson_error(good_report):
    overall = good_report["overall"]
    assert overall["sampson_mean_px"] < 0.5
    assert overall["sampson_median_px"] < 0.15
    assert overall["inlier_ratio_mean"] > 0.9
    assert len(good_report["pairs"]) == VIEWS * (VIEWS - 1) // 2
    for entry in good_report["pairs"]:
        first, *later = entry["frames"]
        # Frame 0: every view has the identity pose, F = 0: reported, excluded from the Sampson mean.
        assert first["degenerate_f"] and first["sampson_mean_px"] is None and first["matches"] > 30
        assert all(not row["degenerate_f"] and row["matches"] > 30 for row in later)
        assert entry["summary"]["frames_degenerate"] == 1
        assert entry["summary"]["sampson_matches"] == sum(row["matches"] for row in later)


def test_shuffled_views_have_large_error(rig, good_report):
    frames, _, _, fundamentals = rig
    shuffled = multiview_consistency(frames[[0, 2, 1]], fundamentals)  # images no longer match their cameras
    assert shuffled["overall"]["sampson_mean_px"] > 1.5
    assert shuffled["overall"]["sampson_mean_px"] > 5 * good_report["overall"]["sampson_mean_px"]
    assert shuffled["overall"]["sampson_median_px"] > 10 * good_report["overall"]["sampson_median_px"]
    # The views still show one rigid scene, so RANSAC alone cannot tell: that is why F must be known.
    assert shuffled["overall"]["inlier_ratio_mean"] > 0.8


def test_shifted_views_have_large_error(rig, good_report):
    frames, _, _, fundamentals = rig
    shifted = frames.copy()
    shifted[1:] = np.roll(frames[1:], (5, -5), axis=(2, 3))
    report = multiview_consistency(shifted, fundamentals)
    pair_means = {tuple(e["pair"]): e["summary"]["sampson_median_px"] for e in report["pairs"]}
    assert pair_means[(1, 2)] < 0.3  # both shifted alike: the shift cancels for this pair
    assert pair_means[(0, 1)] > 1.5 and pair_means[(0, 2)] > 1.5


def test_orb_detector_separates_good_from_shuffled(rig):
    frames, _, _, fundamentals = rig
    good = multiview_consistency(frames, fundamentals, detector="orb")["overall"]
    bad = multiview_consistency(frames[[0, 2, 1]], fundamentals, detector="orb")["overall"]
    assert good["sampson_median_px"] < 0.5
    assert bad["sampson_median_px"] > 3 * good["sampson_median_px"]


def test_report_is_strict_json(good_report):
    text = json.dumps(good_report, allow_nan=False)
    again = json.loads(text)
    assert again["evaluated_frames"] == list(range(STEPS))
    assert again["views"] == VIEWS and again["width"] == SIZE and again["detector"] == "sift"
    assert "overall: Sampson mean" in format_consistency_summary(good_report)


def test_sampson_distance_rectified_pair_is_vertical_offset_over_sqrt2():
    # Cameras translated along x: epipolar lines are image rows, x_tgt^T F x_src = y_src - y_tgt.
    F = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    src = np.array([[10.0, 20.0], [50.0, 5.0], [3.0, 7.0]])
    tgt = np.array([[40.0, 20.0], [12.0, 8.0], [3.0, 3.0]])
    expected = np.abs(src[:, 1] - tgt[:, 1]) / np.sqrt(2.0)
    assert np.allclose(sampson_distance(F, src, tgt), expected)
    assert np.allclose(sampson_distance(-7.5 * F, src, tgt), expected)  # F is defined up to scale


def test_projected_points_satisfy_rig_fundamentals(rig):
    """Independent of images: true projections of 3D points have ~0 Sampson error under the rig's F."""
    _, K, c2w, fundamentals = rig
    points = np.random.default_rng(1).uniform([-1.5, -1.0, 3.0], [1.5, 1.0, 6.0], size=(50, 3))

    def project(view, t):
        w2c = np.linalg.inv(c2w[view, t])
        camera = points @ w2c[:3, :3].T + w2c[:3, 3]
        pixels = camera @ K[view, t].T
        return pixels[:, :2] / pixels[:, 2:]

    for (i, j), F in fundamentals.items():
        for t in range(1, STEPS):
            assert sampson_distance(F[t], project(i, t), project(j, t)).max() < 1e-6
            # Any wrong correspondence does not.
            assert np.median(sampson_distance(F[t], project(i, t), project(j, t)[::-1])) > 1.0


def test_degenerate_fundamental_detection(rig):
    _, _, _, fundamentals = rig
    F = fundamentals[(0, 1)]
    assert is_degenerate_fundamental(F[0], SIZE, SIZE)
    assert is_degenerate_fundamental(F[0] + 1e-15, SIZE, SIZE)
    assert not is_degenerate_fundamental(F[1], SIZE, SIZE)
    # A real but tiny baseline (1 mm at a 4 m scene) still carries epipolar geometry.
    import torch

    from cvd_core.camera import fundamental_matrix

    moved = np.eye(4)
    moved[0, 3] = 1e-3
    K = torch.as_tensor(rig[1][0, 0])
    tiny = fundamental_matrix(torch.eye(4, dtype=torch.float64), torch.as_tensor(moved), K, K).numpy()
    assert not is_degenerate_fundamental(tiny, SIZE, SIZE)


def test_max_frames_and_static_fundamental(rig):
    frames, _, _, fundamentals = rig
    report = multiview_consistency(frames, {(0, 1): fundamentals[(0, 1)]}, max_frames=2)
    assert report["evaluated_frames"] == [0, STEPS - 1] and len(report["pairs"]) == 1
    static = multiview_consistency(frames[:, 1:2], {(1, 2): fundamentals[(1, 2)][1]})  # one [3, 3] F
    assert static["overall"]["sampson_mean_px"] < 0.5


def test_all_degenerate_frames_give_no_sampson_value(rig):
    frames, _, _, fundamentals = rig
    report = multiview_consistency(frames[:, :1], {(0, 1): fundamentals[(0, 1)][:1]})
    assert report["overall"]["sampson_mean_px"] is None and report["overall"]["frames_degenerate"] == 1
    json.dumps(report, allow_nan=False)
    plot = render_consistency_plot(report)
    assert plot.shape == (384, 768, 3)


def test_plot_draws_one_coloured_line_per_pair(good_report):
    plot = render_consistency_plot(good_report, width=640, height=320)
    assert plot.shape == (320, 640, 3) and plot.dtype == np.float32
    assert 0.0 <= plot.min() and plot.max() <= 1.0
    pixels = np.round(plot * 255).astype(int).reshape(-1, 3)
    for colour in PALETTE[:len(good_report["pairs"])]:
        assert (np.abs(pixels - colour).sum(axis=1) < 10).sum() > 20
    with pytest.raises(ValueError, match="at least 200x120"):
        render_consistency_plot(good_report, width=50, height=50)


def test_cancel_from_progress(rig):
    frames, _, _, fundamentals = rig

    class Cancel:
        def start(self, total):
            self.total = total

        def advance(self, n=1):
            raise InterruptedError("cancelled")

        def check(self):
            pass

    with pytest.raises(InterruptedError):
        multiview_consistency(frames, fundamentals, progress=Cancel())


@pytest.mark.parametrize("change, message", [
    (lambda f, F: (f[0], F), r"\[views, frames, height, width, 3\]"),
    (lambda f, F: (f, {(0, 3): F[(0, 1)]}), "two different views in 0..2"),
    (lambda f, F: (f, {(1, 1): F[(0, 1)]}), "two different views"),
    (lambda f, F: (f, {"0-1": F[(0, 1)]}), "view index pairs"),
    (lambda f, F: (f, {(0, 1): F[(0, 1)][:2]}), r"must be \[4, 3, 3\]"),
    (lambda f, F: (f, {(0, 1): F[(0, 1)] * np.nan}), "NaN"),
    (lambda f, F: (f, {}), "non-empty dict"),
])
def test_clear_errors(rig, change, message):
    frames, _, _, fundamentals = rig
    bad_frames, bad_fundamentals = change(frames, fundamentals)
    with pytest.raises(ValueError, match=message):
        multiview_consistency(bad_frames, bad_fundamentals)


@pytest.mark.parametrize("kwargs, message", [
    (dict(detector="surf"), "detector must be one of sift, orb"),
    (dict(max_frames=0), "max_frames"),
    (dict(ratio=1.5), "ratio"),
    (dict(ransac_thresh=0), "ransac_thresh"),
])
def test_clear_errors_for_settings(rig, kwargs, message):
    frames, _, _, fundamentals = rig
    with pytest.raises(ValueError, match=message):
        multiview_consistency(frames, fundamentals, **kwargs)
