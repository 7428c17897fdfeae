"""Quality metrics for generated multi-view videos."""

from .consistency import (DETECTORS, format_consistency_summary, is_degenerate_fundamental, multiview_consistency,
                          sampson_distance)
from .plot import render_consistency_plot

__all__ = [
    "DETECTORS",
    "format_consistency_summary",
    "is_degenerate_fundamental",
    "multiview_consistency",
    "render_consistency_plot",
    "sampson_distance",
]
