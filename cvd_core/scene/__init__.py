"""Scene director (the layout half of C3V, Zhu et al. NeurIPS 2024), ComfyUI-free.

Pipeline: a prompt -> :func:`decompose_prompt` (rules) or :func:`c3v_prompt_templates` + any LLM +
:func:`parse_llm_answer` -> a scene plan (:mod:`.plan`, JSON, :func:`validate_plan`) ->
:func:`lift_trajectories` (2D answers + a depth map -> 3D) -> :func:`project_layout` through a CVD
camera rig -> per-entity, per-view MASKs and boxes (:class:`Layout`) -> :func:`render_layout_preview`.
"""

from .decompose import decompose_prompt
from .lift import entity_yaws, ground_plane_depth, lift_trajectories
from .llm import c3v_prompt_templates, parse_llm_answer
from .plan import PLAN_VERSION, ScenePlanError, plan_to_json, resample_polyline, validate_plan
from .preview import entity_color, render_layout_preview
from .project import Layout, box_corners, project_box, project_layout

__all__ = [
    "PLAN_VERSION", "ScenePlanError", "validate_plan", "plan_to_json", "resample_polyline",
    "decompose_prompt", "c3v_prompt_templates", "parse_llm_answer",
    "lift_trajectories", "entity_yaws", "ground_plane_depth",
    "Layout", "project_layout", "box_corners", "project_box",
    "render_layout_preview", "entity_color",
]
