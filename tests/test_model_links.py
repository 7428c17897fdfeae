"""Download links of the official model files (nodes/_model_files.py): the shipped UI workflows carry
them as ``properties.models`` on every loader node, they are direct Hugging Face downloads of the
file they name, the README's model table gives the same links, and CVD.ckpt (no direct download)
says where to get it."""

from __future__ import annotations

from pathlib import Path

from nodes._model_files import FILES, LOADER_WIDGETS, files_for, workflow_models
from tests.support.pack_info import api_workflows

ROOT = Path(__file__).resolve().parents[1]


def _loader_nodes():
    for name, prompt, ui in api_workflows():
        for node in ui["nodes"]:
            if node["type"] in LOADER_WIDGETS:
                yield name, node, prompt[str(node["id"])]["inputs"]


def test_every_loader_node_of_the_shipped_workflows_carries_its_model_links():
    checked = 0
    for name, node, inputs in _loader_nodes():
        expected = workflow_models(node["type"], inputs)
        assert node["properties"].get("models", []) == expected, (
            f"{name}: node {node['id']} ({node['type']}) has properties.models "
            f"{node['properties'].get('models')}, expected {expected}: run scripts/build_workflows.py")
        checked += 1
    assert checked >= 10, f"only {checked} loader nodes in the shipped workflows"


def test_every_model_a_shipped_workflow_names_is_an_official_file():
    """A loader widget naming a file outside the list would show up as 'Unknown' in the frontend."""
    unknown = []
    for name, node, inputs in _loader_nodes():
        for widget, directory in LOADER_WIDGETS[node["type"]].items():
            value = inputs.get(widget)
            if isinstance(value, str) and value != "none" and not files_for(directory, value):
                unknown.append(f"{name}: {node['type']}.{widget} = {value!r}")
    assert not unknown, f"model files missing from nodes/_model_files.py: {unknown}"


def test_urls_are_direct_downloads_of_the_named_file():
    for f in FILES:
        if f.url is None:
            continue
        assert f.url.startswith("https://huggingface.co/") and "/resolve/main/" in f.url, f
        assert f.url.endswith("/" + f.name), f"{f.url} does not download {f.name}"
    assert [f.name for f in FILES if f.url is None] == ["CVD.ckpt"]


def test_workflow_entries_have_the_frontend_fields():
    entries = [e for _, node, _ in _loader_nodes() for e in node["properties"].get("models", [])]
    assert entries
    for entry in entries:
        assert set(entry) <= {"name", "url", "directory"} and {"name", "directory"} <= set(entry), entry
    assert {"name": "CVD.ckpt", "directory": "cvd"} in entries  # its folder, without a download


def test_readme_gives_every_link_and_cvd_ckpt_says_where_to_get_it():
    readme = (ROOT / "README.md").read_text()
    missing = [f.url for f in FILES if f.url and f.url not in readme]
    assert not missing, f"README's model table lacks {missing}"
    cvd = next(f for f in FILES if f.name == "CVD.ckpt")
    assert cvd.page in readme
    from nodes.cvd_model import LOADER, SOURCES

    tooltip = next(i.tooltip for i in LOADER.inputs if i.name == "cvd")
    assert "Google Drive" in tooltip and "CVD" in tooltip, tooltip
    assert cvd.page in SOURCES["cvd"]  # the error for a missing file names the page
