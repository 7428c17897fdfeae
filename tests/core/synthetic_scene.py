"""A tiny ray-cast 3D scene for testing multi-view geometry (test helper, not a test module).

The scene is a textured back wall, a floor and two boxes, every face covered with its own random
pattern of coloured shapes (so SIFT/ORB find many distinctive features). Views are rendered by
casting one ray per sub-pixel through pinhole cameras (OpenCV axes: x right, y down, z forward;
``K`` in pixels, the centre of pixel (u, v) at (u, v) as in OpenCV's keypoints) with 2x2
supersampling. Rendering 128x128 takes a few tens of milliseconds.

The rig mimics CVD: every view starts at the identity pose (frame 0 identical for all views, so
F = 0 there) and moves towards its own target on a circle while looking at the scene centre.
True fundamental matrices come from ``cvd_core.camera.fundamental_matrix`` (helper A's geometry),
which these tests therefore also check against an independent renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SCENE_CENTRE = np.array([0.0, 0.0, 4.0])  # looked at from the origin: the identity pose
TEXELS_PER_UNIT = 32


@dataclass
class TexturedRect:
    """A rectangle ``origin + a*axis_u + b*axis_v`` (0 <= a <= size_u, 0 <= b <= size_v) with a texture."""

    origin: np.ndarray
    axis_u: np.ndarray
    axis_v: np.ndarray
    size_u: float
    size_v: float
    texture: np.ndarray  # [rows, cols, 3] float32, rows along v, cols along u


def _random_texture(size_u: float, size_v: float, rng: np.random.Generator) -> np.ndarray:
    """Random coloured rectangles, ellipses and triangles at 0.06..0.5 world units: feature-rich, non-repeating."""
    cols, rows = max(8, int(size_u * TEXELS_PER_UNIT)), max(8, int(size_v * TEXELS_PER_UNIT))
    image = Image.new("RGB", (cols, rows), tuple(int(c) for c in rng.integers(40, 215, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(cols * rows / 12)):
        x, y = rng.uniform(0, cols), rng.uniform(0, rows)
        w, h = rng.uniform(2, 16, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle([x, y, x + w, y + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x, y, x + w, y + h], fill=colour)
        else:
            draw.polygon([(x, y), (x + w, y + rng.uniform(-h, h)), (x + rng.uniform(0, w), y + h)], fill=colour)
    return np.asarray(image, dtype=np.float32) / 255.0


def _box(low, high, rng) -> list[TexturedRect]:
    """Six textured faces of an axis-aligned box."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    size = high - low
    faces = []
    for axis in range(3):
        u_axis, v_axis = [a for a in range(3) if a != axis]
        for side in (low[axis], high[axis]):
            origin = low.copy()
            origin[axis] = side
            eu, ev = np.eye(3)[u_axis], np.eye(3)[v_axis]
            faces.append(TexturedRect(origin, eu, ev, size[u_axis], size[v_axis],
                                      _random_texture(size[u_axis], size[v_axis], rng)))
    return faces


def make_scene(seed: int = 0) -> list[TexturedRect]:
    """Back wall (z = 6), floor (y = 1.2, below the cameras), one box on the floor, one floating box."""
    rng = np.random.default_rng(seed)
    wall = TexturedRect(np.array([-5.0, -4.0, 6.0]), np.eye(3)[0], np.eye(3)[1], 10.0, 5.2,
                        _random_texture(10.0, 5.2, rng))
    floor = TexturedRect(np.array([-5.0, 1.2, 0.5]), np.eye(3)[0], np.eye(3)[2], 10.0, 5.5,
                         _random_texture(10.0, 5.5, rng))
    return [wall, floor] + _box([-1.0, 0.2, 3.0], [0.0, 1.2, 4.0], rng) + _box([0.4, -1.0, 3.4], [1.3, -0.1, 4.3], rng)


