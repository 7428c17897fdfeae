"""Scene director nodes (the layout half of C3V): plan a scene from a prompt (rules, or any LLM node's
answer), lift 2D trajectories to 3D, project the entities' 3D boxes through every camera of a CVD rig
into per-view MASKs, and preview the layout.

Thin adapters: all parsing, geometry and drawing live in ``cvd_core.scene``.

Types: ``CVD_SCENE`` is a validated scene-plan dict (JSON-serialisable, see ``cvd_core.scene.plan``);
``CVD_LAYOUT`` is a ``cvd_core.scene.Layout`` (per-entity masks ``[views x frames, H, W]``, boxes,
depths, draw order).

MASK conventions: every MASK these nodes output is a ComfyUI MASK batch ``[views x frames, H, W]``,
view-major (all frames of view 0, then view 1, ...), the same order as the multi-view IMAGE and
image-latent batches of the pack, values 0/1. ComfyUI's ``ConditioningSetMask`` repeats a mask
batch over the latent batch, so a mask batch of the same length steers each frame of each view with
its own mask.
"""

from __future__ import annotations

import json
from typing import List

import numpy as np
import torch

from cvd_core.guards import require_finite
from cvd_core.scene import (ScenePlanError, c3v_prompt_templates, decompose_prompt, ground_plane_depth,
                            lift_trajectories, parse_llm_answer, plan_to_json, project_layout,
                            render_layout_preview, validate_plan)

from ._comfy import NodeInputError, save_preview_images
from ._schema import Input, NodeSchema, Output, Result, json_problem

CATEGORY = "CVD/scene"
SCENE = "CVD_SCENE"
LAYOUT = "CVD_LAYOUT"
CAMERAS = "CVD_CAMERAS"
DEPTH_KINDS = ["disparity", "depth"]
PREVIEW_MODES = ["one_per_view", "every_frame"]


def _node_error(exc: Exception, what: str = "") -> NodeInputError:
    """A core error as the node's error; ``what`` says which step failed (the core message has the rule)."""
    return NodeInputError(f"{what}: {exc}" if what else str(exc))


def _text_ui(lines: List[str]) -> dict:
    # ComfyUI 2024-03 concatenates ui values across batches: every value must be a list.
    return {"text": ["\n".join(lines)]}


def _check_frames_match(plan: dict, cameras) -> None:
    """Plans and rigs must agree on the frame count (per-frame trajectories are not resampled
    silently: that would change the entities' timing)."""
    rig_frames = cameras.n_frames
    if plan["frames"] != rig_frames:
        raise NodeInputError(
            f"frames must match: the scene plan has {plan['frames']} frames but the cameras have {rig_frames} "
            f"frames per view; set 'frames' of CVD Scene Plan to {rig_frames} (or the cameras' frames to "
            f"{plan['frames']})")


# ------------------------------------------------------------------------------ ScenePlan

def _base_plan(prompt: str, frames: int, plan_json: str, aspect: float, notes: List[str]) -> dict:
    """The plan before any LLM answer: plan_json when given (resampled to ``frames``), else the
    rule-based split of ``prompt``."""
    if plan_json.strip():
        try:
            plan, warnings = validate_plan(plan_json, frames=frames)
        except ScenePlanError as exc:
            raise _node_error(exc, "plan_json") from None
        try:
            declared = json.loads(plan_json).get("frames")
        except (ValueError, AttributeError):
            declared = None
        if declared is not None and declared != frames:
            notes.append(f"plan_json has {declared} frames; its paths were resampled to frames={frames}")
        notes.extend(warnings)
        notes.append(f"plan from plan_json ({len(plan['entities'])} entities; the prompt widget is not used)")
        return plan
    try:
        plan = decompose_prompt(prompt, frames=frames, aspect=aspect)
    except ValueError as exc:
        raise _node_error(exc, "prompt") from None
    notes.append(f"rule-based plan: scene {plan['scene']!r}, "
                 f"{len(plan['entities'])} entities ({', '.join(e['id'] for e in plan['entities']) or 'none'})")
    return plan


def _director_prompt(plan: dict, image_size, path_points: int, notes: List[str]) -> str:
    try:
        return c3v_prompt_templates(plan, image_size=image_size, path_points=path_points, frames=plan["frames"])
    except ScenePlanError as exc:  # a plan without entities: nothing for an LLM to place
        notes.append(str(exc))
        return f"(no director prompt: {exc})"


