"""CVD's pose-accuracy protocol and the matched-pixel count on views ray-cast from a known scene.

Every tolerance comes from the scene's geometry, not from a run's digits:

- ``PIXEL_DEG``: the angle one pixel subtends at the image centre, ``atan(1 / f)``. Matches of the
  rendered (supersampled) views are localised to a fraction of a pixel, so a pose fitted to dozens
  of them recovers the relative rotation to within one pixel's angle; where a view was deliberately
  perturbed (fewer matches, and the narrow field of view couples rotation with translation - the
  bas-relief ambiguity) to within two.
- translation direction is recovered from parallax: a point at depth ``Z`` seen from a baseline ``b``
  moves by ``b / Z`` radians between the views, so a one-pixel error is a direction error of at most
  ``PIXEL_DEG * Z / b``, with ``Z_FAR`` the farthest surface (the back wall at world z = 6, cameras
  at z >= 0).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("cv2")

from cvd_core.camera import CameraSet
from cvd_core.metrics import (MatchCache, format_consistency_summary, match_counts, multiview_report, pose_accuracy,
                              pose_auc, relative_pose, render_consistency_plot, rotation_error_deg,
                              translation_error_deg)
from cvd_core.metrics.pose_accuracy import estimate_relative_pose, normalised_points
from tests.core.synthetic_scene import make_rig, make_scene, render_rig, render_view, to_pack_convention

VIEWS, STEPS, SIZE = 3, 4, 128
Z_FAR = 6.0
PERTURBATIONS_DEG = (1.0, 5.0, 10.0, 20.0)
PERTURBED_VIEW = 1


@pytest.fixture(scope="module")
def scene_rig():
    K, c2w = make_rig(VIEWS, STEPS, SIZE, SIZE)
    scene = make_scene(seed=0)
    return scene, K, c2w, render_rig(scene, K, c2w, SIZE, SIZE)


@pytest.fixture(scope="module")
def pixel_deg(scene_rig):
    return math.degrees(math.atan(1.0 / scene_rig[1][0, 0, 0, 0]))


def _rows(report):
    return [(tuple(entry["pair"]), row) for entry in report["pairs"] for row in entry["frames"]]


def _evaluate(frames, K, c2w, **kwargs):
    # The renderer puts pixel centres at integers, as OpenCV's keypoints: no offset.
    return pose_accuracy(MatchCache(frames), K, c2w, pixel_offset=0.0, **kwargs)


@pytest.fixture(scope="module")
def true_report(scene_rig):
    _, K, c2w, frames = scene_rig
    return _evaluate(frames, K, c2w)


def _rotate_about_camera_y(c2w: np.ndarray, degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    turn = np.eye(4)
    turn[0, 0] = turn[2, 2] = math.cos(angle)
    turn[0, 2], turn[2, 0] = math.sin(angle), -math.sin(angle)
    return c2w @ turn


@pytest.fixture(scope="module")
def perturbed(scene_rig):
    """``{k: (report, c2w the views were rendered with, the views)}``: view 1 turned by k degrees (frames >= 1)."""
    scene, K, c2w, frames = scene_rig
    results = {}
    for k in PERTURBATIONS_DEG:
        seen = c2w.copy()
        seen[PERTURBED_VIEW, 1:] = [_rotate_about_camera_y(pose, k) for pose in c2w[PERTURBED_VIEW, 1:]]
        views = frames.copy()
        views[PERTURBED_VIEW, 1:] = [render_view(scene, K[PERTURBED_VIEW, t], seen[PERTURBED_VIEW, t], SIZE, SIZE)
                                     for t in range(1, STEPS)]
        results[k] = (_evaluate(views, K, c2w), seen, views)
    return results


def _expected_errors(c2w_true, c2w_seen, pair, t):
    """Errors an exact estimator would report: between the poses the images show and the rig's."""
    R_true, t_true = relative_pose(c2w_true[pair[0], t], c2w_true[pair[1], t])
    R_seen, t_seen = relative_pose(c2w_seen[pair[0], t], c2w_seen[pair[1], t])
    return rotation_error_deg(R_seen, R_true), translation_error_deg(t_seen, t_true)


