"""Mat. Pix.-style count: how many pixels of two same-time frames of different views confidently match.

SynCamMaster (ICLR 2025) reports "Mat. Pix.", the number of matched pixels between synchronized
frames of different views that GIM (a learned dense matcher) finds above a confidence threshold.
This pack has no learned matcher, so the count here is sparse and geometric: the ratio-test matches
of :class:`~cvd_core.metrics.matching.MatchCache` (SIFT or ORB, Lowe ratio 0.75) that a RANSAC
fundamental-matrix fit accepts at a **fixed** 1 px threshold and 0.999 confidence (fixed so that
counts stay comparable whatever the consistency node's own ``ransac_thresh``). One match counts as
one pixel pair. Like GIM's count it needs no camera: it says "the views show the same content",
while the Sampson error and the pose protocol say "from the requested cameras".

Absolute values are not comparable with SynCamMaster's: keypoints are sparse (hundreds, not tens of
thousands), and the count grows with resolution and depends on the detector. Compare settings with
the same detector and frame size; ``per_megapixel`` divides by the frame area for different sizes.
Pair-frames whose cameras coincide (CVD's frame 0) are reported but not counted: matching two
near-identical images says nothing about cross-view consistency.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..progress import Progress, ensure_progress
from .matching import MatchCache, fundamental_inliers
from .pose_accuracy import cameras_coincide, check_pairs_and_frames

MATCH_RANSAC_PX = 1.0
MATCH_CONFIDENCE = 0.999


def matched_pixel_count(points_src: np.ndarray, points_tgt: np.ndarray) -> int:
    """Matches that survive the fixed RANSAC verification (0 with fewer than 8 matches)."""
    inliers = fundamental_inliers(points_src, points_tgt, MATCH_RANSAC_PX, MATCH_CONFIDENCE)
    return 0 if inliers is None else int(inliers.sum())


def _summary(rows: list[dict], megapixels: float) -> dict:
    counted = [row["matched_pixels"] for row in rows if not row["same_pose"]]
    mean = float(np.mean(counted)) if counted else None
    return {
        "evaluated": len(counted),
        "same_pose": len(rows) - len(counted),
        "matched_pixels_mean": mean,
        "matched_pixels_median": float(np.median(counted)) if counted else None,
        "matched_pixels_min": int(min(counted)) if counted else None,
        "per_megapixel": None if mean is None else mean / megapixels,
    }


def match_counts(
    matches: MatchCache,
    pairs: Optional[Sequence[tuple[int, int]]] = None,
    frames: Optional[Sequence[int]] = None,
    c2w: Optional[Any] = None,
    progress: Optional[Progress] = None,
) -> dict:
    """Matched-pixel count per (view pair, frame), per pair and overall.

    ``c2w`` (``[V, T, 4, 4]``, optional) marks pair-frames whose cameras coincide as ``same_pose``
    (reported, not counted). Returns a JSON-serialisable dict.
    """
    views, steps, height, width, _ = matches.shape
    pairs, frames = check_pairs_and_frames(pairs, frames, views, steps)
    if c2w is not None:
        c2w = np.asarray(c2w.detach().cpu() if hasattr(c2w, "detach") else c2w, dtype=np.float64)
        if c2w.shape != (views, steps, 4, 4):
            raise ValueError(f"c2w must be [{views}, {steps}, 4, 4], got {list(c2w.shape)}")
    megapixels = height * width / 1e6
    progress = ensure_progress(progress)
    progress.start(len(pairs) * len(frames))
    pair_reports, all_rows = [], []
    for i, j in pairs:
        rows = []
        for t in frames:
            same = c2w is not None and cameras_coincide(c2w[i, t], c2w[j, t])
            rows.append({"frame": int(t), "same_pose": bool(same),
                         "matched_pixels": matched_pixel_count(*matches.matches(i, j, t))})
            progress.advance(1)
        pair_reports.append({"pair": [i, j], "frames": rows, "summary": _summary(rows, megapixels)})
        all_rows += rows
    return {
        "matcher": f"{matches.detector_name} + Lowe ratio {matches.ratio:g} + RANSAC fundamental matrix "
                   f"({MATCH_RANSAC_PX:g} px, confidence {MATCH_CONFIDENCE})",
        "pairs": pair_reports,
        "overall": _summary(all_rows, megapixels),
    }