def _run_scene_plan(prompt, frames, image_width, image_height, path_points, plan_json="", llm_answer=""):
    notes: List[str] = []
    image_size = (int(image_width), int(image_height))
    plan = _base_plan(prompt or "", frames, plan_json or "", image_width / image_height, notes)
    director = _director_prompt(plan, image_size, path_points, notes)
    if (llm_answer or "").strip():
        answer_notes: List[str] = []
        try:
            plan = parse_llm_answer(llm_answer, plan, image_size, warnings=answer_notes)
        except ScenePlanError as exc:
            raise _node_error(exc, "llm_answer") from None
        notes.append(f"LLM answer read: 2D trajectories for "
                     f"{sum('trajectory_2d' in e for e in plan['entities'])} entities on a "
                     f"{image_size[0]}x{image_size[1]} reference image (lift them with CVD Lift Trajectory 3D)")
        notes.extend(answer_notes)
    return Result((plan, director, plan_to_json(plan)), ui=_text_ui(notes))


def _prompt_rule(prompt, plan_json):
    if not (plan_json or "").strip() and not prompt.strip():
        return ("prompt must describe the scene (\"a red car drives past a tree in a park\") unless plan_json holds "
                "a whole plan, got ''")
    return json_problem("plan_json", plan_json)


SCENE_PLAN = NodeSchema(
    node_id="CVD_ScenePlan",
    display_name="CVD Scene Plan",
    category=CATEGORY,
    description=(
        "Turns a prompt into a scene plan (C3V's director): a setting plus entities, each with a prompt, motion, "
        "3D box and path. Rules split the prompt without a model; or wire director_prompt to an LLM node and its "
        "answer into llm_answer of a second Scene Plan node. plan_json takes a whole plan."),
    inputs=[
        Input("prompt", "STRING", "What happens in the video, in plain English: entities, motions ('drives "
                                  "past'), a setting ('in a park').",
              default="a red car drives past a tree in a park", multiline=True),
        Input("frames", "INT", "Frames of the video (must equal the cameras' frames per view); every trajectory "
              "is resampled to this many points.", default=16, min=1, max=1024),
        Input("image_width", "INT", "Width of the reference image an LLM places the entities on; also the "
                                    "rule-based layout's aspect ratio.", default=512, min=8, max=8192),
        Input("image_height", "INT", "Height of that reference image (y grows downwards).", default=512, min=8,
              max=8192),
        Input("path_points", "INT", "Intermediate trajectory points the director prompt asks the LLM for, after "
                                    "scale, start and end.", default=4, min=1, max=16),
        Input("plan_json", "STRING", "Optional whole scene plan as JSON (version 1); replaces the prompt, its "
                                     "paths resampled to 'frames'.",
              default="", multiline=True, optional=True),
        Input("llm_answer", "STRING", "Optional LLM answer to the director prompt ('id: Scale: ..., Start: (x,y), "
                                      "...' or JSON); convert to an input.",
              default="", multiline=True, optional=True),
    ],
    outputs=[
        Output(SCENE, "scene", "The validated scene plan."),
        Output("STRING", "director_prompt", "C3V's step-by-step director prompt, for any LLM node (it asks for "
                                            "the exact answer format)."),
        Output("STRING", "plan_json", "The plan as JSON, to inspect, edit and feed back through plan_json."),
    ],
    run=_run_scene_plan,
    rules=[_prompt_rule],
)


# ------------------------------------------------------------------------------ LiftTrajectory3D

def _depth_map(depth, depth_mask, cameras, depth_kind: str, depth_scale: float, notes: List[str]):
    """``(map, kind, scale)`` to lift with: the wired depth, or a flat ground plane below the camera."""
    if depth is not None and depth_mask is not None:
        raise NodeInputError("give the depth map once: wire either 'depth' (IMAGE) or 'depth_mask' (MASK), not both")
    source = depth if depth is not None else depth_mask
    if source is not None and source.dim() == 2:  # some nodes emit a single [H, W] mask
        source = source[None]
    if source is None:
        notes.append(f"no depth map: entities stand on a flat ground {depth_scale:g} units below the camera")
        return ground_plane_depth(cameras.K, cameras.width, cameras.height, camera_height=depth_scale), "depth", 1.0
    if source.shape[0] > 1:
        notes.append(f"depth batch of {source.shape[0]}: the first image is used (the reference view: view 0, "
                     "frame 0)")
    return source[:1], depth_kind, depth_scale


