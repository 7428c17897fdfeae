"""The full consistency report of generated views against their rig: every metric on shared matches.

One call detects and matches once (:class:`~cvd_core.metrics.matching.MatchCache`) and scores:

- ``overall`` / ``pairs``: Sampson error under the rig's known F and the RANSAC inlier ratio
  (:func:`~cvd_core.metrics.consistency.multiview_consistency`);
- ``pose``: CVD's pose protocol, AUC@5/10/20 of rotation and translation errors, P and MS
  (:func:`~cvd_core.metrics.pose_accuracy.pose_accuracy`);
- ``match_count``: the Mat. Pix.-style matched-pixel count (:func:`~cvd_core.metrics.match_count.match_counts`).

The rig's intrinsics follow the pack's convention (pixel centres at +0.5), so OpenCV keypoints are
shifted by 0.5 before any geometry.
"""

from __future__ import annotations

from typing import Any, Optional

from ..camera import CameraSet, pair_fundamentals
from ..progress import Progress, ensure_progress
from .consistency import multiview_consistency, select_frames
from .match_count import match_counts
from .matching import LOWE_RATIO, MatchCache
from .pose_accuracy import RIG_PIXEL_OFFSET, pose_accuracy


class _Continuing:
    """Forwards ``advance``/``check`` to a progress already started for the whole report."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def start(self, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        self._progress.advance(n)

    def check(self) -> None:
        self._progress.check()


def multiview_report(
    frames: Any,
    rig: CameraSet,
    detector: str = "sift",
    max_frames: Optional[int] = None,
    ransac_thresh: float = 1.0,
    estimator: str = "usac_accurate",
    min_baseline: float = 0.0,
    pixel_offset: float = RIG_PIXEL_OFFSET,
    progress: Optional[Progress] = None,
) -> dict:
    """Every metric of ``frames`` (``[V, T, H, W, 3]``) against ``rig`` (its K for this frame size).

    Every view pair ``i < j`` and the frames chosen by ``max_frames`` (spread evenly; None = all).
    ``progress`` is advanced three times per (pair, frame) (Sampson, pose, count); raising cancels.
    """
    rig = rig.as_rig()
    if rig.n_views < 2:
        raise ValueError(f"consistency compares views, so the rig needs at least 2 views, got {rig.n_views}")
    matches = MatchCache(frames, detector, LOWE_RATIO)
    views, steps, height, width, _ = matches.shape
    if (views, steps) != (rig.n_views, rig.n_frames) or (width, height) != (rig.width, rig.height):
        raise ValueError(f"the frames are {views} views x {steps} frames of {width}x{height}, the rig "
                         f"{rig.n_views} x {rig.n_frames} of {rig.width}x{rig.height}")
    pairs = [(i, j) for i in range(views) for j in range(i + 1, views)]
    frame_indices = select_frames(steps, max_frames)
    progress = ensure_progress(progress)
    progress.start(3 * len(pairs) * len(frame_indices))
    continuing = _Continuing(progress)
    fundamentals = {pair: pair_fundamentals(rig, *pair).numpy() for pair in pairs}
    report = multiview_consistency(frames, fundamentals, detector=detector, max_frames=max_frames,
                                   ransac_thresh=ransac_thresh, progress=continuing, matches=matches,
                                   pixel_offset=pixel_offset)
    report["pose"] = pose_accuracy(matches, rig.K, rig.c2w, pairs, frame_indices, pixel_offset=pixel_offset,
                                   min_baseline=min_baseline, estimator=estimator, progress=continuing)
    report["match_count"] = match_counts(matches, pairs, frame_indices, rig.c2w, progress=continuing)
    report["labels"] = list(rig.labels)
    return report
