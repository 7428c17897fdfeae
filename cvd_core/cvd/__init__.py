"""CVD backbone: SD1.5 + AnimateDiff v3 + CameraCtrl + epipolar cross-view synchronization modules.

Public API: ``load_cvd_model``, ``CVDModel.predict_noise``, ``resolve_dtype``, ``write_tiny_cvd_files``.
"""

from .loading import CheckpointKeyError, load_cvd_model
from .model import CVDModel, resolve_dtype
from .tiny import write_tiny_cvd_files

__all__ = ["CheckpointKeyError", "CVDModel", "load_cvd_model", "resolve_dtype", "write_tiny_cvd_files"]
