"""Frame sizes whose latent sides are not divisible by 8 (issue 24, docs/frame_sizes.md).

The UNet's stride-2 convs round odd sides up; CameraCtrl's pose encoder now pools with
``ceil_mode=True`` and the epipolar bias places tokens on the UNet's stride grid. Every size that
tiles (each side a multiple of 64 px) must stay bit-identical to the pre-change algorithm, which is
rebuilt here separately (floor pooling, the official equal-cell token centres) rather than frozen as
numbers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cvd_core.camera import make_preset_rig, pair_fundamentals, plucker_embedding
from cvd_core.camera import epipolar
from cvd_core.camera.epipolar import epipolar_attention_bias, token_pixel_centres
from cvd_core.cvd import load_cvd_model, write_tiny_cvd_files
from cvd_core.cvd.pose_encoder import CameraPoseEncoder, _Downsample

TILING_SIZES = [(64, 64), (128, 64), (64, 192), (256, 256)]  # (width, height), each side % 64 == 0
ODD_SIZES = [(96, 64), (72, 88), (328, 200), (120, 72)]  # latent sides 12x8, 9x11, 41x25, 15x9
FRAMES = 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_cvd_files(tmp_path_factory.mktemp("tiny_cvd_sizes"), seed=0)


@pytest.fixture(scope="module")
def model(files):
    return load_cvd_model(**files, dtype=torch.float32, device="cpu")


# ------------------------------------------------------------------------------ the pre-change algorithm

def _legacy_centres(feat_h, feat_w, image_size, device=None):
    """token_pixel_centres as it was: equal cells of H/feat_h x W/feat_w pixels."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    step_x, step_y = w / feat_w, h / feat_h
    xs = torch.arange(feat_w, device=device, dtype=torch.float32) * step_x + (step_x - 1) / 2
    ys = torch.arange(feat_h, device=device, dtype=torch.float32) * step_y + (step_y - 1) / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(-1, 3)


def _legacy_encoder(encoder: CameraPoseEncoder) -> CameraPoseEncoder:
    """A copy of ``encoder`` with CameraCtrl's floor pooling, ``AvgPool2d(2, 2)``."""
    old = copy.deepcopy(encoder)
    for module in old.modules():
        if isinstance(module, _Downsample) and isinstance(module.op, nn.AvgPool2d):
            module.op = nn.AvgPool2d(2, 2)
    return old


