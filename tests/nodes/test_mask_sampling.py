"""Noise masks on the pack's own loop, through CVD Multi-View Sampler (no server; the core-sampler path runs in a
real ComfyUI in tests/integration/test_core_sampling.py).

Bit-identity claims are exact (torch.equal): where the mask is 0 the result is ``0 * x + 1 * start`` and where it
is 1 every blend is ``1 * x + 0 * known``, both exact in floating point.
"""

from __future__ import annotations

import pytest
import torch

from cvd_core.camera import make_preset_rig
from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from nodes import _latent
from nodes._comfy import NodeInputError
from nodes._schema import run_checked, validation_answer
from nodes.sampling import SAMPLER

TEXT, SIZE, FRAMES, VIEWS = 32, 64, 2, 2
H = SIZE // 8


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    files = write_tiny_cvd_files(tmp_path_factory.mktemp("cvd"), seed=0)
    return load_cvd_model(**files, dtype="fp32", device="cpu")


def _cond(seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, TEXT, generator=g), {"pooled_output": None}]]


def _layout(views=VIEWS):
    """One entity on the left half of every view and frame, on whole 8x8 cells."""

    class Layout:
        entity_ids = ["thing"]
        frames, width, height = FRAMES, SIZE, SIZE

        def __init__(self):
            self.views = views
            mask = torch.zeros(views * FRAMES, SIZE, SIZE)
            mask[:, :, : SIZE // 2] = 1.0
            self.masks = {"thing": mask}

    return Layout()


def _start(views=VIEWS, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(views, 4, FRAMES, H, H, generator=g) * 0.8, "views": views,
            "cvd_frames": FRAMES, "cvd_temporal_compression": 1, "cvd_latent_scale": 0.18215,
            "cvd_latent_shift": 0.0, "other_pack_key": "kept"}


def _sample(model, latent, variant="plain", views=VIEWS, **overrides):
    kwargs = dict(cvd_model=model, cameras=make_preset_rig("circle", views, FRAMES, SIZE, SIZE),
                  positive=_cond(1), negative=_cond(2), seed=7, steps=3, cfg=8.5, scheduler="ddim",
                  strategy="random", recurrence=1, max_batch=0, denoise=1.0, latent=latent)
    if variant == "regional":
        kwargs.update(layout=_layout(views), entity_prompts=_cond(11))
    if variant == "cpu_cpu":
        kwargs.update(devices="cpu,cpu")
    kwargs.update(overrides)
    return run_checked(SAMPLER, kwargs).values[0]


def _masked(latent, mask):
    return dict(latent, noise_mask=mask)


def _right_half(views=VIEWS):
    """[V*F, H, W]: 1 (regenerate) on the right half, on whole 8x8 cells."""
    mask = torch.zeros(views * FRAMES, SIZE, SIZE)
    mask[:, :, SIZE // 2:] = 1.0
    return mask


@pytest.mark.parametrize("variant", ["plain", "regional", "cpu_cpu"])
def test_mask_all_zero_keeps_the_start_and_all_one_is_unmasked_sampling(tiny_model, variant):
    start = _start()
    kept = _sample(tiny_model, _masked(start, torch.zeros(VIEWS * FRAMES, SIZE, SIZE)), variant)
    assert torch.equal(kept["samples"], start["samples"])
    unmasked = _sample(tiny_model, start, variant)["samples"]
    full = _sample(tiny_model, _masked(start, torch.ones(VIEWS * FRAMES, SIZE, SIZE)), variant)["samples"]
    assert torch.equal(full, unmasked)
    assert (unmasked - start["samples"]).abs().max() > 1e-2  # sampling does change the latent
    assert kept["other_pack_key"] == "kept" and "noise_mask" in kept  # a copy of the input, as core's latent.copy()


@pytest.mark.parametrize("variant", ["plain", "regional"])
def test_a_region_mask_keeps_outside_and_regenerates_inside(tiny_model, variant):
    start = _start()
    out = _sample(tiny_model, _masked(start, _right_half()), variant)["samples"]
    assert torch.equal(out[..., : H // 2], start["samples"][..., : H // 2])
    assert (out[..., H // 2:] - start["samples"][..., H // 2:]).abs().min() > 0  # every regenerated value moved
    unmasked = _sample(tiny_model, start, variant)["samples"]
    # the kept half is seen by the model: the regenerated half is not simply the unmasked run's
    assert (out[..., H // 2:] - unmasked[..., H // 2:]).abs().max() > 1e-4


def test_known_region_works_with_recurrence_and_mcm(tiny_model):
    start = _start()
    for overrides in (dict(recurrence=2), dict(scheduler="mcm", cfg=1.0, steps=2)):
        out = _sample(tiny_model, _masked(start, _right_half()), **overrides)["samples"]
        assert torch.equal(out[..., : H // 2], start["samples"][..., : H // 2]), overrides
        assert (out[..., H // 2:] - start["samples"][..., H // 2:]).abs().max() > 1e-2, overrides


def test_every_accepted_mask_form_gives_the_same_result(tiny_model):
    start = _start()
    image = _right_half()  # [V*F, H, W], view-major
    small = image[:, ::8, ::8].clone()  # [V*F, h, w]
    five = small.view(VIEWS, FRAMES, 1, H, H).permute(0, 2, 1, 3, 4)  # [V, 1, F, h, w]
    forms = {"image [V*F,H,W]": image, "latent [V*F,1,h,w]": small[:, None], "latent [V,1,F,h,w]": five,
             "image [V,1,F,H,W]": image.view(VIEWS, FRAMES, 1, SIZE, SIZE).permute(0, 2, 1, 3, 4),
             "latent [V*F,h,w]": small, "one for all [1,H,W]": image[:1]}
    reference = _sample(tiny_model, _masked(start, image))["samples"]
    for name, mask in forms.items():
        assert torch.equal(_latent.resize_noise_mask(mask, start["samples"].shape), five), name
        assert torch.equal(_sample(tiny_model, _masked(start, mask))["samples"], reference), name


def test_views_are_not_mixed_when_resizing(tiny_model):
    """View 1's mask stays view 1's (core's own 5-D resize would interpolate across the view-major batch)."""
    mask = torch.zeros(VIEWS * FRAMES, SIZE, SIZE)
    mask[FRAMES:] = 1.0  # regenerate view 1 only
    out = _latent.resize_noise_mask(mask, (VIEWS, 4, FRAMES, H, H))
    assert not out[0].any() and bool(out[1].eq(1).all())
    soft = _latent.resize_noise_mask(torch.rand(VIEWS * FRAMES, SIZE, SIZE), (VIEWS, 4, FRAMES, H, H))
    assert soft.shape == (VIEWS, 1, FRAMES, H, H) and 0 <= float(soft.min()) <= float(soft.max()) <= 1


@pytest.mark.parametrize("mask, words", [
    (torch.ones(VIEWS * FRAMES + 1, SIZE, SIZE), "[5, 64, 64]"),
    (torch.ones(VIEWS * FRAMES, 48, 48), "[4, 48, 48]"),
    (torch.ones(VIEWS * FRAMES, 2, H, H), "[4, 2, 8, 8]"),
    (torch.ones(VIEWS + 1, 1, FRAMES, H, H), "[3, 1, 2, 8, 8]"),
    (torch.ones(VIEWS, 1, FRAMES + 1, H, H), "[2, 1, 3, 8, 8]"),
])
def test_wrong_masks_are_refused_with_both_shapes_before_sampling(tiny_model, mask, words, monkeypatch):
    import nodes.sampling as sampling

    def no_run(*args, **kwargs):
        raise AssertionError("the model must not run for a refused mask")

    monkeypatch.setattr(sampling, "multiview_loop", no_run)
    with pytest.raises(NodeInputError, match="noise_mask") as caught:
        _sample(tiny_model, _masked(_start(), mask))
    message = str(caught.value)
    assert words in message and "[2, 4, 2, 8, 8]" in message and "[4, 64, 64]" in message, message
    # the same rule answers the server's validation when the values are known
    answer = validation_answer(SAMPLER, {"latent": _masked(_start(), mask),
                                         "cameras": make_preset_rig("circle", VIEWS, FRAMES, SIZE, SIZE)})
    assert isinstance(answer, str) and words in answer


def test_mask_values_outside_zero_one_are_refused(tiny_model):
    for bad in (torch.full((VIEWS * FRAMES, SIZE, SIZE), 1.5), torch.full((VIEWS * FRAMES, SIZE, SIZE), float("nan"))):
        with pytest.raises(NodeInputError, match=r"noise_mask must hold values in \[0, 1\]"):
            _sample(tiny_model, _masked(_start(), bad))


def test_latent_reshaping_nodes_keep_the_mask_and_other_keys(tiny_model):
    """Through CVD Latent Frames To Image Latents (one mask per image latent, core's image convention) and back,
    the mask and other packs' keys survive and the sampler reads the same mask."""
    from nodes.vae import TO_IMAGE_LATENTS, TO_LATENT_FRAMES

    start = _masked(_start(), _right_half())
    images = TO_IMAGE_LATENTS.run(latent=start).values[0]
    assert images["noise_mask"].shape == (VIEWS * FRAMES, 1, H, H) and images["other_pack_key"] == "kept"
    back = TO_LATENT_FRAMES.run(latent=images, views=VIEWS, scale_factor=0.18215, shift_factor=0.0).values[0]
    assert back["other_pack_key"] == "kept" and "cvd_temporal_compression" not in back
    assert torch.equal(_latent.resize_noise_mask(back["noise_mask"], back["samples"].shape),
                       _latent.resize_noise_mask(start["noise_mask"], start["samples"].shape))
    torch.testing.assert_close(back["samples"], start["samples"])  # scale and unscale: rounding only