def _run_lift(scene, cameras, depth_kind, depth_scale, max_depth, depth=None, depth_mask=None):
    _check_frames_match(scene, cameras)
    notes: List[str] = []
    to_lift = [e["id"] for e in scene["entities"] if e.get("trajectory_2d") is not None]
    if not to_lift:
        notes.append("nothing to lift: no entity has a 2D trajectory (rule-based plans are 3D already); "
                     "the plan passes through unchanged")
        return Result((scene, plan_to_json(scene)), ui=_text_ui(notes))
    depth_map, kind, scale = _depth_map(depth, depth_mask, cameras, depth_kind, depth_scale, notes)
    try:
        lifted = lift_trajectories(scene, depth_map, cameras.K, depth_kind=kind, depth_scale=scale,
                                   k_size=(cameras.width, cameras.height), max_depth=max_depth, warnings=notes)
    except ScenePlanError as exc:
        raise _node_error(exc) from None
    except ValueError as exc:  # depth of a shape that is no map, bad K
        raise _node_error(exc, "depth") from None
    for entity in lifted["entities"]:
        if entity["id"] in to_lift:
            z = [p[2] for p in entity["trajectory_3d"]]
            notes.append(f"{entity['id']}: height {entity['size'][1]:.3g} units, distance {min(z):.3g} to "
                         f"{max(z):.3g} units from the reference camera")
    return Result((lifted, plan_to_json(lifted)), ui=_text_ui(notes))


LIFT = NodeSchema(
    node_id="CVD_LiftTrajectory3D",
    display_name="CVD Lift Trajectory 3D",
    category=CATEGORY,
    description=(
        "Lifts a scene plan's 2D boxes (an LLM's, on the reference image) to 3D as C3V does: the depth under each "
        "box's bottom centre, back-projected through the rig's first camera, places it; each entity faces its "
        "next point. Depth from any depth node, or a flat ground without one."),
    inputs=[
        Input("scene", SCENE, "The scene plan (from CVD Scene Plan)."),
        Input("cameras", CAMERAS, "The camera rig: its first camera's intrinsics back-project the reference image; "
              "its frame count must equal the plan's."),
        Input("depth_kind", "COMBO", "disparity = bright is near (most depth nodes), z = depth_scale / value; "
                                     "depth = bright is far, z = value x scale.",
              default="disparity", options=DEPTH_KINDS),
        Input("depth_scale", "FLOAT", "Scene units of the depth map (disparity: distance at value 1), or the "
                                      "camera height without a depth map.",
              default=1.0, min=0.001, max=1000.0, step=0.01),
        Input("max_depth", "FLOAT", "Distances are capped here (sky or zero disparity under a box would be "
              "infinitely far).", default=100.0, min=0.01, max=100000.0, step=0.1),
        Input("depth", "IMAGE", "Optional depth map of the reference image (any size; the first image of a "
              "batch is used).", optional=True),
        Input("depth_mask", "MASK", "Optional depth map as a MASK (instead of 'depth').", optional=True),
    ],
    outputs=[
        Output(SCENE, "scene", "The plan with a 3D trajectory and box size for every entity."),
        Output("STRING", "plan_json", "The lifted plan as JSON."),
    ],
    run=_run_lift,
)


# ------------------------------------------------------------------------------ ProjectLayout

def _select_entity(layout, entity: int, notes: List[str]):
    """``(mask, prompt)`` of entity number ``entity``; an empty mask for a plan without entities."""
    count = len(layout.entity_ids)
    if count == 0:
        notes.append("the plan has no entities: the masks are empty")
        empty = torch.zeros((layout.views * layout.frames, layout.height, layout.width), dtype=torch.float32)
        return empty, ""
    if entity >= count:
        listing = ", ".join(f"{i}={eid}" for i, eid in enumerate(layout.entity_ids))
        raise NodeInputError(f"entity must be below the number of entities ({count}: {listing}), got {entity}")
    entity_id = layout.entity_ids[entity]
    return layout.masks[entity_id], layout.prompts[entity_id]


def _union(layout) -> torch.Tensor:
    union = torch.zeros((layout.views * layout.frames, layout.height, layout.width), dtype=torch.float32)
    for entity_id in layout.entity_ids:
        union = torch.maximum(union, layout.masks[entity_id])
    return union


def _visibility_notes(layout) -> List[str]:
    total = layout.views * layout.frames
    lines = []
    for entity_id in layout.entity_ids:
        seen = int((layout.masks[entity_id].flatten(1).sum(1) > 0).sum().item())
        lines.append(f"{entity_id}: visible in {seen}/{total} frames (all views)")
    return lines