def _camera_inputs(width, height, views=2, seed=0):
    """Latents, Plücker maps, F matrices and partners of a ``views``-view circle rig at width x height."""
    rig = make_preset_rig("circle", views, FRAMES, width, height)
    plucker = plucker_embedding(rig.K, rig.c2w, rig.height, rig.width).permute(0, 2, 1, 3, 4).float()
    partner = torch.tensor([(v + 1) % views for v in range(views)])
    F = torch.stack([pair_fundamentals(rig, v, int(partner[v])).float() for v in range(views)])
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(views, 4, FRAMES, height // 8, width // 8, generator=g)
    text = torch.randn(1, 77, 32, generator=g).expand(views, 77, 32).clone()
    return dict(latents=latents, timestep=torch.tensor(500), text=text, plucker=plucker, F_mats=F, partner=partner)


def _ceil_halvings(n, times=3):
    sizes = [n]
    for _ in range(times):
        sizes.append(-(-sizes[-1] // 2))
    return sizes


# ------------------------------------------------------------------------------ bit-identical where it tiles

@pytest.mark.parametrize("width,height", TILING_SIZES)
def test_tiling_sizes_are_bit_identical_to_the_pre_change_model(model, width, height, monkeypatch):
    inputs = _camera_inputs(width, height)
    now = model.predict_noise(**inputs)
    with torch.no_grad():
        pose_now = model.pose_encoder(inputs["plucker"])
    legacy = copy.copy(model)
    object.__setattr__(legacy, "_modules", dict(model._modules, pose_encoder=_legacy_encoder(model.pose_encoder)))
    monkeypatch.setattr(epipolar, "token_pixel_centres", _legacy_centres)
    before = legacy.predict_noise(**inputs)
    with torch.no_grad():
        pose_before = legacy.pose_encoder(inputs["plucker"])
    assert all(torch.equal(a, b) for a, b in zip(pose_now, pose_before))
    assert torch.equal(now, before)


@pytest.mark.parametrize("width,height", TILING_SIZES + [(512, 320), (2048, 64)])
def test_token_centres_where_the_cells_tile_are_the_official_formula(width, height):
    for feat_h, feat_w in zip(_ceil_halvings(height // 8), _ceil_halvings(width // 8)):
        assert torch.equal(token_pixel_centres(feat_h, feat_w, (height, width)),
                           _legacy_centres(feat_h, feat_w, (height, width)))


# ------------------------------------------------------------------------------ odd latent sides

@pytest.mark.parametrize("width,height", ODD_SIZES)
def test_odd_latent_sides_run_and_pose_features_match_every_unet_level(model, width, height):
    inputs = _camera_inputs(width, height)
    seen = []

    def record(module, args):
        x, pose = args
        seen.append((tuple(x.shape[-2:]), tuple(pose.shape[-2:])))

    hooks = [m.register_forward_pre_hook(record) for name, m in model.unet.named_modules()
             if name.endswith(tuple(f"motion_modules.{j}" for j in range(3)))]
    try:
        out = model.predict_noise(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    assert out.shape == inputs["latents"].shape and torch.isfinite(out).all()
    assert len(seen) == 4 * 2 + 4 * 3 and all(x == pose for x, pose in seen)  # every down and up layer
    expected = set(zip(_ceil_halvings(height // 8), _ceil_halvings(width // 8)))
    assert {x for x, _ in seen} == expected


def test_the_border_pose_token_averages_exactly_its_in_image_pixels():
    pool = _Downsample(3, use_conv=False)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    out = pool(x)
    assert out.shape[-2:] == (3, 4)
    # interior windows: the 2x2 means CameraCtrl always took
    torch.testing.assert_close(out[..., :2, :3], nn.functional.avg_pool2d(x, 2), rtol=0, atol=1e-15)
    # border row / column / corner: the mean of the pixels left over, nothing padded in
    torch.testing.assert_close(out[..., 2, :3], x[..., 4, :6].unflatten(-1, (3, 2)).mean(-1), rtol=0, atol=1e-15)
    torch.testing.assert_close(out[..., :2, 3], x[..., :4, 6].unflatten(-1, (2, 2)).mean(-1), rtol=0, atol=1e-15)
    torch.testing.assert_close(out[..., 2, 3], x[..., 4, 6], rtol=0, atol=0)


def test_the_border_plucker_pixels_reach_the_output(model):
    """The leftover row of pose cells gets a border token of its own at every level, and it reaches the output."""
    width, height = 72, 88  # latent 9 x 11: odd at the first halving on both sides
    inputs = _camera_inputs(width, height)
    moved = dict(inputs, plucker=inputs["plucker"].clone())
    moved["plucker"][..., -8:, :] += 1.0  # last latent row only
    with torch.no_grad():
        before, after = model.pose_encoder(inputs["plucker"]), model.pose_encoder(moved["plucker"])
    for level, (a, b) in enumerate(zip(before, after)):
        assert float((a[..., -1, :] - b[..., -1, :]).abs().max()) > 1e-3, level
    diff = (model.predict_noise(**moved) - model.predict_noise(**inputs)).abs()
    assert float(diff.max()) > 1e-3


@pytest.mark.parametrize("size,feat,stride", [(288, 5, 64), (200, 13, 16), (200, 4, 64), (200, 1, 256), (88, 2, 64)])
def test_token_centres_of_a_side_that_does_not_tile_follow_the_stride_grid(size, feat, stride):
    ys = token_pixel_centres(feat, 1, (size, 8))[:, 1]
    starts = torch.arange(feat, dtype=torch.float64) * stride
    ends = (starts + stride).clamp(max=size)
    assert torch.equal(ys.double(), (starts + ends - 1) / 2)
    assert float(ys.max()) <= size - 1 and float(ys.min()) >= 0  # every centre is inside the image
    assert (-(-size // stride)) == feat


@pytest.mark.parametrize("width,height", ODD_SIZES)
@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_epipolar_bias_at_odd_sizes_is_finite_and_zero_on_the_line(width, height, mode):
    rig = make_preset_rig("circle", 2, FRAMES, width, height)
    F = pair_fundamentals(rig, 0, 1).float()
    for feat_h, feat_w in zip(_ceil_halvings(height // 8), _ceil_halvings(width // 8)):
        bias = epipolar_attention_bias(F, feat_h, feat_w, (height, width), mode=mode)
        assert bias.shape == (FRAMES, feat_h * feat_w, feat_h * feat_w)
        assert torch.isfinite(bias).all() and float(bias.max()) == 0.0
