#!/usr/bin/env bash
# The Comfy Registry's own offline check of pyproject.toml (`comfy node validate`), with comfy-cli
# in a venv of its own so that its dependencies never constrain the test environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CVD_REGISTRY_VENV:-$ROOT/.venv-registry}"
[ -x "$VENV/bin/comfy" ] || {
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q comfy-cli 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
}
cd "$ROOT"
"$VENV/bin/comfy" --skip-prompt --no-enable-telemetry node validate
