"""CVD's geometric protocol: relative poses estimated from the generated views, scored against the rig.

CVD (NeurIPS 2024, §5.2, Tables 1-3) matches same-time frames of two generated videos (SuperGlue),
estimates their relative pose with RANSAC and reports the AUC of the rotation and translation
errors at 5/10/20 degrees, plus SuperGlue's precision (P) and matching score (MS). This module
computes the same quantities with OpenCV features (SIFT by default, ORB optional) instead of SuperGlue:

For every view pair ``(i, j)`` and evaluated frame ``t``:

1. the ratio-test matches of :class:`~cvd_core.metrics.matching.MatchCache` are moved into the
   rig's pixel convention (``+ pixel_offset``; OpenCV keypoints put pixel centres at integers, the
   pack's rigs - like CameraCtrl's Plücker rays, COLMAP and nerfstudio - at ``+0.5``), then into
   normalised camera coordinates with each view's own ``K``;
2. ``cv2.findEssentialMat`` (threshold ``ransac_px`` / mean focal length, confidence 0.99999:
   SuperGlue's evaluation settings) and ``cv2.recoverPose`` (cheirality; the best of several E
   solutions) give ``R, t`` with ``x_j = R x_i + t``. ``estimator``: ``"usac_accurate"`` (default;
   OpenCV's USAC RANSAC with local optimisation, which refits the model to its inliers) or
   ``"ransac"`` (plain RANSAC, exactly SuperGlue's and LoFTR's evaluation code, so what CVD's numbers
   used). Plain RANSAC keeps the first minimal-sample model that fits within the threshold, so on a
   128 px synthetic scene its error is ~1-5 degrees where USAC's is ~0.1-0.5: use ``ransac`` only to
   reproduce the papers' estimator, ``usac_accurate`` to measure the videos rather than the estimator;
3. the rig's relative pose is ``inv(c2w_j[t]) @ c2w_i[t]`` (all views share one world: they start at
   the same pose); errors are ``rotation = angle(R_est^T R_gt)`` and ``translation = angle(t_est,
   t_gt)`` folded to ``min(e, 180 - e)`` (the sign of an essential matrix's t is ambiguous; SuperGlue's
   convention), in degrees.

Cases, each counted in the summary:

- ``same_pose``: the two cameras coincide (CVD's frame 0, where every view is the identity). There
  is no relative pose to recover: the row is reported and left out of every aggregate.
- failures (``too_few_matches``: fewer than 5 matches, the five-point minimum; ``no_pose``: RANSAC
  found no essential matrix or no solution passed the cheirality check): counted with an
  **infinite** rotation and translation error, so they lower every AUC instead of being dropped.
- translation undefined: the true baseline ``|t_gt|`` is zero or below ``min_baseline`` (pure
  rotation, or a baseline too small for its direction to be meaningful). The rotation error is
  scored; the translation error is ``None`` and left out of the translation AUC and median.
- pure rotation (zero true baseline, different orientations): the views are then related by a
  homography and an essential matrix is degenerate (``E = [0]x R = 0``), so the rotation is
  estimated from a homography instead (``cv2.findHomography`` on normalised points, same estimator
  and threshold; ``R`` = the rotation nearest to ``H``), row ``model: "homography"``.

AUC (:func:`pose_auc`, SuperGlue's ``pose_auc``): sort the N errors; the recall curve is the
polyline through ``(0, 0)`` and ``(e_(k), k / N)``; AUC@tau is the area under it from 0 to tau
(held flat after the last error below tau), divided by tau. It lies within ``1 / (2N)`` of the
exact ``mean(max(0, 1 - e / tau))``; infinite errors contribute 0.

SuperGlue's precision and matching score: a match is *correct* when its squared symmetric epipolar
distance in normalised coordinates under the rig's true ``E = [t]x R`` is below 5e-4; precision is
the share of correct matches, matching score the number of correct matches over the keypoints
detected in view i. Both are undefined (``None``) without a baseline.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from ..progress import Progress, ensure_progress
from .matching import MatchCache

AUC_THRESHOLDS_DEG = (5.0, 10.0, 20.0)
ESTIMATORS = ("usac_accurate", "ransac")
ESSENTIAL_RANSAC_PX = 1.0
ESSENTIAL_CONFIDENCE = 0.99999
MIN_POSE_MATCHES = 5
CORRECT_EPIPOLAR_THRESHOLD = 5e-4  # SuperGlue: squared symmetric epipolar distance, normalised coordinates
SAME_POSE_TOL = 1e-9  # rig poses are float64: identical cameras differ by rounding only
RIG_PIXEL_OFFSET = 0.5  # the pack's K puts pixel centres at +0.5 (CameraCtrl, COLMAP, nerfstudio)


# --------------------------------------------------------------------------------------- geometry
def relative_pose(c2w_src: np.ndarray, c2w_tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(R, t)`` of the source camera in the target camera: ``x_tgt = R x_src + t`` (4x4 c2w inputs)."""
    src_to_tgt = np.linalg.inv(np.asarray(c2w_tgt, np.float64)) @ np.asarray(c2w_src, np.float64)
    return src_to_tgt[:3, :3], src_to_tgt[:3, 3]


