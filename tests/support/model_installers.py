"""Files the integration tests (and the demo) put into the test ComfyUI before it starts.

Tiny random weights in the official layouts (written by code, never shipped) and example inputs.
Each capability adds its own ``tests/support/models_<area>.py`` with ``install(comfy_root)``;
they are discovered here, so capabilities never edit each other's installers.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from tests.support.sample_inputs import EXAMPLES, write_sample_pose_files

SUPPORT = Path(__file__).resolve().parent


def install_test_models(comfy_root: Path) -> None:
    root = Path(comfy_root)
    write_sample_pose_files(root / "input" / "cvd_poses")
    for frames in sorted((EXAMPLES / "frames").glob("*.png")):
        shutil.copy(frames, root / "input" / frames.name)
    for module_path in sorted(SUPPORT.glob("models_*.py")):
        module = importlib.import_module(f"tests.support.{module_path.stem}")
        module.install(root)
