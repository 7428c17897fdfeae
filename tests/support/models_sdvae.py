"""A randomly initialised Stable Diffusion image VAE in ``models/vae/`` (diffusers key layout, which
ComfyUI converts on load), under the usual SD1.5 VAE file name. It lets the tests run ComfyUI's own
``VAEEncode``/``VAEDecode`` on CV-VAE latent frames: the SD-compatibility CV-VAE is about."""

from pathlib import Path

SD_VAE_FILE = "vae-ft-mse-840000-ema-pruned.safetensors"
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


def install(comfy_root: Path) -> None:
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    target = Path(comfy_root) / "models" / "vae" / SD_VAE_FILE
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = AutoencoderKL(**SD_VAE_CONFIG)
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target))