def rotation_angle_deg(R: np.ndarray) -> float:
    """Rotation angle of ``R`` in degrees (0..180)."""
    cosine = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return math.degrees(math.acos(cosine))


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle of ``R_est^T R_gt``: how far the estimated rotation is from the true one."""
    return rotation_angle_deg(np.asarray(R_est).T @ np.asarray(R_gt))


def translation_error_deg(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Angle between the translation directions, folded to 0..90 (an essential matrix fixes t up to sign)."""
    t_est, t_gt = np.asarray(t_est, np.float64).ravel(), np.asarray(t_gt, np.float64).ravel()
    cosine = np.clip(t_est @ t_gt / (np.linalg.norm(t_est) * np.linalg.norm(t_gt)), -1.0, 1.0)
    angle = math.degrees(math.acos(cosine))
    return min(angle, 180.0 - angle)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def normalised_points(points: np.ndarray, K: np.ndarray, pixel_offset: float) -> np.ndarray:
    """OpenCV keypoints ``[N, 2]`` -> normalised camera coordinates ``[N, 2]`` (``K^-1 (u + o, v + o, 1)``)."""
    K = np.asarray(K, np.float64)
    pixels = np.asarray(points, np.float64).reshape(-1, 2) + pixel_offset
    x = (pixels[:, 0] - K[0, 2] - K[0, 1] * (pixels[:, 1] - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (pixels[:, 1] - K[1, 2]) / K[1, 1]
    return np.stack([x, y], axis=1)


def symmetric_epipolar_error(norm_src: np.ndarray, norm_tgt: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """SuperGlue's epipolar error: ``(x_t^T E x_s)^2 (1 / |(E x_s)_12|^2 + 1 / |(E^T x_t)_12|^2)``, ``E = [t]x R``.

    Squared distances (to the epipolar line, summed over both images) in normalised coordinates;
    invariant to the scale of ``t``.
    """
    E = _skew(np.asarray(t, np.float64)) @ np.asarray(R, np.float64)
    src = np.concatenate([norm_src, np.ones((len(norm_src), 1))], 1)
    tgt = np.concatenate([norm_tgt, np.ones((len(norm_tgt), 1))], 1)
    lines_tgt = src @ E.T
    lines_src = tgt @ E
    algebraic = np.sum(tgt * lines_tgt, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return algebraic ** 2 * (1.0 / (lines_tgt[:, 0] ** 2 + lines_tgt[:, 1] ** 2) +
                                 1.0 / (lines_src[:, 0] ** 2 + lines_src[:, 1] ** 2))


def estimate_relative_pose(norm_src: np.ndarray, norm_tgt: np.ndarray, threshold: float,
                           confidence: float = ESSENTIAL_CONFIDENCE, estimator: str = "usac_accurate"):
    """``(status, R, t, inliers)`` from matched normalised points (``x_tgt = R x_src + t``, ``|t| = 1``).

    ``threshold`` in normalised units (pixels / focal length). ``status`` is ``"ok"``,
    ``"too_few_matches"`` or ``"no_pose"`` (then R, t are None).
    """
    import cv2

    if len(norm_src) < MIN_POSE_MATCHES:
        return "too_few_matches", None, None, 0
    src = np.ascontiguousarray(norm_src, dtype=np.float64)
    tgt = np.ascontiguousarray(norm_tgt, dtype=np.float64)
    identity = np.eye(3)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    method = cv2.USAC_ACCURATE if estimator == "usac_accurate" else cv2.RANSAC
    E, mask = cv2.findEssentialMat(src, tgt, identity, method=method, prob=float(confidence),
                                   threshold=float(threshold))
    if E is None or mask is None or E.shape[0] < 3:
        return "no_pose", None, None, 0
    best = ("no_pose", None, None, 0)
    for candidate in np.split(E, E.shape[0] // 3):  # the five-point solver may return several E
        count, R, t, _ = cv2.recoverPose(candidate, src, tgt, identity, mask=mask.copy())
        if count > best[3]:
            best = ("ok", R, t.ravel(), int(count))
    return best


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation closest to ``M`` in the Frobenius norm (SVD projection onto SO(3))."""
    U, _, Vt = np.linalg.svd(np.asarray(M, dtype=np.float64))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def estimate_rotation_homography(norm_src: np.ndarray, norm_tgt: np.ndarray, threshold: float,
                                 confidence: float = ESSENTIAL_CONFIDENCE, estimator: str = "usac_accurate"):
    """``(status, R, inliers)`` for views related by a pure rotation: in normalised coordinates the
    homography between them is ``R`` up to scale."""
    import cv2

    if len(norm_src) < 4:  # a homography needs 4 points
        return "too_few_matches", None, 0
    method = cv2.USAC_ACCURATE if estimator == "usac_accurate" else cv2.RANSAC
    H, mask = cv2.findHomography(np.ascontiguousarray(norm_src, np.float64), np.ascontiguousarray(norm_tgt, np.float64),
                                 method, float(threshold), confidence=float(confidence))
    if H is None or mask is None or not np.all(np.isfinite(H)):
        return "no_pose", None, 0
    return "ok", nearest_rotation(H), int(mask.sum())


# --------------------------------------------------------------------------------------- AUC
def pose_auc(errors: Sequence[float], thresholds: Sequence[float] = AUC_THRESHOLDS_DEG) -> list[Optional[float]]:
    """SuperGlue's pose AUC (fractions 0..1) of ``errors`` (degrees; ``inf`` for failures) at each threshold.

    The recall curve is the polyline through (0, 0) and (e_(k), k / N) over the sorted errors; the
    area under it up to ``tau`` (flat after the last error below tau) divided by ``tau``. ``None``
    for no errors.
    """
    values = np.sort(np.asarray(list(errors), dtype=np.float64))
    if values.size == 0:
        return [None for _ in thresholds]
    if np.isnan(values).any():
        raise ValueError("pose errors must not be NaN (use inf for a failed estimate)")
    edges = np.concatenate([[0.0], values])
    recall = np.arange(values.size + 1) / values.size
    aucs = []
    for tau in thresholds:
        if not tau > 0:
            raise ValueError(f"AUC thresholds must be positive degrees, got {tau}")
        below = int(np.searchsorted(edges, tau, side="left"))  # curve points with error < tau (>= 1)
        xs = np.append(edges[:below], tau)
        ys = np.append(recall[:below], recall[below - 1])
        aucs.append(float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / tau))
    return aucs


# --------------------------------------------------------------------------------------- protocol
def check_rig_arrays(K: Any, c2w: Any, views: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``K [V, T, 3, 3]`` and ``c2w [V, T, 4, 4]`` as finite float64 arrays of the expected shape."""
    def as_array(name, value, shape):
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
        if array.shape != shape:
            raise ValueError(f"{name} must be {list(shape)} (views x frames of the frames), got {list(array.shape)}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinity")
        return array

    return as_array("K", K, (views, steps, 3, 3)), as_array("c2w", c2w, (views, steps, 4, 4))


def check_pairs_and_frames(pairs, frames, views: int, steps: int) -> tuple[list, list]:
    """Validated ``[(i, j)]`` (default: every i < j) and frame indices (default: all)."""
    pairs = [(i, j) for i in range(views) for j in range(i + 1, views)] if pairs is None else \
        [(int(i), int(j)) for i, j in pairs]
    for i, j in pairs:
        if not (0 <= i < views and 0 <= j < views) or i == j:
            raise ValueError(f"pair ({i}, {j}) must name two different views in 0..{views - 1}")
    frames = list(range(steps)) if frames is None else [int(t) for t in frames]
    if any(not 0 <= t < steps for t in frames):
        raise ValueError(f"frames must be indices in 0..{steps - 1}, got {frames}")
    return pairs, frames


def _pose_scale(c2w_a: np.ndarray, c2w_b: np.ndarray) -> float:
    """Length scale of two camera positions (>= 1), for tolerances on translations."""
    return max(1.0, float(np.linalg.norm(c2w_a[:3, 3])), float(np.linalg.norm(c2w_b[:3, 3])))


def cameras_coincide(c2w_a: np.ndarray, c2w_b: np.ndarray) -> bool:
    """True when two camera-to-world poses are the same camera (up to float64 rounding)."""
    R, t = relative_pose(c2w_a, c2w_b)
    return bool(np.abs(R - np.eye(3)).max() < SAME_POSE_TOL and
                np.linalg.norm(t) < SAME_POSE_TOL * _pose_scale(c2w_a, c2w_b))


def _score_pair_frame(matches: MatchCache, i: int, j: int, t: int, K: np.ndarray, c2w: np.ndarray,
                      pixel_offset: float, ransac_px: float, min_baseline: float, estimator: str) -> dict:
    """The report row of pair (i, j) at frame t."""
    R_gt, t_gt = relative_pose(c2w[i, t], c2w[j, t])
    scale = _pose_scale(c2w[i, t], c2w[j, t])
    baseline = float(np.linalg.norm(t_gt))
    src, tgt = matches.matches(i, j, t)
    row = {"frame": int(t), "status": "ok", "model": "essential", "matches": int(len(src)), "pose_inliers": 0,
           "rotation_error_deg": None, "translation_error_deg": None, "baseline": baseline,
           "rotation_gt_deg": rotation_angle_deg(R_gt), "translation_defined": False, "precision_pct": None,
           "matching_score_pct": None}
    if cameras_coincide(c2w[i, t], c2w[j, t]):
        row.update(status="same_pose", model=None)
        return row
    has_baseline = baseline > max(float(min_baseline), SAME_POSE_TOL * scale)
    norm_src = normalised_points(src, K[i, t], pixel_offset)
    norm_tgt = normalised_points(tgt, K[j, t], pixel_offset)
    if has_baseline and len(src):
        correct = symmetric_epipolar_error(norm_src, norm_tgt, R_gt, t_gt) < CORRECT_EPIPOLAR_THRESHOLD
        keypoints = len(matches.keypoints(i, t)[0])
        row["precision_pct"] = 100.0 * float(correct.mean())
        row["matching_score_pct"] = 100.0 * float(correct.sum()) / keypoints
    focal = float(np.mean([K[i, t][0, 0], K[i, t][1, 1], K[j, t][0, 0], K[j, t][1, 1]]))
    if baseline <= SAME_POSE_TOL * scale:  # pure rotation: E degenerates, a homography holds
        status, R_est, inliers = estimate_rotation_homography(norm_src, norm_tgt, ransac_px / focal,
                                                              estimator=estimator)
        row.update(model="homography", status=status, pose_inliers=int(inliers), translation_defined=False)
        if status == "ok":
            row["rotation_error_deg"] = rotation_error_deg(R_est, R_gt)
        return row
    status, R_est, t_est, inliers = estimate_relative_pose(norm_src, norm_tgt, ransac_px / focal,
                                                           estimator=estimator)
    row.update(status=status, pose_inliers=int(inliers), translation_defined=has_baseline)
    if status == "ok":
        row["rotation_error_deg"] = rotation_error_deg(R_est, R_gt)
        row["translation_error_deg"] = translation_error_deg(t_est, t_gt) if has_baseline else None
    return row


def _auc_pct(errors: list[float]) -> Optional[dict]:
    aucs = pose_auc(errors, AUC_THRESHOLDS_DEG)
    if aucs[0] is None:
        return None
    return {f"{tau:g}": 100.0 * value for tau, value in zip(AUC_THRESHOLDS_DEG, aucs)}


def _finite_median(errors: list[float]) -> Optional[float]:
    """Median with failures as infinity; None when there is none or the median itself is infinite."""
    if not errors:
        return None
    median = float(np.median(np.asarray(errors, dtype=np.float64)))
    return median if math.isfinite(median) else None


def _mean_or_none(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def pose_summary(rows: list[dict]) -> dict:
    """Aggregates over rows: AUC@5/10/20 (percent), medians, failures; ``same_pose`` rows left out."""
    scored = [row for row in rows if row["status"] != "same_pose"]
    failed = [row for row in scored if row["status"] != "ok"]
    rotation = [math.inf if row["status"] != "ok" else row["rotation_error_deg"] for row in scored]
    with_translation = [row for row in scored if row["translation_defined"]]
    translation = [math.inf if row["status"] != "ok" else row["translation_error_deg"] for row in with_translation]
    return {
        "evaluated": len(scored),
        "same_pose": len(rows) - len(scored),
        "failures": len(failed),
        "too_few_matches": sum(row["status"] == "too_few_matches" for row in failed),
        "translation_undefined": len(scored) - len(with_translation),
        "rotation_auc_pct": _auc_pct(rotation),
        "translation_auc_pct": _auc_pct(translation),
        "rotation_error_median_deg": _finite_median(rotation),
        "translation_error_median_deg": _finite_median(translation),
        "precision_pct": _mean_or_none([row["precision_pct"] for row in scored]),
        "matching_score_pct": _mean_or_none([row["matching_score_pct"] for row in scored]),
    }


def pose_accuracy(
    matches: MatchCache,
    K: Any,
    c2w: Any,
    pairs: Optional[Sequence[tuple[int, int]]] = None,
    frames: Optional[Sequence[int]] = None,
    pixel_offset: float = RIG_PIXEL_OFFSET,
    ransac_px: float = ESSENTIAL_RANSAC_PX,
    min_baseline: float = 0.0,
    estimator: str = "usac_accurate",
    progress: Optional[Progress] = None,
) -> dict:
    """CVD's pose protocol over view pairs and frames (see the module docstring for every definition).

    Args:
        matches: keypoints and ratio-test matches of the generated frames ``[V, T, H, W, 3]``.
        K: ``[V, T, 3, 3]`` pixel intrinsics of the frames; c2w: ``[V, T, 4, 4]`` camera-to-world
            (OpenCV axes) of the rig the views were generated with.
        pairs: view pairs ``(i, j)`` (default: every ``i < j``); frames: frame indices (default: all).
        pixel_offset: added to OpenCV keypoints to reach K's pixel convention (0.5 for the pack's
            rigs; 0 for intrinsics that put pixel centres at integers).
        ransac_px: essential-matrix RANSAC threshold in pixels.
        min_baseline: true baselines at or below this (rig units) leave translation undefined.
        estimator: ``"usac_accurate"`` or ``"ransac"`` (see the module docstring).
        progress: advanced once per (pair, frame); raising from it cancels.

    Returns:
        JSON-serialisable dict: settings, ``pairs`` (``{"pair", "frames": [rows], "summary"}``) and
        ``overall`` (summary over all pairs and frames).
    """
    views, steps = matches.shape[:2]
    K, c2w = check_rig_arrays(K, c2w, views, steps)
    pairs, frames = check_pairs_and_frames(pairs, frames, views, steps)
    if not ransac_px > 0:
        raise ValueError(f"ransac_px must be positive (pixels), got {ransac_px}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if not min_baseline >= 0:
        raise ValueError(f"min_baseline must be 0 or more (rig units), got {min_baseline}")

    progress = ensure_progress(progress)
    progress.start(len(pairs) * len(frames))
    pair_reports, all_rows = [], []
    for i, j in pairs:
        rows = []
        for t in frames:
            rows.append(_score_pair_frame(matches, i, j, t, K, c2w, pixel_offset, ransac_px, min_baseline, estimator))
            progress.advance(1)
        pair_reports.append({"pair": [i, j], "frames": rows, "summary": pose_summary(rows)})
        all_rows += rows
    return {
        "protocol": "CVD pose AUC (SuperGlue definitions) with OpenCV matches",
        "matcher": f"{matches.detector_name} + Lowe ratio {matches.ratio:g} (OpenCV BFMatcher)",
        "estimator_name": estimator,
        "estimator": f"cv2.findEssentialMat {'USAC_ACCURATE' if estimator == 'usac_accurate' else 'RANSAC'} "
                     f"({ransac_px:g} px, confidence {ESSENTIAL_CONFIDENCE}) + cv2.recoverPose",
        "auc_thresholds_deg": list(AUC_THRESHOLDS_DEG),
        "pixel_offset": float(pixel_offset),
        "min_baseline": float(min_baseline),
        "pairs": pair_reports,
        "overall": pose_summary(all_rows),
    }
