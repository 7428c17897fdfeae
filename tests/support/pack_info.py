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


def api_workflows():
    """``[(name, api_prompt, ui_workflow)]`` for every shipped workflow."""
    result = []
    for api_path in sorted((WORKFLOWS / "api").glob("*.json")):
        ui_path = WORKFLOWS / api_path.name
        result.append((api_path.stem, json.loads(api_path.read_text()),
                       json.loads(ui_path.read_text()) if ui_path.exists() else None))
    return result
