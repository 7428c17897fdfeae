"""Quality metrics for generated multi-view videos."""

from .consistency import (DETECTORS, format_consistency_summary, is_degenerate_fundamental, multiview_consistency,
                          sampson_distance, select_frames)
from .match_count import match_counts, matched_pixel_count
from .matching import MatchCache
from .plot import render_consistency_plot
from .report import multiview_report
from .pose_accuracy import (AUC_THRESHOLDS_DEG, ESTIMATORS, estimate_relative_pose, pose_accuracy, pose_auc,
                            relative_pose, rotation_error_deg, translation_error_deg)

__all__ = [
    "AUC_THRESHOLDS_DEG",
    "DETECTORS",
    "ESTIMATORS",
    "MatchCache",
    "estimate_relative_pose",
    "format_consistency_summary",
    "is_degenerate_fundamental",
    "match_counts",
    "matched_pixel_count",
    "multiview_consistency",
    "multiview_report",
    "pose_accuracy",
    "pose_auc",
    "relative_pose",
    "render_consistency_plot",
    "rotation_error_deg",
    "sampson_distance",
    "select_frames",
    "translation_error_deg",
]
