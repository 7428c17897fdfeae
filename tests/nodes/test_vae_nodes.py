"""CV-VAE node functions called directly (no server): shapes, scaling conventions, clear errors."""

import pytest
import torch

from cvd_core.cvvae import load_cvvae, write_tiny_cvvae
from nodes._comfy import NodeInputError
from nodes._schema import run_checked
from nodes.vae import DECODE, ENCODE, TO_IMAGE_LATENTS, TO_LATENT_FRAMES

AUTO = dict(tiling="auto", tile_size=0, tile_overlap=0.25, temporal_chunk=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_tiny_cvvae(tmp_path_factory.mktemp("cvvae") / "vae3d_v1-1", variant="z4", seed=0)
    return load_cvvae(folder, dtype="fp32", device="cpu")


def _frames(views=2, frames=5, size=32):
    torch.manual_seed(0)
    return torch.rand(views * frames, size, size, 3)


def test_encode_gives_scaled_5d_latent_and_decode_restores_frames(tiny):
    latent, = ENCODE.run(cvvae=tiny, images=_frames(), views=2, pad_frames=False, **AUTO).values
    assert latent["samples"].shape == (2, 4, 2, 4, 4) and latent["views"] == 2
    assert latent["cvd_latent_scale"] == pytest.approx(0.18215)
    images, = DECODE.run(cvvae=tiny, latent=latent, **AUTO).values
    assert images.shape == (10, 32, 32, 3) and images.min() >= 0 and images.max() <= 1


def test_scaling_matches_the_unscaled_core_latent(tiny):
    from cvd_core.cvvae import encode_video
    frames = _frames(views=1)
    latent, = ENCODE.run(cvvae=tiny, images=frames, views=1, pad_frames=False, **AUTO).values
    video = frames.reshape(1, 5, 32, 32, 3).permute(0, 4, 1, 2, 3) * 2 - 1
    raw = encode_video(tiny, video).mode()
    torch.testing.assert_close(latent["samples"], raw * 0.18215, atol=1e-5, rtol=1e-5)


def test_image_latent_conversion_round_trips_and_unscales(tiny):
    latent, = ENCODE.run(cvvae=tiny, images=_frames(), views=2, pad_frames=False, **AUTO).values
    image_latents, = TO_IMAGE_LATENTS.run(latent=latent).values
    assert image_latents["samples"].shape == (4, 4, 4, 4)  # views x latent frames, view-major
    torch.testing.assert_close(image_latents["samples"][1], latent["samples"][0, :, 1] / 0.18215)
    back, = TO_LATENT_FRAMES.run(latent=image_latents, views=2, scale_factor=1.0, shift_factor=0.0).values
    torch.testing.assert_close(back["samples"], latent["samples"])
    assert back["cvd_frames"] == 5


def test_comfyui_image_latents_get_the_requested_scale():
    raw = {"samples": torch.randn(6, 4, 8, 8)}
    video, = TO_LATENT_FRAMES.run(latent=raw, views=2, scale_factor=0.18215, shift_factor=0.0).values
    assert video["samples"].shape == (2, 4, 3, 8, 8)
    torch.testing.assert_close(video["samples"][1, :, 2], raw["samples"][5] * 0.18215)


def test_pad_frames_trims_back_to_the_original_count(tiny):
    latent, = ENCODE.run(cvvae=tiny, images=_frames(views=1, frames=7), views=1, pad_frames=True, **AUTO).values
    images, = DECODE.run(cvvae=tiny, latent=latent, **AUTO).values
    assert images.shape[0] == 7


@pytest.mark.parametrize("kwargs,message", [
    (dict(views=3), "split evenly into views=3"),
    (dict(views=1, images=torch.rand(6, 32, 32, 3)), "frames must be 1+4k"),
    (dict(views=1, images=torch.rand(5, 36, 32, 3)), "multiple"),
    (dict(views=1, tiling="manual", tile_size=20), "tile_size must be a multiple of 8"),
])
def test_encode_errors_name_the_rule(tiny, kwargs, message):
    args = dict(cvvae=tiny, images=_frames(views=1), pad_frames=False, **AUTO)
    args.update(kwargs)
    with pytest.raises(NodeInputError, match=message.replace("+", r"\+")):
        run_checked(ENCODE, args)


def test_decode_refuses_image_latents_and_wrong_channels(tiny):
    with pytest.raises(NodeInputError, match="4-D image latent"):
        DECODE.run(cvvae=tiny, latent={"samples": torch.randn(3, 4, 4, 4)}, **AUTO)
    with pytest.raises(NodeInputError, match="expects 4"):
        DECODE.run(cvvae=tiny, latent={"samples": torch.randn(1, 16, 2, 4, 4)}, **AUTO)


def test_non_finite_frames_and_latents_are_refused(tiny):
    frames = _frames()
    frames[3, 1, 1, 2] = float("nan")
    with pytest.raises(NodeInputError, match=r"^CVD CV-VAE Encode \(video\): images must be finite, got nan at frame 3$"):
        run_checked(ENCODE, dict(cvvae=tiny, images=frames, views=2, pad_frames=False, **AUTO))
    latent, = ENCODE.run(cvvae=tiny, images=_frames(), views=2, pad_frames=False, **AUTO).values
    latent["samples"][1, 0, 1] = float("inf")
    with pytest.raises(NodeInputError, match=r"CVD CV-VAE Decode \(video\): latent must be finite, got inf at view 1, "
                                             r"channel 0, frame 1; nothing is decoded"):
        run_checked(DECODE, dict(cvvae=tiny, latent=latent, **AUTO))
    with pytest.raises(NodeInputError, match="latent must be finite, got inf"):
        run_checked(TO_IMAGE_LATENTS, dict(latent=latent))
