"""Every node that takes a frame size, at sizes whose latent sides are not divisible by 8 (issue 24).

Called directly (no server) with tiny weights; see docs/frame_sizes.md for the sizes and results.
The sampler paths: plain with CFG, regional prompts, the RepVideo feature cache (windows) and
``devices = "cpu,cpu"``. Then CV-VAE encode/decode, Project Layout, the previews and the exports.
"""

import pytest
import torch

from cvd_core.camera import make_preset_rig
from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from cvd_core.cvd.network import module_with_feature_cache
from cvd_core.cvvae import load_cvvae, write_tiny_cvvae
from cvd_core.feature_cache import FeatureCacheConfig
from nodes import camera as camera_nodes
from nodes import export, output
from nodes._schema import run_checked
from nodes.sampling import SAMPLER
from nodes.scene import PREVIEW, PROJECT, SCENE_PLAN
from nodes.vae import DECODE, ENCODE
from tests.nodes.test_output import comfy_dirs  # noqa: F401 (a fixture)

TEXT, FRAMES, VIEWS = 32, 2, 2
ODD = (72, 88)  # latent 9 x 11: both sides odd at the first halving (the cheapest odd case)
WIDE = (328, 200)  # latent 41 x 25: odd at every level


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_tiny_cvd_files(tmp_path_factory.mktemp("cvd_sizes"), seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_files):
    return load_cvd_model(**tiny_files, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def tiny_model64(tiny_files):
    """float64: two executors' row batches round alike to ~1e-16, so any difference is a real one."""
    return load_cvd_model(**tiny_files, dtype=torch.float64, device="cpu")


def _rig(size, views=VIEWS, frames=FRAMES):
    return make_preset_rig("circle", views, frames, size[0], size[1])


def _cond(seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, TEXT, generator=g), {"pooled_output": None}]]


def _sample(model, size, **overrides):
    kwargs = dict(cvd_model=model, cameras=_rig(size), positive=_cond(1), negative=_cond(2), seed=7, steps=1,
                  cfg=8.5, scheduler="ddim", strategy="random", recurrence=1, max_batch=0, denoise=1.0)
    kwargs.update(overrides)
    latent, = run_checked(SAMPLER, kwargs).values
    return latent["samples"]


def _layout(size, mask_size=None):
    from cvd_core.scene import decompose_prompt, project_layout
    plan = decompose_prompt("a red car drives past a tree in a park", frames=FRAMES)
    width, height = mask_size or size
    return project_layout(plan, _rig(size), height, width)


# ------------------------------------------------------------------------------ the sampler's paths

