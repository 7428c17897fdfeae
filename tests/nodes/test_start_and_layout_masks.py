"""CVD Start From Image, CVD Video As View and CVD Mask From Layout, called directly and fed to CVD Multi-View
Sampler with the tiny CVD model (no server).

The VAE here is a stand-in with core's VAE interface (``encode(IMAGE [N, H, W, 3]) -> [N, 4, H/8, W/8]``,
unscaled): an 8x8 mean per channel plus a fixed mix. The real SD1.5 VAE runs in the shipped workflows on both
servers (tests/integration/test_workflows_run.py), which check the same properties on the saved latents.
"""

from __future__ import annotations

import pytest
import torch

from cvd_core.camera import make_preset_rig, resize_crop_intrinsics
from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from nodes._comfy import NodeInputError
from nodes._latent import resize_noise_mask
from nodes._schema import run_checked
from nodes.layout_mask import MASK_FROM_LAYOUT
from nodes.sampling import SAMPLER
from nodes.start_image import START_FROM_IMAGE, VIDEO_AS_VIEW, cover_crop, time_mask

TEXT, SIZE, FRAMES = 32, 64, 3
H = SIZE // 8


class PoolVAE:
    """Core's VAE interface over a fixed linear map (deterministic, so equalities are exact)."""

    def encode(self, pixels):
        pooled = torch.nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2), 8)
        mix = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.3, 0.3, 0.3]])
        return torch.einsum("kc,nchw->nkhw", mix, pooled * 2 - 1) / 0.18215


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    files = write_tiny_cvd_files(tmp_path_factory.mktemp("cvd"), seed=0)
    return load_cvd_model(**files, dtype="fp32", device="cpu")


def _cond(seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, TEXT, generator=g), {"pooled_output": None}]]


def _rig(views=3, preset="circle"):
    return make_preset_rig(preset, views, FRAMES, SIZE, SIZE)


def _images(n, size=(SIZE, SIZE), seed=0):
    return torch.rand(n, size[1], size[0], 3, generator=torch.Generator().manual_seed(seed))


def _sample(model, latent, views=3, **overrides):
    kwargs = dict(cvd_model=model, cameras=_rig(views), positive=_cond(1), negative=_cond(2), seed=5, steps=2,
                  cfg=1.0, scheduler="ddim", strategy="random", recurrence=1, max_batch=0, denoise=1.0, latent=latent)
    kwargs.update(overrides)
    return run_checked(SAMPLER, kwargs).values[0]


def _start(image, views=3, keep_frames=1, soft_edge=0):
    return run_checked(START_FROM_IMAGE, dict(image=image, vae=PoolVAE(), cameras=_rig(views),
                                              keep_frames=keep_frames, soft_edge=soft_edge)).values[0]


# ------------------------------------------------------------------------------ start from an image

def test_start_latent_holds_the_image_at_frame_0_of_every_view():
    image = _images(1)
    latent = _start(image)
    encoded = PoolVAE().encode(image) * 0.18215
    samples = latent["samples"]
    assert samples.shape == (3, 4, FRAMES, H, H) and latent["cvd_temporal_compression"] == 1
    for view in range(3):
        assert torch.equal(samples[view, :, 0], encoded[0])
    assert not samples[:, :, 1:].any()
    mask = resize_noise_mask(latent["noise_mask"], samples.shape)
    assert not mask[:, :, 0].any() and bool(mask[:, :, 1:].eq(1).all())


def test_one_image_per_view_and_a_soft_edge_in_time():
    images = _images(3)
    latent = _start(images, keep_frames=1, soft_edge=1)
    encoded = PoolVAE().encode(images) * 0.18215
    assert torch.equal(latent["samples"][:, :, 0], encoded) and torch.equal(latent["samples"][:, :, 1], encoded)
    assert not latent["samples"][:, :, 2].any()  # a fully regenerated frame starts empty
    assert time_mask(5, 2, 2).tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    assert torch.equal(latent["noise_mask"][0, 0, :, 0, 0], torch.tensor([0.0, 0.5, 1.0]))


def test_images_are_resized_to_cover_and_center_cropped_as_the_intrinsics_are():
    """A 128x64 image on a 64x64 rig: scale 1 (height fits), the middle 64 columns remain, which is where
    resize_crop_intrinsics moves the principal point (cx 64 -> 32)."""
    wide = torch.zeros(1, 64, 128, 3)
    wide[:, :, 32:96] = 1.0
    assert torch.equal(cover_crop(wide, 64, 64), torch.ones(1, 64, 64, 3))
    K = torch.tensor([[100.0, 0, 64], [0, 100.0, 32], [0, 0, 1]])
    assert resize_crop_intrinsics(K, (128, 64), (64, 64))[0, 2] == 32
    small = cover_crop(torch.rand(1, 40, 32, 3), 64, 64)  # upscaled x2 to 64x80, cropped to 64x64
    assert small.shape == (1, 64, 64, 3)


def test_start_from_image_refuses_wrong_batches_and_keep_frames():
    with pytest.raises(NodeInputError, match=r"image must hold 1 image \(for every view\) or exactly 3"):
        _start(_images(2))
    with pytest.raises(NodeInputError, match="keep_frames must be at most the cameras' 3 frames, got 4"):
        _start(_images(1), keep_frames=4)

    class WrongVAE:
        def encode(self, pixels):
            return torch.zeros(pixels.shape[0], 16, 8, 8)

    with pytest.raises(NodeInputError, match=r"vae must be the SD1.5 image VAE.*\[1, 16, 8, 8\]"):
        run_checked(START_FROM_IMAGE, dict(image=_images(1), vae=WrongVAE(), cameras=_rig(), keep_frames=1,
                                           soft_edge=0))


