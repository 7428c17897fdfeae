"""Projection of a scene plan's 3D boxes through every camera of a CVD rig: per-view masks and boxes.

Consistent by construction: for every view and frame, each entity's yawed 3D box (8 corners) is
moved into that camera (world-to-camera = inverse of the rig's ``c2w``), clipped against the near
plane (so a box that straddles the camera still projects correctly and one fully behind it projects
to nothing), projected with that view's K, intersected with the image rectangle, and the resulting
convex polygon is both filled (the MASK: pixel centres inside) and measured (the 2D box: its bounds).
The same 3D box is seen through every camera, so the masks of different views obey the rig's
epipolar geometry.

Occlusion: in each view and frame, entities are ordered near to far by the camera-space depth of
their box centre (a painter's order: exact for separated boxes, approximate for boxes that
interpenetrate); each entity's mask is its own silhouette minus the union of the silhouettes of all
nearer entities, so masks never overlap and a pixel belongs to the entity seen there. The 2D boxes
stay amodal (the whole silhouette's bounds, occluded part included) and ``visible_fraction`` reports
how much of the silhouette survives occlusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .lift import entity_yaws
from .plan import ScenePlanError, validate_plan

__all__ = ["Layout", "project_layout", "box_corners", "project_box"]

# the 12 edges of a box whose corners are indexed by bits (x, y, z) -> 4x + 2y + z
_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


@dataclass
class Layout:
    """Per-view, per-frame projection of a scene plan.

    ``masks[id]``: float32 ``[V*F, H, W]`` view-major (ComfyUI MASK order: view 0 frames 0..F-1, view
    1, ...), occlusion applied, values 0/1. ``boxes[id][v][f]``: ``[x0, y0, x1, y1]`` pixels (amodal,
    clipped to the image) or None when the box is behind the camera or outside the image.
    ``centers[id][v][f]``: the projected 3D box centre ``[x, y]`` (may lie outside the image) or None
    when behind the camera. ``depths[id][v][f]``: camera-space z of the centre. ``order[v][f]``: entity
    ids near to far (those in front of the camera). ``visible_fraction[id][v][f]``: visible / silhouette
    pixel count (0 when nothing of it is in view).
    """

    scene: str
    prompt: str
    views: int
    frames: int
    width: int
    height: int
    entity_ids: List[str]
    prompts: Dict[str, str]
    masks: Dict[str, torch.Tensor]
    boxes: Dict[str, List[List[Optional[List[float]]]]]
    centers: Dict[str, List[List[Optional[List[float]]]]]
    depths: Dict[str, List[List[Optional[float]]]]
    visible_fraction: Dict[str, List[List[float]]]
    order: List[List[List[str]]]
    plan: Dict[str, Any] = field(default_factory=dict)

    def index(self, view: int, frame: int) -> int:
        """Batch index of (view, frame) in the ``[V*F, ...]`` layout."""
        return view * self.frames + frame

    def label_map(self) -> torch.Tensor:
        """``[V*F, H, W]`` int64: 0 = background, i + 1 = ``entity_ids[i]`` (masks do not overlap)."""
        labels = torch.zeros((self.views * self.frames, self.height, self.width), dtype=torch.int64)
        for i, entity_id in enumerate(self.entity_ids):
            labels[self.masks[entity_id] > 0.5] = i + 1
        return labels

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable summary (everything but the mask tensors; rebuild those by projecting)."""
        return {
            "format": "cvd_layout/1",
            "scene": self.scene,
            "prompt": self.prompt,
            "views": self.views,
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "entities": [
                {
                    "id": entity_id,
                    "prompt": self.prompts[entity_id],
                    "boxes": self.boxes[entity_id],
                    "centers": self.centers[entity_id],
                    "depths": self.depths[entity_id],
                    "visible_fraction": self.visible_fraction[entity_id],
                    "mask_area": [[int(self.masks[entity_id][self.index(v, f)].sum().item())
                                   for f in range(self.frames)] for v in range(self.views)],
                }
                for entity_id in self.entity_ids
            ],
            "order": self.order,
            "plan": self.plan,
        }