@pytest.mark.parametrize("size", [ODD, WIDE], ids=lambda s: f"{s[0]}x{s[1]}")
def test_sampler_with_cfg_at_odd_latent_sides(tiny_model, size):
    samples = _sample(tiny_model, size)
    assert samples.shape == (VIEWS, 4, FRAMES, size[1] // 8, size[0] // 8)
    assert torch.isfinite(samples).all()


def test_regional_prompts_at_odd_latent_sides_change_only_their_masks(tiny_model):
    layout = _layout(ODD)
    common = dict(max_batch=2)  # same call sizes for the plain rows -> bitwise comparable
    plain = _sample(tiny_model, ODD, **common)
    regional = _sample(tiny_model, ODD, layout=layout, entity_prompts=_cond(11) + _cond(12), **common)
    width, height = ODD
    union = sum(layout.masks[e] for e in layout.entity_ids).view(VIEWS * FRAMES, 1, height, width)
    outside = torch.nn.functional.avg_pool2d(union, 8) == 0  # no pixel of the latent cell covered
    outside = outside.view(VIEWS, FRAMES, 1, height // 8, width // 8).permute(0, 2, 1, 3, 4).expand_as(plain)
    assert 0 < int(outside[:, 0].sum()) < outside[:, 0].numel()
    assert (regional - plain)[outside].abs().max() <= 1e-6  # one step: x_0 is element-wise in eps
    assert (regional - plain)[~outside].abs().mean() > 1e-3
    latent_masks = _layout(ODD, mask_size=(width // 8, height // 8))  # the latent-size layout is accepted too
    small = _sample(tiny_model, ODD, layout=latent_masks, entity_prompts=_cond(11) + _cond(12), **common)
    assert torch.isfinite(small).all()


def test_feature_cache_windows_at_odd_latent_sides(tiny_model):
    plain = _sample(tiny_model, WIDE, cfg=1.0)
    for target in ("layers", "motion_modules"):
        cached = module_with_feature_cache(tiny_model, FeatureCacheConfig(window=6, strength=0.5), target=target)
        samples = _sample(cached, WIDE, cfg=1.0)
        assert torch.isfinite(samples).all() and (samples - plain).abs().max() > 1e-4, target


def test_two_cpu_devices_at_odd_latent_sides_equal_one(tiny_model64):
    one = _sample(tiny_model64, ODD, max_batch=2)
    two = _sample(tiny_model64, ODD, max_batch=2, devices="cpu,cpu")
    torch.testing.assert_close(two, one, rtol=0, atol=1e-6 * float(one.abs().max()))


def test_step_previews_at_odd_latent_sides(tiny_model, monkeypatch):
    from tests.nodes.test_sampling_nodes import _PreviewProgress, _StubPreviewer, _stub_comfy_previews
    import nodes.sampling as sampling

    previewer, progress = _StubPreviewer(), _PreviewProgress()
    _stub_comfy_previews(monkeypatch, previewer)
    monkeypatch.setattr(sampling, "progress_bar", lambda unique_id=None: progress)
    samples = _sample(tiny_model, WIDE, steps=2, cfg=1.0)
    h, w = samples.shape[-2:]
    assert len(progress.previews) == 2
    assert previewer.seen[-1].shape == (1, 4, h, FRAMES * w)  # 2 frames: a 2 x 1 grid of 41 x 25 latents


# ------------------------------------------------------------------------------ CV-VAE

@pytest.fixture(scope="module")
def cvvae(tmp_path_factory):
    folder = write_tiny_cvvae(tmp_path_factory.mktemp("cvvae_sizes") / "vae3d_v1-1", variant="z4", seed=0)
    return load_cvvae(folder, dtype="fp32", device="cpu")


@pytest.mark.parametrize("tiling", [dict(tiling="none", tile_size=0), dict(tiling="manual", tile_size=128)],
                         ids=["whole", "tiles_of_128"])
def test_cvvae_encode_decode_at_328x200(cvvae, tiling):
    width, height = WIDE
    images = torch.rand(VIEWS * 5, height, width, 3, generator=torch.Generator().manual_seed(0))
    settings = dict(tiling, tile_overlap=0.25, temporal_chunk=0)
    latent, = run_checked(ENCODE, dict(cvvae=cvvae, images=images, views=VIEWS, pad_frames=False, **settings)).values
    assert latent["samples"].shape == (VIEWS, 4, 2, height // 8, width // 8)
    decoded, = run_checked(DECODE, dict(cvvae=cvvae, latent=latent, **settings)).values
    assert decoded.shape == (VIEWS * 5, height, width, 3) and torch.isfinite(decoded).all()


# ------------------------------------------------------------------------------ layout, previews, exports

def test_project_layout_and_its_preview_at_328x200():
    width, height = WIDE
    rig = _rig(WIDE, frames=8)
    scene = run_checked(SCENE_PLAN, dict(prompt="a red car drives past a tree", frames=8, image_width=512,
                                         image_height=512, path_points=4)).values[0]
    for mask_w, mask_h in ((0, 0), (width // 8, height // 8)):
        layout, union, *_ = PROJECT.run(scene=scene, cameras=rig, width=mask_w, height=mask_h, occlusion=True,
                                        entity=0).values
        want = (width, height) if mask_w == 0 else (mask_w, mask_h)
        assert (layout.width, layout.height) == want and union.shape[-2:] == (want[1], want[0])
    layout, *_ = PROJECT.run(scene=scene, cameras=rig, width=0, height=0, occlusion=True, entity=0).values
    images = torch.rand(VIEWS * 8, height, width, 3)
    preview, = PREVIEW.run(layout=layout, mode="one_per_view", alpha=0.35, images=images).values
    assert preview.shape[0] == VIEWS and torch.isfinite(preview).all()


def test_camera_and_epipolar_previews_at_328x200():
    rig = _rig(WIDE)
    image, = camera_nodes.CAMERA_PREVIEW.run(cameras=rig, width=512, height=256).values
    assert image.shape == (1, 256, 512, 3)
    width, height = WIDE
    frames = torch.rand(VIEWS * FRAMES, height, width, 3)
    pair, = camera_nodes.EPIPOLAR_PREVIEW.run(cameras=rig, view_a=0, view_b=1, frame=1, grid=4, images=frames).values
    assert pair.shape == (1, height, 2 * width, 3)


@pytest.mark.parametrize("fmt", ["mp4", "webm", "png"])
def test_save_and_export_at_328x200(comfy_dirs, fmt):  # noqa: F811
    width, height = WIDE
    rig = _rig(WIDE, frames=3)
    images = torch.rand(VIEWS * 3, height, width, 3, generator=torch.Generator().manual_seed(0))
    saved = run_checked(output.SAVE_MULTIVIEW_VIDEO, dict(images=images, views=0, cameras=rig, filename_prefix="cvd/s",
                                                          fps=8.0, format=fmt, quality=80, save_grid=True))
    (summary,) = saved.ui["cvd_multiview"]
    assert all((v["width"], v["height"]) == (width, height) for v in summary["views"])
    if fmt == "mp4":
        result = run_checked(export.EXPORT_FOR_RECONSTRUCTION,
                             dict(images=images, cameras=rig, filename_prefix="cvd/recon", scope="whole_video",
                                  formats="nerfstudio+colmap", image_format="png", skip_duplicate_cameras=True))
        assert result.ui


def test_context_windows_at_odd_latent_sides(tiny_model):
    """Issue 22's windows at a size whose latent sides are not multiples of 8: every window runs, and one window
    that covers every frame is the path without windows."""
    from nodes.context import SCHEMAS as CONTEXT_SCHEMAS

    options, = run_checked(CONTEXT_SCHEMAS[0], dict(context_length=16, context_overlap=4, schedule="standard_static",
                                                    fuse="pyramid", freenoise=False, context_stride=1,
                                                    closed_loop=False)).values
    long = _sample(tiny_model, ODD, cameras=_rig(ODD, frames=20), context=options)
    assert long.shape[2] == 20 and torch.isfinite(long).all()
    whole, = run_checked(CONTEXT_SCHEMAS[0], dict(context_length=FRAMES, context_overlap=0, schedule="standard_static",
                                                  fuse="pyramid", freenoise=False, context_stride=1,
                                                  closed_loop=False)).values
    assert torch.equal(_sample(tiny_model, ODD, context=whole), _sample(tiny_model, ODD))
