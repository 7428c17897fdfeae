"""Regenerate the UI-format workflows (``workflows/*.json``) from the API-format sources
(``workflows/api/*.json``) using a live test server's ``/object_info``.

Run from the project venv after changing a workflow: ``.venv/bin/python scripts/build_workflows.py``.
The lint test fails when the two forms drift apart. Every loader node gets ``properties.models``
(name, url, directory of the official files it selects, from ``nodes/_model_files.py``): the frontend's
Missing Models panel shows their folders and offers the downloads.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodes._model_files import workflow_models  # noqa: E402
from tests.support.comfy_harness import ComfyServer  # noqa: E402
from tests.support.model_installers import install_test_models  # noqa: E402
from tests.support.pack_info import needs_current_comfyui  # noqa: E402
from tests.support.workflow_format import api_to_ui, lint_api, lint_ui  # noqa: E402


def add_model_links(workflow, prompt) -> None:
    """``properties.models`` on every node that loads an official model file."""
    for node in workflow["nodes"]:
        models = workflow_models(node["type"], prompt[str(node["id"])]["inputs"])
        if models:
            node["properties"]["models"] = models


def _object_info(current: bool) -> dict:
    """``/object_info`` of the 2024-03 test server, or of 0.3.64 (workflows with GUIDER sampling need it)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer.current(Path(tmp)) if current else ComfyServer(Path(tmp))
        install_test_models(server.root)
        with server:
            return server.object_info()


def main() -> int:
    sources = sorted((ROOT / "workflows" / "api").glob("*.json"))
    prompts = {source: json.loads(source.read_text()) for source in sources}
    infos = {current: _object_info(current) for current in sorted({needs_current_comfyui(p) for p in prompts.values()})}
    for source in sources:
        prompt = prompts[source]
        info = infos[needs_current_comfyui(prompt)]
        errors = lint_api(prompt, info)
        if errors:
            print(f"{source.name}: " + "; ".join(errors))
            return 1
        workflow = api_to_ui(prompt, info)
        add_model_links(workflow, prompt)
        assert not lint_ui(workflow, info), lint_ui(workflow, info)
        target = ROOT / "workflows" / source.name
        target.write_text(json.dumps(workflow, indent=1) + "\n")
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