@pytest.mark.parametrize("sampler", [None, "regional"])
def test_sampling_keeps_frame_0_exactly_and_moves_the_other_frames(tiny_model, sampler):
    latent = _start(_images(1))
    extra = {}
    if sampler == "regional":
        extra = dict(layout=_layout(), entity_prompts=_cond(11) + _cond(12))
    out = _sample(tiny_model, latent, **extra)["samples"]
    for view in range(3):
        assert torch.equal(out[view, :, 0], latent["samples"][view, :, 0])
    assert (out[:, :, 1:] - latent["samples"][:, :, 1:]).abs().max() > 1e-2
    assert (out[0, :, 1:] - out[1, :, 1:]).abs().max() > 1e-4  # each view moves its own way


# ------------------------------------------------------------------------------ a video as one view

def test_a_video_is_view_0_fully_known_and_the_other_views_are_generated(tiny_model):
    from nodes.guider import EMPTY_LATENT

    empty = EMPTY_LATENT.run(cameras=_rig()).values[0]
    video = _images(FRAMES, seed=4)
    latent = run_checked(VIDEO_AS_VIEW, dict(latent=empty, images=video, vae=PoolVAE(), view=0)).values[0]
    encoded = (PoolVAE().encode(video) * 0.18215).permute(1, 0, 2, 3)
    assert torch.equal(latent["samples"][0], encoded) and not latent["samples"][1:].any()
    assert not latent["noise_mask"][0].any() and bool(latent["noise_mask"][1:].eq(1).all())
    out = _sample(tiny_model, latent)["samples"]
    assert torch.equal(out[0], encoded)
    assert (out[1:] - latent["samples"][1:]).abs().min() > 0
    with pytest.raises(NodeInputError, match="images must hold exactly the latent's 3 frames"):
        run_checked(VIDEO_AS_VIEW, dict(latent=empty, images=_images(2), vae=PoolVAE(), view=0))
    with pytest.raises(NodeInputError, match="view must be below the latent's 3 views, got 3"):
        run_checked(VIDEO_AS_VIEW, dict(latent=empty, images=video, vae=PoolVAE(), view=3))


# ------------------------------------------------------------------------------ mask from a layout

def _layout(views=3, size=SIZE):
    from cvd_core.scene import decompose_prompt, project_layout

    plan = decompose_prompt("a red car drives past a tree in a park", frames=FRAMES)
    return project_layout(plan, _rig(views), size, size)


def _masked(latent, layout, **options):
    values = dict(latent=latent, layout=layout, entity="all", grow_px=0, feather_px=0, invert=False)
    values.update(options)
    return run_checked(MASK_FROM_LAYOUT, values).values[0]


def test_the_entity_mask_is_the_layouts_mask_with_grow_feather_and_invert():
    layout = _layout()
    latent = {"samples": torch.zeros(3, 4, FRAMES, H, H), "other": 1}
    car = _masked(latent, layout, entity="car")["noise_mask"]
    assert torch.equal(car, layout.masks["car"].float()) and car.any()
    assert torch.equal(_masked(latent, layout, entity="0")["noise_mask"], car)
    both = torch.maximum(layout.masks["car"], layout.masks["tree"]).float()
    assert torch.equal(_masked(latent, layout)["noise_mask"], both)
    grown = _masked(latent, layout, entity="car", grow_px=3)["noise_mask"]
    assert grown.sum() > car.sum() and bool((grown >= car).all())
    soft = _masked(latent, layout, entity="car", feather_px=4)["noise_mask"]
    assert ((soft > 0) & (soft < 1)).any() and 0 <= float(soft.min()) <= float(soft.max()) <= 1
    assert torch.equal(_masked(latent, layout, entity="car", invert=True)["noise_mask"], 1 - car)
    assert _masked(latent, layout)["other"] == 1  # a copy of the latent


def test_mask_from_layout_refuses_unknown_entities_and_other_rigs():
    latent = {"samples": torch.zeros(3, 4, FRAMES, H, H)}
    with pytest.raises(NodeInputError, match=r"entity must be 'all'.*\(0=car, 1=tree\), got 'boat'"):
        _masked(latent, _layout(), entity="boat")
    with pytest.raises(NodeInputError, match=r"must match the latent \[2, 4, 3, 8, 8\]: 2 views"):
        _masked({"samples": torch.zeros(2, 4, FRAMES, H, H)}, _layout())


def test_editing_an_entity_keeps_everything_outside_it(tiny_model):
    """An earlier run's latent + the car's mask + a new car prompt at denoise 0.7: identical outside the car (where
    its latent-size mask is 0), different inside."""
    layout = _layout()
    earlier = _sample(tiny_model, None, steps=2, cfg=1.0)
    edit = _masked(earlier, layout, entity="car")
    out = _sample(tiny_model, edit, steps=3, denoise=0.7, positive=_cond(9))["samples"]
    mask = resize_noise_mask(edit["noise_mask"], out.shape).expand_as(out)
    assert (mask == 0).any() and (mask == 1).any()
    assert torch.equal(out[mask == 0], earlier["samples"][mask == 0])
    assert (out[mask == 1] - earlier["samples"][mask == 1]).abs().min() > 0