def _bilinear(texture: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sample ``texture`` at continuous texel coordinates (cols = a, rows = b), clamped at the border."""
    rows, cols, _ = texture.shape
    x = np.clip(a - 0.5, 0, cols - 1)
    y = np.clip(b - 0.5, 0, rows - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, cols - 1), np.minimum(y0 + 1, rows - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_view(scene: list[TexturedRect], K: np.ndarray, c2w: np.ndarray, height: int, width: int,
                supersample: int = 2) -> np.ndarray:
    """Render ``[H, W, 3]`` float32 in 0..1 of ``scene`` seen by camera ``K`` / ``c2w`` (OpenCV axes)."""
    K, c2w = np.asarray(K, np.float64), np.asarray(c2w, np.float64)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5  # sub-pixel sample positions
    us = (np.arange(width)[:, None] + offsets[None, :]).ravel()
    vs = (np.arange(height)[:, None] + offsets[None, :]).ravel()
    u, v = np.meshgrid(us, vs)
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
    _, colour = _trace(scene, K, c2w, pixels)
    image = colour.reshape(height, supersample, width, supersample, 3).mean(axis=(1, 3))
    return image.astype(np.float32)


def _trace(scene: list[TexturedRect], K: np.ndarray, c2w: np.ndarray, pixels: np.ndarray):
    """First hit of the ray through each homogeneous pixel ``[N, 3]``: ray parameter (inf: sky) and colour."""
    directions = pixels @ np.linalg.inv(K).T @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    depth = np.full(len(directions), np.inf)
    colour = np.full((len(directions), 3), 0.5, dtype=np.float32)  # grey sky where nothing is hit
    for rect in scene:
        normal = np.cross(rect.axis_u, rect.axis_v)
        facing = directions @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((rect.origin - origin) @ normal) / facing
        hit = origin + t[:, None] * directions
        a = (hit - rect.origin) @ rect.axis_u
        b = (hit - rect.origin) @ rect.axis_v
        visible = (t > 1e-6) & (t < depth) & (a >= 0) & (a <= rect.size_u) & (b >= 0) & (b <= rect.size_v)
        if visible.any():
            depth[visible] = t[visible]
            colour[visible] = _bilinear(rect.texture, a[visible] * TEXELS_PER_UNIT, b[visible] * TEXELS_PER_UNIT)
    return depth, colour


def surface_points(scene: list[TexturedRect], K: np.ndarray, c2w: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """World points ``[N, 3]`` the camera sees at pixel coordinates ``[N, 2]`` (this renderer's convention:
    pixel centres at integers); NaN where the ray hits nothing."""
    K, c2w = np.asarray(K, np.float64), np.asarray(c2w, np.float64)
    homogeneous = np.concatenate([np.asarray(pixels, np.float64), np.ones((len(pixels), 1))], 1)
    depth, _ = _trace(scene, K, c2w, homogeneous)
    directions = homogeneous @ np.linalg.inv(K).T @ c2w[:3, :3].T
    points = c2w[:3, 3] + depth[:, None] * directions
    points[~np.isfinite(depth)] = np.nan
    return points


def distance_to_scene(scene: list[TexturedRect], points: np.ndarray) -> np.ndarray:
    """Euclidean distance ``[N]`` from each point to the nearest surface of the scene."""
    points = np.asarray(points, np.float64)
    best = np.full(len(points), np.inf)
    for rect in scene:
        offset = points - rect.origin
        a = np.clip(offset @ rect.axis_u, 0.0, rect.size_u)
        b = np.clip(offset @ rect.axis_v, 0.0, rect.size_v)
        nearest = rect.origin + a[:, None] * rect.axis_u + b[:, None] * rect.axis_v
        best = np.minimum(best, np.linalg.norm(points - nearest, axis=1))
    return best


def look_at_c2w(position, target) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` (OpenCV axes, world y down) of a camera at ``position`` looking at ``target``."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)  # world "down" x forward = camera x
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = position
    return c2w


def make_rig(n_views: int = 3, n_frames: int = 4, width: int = 128, height: int = 128, fov_deg: float = 60.0,
             radius: float = 1.0, forward: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """CVD-like rig: ``K [V, T, 3, 3]`` and ``c2w [V, T, 4, 4]``.

    Frame 0 is the identity pose for every view; view ``v`` then moves linearly towards
    ``radius * (cos a, 0.5 sin a, 0) + (0, 0, forward)`` with ``a = 2 pi v / V``, looking at the scene centre.
    """
    focal = (width / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    K = np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    c2w = np.zeros((n_views, n_frames, 4, 4))
    for view in range(n_views):
        angle = 2.0 * np.pi * view / n_views
        target = np.array([radius * np.cos(angle), 0.5 * radius * np.sin(angle), forward])
        for frame in range(n_frames):
            s = frame / max(1, n_frames - 1)
            # Frame 0 is set to the exact identity so that all views share it bit for bit (F = 0).
            c2w[view, frame] = np.eye(4) if frame == 0 else look_at_c2w(s * target, SCENE_CENTRE)
    return np.broadcast_to(K, (n_views, n_frames, 3, 3)).copy(), c2w


def to_pack_convention(K: np.ndarray) -> np.ndarray:
    """The same intrinsics in the pack's pixel convention (pixel centres at +0.5, as CameraCtrl's Plücker
    rays, COLMAP and nerfstudio), for handing this renderer's cameras to the nodes: cx, cy + 0.5."""
    shifted = np.array(K, dtype=np.float64, copy=True)
    shifted[..., 0, 2] += 0.5
    shifted[..., 1, 2] += 0.5
    return shifted


def render_rig(scene, K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> np.ndarray:
    """All views and frames: ``[V, T, H, W, 3]`` float32."""
    return np.stack([np.stack([render_view(scene, K[v, t], c2w[v, t], height, width) for t in range(c2w.shape[1])])
                     for v in range(c2w.shape[0])])


def rig_fundamentals(K: np.ndarray, c2w: np.ndarray, pairs=None) -> dict:
    """``{(i, j): F [T, 3, 3]}`` with ``x_j^T F x_i = 0`` from ``cvd_core.camera.fundamental_matrix``."""
    import torch

    from cvd_core.camera import fundamental_matrix

    views = c2w.shape[0]
    pairs = pairs if pairs is not None else [(i, j) for i in range(views) for j in range(i + 1, views)]
    return {(i, j): fundamental_matrix(torch.as_tensor(c2w[i]), torch.as_tensor(c2w[j]),
                                       torch.as_tensor(K[i]), torch.as_tensor(K[j])).numpy()
            for i, j in pairs}
