"""Files the integration tests put into the test ComfyUI before it starts.

Tiny random weights in the official layouts (written by code, never shipped), and example inputs
(RealEstate10K pose files) in the input folder.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.sample_inputs import write_sample_pose_files


def install_test_models(comfy_root: Path) -> None:
    input_dir = Path(comfy_root) / "input"
    write_sample_pose_files(input_dir / "cvd_poses")
