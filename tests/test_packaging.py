"""Packaging facts that must stay true: dependency lists agree, README covers every node and the
two set-up commands, workflows ship in both formats, CI runs the README's test command, the
library example of docs/api.md runs from the wheel."""

import os
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


def test_root_init_imports_outside_a_package(tmp_path):
    """pytest (and other tools) may import the repository root's __init__.py as a plain module when
    the clone's folder name is not an identifier (e.g. 'cvd-multiview'); it must still work."""
    import subprocess

    script = ("import importlib.util, sys\n"
              f"spec = importlib.util.spec_from_file_location('__init__', {str(ROOT / '__init__.py')!r})\n"
              "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
              "import cvd_core\n"
              f"assert cvd_core.__file__ == {str(ROOT / 'cvd_core' / '__init__.py')!r}, cvd_core.__file__\n"
              "print(len(module.NODE_CLASS_MAPPINGS))\n")
    # A stale cvd_core installed in site-packages (pip install of an older release) comes first on the
    # path; the pack must still use its own.
    stale = Path(tmp_path) / "site" / "cvd_core"
    stale.mkdir(parents=True)
    (stale / "__init__.py").write_text("raise ImportError('the stale installed cvd_core was imported')\n")
    env = dict(os.environ, PYTHONPATH=str(stale.parent))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) > 10


def _docs_section_code(page: str, heading: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _build_wheel(out: Path) -> Path:
    """The wheel of a copy of the project (so no build folder lands in the checkout)."""
    import shutil
    import subprocess

    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "cvd_core", source / "cvd_core", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:  # setuptools >= 70.1 builds wheels by itself: use the test venv's, offline; else pip fetches one
        import setuptools
        isolation = [] if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (70, 1) else None
    except ImportError:
        isolation = None
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(out / "dist")]
    if isolation is not None:
        command.insert(4, "--no-build-isolation")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return next((out / "dist").glob("*.whl"))


def test_pip_install_gives_the_core_library_and_the_docs_example_runs(tmp_path):
    """`pip install .` installs ``cvd_core`` only (a top-level ``nodes`` would shadow ComfyUI's own); in a
    clean venv the core imports from the wheel and the example of docs/api.md runs. The venv gets the test
    venv's packages (torch, ...) appended to its path, after its own site-packages, and runs isolated
    (-I: no PYTHONPATH, no current folder), so ``cvd_core`` can only come from the wheel."""
    import subprocess
    import sysconfig
    import zipfile

    wheel = _build_wheel(tmp_path)
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"cvd_core"}, tops
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                             "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    site = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (Path(site) / "zz_test_venv_packages.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in ours))
    work = tmp_path / "work"
    work.mkdir()
    script = work / "example.py"
    script.write_text("import importlib.util, cvd_core\n"
                      f"assert cvd_core.__file__.startswith({site!r}), cvd_core.__file__\n"
                      "assert importlib.util.find_spec('nodes') is None, 'a top-level nodes package is installed'\n"
                      + _docs_section_code("api.md", "Use the core from Python"))
    run = subprocess.run([str(python), "-I", str(script)], cwd=work, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "[2, 4, 8, 8, 8]" in run.stdout