# ------------------------------------------------------------------------------------- true rig

def test_true_rig_gives_near_zero_errors_and_auc_near_one(true_report, pixel_deg):
    rows = _rows(true_report)
    assert len(rows) == 3 * STEPS
    bounds = []
    for pair, row in rows:
        if row["frame"] == 0:  # every view starts at the identity: nothing to recover
            assert row["status"] == "same_pose" and row["rotation_error_deg"] is None
            continue
        assert row["status"] == "ok" and row["matches"] > 20, (pair, row)
        assert row["rotation_error_deg"] <= pixel_deg, (pair, row)
        bound = pixel_deg * Z_FAR / row["baseline"]
        assert row["translation_error_deg"] <= bound, (pair, row, bound)
        bounds.append(bound)
    overall = true_report["overall"]
    assert (overall["evaluated"], overall["same_pose"], overall["failures"]) == (9, 3, 0)
    # Every error below e_max gives AUC@tau >= 1 - e_max / tau (the step-curve area, see pose_auc).
    for tau, value in overall["rotation_auc_pct"].items():
        assert value >= 100 * (1 - pixel_deg / float(tau))
    for tau, value in overall["translation_auc_pct"].items():
        assert value >= 100 * np.mean([max(0.0, 1 - b / float(tau)) for b in bounds])
    assert overall["rotation_error_median_deg"] <= pixel_deg
    assert overall["precision_pct"] > 90  # ratio-test SIFT matches of a textured scene are nearly all right
    json.dumps(true_report, allow_nan=False)


def test_pixel_convention_offset_is_consistent(scene_rig, true_report):
    """The pack's K (pixel centres at +0.5) with offset 0.5 is the same computation as integer centres."""
    _, K, c2w, frames = scene_rig
    shifted = pose_accuracy(MatchCache(frames), to_pack_convention(K), c2w, pixel_offset=0.5)
    for (_, a), (_, b) in zip(_rows(shifted), _rows(true_report)):
        assert a["status"] == b["status"]
        if a["status"] == "ok":
            assert abs(a["rotation_error_deg"] - b["rotation_error_deg"]) < 1e-6


def test_orb_detector_also_recovers_the_rig(scene_rig, pixel_deg):
    _, K, c2w, frames = scene_rig
    report = pose_accuracy(MatchCache(frames, "orb"), K, c2w, pixel_offset=0.0)
    assert report["matcher"].startswith("orb") and report["overall"]["failures"] == 0
    # ORB localises to its pyramid's coarser grid: a few pixels instead of a fraction of one.
    assert report["overall"]["rotation_error_median_deg"] <= 3 * pixel_deg


# ------------------------------------------------------------------------------------- broken geometry

def test_shuffled_views_give_the_errors_of_the_swapped_cameras(scene_rig, true_report, pixel_deg):
    _, K, c2w, frames = scene_rig
    order = [0, 2, 1]
    report = _evaluate(frames[order], K, c2w)
    seen = c2w[order]
    for pair, row in _rows(report):
        if row["frame"] == 0:
            continue
        expected_rotation, expected_translation = _expected_errors(c2w, seen, pair, row["frame"])
        assert expected_rotation > 4.0  # the swap is a real geometric change at every later frame
        assert abs(row["rotation_error_deg"] - expected_rotation) <= 2 * pixel_deg, (pair, row, expected_rotation)
        assert abs(row["translation_error_deg"] - expected_translation) <= pixel_deg * Z_FAR / row["baseline"]
    good, bad = true_report["overall"], report["overall"]
    for tau in ("5", "10", "20"):
        assert bad["rotation_auc_pct"][tau] < good["rotation_auc_pct"][tau] - 40
    assert bad["rotation_auc_pct"]["5"] < 20 and bad["translation_auc_pct"]["5"] < 20
    assert bad["precision_pct"] < 50  # the swapped images' matches break the true epipolar geometry


