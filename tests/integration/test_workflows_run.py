"""Every shipped workflow runs in both real ComfyUI generations (2024-03 and 0.3.64) and produces the files
it declares."""

import io

import pytest
from PIL import Image

from tests.support.comfy_harness import output_files
from tests.support.pack_info import api_workflows

pytestmark = pytest.mark.integration

WORKFLOWS = api_workflows()


def _strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.mark.parametrize("name,prompt,ui", WORKFLOWS, ids=[w[0] for w in WORKFLOWS])
def test_workflow_runs_and_writes_outputs(each_comfy_server, name, prompt, ui):
    entry = each_comfy_server.run(prompt, workflow=ui, timeout=600)
    files = output_files(entry)
    save_nodes = [k for k, v in prompt.items() if v["class_type"] in ("SaveImage", "CVD_SaveMultiViewVideo")]
    for node_id in save_nodes:
        assert files.get(node_id), f"{name}: node {node_id} wrote no file; outputs: {entry.get('outputs')}"
    for node_id, items in files.items():
        for item in items:
            data = each_comfy_server.view(item["filename"], item.get("subfolder", ""), item.get("type", "output"))
            assert len(data) > 100, f"{name}: {item} is empty"
            if item["filename"].endswith(".png"):
                image = Image.open(io.BytesIO(data))
                image.load()
                assert image.size[0] >= 64 and image.size[1] >= 64
                extrema = image.convert("L").getextrema()
                assert extrema[1] - extrema[0] > 20, f"{name}: {item['filename']} looks blank"
