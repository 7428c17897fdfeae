"""Tiny CV-VAE weights (official diffusers-folder layout) in ``models/cvvae/``, under the official
folder names so that the shipped workflows also run unchanged for users with the real weights."""

from pathlib import Path

TINY_CVVAE = "vae3d_v1-1"      # z=4, SD1.x/2.x latents (official subfolder name)
TINY_CVVAE_SD3 = "vae3d_sd3"   # z=16, SD3 latents


def install(comfy_root: Path) -> None:
    from cvd_core.cvvae import write_tiny_cvvae

    folder = Path(comfy_root) / "models" / "cvvae"
    write_tiny_cvvae(folder / TINY_CVVAE, variant="z4", seed=0)
    write_tiny_cvvae(folder / TINY_CVVAE_SD3, variant="z16", seed=0)