@pytest.mark.parametrize("k", PERTURBATIONS_DEG)
def test_one_view_turned_by_k_degrees_gives_errors_of_k(scene_rig, perturbed, true_report, pixel_deg, k):
    c2w = scene_rig[2]
    report, seen, _ = perturbed[k]
    truth = {(pair, row["frame"]): row for pair, row in _rows(true_report)}
    for pair, row in _rows(report):
        if row["frame"] == 0:
            continue
        if PERTURBED_VIEW not in pair:  # the other pair's images are unchanged
            assert row["rotation_error_deg"] == pytest.approx(truth[(pair, row["frame"])]["rotation_error_deg"])
            continue
        assert row["status"] == "ok"
        assert abs(row["rotation_error_deg"] - k) <= 2 * pixel_deg, (pair, row)
        _, expected_translation = _expected_errors(c2w, seen, pair, row["frame"])
        # Turning the source camera leaves t unchanged, turning the target turns t by up to k.
        assert expected_translation <= k + 1e-9
        bound = pixel_deg * Z_FAR / row["baseline"] + 2 * pixel_deg
        assert abs(row["translation_error_deg"] - expected_translation) <= bound, (pair, row, expected_translation)


def test_errors_and_aucs_are_monotone_in_k(perturbed, true_report):
    def affected_median(report):
        return float(np.median([row["rotation_error_deg"] for pair, row in _rows(report)
                                if PERTURBED_VIEW in pair and row["status"] == "ok"]))

    medians = [affected_median(true_report)] + [affected_median(perturbed[k][0]) for k in PERTURBATIONS_DEG]
    assert all(a < b for a, b in zip(medians, medians[1:])), medians
    for tau in ("5", "10", "20"):
        aucs = [true_report["overall"]["rotation_auc_pct"][tau]] + \
            [perturbed[k][0]["overall"]["rotation_auc_pct"][tau] for k in PERTURBATIONS_DEG]
        assert all(a >= b - 1e-9 for a, b in zip(aucs, aucs[1:])), (tau, aucs)


# ------------------------------------------------------------------------------------- failures, undefined cases

def test_failures_count_as_infinite_error(scene_rig, true_report):
    _, K, c2w, frames = scene_rig
    blank = frames.copy()
    blank[2] = 0.5  # view 2 is uniform grey: no keypoint, no match
    report = _evaluate(blank, K, c2w)
    overall = report["overall"]
    assert overall["failures"] == overall["too_few_matches"] == 6 and overall["evaluated"] == 9
    rotation = [math.inf if row["status"] != "ok" else row["rotation_error_deg"]
                for _, row in _rows(report) if row["status"] != "same_pose"]
    assert overall["rotation_auc_pct"] == {f"{tau:g}": 100 * v
                                           for tau, v in zip((5.0, 10.0, 20.0), pose_auc(rotation))}
    # Only 3 of 9 pair-frames succeed: no AUC can exceed 3/9 (dropping failures would give ~100 %).
    assert all(value <= 100 * 3 / 9 + 1e-9 for value in overall["rotation_auc_pct"].values())
    assert overall["rotation_error_median_deg"] is None  # the median itself is a failure


def test_pure_rotation_and_small_baselines_leave_translation_undefined(scene_rig, pixel_deg):
    scene, K, _, rendered = scene_rig
    turned = _rotate_about_camera_y(np.eye(4), 8.0)  # view 1 turns in place at frame 1: no baseline
    c2w = np.stack([np.stack([np.eye(4)] * 2), np.stack([np.eye(4), turned])])
    identity = rendered[0, 0]  # frame 0 of the rig is the identity pose
    frames = np.stack([[identity, identity], [identity, render_view(scene, K[0, 0], turned, SIZE, SIZE)]])
    report = pose_accuracy(MatchCache(frames), K[:2, :2], c2w, pixel_offset=0.0)
    (row,) = [row for _, row in _rows(report) if row["frame"] == 1]
    assert row["baseline"] == 0.0 and row["translation_defined"] is False and row["translation_error_deg"] is None
    # E is degenerate without a baseline: the rotation is estimated from the homography and still scored.
    assert row["model"] == "homography" and row["status"] == "ok" and row["rotation_error_deg"] <= pixel_deg
    overall = report["overall"]
    assert overall["translation_undefined"] == 1 and overall["translation_auc_pct"] is None
    _, K3, c2w3, frames3 = scene_rig
    cut = _evaluate(frames3, K3, c2w3, min_baseline=0.6)  # baselines 0.29, 0.52 (twice), 0.58 fall below
    scored = [row for _, row in _rows(cut) if row["status"] == "ok"]
    assert [row["baseline"] <= 0.6 for row in scored] == [not row["translation_defined"] for row in scored]
    assert cut["overall"]["translation_undefined"] == 4 and cut["overall"]["translation_auc_pct"] is not None
    assert all(row["rotation_error_deg"] <= pixel_deg for row in scored)  # rotation is scored for all


