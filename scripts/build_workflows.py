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
from tests.support.workflow_format import api_to_ui, lint_api, lint_ui  # noqa: E402


def add_model_links(workflow, prompt) -> None:
    """``properties.models`` on every node that loads an official model file."""
    for node in workflow["nodes"]:
        models = workflow_models(node["type"], prompt[str(node["id"])]["inputs"])
        if models:
            node["properties"]["models"] = models


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp))
        install_test_models(server.root)
        with server:
            info = server.object_info()
    for source in sorted((ROOT / "workflows" / "api").glob("*.json")):
        prompt = json.loads(source.read_text())
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
