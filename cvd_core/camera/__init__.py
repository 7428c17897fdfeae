"""Cameras for CVD: rigs, RealEstate10K pose files, presets, two-view geometry and the epipolar bias.

Conventions (CVD / CameraCtrl): OpenCV camera axes (x right, y down, z forward), camera-to-world
poses, every view relative to its own first frame, intrinsics in pixels of the generated frame.
"""

from .epipolar import epipolar_attention_bias
from .geometry import (fundamental_matrix, interpolate_pose, inverse_3x3, inverse_affine, intrinsics_from_fov, look_at_rotation,
                       plucker_embedding, relative_to_first, resize_crop_intrinsics, slerp_rotation)
from .presets import PRESETS, cvd_intrinsics, make_preset_rig, preset_targets, rig_from_json
from .keyframes import (KEYFRAMES_FORMAT, keyframes_from_rig, keyframes_from_settings, parse_keyframes,
                        rig_from_custom_json, rig_from_keyframes)
from .realestate10k import REALESTATE10K_SOURCE_SIZE, load_realestate10k, parse_pose_rows
from .rig import CameraError, CameraSet, pair_fundamentals

__all__ = [
    "CameraError", "CameraSet",
    "load_realestate10k", "parse_pose_rows", "REALESTATE10K_SOURCE_SIZE",
    "relative_to_first", "inverse_3x3", "inverse_affine", "fundamental_matrix", "pair_fundamentals", "plucker_embedding",
    "resize_crop_intrinsics", "intrinsics_from_fov", "look_at_rotation", "slerp_rotation", "interpolate_pose",
    "PRESETS", "make_preset_rig", "preset_targets", "rig_from_json", "cvd_intrinsics",
    "epipolar_attention_bias",
    "KEYFRAMES_FORMAT", "parse_keyframes", "rig_from_keyframes", "rig_from_custom_json", "keyframes_from_rig",
    "keyframes_from_settings",
]