# ------------------------------------------------------------------------------------- definitions

def test_pose_auc_definition():
    assert pose_auc([0.0, 0.0]) == [1.0, 1.0, 1.0]
    assert pose_auc([math.inf] * 3) == [0.0, 0.0, 0.0]
    assert pose_auc([]) == [None, None, None]
    # One error e < tau: polyline (0,0) -> (e,1) -> (tau,1), area tau - e/2.
    assert pose_auc([2.0], [5.0, 10.0]) == pytest.approx([1 - 2.0 / 10.0, 1 - 2.0 / 20.0])
    assert pose_auc([7.0], [5.0]) == [0.0]  # no error below tau: the curve stays at 0 (SuperGlue's)
    assert pose_auc([1.0, 7.0], [5.0]) == pytest.approx([(0.5 * 0.5 + 4.0 * 0.5) / 5.0])  # flat after e = 1
    rng = np.random.default_rng(3)
    errors = np.concatenate([rng.uniform(0, 30, 40), [math.inf] * 10])
    for tau, auc in zip((5.0, 10.0, 20.0), pose_auc(errors)):
        step = np.mean(np.maximum(0.0, 1 - errors / tau))  # exact area under the empirical recall step curve
        assert step <= auc <= step + 1 / (2 * len(errors))
    with pytest.raises(ValueError, match="NaN"):
        pose_auc([1.0, math.nan])


def test_error_functions_and_estimator_on_exact_correspondences():
    turn = _rotate_about_camera_y(np.eye(4), 10.0)
    assert rotation_error_deg(turn[:3, :3], np.eye(3)) == pytest.approx(10.0)
    assert translation_error_deg([1, 0, 0], [-2, 0, 0]) == pytest.approx(0.0)  # t's sign is not observable
    assert translation_error_deg([1, 0, 0], [1, 1, 0]) == pytest.approx(45.0)
    # Exact projections of random points: the estimator returns the rig's pose (x_tgt = R x_src + t).
    rng = np.random.default_rng(0)
    points = rng.uniform([-2, -1.5, 4], [2, 1.5, 8], size=(60, 3))
    src_c2w, tgt_c2w = np.eye(4), turn.copy()
    tgt_c2w[:3, 3] = [0.6, -0.1, 0.2]
    K = np.array([[100.0, 0, 64], [0, 110.0, 60], [0, 0, 1]])

    def project(c2w):
        w2c = np.linalg.inv(c2w)
        camera = points @ w2c[:3, :3].T + w2c[:3, 3]
        pixels = camera @ K.T
        return pixels[:, :2] / pixels[:, 2:]

    R, t = relative_pose(src_c2w, tgt_c2w)
    for estimator in ("usac_accurate", "ransac"):
        status, R_est, t_est, inliers = estimate_relative_pose(normalised_points(project(src_c2w), K, 0.0),
                                                               normalised_points(project(tgt_c2w), K, 0.0),
                                                               1e-3, estimator=estimator)
        assert status == "ok" and inliers == 60
        assert rotation_error_deg(R_est, R) < 1e-3 and translation_error_deg(t_est, t) < 1e-3
        assert t_est @ t > 0  # recoverPose's cheirality picks the true sign
    assert estimate_relative_pose(np.zeros((4, 2)), np.zeros((4, 2)), 1e-3)[0] == "too_few_matches"


