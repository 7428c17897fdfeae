"""What the pack declares, read from its schemas without ComfyUI (for tests and tools)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"


def pack_schemas():
    from nodes import all_schemas  # the pack root is on sys.path in tests
    schemas, failures = all_schemas()
    if failures:
        raise AssertionError(f"node modules failed to import: {failures}")
    return schemas


# Core nodes a shipped workflow may use that the 2024-03 ComfyUI lacks (GUIDER sampling came in 2024-04), and
# the pack's nodes that only work where those exist.
CURRENT_COMFYUI_NODES = {"SamplerCustomAdvanced", "CVD_MultiViewGuider", "CVD_Noise"}


def needs_current_comfyui(prompt) -> bool:
    """Whether an API-format workflow runs only in a ComfyUI with GUIDER sampling (0.3.64 here, not 2024-03)."""
    return any(node.get("class_type") in CURRENT_COMFYUI_NODES for node in prompt.values())


# Workflows CI runs on the current ComfyUI only although both could run them: nothing in them differs between the
# generations (the same nodes run on both in other workflows), and they cost minutes.
# tests/test_workflows_lint.py checks that every node these use still runs on 2024-03 in another workflow.
CURRENT_ONLY_WORKFLOWS = {
    "cvd_long_video": "4 views x 64 frames: its SD VAE decode of 256 frames takes minutes on a CPU",
    "cvd_two_views": "its nodes run on 2024-03 in cvd_feature_cache; about 2 minutes there",
    "cvd_four_views_mcm": "its nodes run on 2024-03 in cvd_image_to_multiview and cvd_consistency_report",
    "cvd_scene_director": "its nodes run on 2024-03 in cvd_edit_entity",
}
# Nodes of those that run on 2024-03 in a test of their own instead: node id -> the test.
RUN_ON_2024_BY_TESTS = {
    "CVD_ContextOptions": "tests/integration/test_workflows_run.py::test_long_video_windows_on_2024_shortened",
}


def api_workflows():
    """``[(name, api_prompt, ui_workflow)]`` for every shipped workflow."""
    result = []
    for api_path in sorted((WORKFLOWS / "api").glob("*.json")):
        ui_path = WORKFLOWS / api_path.name
        result.append((api_path.stem, json.loads(api_path.read_text()),
                       json.loads(ui_path.read_text()) if ui_path.exists() else None))
    return result
