"""``cvd_core`` must never import ComfyUI: it is the engine other tools can reuse and test alone."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"comfy", "folder_paths", "nodes", "server", "comfy_api", "comfy_extras", "execution"}


def _imported_roots(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def test_no_comfyui_import_statements():
    offenders = [f"{p.relative_to(ROOT)}:{line} imports {name}"
                 for p in sorted((ROOT / "cvd_core").rglob("*.py"))
                 for name, line in _imported_roots(p) if name in FORBIDDEN]
    assert not offenders, "cvd_core must not import ComfyUI:\n" + "\n".join(offenders)


def test_detector_flags_a_comfy_import(tmp_path):
    sample = tmp_path / "bad.py"
    sample.write_text("import os\nfrom comfy.utils import ProgressBar\nimport folder_paths as fp\n")
    assert {name for name, _ in _imported_roots(sample)} & FORBIDDEN == {"comfy", "folder_paths"}


def test_every_core_module_imports_with_comfyui_blocked():
    """Import every cvd_core module in a fresh interpreter where ComfyUI modules cannot load."""
    modules = sorted({".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                      for p in (ROOT / "cvd_core").rglob("*.py")})
    script = (
        "import sys, importlib, importlib.abc\n"
        f"blocked = {sorted(FORBIDDEN)!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked: raise ImportError('blocked ComfyUI module ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('ok', len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-3000:]