def _run_project(scene, cameras, width, height, occlusion, entity):
    _check_frames_match(scene, cameras)
    mask_width = int(width) or cameras.width
    mask_height = int(height) or cameras.height
    try:
        layout = project_layout(scene, cameras.as_rig(), mask_height, mask_width, occlusion=occlusion)
    except ScenePlanError as exc:
        raise _node_error(exc) from None
    notes = _visibility_notes(layout)
    mask, prompt = _select_entity(layout, entity, notes)
    layout_json = json.dumps(layout.to_dict())
    return Result((layout, mask.clone(), _union(layout), prompt, layout_json), ui=_text_ui(notes))


PROJECT = NodeSchema(
    node_id="CVD_ProjectLayout",
    display_name="CVD Project Layout",
    category=CATEGORY,
    description=(
        "Projects every entity's 3D box through every camera and frame: per-view MASK batches [views x frames, H, "
        "W] and 2D boxes that agree across views, nearer entities hiding farther ones; plus the chosen entity's "
        "mask and prompt, for regional prompting."),
    inputs=[
        Input("scene", SCENE, "A scene plan whose entities have 3D trajectories (rule-based plans, or lifted by "
              "CVD Lift Trajectory 3D)."),
        Input("cameras", CAMERAS, "The camera rig; its frames per view must equal the plan's frames."),
        Input("width", "INT", "Mask width in pixels; 0 = the cameras' width. Use the latent width (width / 8) for "
              "latent-size masks.", default=0, min=0, max=8192),
        Input("height", "INT", "Mask height in pixels; 0 = the cameras' height.", default=0, min=0, max=8192),
        Input("occlusion", "BOOLEAN", "Nearer entities hide farther ones, so masks never overlap (off: every "
              "entity's full silhouette; masks may overlap).", default=True),
        Input("entity", "INT", "Which entity 'entity_mask' and 'entity_prompt' show: its index in the plan (0 = "
                               "first; the notes list them).", default=0, min=0, max=255),
    ],
    outputs=[
        Output(LAYOUT, "layout", "All entities' masks, boxes, depths and draw order (for CVD Layout Preview and "
               "the sampler)."),
        Output("MASK", "entity_mask", "Mask batch [views x frames, H, W] of the entity chosen by 'entity'."),
        Output("MASK", "entities_mask", "Union of all entities' masks [views x frames, H, W] (invert it for the "
               "background)."),
        Output("STRING", "entity_prompt", "The chosen entity's prompt (for its regional CLIPTextEncode)."),
        Output("STRING", "layout_json", "Boxes, centres, depths, visibility and the plan of every view and frame, "
               "as JSON."),
    ],
    run=_run_project,
)


# ------------------------------------------------------------------------------ LayoutPreview

def _run_preview(layout, mode, alpha, images=None):
    if images is not None:
        require_finite(images, "images", axes=("image",), hint="nothing was drawn")
    try:
        picture = render_layout_preview(layout, images=images, per_frame=(mode == "every_frame"), alpha=alpha)
    except ValueError as exc:
        raise _node_error(exc, "images") from None
    ui = {"images": save_preview_images(picture, "cvd_layout_preview")}
    return Result((torch.from_numpy(np.ascontiguousarray(picture, dtype=np.float32)),), ui=ui)


PREVIEW = NodeSchema(
    node_id="CVD_LayoutPreview",
    display_name="CVD Layout Preview",
    category=CATEGORY,
    description=(
        "Draws the projected layout on every view: each entity's mask tinted in its colour, its 2D box, label "
        "and whole projected path, optionally over generated frames. one_per_view: one image per view (frame 0, "
        "with the first and last boxes); every_frame: views x frames images, view-major like the video."),
    inputs=[
        Input("layout", LAYOUT, "The layout from CVD Project Layout."),
        Input("mode", "COMBO", "one_per_view: a summary image per view; every_frame: one image per view and "
              "frame (view-major).", default="one_per_view", options=PREVIEW_MODES),
        Input("alpha", "FLOAT", "Opacity of the mask tint.", default=0.35, min=0.0, max=1.0, step=0.05),
        Input("images", "IMAGE", "Optional frames to draw on: views x frames images, view-major (resized to the "
              "layout's size).", optional=True),
    ],
    outputs=[Output("IMAGE", "image", "The preview images.")],
    run=_run_preview,
    is_output_node=True,
)

SCHEMAS = [SCENE_PLAN, LIFT, PROJECT, PREVIEW]
