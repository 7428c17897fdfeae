"""Tiny CVD weights in the official key layouts, under the official file names in the folders a
user has (checkpoints, animatediff_models, cvd), so the shipped workflows run unchanged on real files."""

import shutil
import tempfile
from pathlib import Path

FILES = {
    "unet": ("checkpoints", "v1-5-pruned-emaonly.safetensors"),
    "motion_module": ("animatediff_models", "v3_sd15_mm.ckpt"),
    "cameractrl": ("cvd", "CameraCtrl.ckpt"),
    "cvd": ("cvd", "CVD.ckpt"),
}


def install(comfy_root: Path) -> None:
    from cvd_core.cvd import write_tiny_cvd_files

    models = Path(comfy_root) / "models"
    with tempfile.TemporaryDirectory() as tmp:
        written = write_tiny_cvd_files(tmp, seed=0, single_file=True, cross_attention_dim=768)
        for role, (folder, name) in FILES.items():
            target = models / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(written[role], target)