def test_plain_ransac_follows_the_papers_estimator(scene_rig, true_report):
    _, K, c2w, frames = scene_rig
    report = _evaluate(frames, K, c2w, estimator="ransac")
    assert report["estimator_name"] == "ransac" and "RANSAC" in report["estimator"]
    assert report["overall"]["failures"] == 0
    # Without refitting to the inliers RANSAC keeps a model that merely fits within 1 px: noisier.
    assert report["overall"]["rotation_error_median_deg"] >= true_report["overall"]["rotation_error_median_deg"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(K=np.zeros((3, 2, 3, 3))), r"K must be \[3, 1, 3, 3\]"),
    (dict(c2w=np.zeros((2, 1, 4, 4))), r"c2w must be \[3, 1, 4, 4\]"),
    (dict(c2w=np.full((3, 1, 4, 4), np.nan)), "NaN"),
    (dict(pairs=[(0, 3)]), "two different views in 0..2"),
    (dict(pairs=[(1, 1)]), "two different views"),
    (dict(frames=[7]), "frames must be indices in 0..0"),
    (dict(estimator="lmeds"), "estimator must be one of usac_accurate, ransac"),
    (dict(ransac_px=0.0), "ransac_px must be positive"),
    (dict(min_baseline=-1.0), "min_baseline must be 0 or more"),
])
def test_clear_errors(scene_rig, kwargs, message):
    _, K, c2w, frames = scene_rig
    args = dict(K=K[:, :1], c2w=c2w[:, :1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pose_accuracy(MatchCache(frames[:, :1]), **args)


# ------------------------------------------------------------------------------------- matched pixels

def test_matched_pixels_measure_shared_content_not_cameras(scene_rig, perturbed):
    _, K, c2w, frames = scene_rig
    good = match_counts(MatchCache(frames), c2w=c2w)
    assert good["overall"]["same_pose"] == 3 and good["overall"]["evaluated"] == 9
    assert good["overall"]["matched_pixels_min"] >= 20 and "Lowe ratio 0.75" in good["matcher"]
    # Shuffled views show the same content: about the same count (that is why it cannot replace the pose AUC).
    shuffled = match_counts(MatchCache(frames[[0, 2, 1]]), c2w=c2w)
    assert shuffled["overall"]["matched_pixels_mean"] == pytest.approx(good["overall"]["matched_pixels_mean"], rel=0.2)
    blank = frames.copy()
    blank[2] = 0.5
    counts = match_counts(MatchCache(blank), c2w=c2w)
    assert [entry["summary"]["matched_pixels_mean"] for entry in counts["pairs"]][1:] == [0.0, 0.0]
    # Turning a view 20 degrees away shrinks the overlap: fewer matched pixels for its pairs.
    straight = match_counts(MatchCache(frames), pairs=[(0, 1)], c2w=c2w)["overall"]["matched_pixels_mean"]
    turned = match_counts(MatchCache(perturbed[20.0][2]), pairs=[(0, 1)], c2w=c2w)["overall"]["matched_pixels_mean"]
    assert 0 < turned < straight
    assert good["overall"]["per_megapixel"] == pytest.approx(good["overall"]["matched_pixels_mean"] / (SIZE * SIZE / 1e6))


# ------------------------------------------------------------------------------------- the full report

def test_full_report_plot_and_summary(scene_rig):
    _, K, c2w, frames = scene_rig
    rig = CameraSet(to_pack_convention(K), c2w, SIZE, SIZE, ("a", "b", "c"))
    report = multiview_report(frames, rig, max_frames=3)
    assert report["evaluated_frames"] == [0, 2, 3] and report["labels"] == ["a", "b", "c"]
    assert [row["frame"] for row in report["pose"]["pairs"][0]["frames"]] == [0, 2, 3]
    assert report["pose"]["pixel_offset"] == 0.5 and report["pixel_offset"] == 0.5
    assert report["pose"]["overall"]["rotation_auc_pct"]["5"] > 80
    assert report["match_count"]["overall"]["evaluated"] == 6
    json.dumps(report, allow_nan=False)
    text = format_consistency_summary(report)
    assert "pose (usac_accurate): AUC@5/10/20 rotation" in text and "matched pixels (Mat.Pix-style, sift)" in text
    plot = render_consistency_plot(report)
    assert plot.shape == (768, 768, 3)  # Sampson panel over the pose panel
    assert np.abs(plot[:384] - plot[384:]).max() > 0.1
