"""Every shipped workflow runs in both real ComfyUI generations (2024-03 and 0.3.64) and produces the files
it declares."""

import io

import pytest
from PIL import Image

from tests.support.comfy_harness import output_files
from tests.support.pack_info import CURRENT_ONLY_WORKFLOWS, api_workflows, needs_current_comfyui

pytestmark = pytest.mark.integration

WORKFLOWS = api_workflows()


def _strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.fixture(scope="module")
def queued_ahead():
    """``{(server url, workflow name): prompt id}`` of runs queued before their own test (see below)."""
    return {}


def _current_server_alongside(request):
    """While a 2024 test runs: the 0.3.64 server, if this session also runs that workflow there, else None.

    A ComfyUI running these tiny-weight workflows keeps about one core busy; CI has two. So the 2024 test
    also queues its workflow on 0.3.64, which computes it meanwhile, and the 0.3.64 test (later: pytest
    groups the tests by server) only collects the result. The backlog on 0.3.64 stays about one workflow.
    """
    if request.node.callspec.params.get("each_comfy_server") != "2024":
        return None
    name = request.node.callspec.params["name"]
    wanted = any(getattr(item, "originalname", None) == request.node.originalname
                 and item.callspec.params.get("each_comfy_server") == "0.3.64" and item.callspec.params.get("name") == name
                 for item in request.session.items)
    if not wanted:
        return None
    try:
        return request.getfixturevalue("comfy_server_v3")
    except (pytest.skip.Exception, pytest.fail.Exception, RuntimeError):
        return None  # the 0.3.64 tests themselves report why


@pytest.mark.parametrize("name,prompt,ui", WORKFLOWS, ids=[w[0] for w in WORKFLOWS])
def test_workflow_runs_and_writes_outputs(request, each_comfy_server, queued_ahead, name, prompt, ui):
    server = each_comfy_server
    alongside = _current_server_alongside(request)
    if alongside is not None:  # also for the workflows skipped on 2024 below: 0.3.64 starts them now
        queued_ahead[(alongside.url, name)] = alongside.queue(prompt, workflow=ui)
    on_2024 = request.node.callspec.params.get("each_comfy_server") == "2024"
    if on_2024 and needs_current_comfyui(prompt):
        pytest.skip(f"{name} uses SamplerCustomAdvanced (GUIDER sampling), which ComfyUI 2024-03 lacks")
    if on_2024 and name in CURRENT_ONLY_WORKFLOWS:
        pytest.skip(f"{name} runs on ComfyUI 0.3.64 only ({CURRENT_ONLY_WORKFLOWS[name]}; nothing in it differs "
                    "between the generations)")
    prompt_id = queued_ahead.pop((server.url, name), None) or server.queue(prompt, workflow=ui)
    entry = server.wait(prompt_id, timeout=600)
    files = output_files(entry)
    save_nodes = [k for k, v in prompt.items() if v["class_type"] in ("SaveImage", "CVD_SaveMultiViewVideo")]
    for node_id in save_nodes:
        assert files.get(node_id), f"{name}: node {node_id} wrote no file; outputs: {entry.get('outputs')}"
    for node_id, items in files.items():
        for item in items:
            data = server.view(item["filename"], item.get("subfolder", ""), item.get("type", "output"))
            assert len(data) > 100, f"{name}: {item} is empty"
            if item["filename"].endswith(".png"):
                image = Image.open(io.BytesIO(data))
                image.load()
                assert image.size[0] >= 64 and image.size[1] >= 64
                extrema = image.convert("L").getextrema()
                assert extrema[1] - extrema[0] > 20, f"{name}: {item['filename']} looks blank"
