"""Example inputs for the test ComfyUI: the pack's example pose files in ``input/cvd_poses``."""

from __future__ import annotations

import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_POSES = EXAMPLES / "poses"


def write_sample_pose_files(folder: Path) -> list:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(EXAMPLE_POSES.glob("*.txt")):
        shutil.copy(source, folder / source.name)
        written.append(folder / source.name)
    return written
