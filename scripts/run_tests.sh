#!/usr/bin/env bash
# Install everything the tests need into ./.venv (from scratch on a fresh machine) and run the
# whole suite, integration tests with a real headless ComfyUI included. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CVD_VENV:-$ROOT/.venv}"
CVD_VENV="$VENV" bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# The integration tests must not silently skip when run through this script.
export CVD_REQUIRE_COMFYUI=1
exec "$VENV/bin/python" -m pytest "$@"
