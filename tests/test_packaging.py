"""Packaging facts that must stay true: dependency lists agree, README covers every node and the
two set-up commands, workflows ship in both formats, CI runs the README's test command."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def _requirements(name):
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11+")
def test_pyproject_matches_requirement_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "cvd-multiview"
    assert project["dependencies"] == _requirements("requirements.txt")
    assert project["optional-dependencies"]["test"] == _requirements("requirements-test.txt")
    for dep in project["dependencies"]:
        assert "<" not in dep and "==" not in dep, f"floors only in pyproject: {dep}"
    assert "torch>=2.1" in project["dependencies"]
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon", "includes"} <= set(comfy)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/run_tests.sh"]
    assert "bash scripts/run_tests.sh" in (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in (ROOT / "scripts" / "setup_env.sh").read_text()


def test_readme_documents_every_node():
    from tests.support.pack_info import pack_schemas
    readme = (ROOT / "README.md").read_text()
    missing = [s.node_id for s in pack_schemas() if f"`{s.node_id}`" not in readme]
    assert not missing, f"README does not document: {missing}"


def test_every_workflow_ships_in_both_formats():
    api = {p.stem for p in (ROOT / "workflows" / "api").glob("*.json")}
    ui = {p.stem for p in (ROOT / "workflows").glob("*.json")}
    assert api and api == ui, f"API-only: {api - ui}, UI-only: {ui - api}"


def test_root_init_imports_outside_a_package():
    """pytest (and other tools) may import the repository root's __init__.py as a plain module when
    the clone's folder name is not an identifier (e.g. 'cvd-multiview'); it must still work."""
    import importlib.util
    import subprocess

    script = ("import importlib.util, sys\n"
              f"sys.path.insert(0, {str(ROOT)!r})\n"
              f"spec = importlib.util.spec_from_file_location('__init__', {str(ROOT / '__init__.py')!r})\n"
              "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
              "print(len(module.NODE_CLASS_MAPPINGS))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) > 10
