"""Multi-view consistency: do the generated views agree with the rig's known epipolar geometry?

For every requested view pair ``(i, j)`` and frame ``t``, features are detected in view i and view
j (OpenCV SIFT or ORB), matched with Lowe's ratio test, and scored two ways:

- ``inlier_ratio``: the share of matches RANSAC (``cv2.findFundamentalMat``) can explain with *some*
  fundamental matrix. It says whether the two images show one rigid scene at all.
- ``sampson_*_px``: the Sampson distance of the matches under the *known* ``F[t]`` of the rig
  (``x_j^T F x_i = 0``), in pixels. It says whether they show the scene from the *right* cameras.

The Sampson distance ``|x_j^T F x_i| / sqrt((F x_i)_1^2 + (F x_i)_2^2 + (F^T x_j)_1^2 + (F^T x_j)_2^2)``
is the first-order approximation of how far (jointly, in both images) a match must move to satisfy
the epipolar constraint: for horizontally rectified cameras it is ``|y_j - y_i| / sqrt(2)``.
Keypoints come from OpenCV, which puts the centre of pixel (col u, row v) at ``(u, v)``; they are
shifted by ``pixel_offset`` into the convention of the intrinsics ``F`` was made from (0.5 for the
pack's rigs, whose pixel centres sit at +0.5 as in CameraCtrl's Plücker rays, COLMAP and nerfstudio;
0, the default here, for intrinsics with integer pixel centres).

Frames where ``F`` is (numerically) zero, e.g. CVD's frame 0 where every view has the identity pose,
carry no epipolar constraint: they are reported with ``degenerate_f: true`` and left out of every
Sampson aggregate (matches and inlier ratio are still reported).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..progress import Progress, ensure_progress
from .matching import DETECTORS, LOWE_RATIO, MatchCache, fundamental_inliers


def sampson_distance(F: np.ndarray, points_src: np.ndarray, points_tgt: np.ndarray) -> np.ndarray:
    """Sampson distance in pixels of matches ``points_src[k] <-> points_tgt[k]`` (``[N, 2]``) under ``F``.

    ``F`` follows ``x_tgt^T F x_src = 0``. Scale-invariant in ``F``. Returns ``[N]`` (NaN where
    both epipolar lines vanish, which only happens for ``F = 0``).
    """
    F = np.asarray(F, dtype=np.float64)
    src = np.concatenate([np.asarray(points_src, np.float64).reshape(-1, 2), np.ones((len(points_src), 1))], 1)
    tgt = np.concatenate([np.asarray(points_tgt, np.float64).reshape(-1, 2), np.ones((len(points_tgt), 1))], 1)
    lines_in_tgt = src @ F.T  # F x_src: epipolar line of each source point in the target image
    lines_in_src = tgt @ F  # F^T x_tgt
    algebraic = np.sum(tgt * lines_in_tgt, axis=1)
    gradient_sq = lines_in_tgt[:, 0] ** 2 + lines_in_tgt[:, 1] ** 2 + lines_in_src[:, 0] ** 2 + lines_in_src[:, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(algebraic) / np.sqrt(gradient_sq)


def is_degenerate_fundamental(F: np.ndarray, width: int, height: int, tol: float = 1e-6) -> bool:
    """True when ``F`` is numerically zero (no baseline), judged in image-normalised coordinates.

    ``F`` is rescaled so that pixel coordinates map to [-1, 1]; this makes the threshold independent
    of the image size and focal length (a real baseline of 0.1% of the scene depth is still ~1e-3).
    """
    to_pixels = np.array([[width / 2.0, 0.0, width / 2.0], [0.0, height / 2.0, height / 2.0], [0.0, 0.0, 1.0]])
    return float(np.linalg.norm(to_pixels.T @ F @ to_pixels)) < tol


def _check_fundamentals(fundamentals: Mapping, views: int, steps: int) -> dict[tuple[int, int], np.ndarray]:
    if not isinstance(fundamentals, Mapping) or not fundamentals:
        raise ValueError("fundamentals must be a non-empty dict {(i, j): F [T, 3, 3]} with x_j^T F x_i = 0")
    checked = {}
    for key, value in fundamentals.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, (int, np.integer)) for k in key)):
            raise ValueError(f"fundamentals keys must be view index pairs (i, j), got {key!r}")
        i, j = int(key[0]), int(key[1])
        if not (0 <= i < views and 0 <= j < views) or i == j:
            raise ValueError(f"pair ({i}, {j}) must name two different views in 0..{views - 1}")
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
        if array.shape == (3, 3):  # one F for every frame (static rig)
            array = np.broadcast_to(array, (steps, 3, 3))
        if array.shape != (steps, 3, 3):
            raise ValueError(f"F for pair ({i}, {j}) must be [{steps}, 3, 3] (one per frame) or [3, 3], "
                             f"got {list(array.shape)}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"F for pair ({i}, {j}) contains NaN or infinity")
        checked[(i, j)] = array
    return checked


def select_frames(steps: int, max_frames: Optional[int]) -> list[int]:
    """All frames, or ``max_frames`` spread evenly over the video (first and last included)."""
    if max_frames is None or max_frames >= steps:
        return list(range(steps))
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1 or None, got {max_frames}")
    return sorted({int(round(x)) for x in np.linspace(0, steps - 1, int(max_frames))})


def _match_cache(frames, detector: str, ratio: float, matches: Optional[MatchCache]) -> MatchCache:
    """``matches`` when given (checked against the frames and settings), otherwise a new cache."""
    if matches is None:
        return MatchCache(frames, detector, ratio)
    if (matches.detector_name, matches.ratio) != (detector, float(ratio)):
        raise ValueError(f"the match cache was made with {matches.detector_name} and ratio {matches.ratio}, "
                         f"not {detector} and {ratio}")
    if frames is not None and tuple(np.shape(frames)) != matches.shape:
        raise ValueError(f"the match cache holds frames {list(matches.shape)}, not {list(np.shape(frames))}")
    return matches


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


def _median(values: Sequence[float]) -> Optional[float]:
    return float(np.median(values)) if len(values) else None


def _score_frame(src, tgt, F, degenerate, ransac_thresh, pixel_offset):
    """One pair at one frame (matched points ``src`` <-> ``tgt``): the report row and the distances
    that feed the aggregates."""
    src, tgt = src + pixel_offset, tgt + pixel_offset
    inliers = fundamental_inliers(src, tgt, ransac_thresh)
    distances = np.zeros(0) if degenerate or len(src) == 0 else sampson_distance(F, src, tgt)
    inlier_distances = distances[inliers] if inliers is not None and len(distances) else np.zeros(0)
    row = {
        "matches": int(len(src)),
        "inliers": None if inliers is None else int(inliers.sum()),
        "inlier_ratio": None if inliers is None else float(inliers.mean()),
        "degenerate_f": bool(degenerate),
        "sampson_mean_px": _mean(distances),
        "sampson_median_px": _median(distances),
        "sampson_inlier_mean_px": _mean(inlier_distances),
    }
    return row, distances, inlier_distances


def _summary(rows: list[dict], distances: list[np.ndarray], inlier_distances: list[np.ndarray]) -> dict:
    """Aggregates over frames: Sampson values pooled over all matches of non-degenerate frames."""
    pooled = np.concatenate(distances) if distances else np.zeros(0)
    pooled_inliers = np.concatenate(inlier_distances) if inlier_distances else np.zeros(0)
    ratios = [row["inlier_ratio"] for row in rows if row["inlier_ratio"] is not None]
    return {
        "frames_evaluated": len(rows),
        "frames_degenerate": sum(row["degenerate_f"] for row in rows),
        "frames_without_matches": sum(row["matches"] == 0 for row in rows),
        "matches_mean": _mean([row["matches"] for row in rows]),
        "inlier_ratio_mean": _mean(ratios),
        "sampson_matches": int(len(pooled)),
        "sampson_mean_px": _mean(pooled),
        "sampson_median_px": _median(pooled),
        "sampson_inlier_mean_px": _mean(pooled_inliers),
    }


def multiview_consistency(
    frames: Any,
    fundamentals: Mapping[tuple[int, int], Any],
    detector: str = "sift",
    max_frames: Optional[int] = None,
    ransac_thresh: float = 1.0,
    ratio: float = LOWE_RATIO,
    degenerate_tol: float = 1e-6,
    progress: Optional[Progress] = None,
    matches: Optional[MatchCache] = None,
    pixel_offset: float = 0.0,
) -> dict:
    """Score how well generated views agree with the rig's epipolar geometry.

    Args:
        frames: ``[V, T, H, W, 3]`` float 0..1 or uint8 (torch or numpy).
        fundamentals: ``{(i, j): F}`` for the pairs to evaluate, ``F`` ``[T, 3, 3]`` (or ``[3, 3]`` for
            all frames) with ``x_j^T F[t] x_i = 0`` between frame t of view i and frame t of view j,
            e.g. ``cvd_core.camera.pair_fundamentals(rig, i, j)``.
        detector: ``"sift"`` (default, more accurate) or ``"orb"`` (faster).
        max_frames: evaluate at most this many frames, spread evenly (None: all).
        ransac_thresh: RANSAC inlier threshold in pixels for the inlier ratio.
        ratio: Lowe's ratio-test threshold.
        degenerate_tol: norm below which an image-normalised F counts as zero.
        progress: advanced once per (pair, frame); raising from it cancels.
        matches: a :class:`~cvd_core.metrics.matching.MatchCache` of these frames with the same
            detector and ratio, to share keypoints and matches with other metrics (made here if None).
        pixel_offset: added to OpenCV keypoints to reach the pixel convention of the K behind ``F``.

    Returns:
        A JSON-serialisable dict: settings, ``pairs`` (a list of ``{"pair": [i, j], "frames": [rows],
        "summary": {...}}``) and ``overall`` (the same summary pooled over all pairs). Missing values
        (no matches, degenerate F) are ``None``.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if not ransac_thresh > 0:
        raise ValueError(f"ransac_thresh must be positive (pixels), got {ransac_thresh}")
    matches = _match_cache(frames, detector, ratio, matches)
    views, steps, height, width, _ = matches.shape
    checked = _check_fundamentals(fundamentals, views, steps)
    frame_indices = select_frames(steps, max_frames)
    pairs = sorted(checked)

    progress = ensure_progress(progress)
    progress.start(len(pairs) * len(frame_indices))
    pair_reports, all_rows, all_distances, all_inlier_distances = [], [], [], []
    for i, j in pairs:
        rows, distances, inlier_distances = [], [], []
        for t in frame_indices:
            F = checked[(i, j)][t]
            degenerate = is_degenerate_fundamental(F, width, height, degenerate_tol)
            row, dist, inlier_dist = _score_frame(*matches.matches(i, j, t), F, degenerate, ransac_thresh,
                                                  pixel_offset)
            rows.append({"frame": int(t), **row})
            distances.append(dist)
            inlier_distances.append(inlier_dist)
            progress.advance(1)
        pair_reports.append({"pair": [i, j], "frames": rows, "summary": _summary(rows, distances, inlier_distances)})
        all_rows += rows
        all_distances += distances
        all_inlier_distances += inlier_distances

    return {
        "detector": detector,
        "ratio": float(ratio),
        "ransac_thresh": float(ransac_thresh),
        "pixel_offset": float(pixel_offset),
        "views": int(views),
        "frames": int(steps),
        "width": int(width),
        "height": int(height),
        "evaluated_frames": [int(t) for t in frame_indices],
        "pairs": pair_reports,
        "overall": _summary(all_rows, all_distances, all_inlier_distances),
    }


