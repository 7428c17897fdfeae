"""Feature matching shared by every cross-view metric: OpenCV SIFT or ORB, Lowe's ratio test, RANSAC.

All metrics of a report (Sampson error, pose accuracy, matched-pixel count) score the *same* matches:
:class:`MatchCache` detects the keypoints of each (view, frame) once and matches each (view pair,
frame) once. Keypoint coordinates are OpenCV's: the centre of pixel (col u, row v) is ``(u, v)``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..io.frames import check_multiview_frames, to_uint8

DETECTORS = ("sift", "orb")
LOWE_RATIO = 0.75  # Lowe (2004)'s ratio-test threshold, the usual default for SIFT
MIN_RANSAC_MATCHES = 8  # the 8-point algorithm inside findFundamentalMat needs at least 8 matches
MAX_FEATURES = 4000


def make_detector(detector: str):
    """``(cv2 feature detector, descriptor norm)`` for ``"sift"`` or ``"orb"``."""
    import cv2

    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if detector == "sift":
        return cv2.SIFT_create(nfeatures=MAX_FEATURES), cv2.NORM_L2
    # ORB's default 31 px border would blank out most of a 64-128 px frame.
    return (cv2.ORB_create(nfeatures=MAX_FEATURES, edgeThreshold=15, patchSize=15, fastThreshold=10),
            cv2.NORM_HAMMING)


def detect(image_rgb: np.ndarray, detector) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Keypoints ``[N, 2]`` (float64, OpenCV pixel coordinates) and descriptors of a uint8 RGB image."""
    import cv2

    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = detector.detectAndCompute(gray, None)
    points = np.array([kp.pt for kp in keypoints], dtype=np.float64).reshape(-1, 2)
    return points, descriptors


def ratio_matches(desc_src, desc_tgt, norm: int, ratio: float) -> np.ndarray:
    """Index pairs ``[M, 2]`` (src, tgt) whose nearest neighbour passes Lowe's ratio test."""
    import cv2

    if desc_src is None or desc_tgt is None or len(desc_src) < 1 or len(desc_tgt) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    knn = cv2.BFMatcher(norm).knnMatch(desc_src, desc_tgt, k=2)
    kept = [(best.queryIdx, best.trainIdx) for best, second in (m for m in knn if len(m) == 2)
            if best.distance < ratio * second.distance]
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


def fundamental_inliers(points_src: np.ndarray, points_tgt: np.ndarray, threshold: float,
                        confidence: float = 0.999) -> Optional[np.ndarray]:
    """Boolean inlier mask of a RANSAC fundamental-matrix fit (no camera knowledge), or None when
    there are fewer than 8 matches. ``threshold``: pixels from the epipolar line."""
    import cv2

    if len(points_src) < MIN_RANSAC_MATCHES:
        return None
    _, mask = cv2.findFundamentalMat(points_src.astype(np.float32), points_tgt.astype(np.float32),
                                     cv2.FM_RANSAC, float(threshold), float(confidence))
    if mask is None:  # RANSAC found no model (e.g. all points collinear)
        return np.zeros(len(points_src), dtype=bool)
    return mask.ravel().astype(bool)[: len(points_src)]


class MatchCache:
    """Keypoints of every (view, frame) and ratio-test matches of every (view pair, frame), made once.

    ``frames``: ``[V, T, H, W, 3]`` float 0..1 or uint8. Both are computed on first use, so a metric
    that touches only some frames pays only for those.
    """

    def __init__(self, frames, detector: str = "sift", ratio: float = LOWE_RATIO):
        self.frames = check_multiview_frames(frames)
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.detector_name = detector
        self.ratio = float(ratio)
        self._detector, self._norm = make_detector(detector)
        self._keypoints: dict[tuple[int, int], tuple[np.ndarray, Optional[np.ndarray]]] = {}
        self._matches: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.frames.shape)

    def keypoints(self, view: int, t: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        if (view, t) not in self._keypoints:  # each view appears in several pairs: detect once
            self._keypoints[(view, t)] = detect(to_uint8(self.frames[view, t]), self._detector)
        return self._keypoints[(view, t)]

    def matches(self, src: int, tgt: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Matched points ``([M, 2] in view src, [M, 2] in view tgt)`` at frame t."""
        if (src, tgt, t) not in self._matches:
            points_src, desc_src = self.keypoints(src, t)
            points_tgt, desc_tgt = self.keypoints(tgt, t)
            index = ratio_matches(desc_src, desc_tgt, self._norm, self.ratio)
            self._matches[(src, tgt, t)] = (points_src[index[:, 0]], points_tgt[index[:, 1]])
        return self._matches[(src, tgt, t)]