# ------------------------------------------------------------------------------------------ geometry
def box_corners(center: Sequence[float], size: Sequence[float], yaw: float) -> np.ndarray:
    """The 8 corners ``[8, 3]`` of a box with ``size`` = [width, height, depth] centred at ``center``,
    turned by ``yaw`` radians about the vertical (y) axis; corner index = 4*x_bit + 2*y_bit + z_bit.
    Local axes: width along the entity's right, height along y (down), depth along its facing."""
    half = np.asarray(size, dtype=np.float64) / 2.0
    signs = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=np.float64) * 2 - 1
    local = signs * half
    c, s = math.cos(yaw), math.sin(yaw)
    # columns: right = (cos, 0, -sin), down = (0, 1, 0), forward = (sin, 0, cos); yaw 0 -> identity
    rotation = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return local @ rotation.T + np.asarray(center, dtype=np.float64)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise (in x-right, y-down pixels: clockwise on screen) convex hull, monotone chain."""
    pts = sorted(set(map(tuple, np.round(points, 9).tolist())))
    if len(pts) < 3:
        return np.array(pts).reshape(-1, 2)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: List[tuple] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: List[tuple] = []
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _clip_polygon_to_rect(poly: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a convex polygon to [0, width] x [0, height]."""
    def clip(points, inside, intersect):
        out = []
        for i in range(len(points)):
            cur, prev = points[i], points[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(intersect(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(intersect(prev, cur))
        return out

    def at_x(x0):
        return lambda p, q: np.array([x0, p[1] + (q[1] - p[1]) * (x0 - p[0]) / (q[0] - p[0])])

    def at_y(y0):
        return lambda p, q: np.array([p[0] + (q[0] - p[0]) * (y0 - p[1]) / (q[1] - p[1]), y0])

    points = list(poly)
    for inside, intersect in ((lambda p: p[0] >= 0.0, at_x(0.0)), (lambda p: p[0] <= width, at_x(width)),
                              (lambda p: p[1] >= 0.0, at_y(0.0)), (lambda p: p[1] <= height, at_y(height))):
        if not points:
            break
        points = clip(points, inside, intersect)
    return np.array(points).reshape(-1, 2)


def project_box(corners_cam: np.ndarray, K: np.ndarray, width: int, height: int,
                near: float = 1e-2) -> Optional[np.ndarray]:
    """The image-space polygon (convex, inside the image) of a box given by its camera-space corners,
    or None when nothing of it is in front of the near plane and inside the image."""
    front = corners_cam[:, 2] >= near
    if not front.any():
        return None
    points = [corners_cam[front]]
    if not front.all():
        # where the box crosses the near plane, its edges give the new vertices of the clipped solid
        for a, b in _BOX_EDGES:
            if front[a] != front[b]:
                pa, pb = corners_cam[a], corners_cam[b]
                t = (near - pa[2]) / (pb[2] - pa[2])
                points.append((pa + t * (pb - pa))[None])
    cam = np.concatenate(points)
    pix = cam @ K.T
    pix = pix[:, :2] / pix[:, 2:3]
    hull = _convex_hull(pix)
    if len(hull) < 3:
        return None
    clipped = _clip_polygon_to_rect(hull, float(width), float(height))
    if len(clipped) < 3:
        return None
    # a sliver along the image border has no area
    x, y = clipped[:, 0], clipped[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return clipped if area > 1e-9 else None


def _fill_convex(poly: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Set ``mask`` (boolean ``[H, W]``, in place) at pixel centres (x + 0.5, y + 0.5) inside the convex
    polygon (edges included); returns ``mask``."""
    height, width = mask.shape
    x0 = max(int(math.floor(poly[:, 0].min() - 0.5)), 0)
    x1 = min(int(math.ceil(poly[:, 0].max() - 0.5)), width - 1)
    y0 = max(int(math.floor(poly[:, 1].min() - 0.5)), 0)
    y1 = min(int(math.ceil(poly[:, 1].max() - 0.5)), height - 1)
    if x1 < x0 or y1 < y0:
        return mask
    gx = np.arange(x0, x1 + 1, dtype=np.float64)[None, :] + 0.5  # broadcast rows x columns
    gy = np.arange(y0, y1 + 1, dtype=np.float64)[:, None] + 0.5
    # orientation-independent: inside when all edge cross products share the polygon's sign
    x, y = poly[:, 0], poly[:, 1]
    sign = 1.0 if (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) > 0 else -1.0
    inside = np.ones((len(gy), gx.shape[1]), dtype=bool)
    for i in range(len(poly)):
        (ax, ay), (bx, by) = poly[i], poly[(i + 1) % len(poly)]
        inside &= sign * ((bx - ax) * (gy - ay) - (by - ay) * (gx - ax)) >= -1e-9
    mask[y0:y1 + 1, x0:x1 + 1] |= inside
    return mask


# ------------------------------------------------------------------------------------------ public
def _rig_arrays(rig: Any, frames: int, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """K ``[V,F,3,3]`` scaled to (width, height) and world-to-camera ``[V,F,4,4]`` from a CameraSet."""
    K = rig.K.detach().cpu().numpy() if hasattr(rig.K, "detach") else np.asarray(rig.K, dtype=np.float64)
    c2w = rig.c2w.detach().cpu().numpy() if hasattr(rig.c2w, "detach") else np.asarray(rig.c2w, dtype=np.float64)
    if K.ndim == 3:  # a single trajectory is a one-view rig
        K, c2w = K[None], c2w[None]
    if K.shape[1] != frames:
        raise ScenePlanError([f"frames: the plan has {frames} frames but the camera rig has {K.shape[1]}; "
                              f"make them equal (re-validate the plan with frames={K.shape[1]})"],
                             header="plan and cameras disagree")
    K = K.astype(np.float64).copy()
    K[..., 0, :] *= width / float(rig.width)  # same frames at another pixel size (e.g. latent size)
    K[..., 1, :] *= height / float(rig.height)
    return K, np.linalg.inv(c2w.astype(np.float64))


def project_layout(plan: Dict[str, Any], rig: Any, height: int, width: int, *, occlusion: bool = True,
                   near: float = 1e-2) -> Layout:
    """Project every entity's 3D box through every view and frame of ``rig`` (a ``CameraSet``).

    ``plan``: a scene plan whose entities all have ``trajectory_3d`` (lift 2D ones first) and a
    ``size``; its frame count must equal the rig's. ``height``/``width``: size of the masks (the
    rig's K is rescaled to it, so the latent size works too). ``occlusion``: subtract nearer
    entities' silhouettes (see the module docstring); False keeps full silhouettes (they may overlap).
    """
    plan, _ = validate_plan(plan)
    if isinstance(height, bool) or isinstance(width, bool) or int(height) < 1 or int(width) < 1:
        raise ValueError(f"height and width must be positive integers, got {height}x{width}")
    height, width = int(height), int(width)
    problems = []
    for i, entity in enumerate(plan["entities"]):
        if entity.get("trajectory_3d") is None:
            problems.append(f"entities[{i}] ({entity['id']}): has only a 2D trajectory; lift it to 3D first "
                            f"(lift_trajectories with a depth map)")
        elif entity.get("size") is None:
            problems.append(f"entities[{i}] ({entity['id']}).size: missing (needed for the 3D box)")
    if problems:
        raise ScenePlanError(problems, header="plan is not ready for projection")

    frames = plan["frames"]
    K, w2c = _rig_arrays(rig, frames, width, height)
    views = K.shape[0]
    ids = [e["id"] for e in plan["entities"]]
    full = {i: np.zeros((views * frames, height, width), dtype=bool) for i in ids}
    boxes = {i: [[None] * frames for _ in range(views)] for i in ids}
    centers = {i: [[None] * frames for _ in range(views)] for i in ids}
    depths = {i: [[None] * frames for _ in range(views)] for i in ids}
    world_corners = {e["id"]: [box_corners(c, e["size"], yaw) for c, yaw in
                               zip(e["trajectory_3d"], entity_yaws(e["trajectory_3d"], e["facing"]))]
                     for e in plan["entities"]}
    world_centres = {e["id"]: np.asarray(e["trajectory_3d"], dtype=np.float64) for e in plan["entities"]}

    for v in range(views):
        for f in range(frames):
            R, t = w2c[v, f, :3, :3], w2c[v, f, :3, 3]
            for entity_id in ids:
                centre = R @ world_centres[entity_id][f] + t
                if centre[2] >= near:
                    p = K[v, f] @ centre
                    centers[entity_id][v][f] = [float(p[0] / p[2]), float(p[1] / p[2])]
                    depths[entity_id][v][f] = float(centre[2])
                poly = project_box(world_corners[entity_id][f] @ R.T + t, K[v, f], width, height, near)
                if poly is None:
                    continue
                boxes[entity_id][v][f] = [float(poly[:, 0].min()), float(poly[:, 1].min()),
                                          float(poly[:, 0].max()), float(poly[:, 1].max())]
                _fill_convex(poly, full[entity_id][v * frames + f])

    visible = {i: full[i].copy() for i in ids}
    order: List[List[List[str]]] = [[[] for _ in range(frames)] for _ in range(views)]
    for v in range(views):
        for f in range(frames):
            in_front = sorted((i for i in ids if depths[i][v][f] is not None), key=lambda i: depths[i][v][f])
            order[v][f] = in_front
            if not occlusion:
                continue
            covered = np.zeros((height, width), dtype=bool)
            for entity_id in in_front:
                b = v * frames + f
                visible[entity_id][b] &= ~covered
                covered |= full[entity_id][b]

    fractions = {}
    for i in ids:
        full_area = full[i].reshape(views, frames, -1).sum(-1)
        vis_area = visible[i].reshape(views, frames, -1).sum(-1)
        fractions[i] = np.where(full_area > 0, vis_area / np.maximum(full_area, 1), 0.0).tolist()

    return Layout(
        scene=plan["scene"], prompt=plan["prompt"], views=views, frames=frames, width=width, height=height,
        entity_ids=ids, prompts={e["id"]: e["prompt"] for e in plan["entities"]},
        masks={i: torch.from_numpy(visible[i].astype(np.float32)) for i in ids},
        boxes=boxes, centers=centers, depths=depths, visible_fraction=fractions, order=order, plan=plan,
    )
