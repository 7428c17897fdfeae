"""Rig and epipolar previews: right shape and range, visibly drawn, one colour per view, honest notes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvd_core.camera import CameraError, make_preset_rig, rig_from_json
from cvd_core.viz import clip_line_to_image, render_epipolar_preview, render_rig_preview, view_colors


def _has_colour(image: np.ndarray, rgb, tol: float = 0.04) -> int:
    return int((np.abs(image - np.asarray(rgb, dtype=np.float32)).max(axis=-1) < tol).sum())


def test_view_colors_are_distinct_and_stable():
    colours = view_colors(12)
    assert colours.shape == (12, 3) and colours.dtype == np.float32
    assert ((colours >= 0) & (colours <= 1)).all()
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(12)
    assert distances.min() > 0.1
    assert np.array_equal(view_colors(3), colours[:3])


@pytest.mark.parametrize("preset, views", [("circle", 4), ("orbit", 3), ("static", 2), ("zoom", 1)])
def test_rig_preview_draws_every_view(preset, views):
    rig = make_preset_rig(preset, views, 8, 256, 256)
    image = render_rig_preview(rig, 512, 256)
    assert image.shape == (256, 512, 3) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.var() > 1e-3  # not blank
    for colour in view_colors(views):  # each view's colour is present (legend swatch at least)
        assert _has_colour(image, colour) > 20, f"colour {colour} missing"


def test_rig_preview_depends_on_the_rig():
    a = render_rig_preview(make_preset_rig("circle", 2, 8, 256, 256), 384, 192)
    b = render_rig_preview(make_preset_rig("pan", 2, 8, 256, 256), 384, 192)
    assert np.abs(a - b).mean() > 1e-3


def test_rig_preview_single_trajectory_and_many_views():
    single = make_preset_rig("circle", 3, 4, 64, 64).view(1)
    assert render_rig_preview(single).shape == (384, 768, 3)
    many = make_preset_rig("circle", 40, 3, 64, 64)
    assert render_rig_preview(many, 256, 128).var() > 1e-3  # legend is truncated, still draws
    with pytest.raises(CameraError, match="at least 128x96"):
        render_rig_preview(single, 64, 64)


def test_epipolar_preview_lines_and_dots():
    rig = make_preset_rig("circle", 4, 8, 128, 96)
    image = render_epipolar_preview(rig, 0, 1, 7, grid=3)
    assert image.shape == (96, 256, 3) and image.dtype == np.float32
    assert image.var() > 1e-3
    left, right = image[:, :128], image[:, 128:]
    background = render_epipolar_preview(rig, 0, 1, 7, grid=1)[:, 128:]
    assert np.abs(right - background).mean() > 1e-3  # more lines drawn in B with a bigger grid
    assert left.var() > 1e-3


def test_epipolar_preview_lines_pass_through_true_matches():
    """The line drawn for a dot goes through where that dot's 3D point appears in view B."""
    import colorsys

    rig = make_preset_rig("circle", 2, 6, 128, 128)
    K_a, K_b = rig.K[0, 5].numpy(), rig.K[1, 5].numpy()
    c2w_a, c2w_b = rig.c2w[0, 5].numpy(), rig.c2w[1, 5].numpy()
    image = render_epipolar_preview(rig, 0, 1, 5, grid=4)
    hits = 0
    for index, (col, row) in enumerate([(1, 2), (2, 1), (3, 3)]):
        dot = np.array([(col + 0.5) * 32, (row + 0.5) * 32, 1.0])
        colour = np.array(colorsys.hsv_to_rgb((row * 4 + col) / 16, 0.9, 1.0))
        colour = np.floor(colour * 255) / 255  # the preview's 8-bit colour
        for depth in (1.0, 2.0, 4.0):
            point = c2w_a[:3, :3] @ (np.linalg.inv(K_a) @ dot * depth) + c2w_a[:3, 3]
            local = np.linalg.inv(c2w_b) @ np.append(point, 1.0)
            u, v = (K_b @ local[:3])[:2] / local[2]
            if not (1 <= u < 127 and 1 <= v < 127) or local[2] <= 0:
                continue
            patch = image[int(v) - 1:int(v) + 2, 128 + int(u) - 1:128 + int(u) + 2]
            assert _has_colour(patch, colour, tol=0.01) > 0, f"line of dot {(col, row)} misses its match"
            hits += 1
    assert hits >= 3  # the check ran on visible matches


def test_epipolar_preview_frame0_note_instead_of_garbage():
    rig = make_preset_rig("circle", 2, 4, 128, 96)
    image = render_epipolar_preview(rig, 0, 1, 0)
    note_paper = _has_colour(image[:, 128:], (1.0, 1.0, 240 / 255))
    assert note_paper > 500  # the explanatory note box is drawn on B
    later = render_epipolar_preview(rig, 0, 1, 3)
    assert _has_colour(later[:, 128:], (1.0, 1.0, 240 / 255)) < note_paper / 4


def test_epipolar_preview_over_images():
    rig = make_preset_rig("orbit", 2, 4, 64, 64)
    red = np.zeros((64, 64, 3), np.float32)
    red[..., 0] = 1.0
    blue = torch.zeros(1, 32, 32, 3)
    blue[..., 2] = 1.0  # ComfyUI-style [1, H, W, C], other size: resized
    image = render_epipolar_preview(rig, 0, 1, 3, image_a=red, image_b=blue, grid=2)
    assert _has_colour(image[:, :64], (1, 0, 0)) > 1000 and _has_colour(image[:, 64:], (0, 0, 1)) > 1000


@pytest.mark.parametrize("kwargs, message", [
    (dict(view_b=5), r"view_b must be an integer in \[0, 1\]"),
    (dict(frame=4), r"frame must be an integer in \[0, 3\]"),
    (dict(grid=0), r"grid must be an integer in \[1, 32\]"),
    (dict(image_a=np.zeros((8, 8))), None),
    (dict(image_a=np.zeros((8, 8, 5))), "image_a must be an image"),
])
def test_epipolar_preview_validation(kwargs, message):
    rig = make_preset_rig("circle", 2, 4, 64, 64)
    args = dict(view_a=0, view_b=1, frame=2)
    args.update(kwargs)
    if message is None:
        assert render_epipolar_preview(rig, **args).shape == (64, 128, 3)
    else:
        with pytest.raises(CameraError, match=message):
            render_epipolar_preview(rig, **args)


def test_clip_line_to_image():
    assert clip_line_to_image(np.array([0.0, 1.0, -10.0]), 64, 32) == ((0.0, 10.0), (64.0, 10.0))
    assert clip_line_to_image(np.array([0.0, 1.0, -100.0]), 64, 32) is None  # y = 100 misses
    assert clip_line_to_image(np.array([1.0, -1.0, 0.0]), 32, 32) in (((0.0, 0.0), (32.0, 32.0)),
                                                                     ((32.0, 32.0), (0.0, 0.0)))


def test_pure_rotation_rig_gets_note():
    eye = np.eye(4).tolist()
    turned = [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    rig = rig_from_json('{"views": [{"c2w": [%s, %s]}, {"c2w": [%s, %s]}]}' % (eye, eye, eye, turned), 64, 64)
    image = render_epipolar_preview(rig, 0, 1, 1)
    assert _has_colour(image[:, 64:], (1.0, 1.0, 240 / 255)) > 100
