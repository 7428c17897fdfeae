"""Every workflow (UI and API format) references only node types and widget values the server
accepts, and the two forms of each workflow describe the same graph."""

import pytest

from tests.support.pack_info import CURRENT_ONLY_WORKFLOWS, RUN_ON_2024_BY_TESTS, api_workflows, needs_current_comfyui
from tests.support.workflow_format import lint_api, lint_ui, ui_to_api

pytestmark = pytest.mark.integration
WORKFLOWS = api_workflows()


def test_there_are_workflows():
    assert WORKFLOWS, "workflows/api/ holds no workflow"


def test_every_node_that_runs_on_2024_still_runs_there_in_some_workflow():
    """CI runs a few workflows on 0.3.64 only (CURRENT_ONLY_WORKFLOWS): each of their nodes must still run on
    2024-03 in a workflow CI runs there, so the 2024 node classes (V1) stay covered."""
    runnable = [(name, prompt) for name, prompt, _ in api_workflows() if not needs_current_comfyui(prompt)]
    assert set(CURRENT_ONLY_WORKFLOWS) <= {name for name, _ in runnable}
    on_2024 = {v["class_type"] for name, prompt in runnable if name not in CURRENT_ONLY_WORKFLOWS
               for v in prompt.values()} | set(RUN_ON_2024_BY_TESTS)
    for name, prompt in runnable:
        missing = {v["class_type"] for v in prompt.values()} - on_2024
        assert not missing, f"{name} is run on 0.3.64 only, but nothing else runs {sorted(missing)} on 2024-03"


@pytest.mark.parametrize("name,prompt,ui", WORKFLOWS, ids=[w[0] for w in WORKFLOWS])
def test_workflow_lints_clean(request, name, prompt, ui):
    server = request.getfixturevalue("comfy_server_v3" if needs_current_comfyui(prompt) else "comfy_server")
    info = server.object_info()
    assert ui is not None, f"workflows/{name}.json (UI format) is missing; run scripts/build_workflows.py"
    assert lint_api(prompt, info) == []
    assert lint_ui(ui, info) == []
    exported = ui_to_api(ui, info)
    expected = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert exported == expected, "UI and API forms differ: run scripts/build_workflows.py"


def test_lint_catches_mistakes(comfy_server):
    """The linter itself must fail on broken workflows (a lint that cannot fail proves nothing)."""
    info = comfy_server.object_info()
    name, prompt, ui = WORKFLOWS[0]
    broken = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    first = next(iter(broken))
    broken[first]["class_type"] = "CVD_NoSuchNode"
    assert any("unknown node type" in e for e in lint_api(broken, info))
    broken = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in prompt.items()}
    trajectory = next(k for k, v in broken.items() if v["class_type"] == "CVD_CameraTrajectory")
    broken[trajectory]["inputs"]["views"] = 999
    broken[trajectory]["inputs"]["preset"] = "spiral"
    errors = lint_api(broken, info)
    assert any("above the maximum" in e for e in errors) and any("not one of" in e for e in errors)
    bad_ui = {**ui, "nodes": [dict(n) for n in ui["nodes"]]}
    bad_ui["nodes"][0]["widgets_values"] = bad_ui["nodes"][0]["widgets_values"][:-1]
    assert lint_ui(bad_ui, info)