def format_consistency_summary(report: dict) -> str:
    """A few human-readable lines (per pair and overall) for logs and the node's text output."""

    def fmt(value: Optional[float], unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.3f}{unit}"

    lines = [f"multi-view consistency ({report['detector']}, {len(report['evaluated_frames'])} frames, "
             f"{len(report['pairs'])} pairs)"]
    for entry in report["pairs"]:
        s = entry["summary"]
        lines.append(f"  views {entry['pair'][0]}-{entry['pair'][1]}: Sampson mean {fmt(s['sampson_mean_px'], ' px')}, "
                     f"median {fmt(s['sampson_median_px'], ' px')}, inlier ratio {fmt(s['inlier_ratio_mean'])}, "
                     f"matches/frame {fmt(s['matches_mean'])}, F=0 frames {s['frames_degenerate']}")
    s = report["overall"]
    lines.append(f"  overall: Sampson mean {fmt(s['sampson_mean_px'], ' px')}, "
                 f"median {fmt(s['sampson_median_px'], ' px')}, inlier ratio {fmt(s['inlier_ratio_mean'])}")
    pose = report.get("pose")
    if pose:
        o = pose["overall"]

        def auc(values):
            return "n/a" if values is None else "/".join(f"{v:.1f}" for v in values.values())

        lines.append(f"  pose ({pose['estimator_name']}): AUC@5/10/20 rotation {auc(o['rotation_auc_pct'])} %, "
                     f"translation {auc(o['translation_auc_pct'])} %; median error rotation "
                     f"{fmt(o['rotation_error_median_deg'], ' deg')}, translation "
                     f"{fmt(o['translation_error_median_deg'], ' deg')}; P {fmt(o['precision_pct'], ' %')}, "
                     f"MS {fmt(o['matching_score_pct'], ' %')}; {o['evaluated']} pair-frames, {o['failures']} failed, "
                     f"{o['same_pose']} with identical cameras left out")
    counts = report.get("match_count")
    if counts:
        o = counts["overall"]
        lines.append(f"  matched pixels (Mat.Pix-style, {report['detector']}): mean {fmt(o['matched_pixels_mean'])} "
                     f"per pair-frame, min {o['matched_pixels_min'] if o['matched_pixels_min'] is not None else 'n/a'}")
    return "\n".join(lines)
