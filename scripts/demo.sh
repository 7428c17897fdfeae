#!/usr/bin/env bash
# Install everything into ./.venv (from scratch on a fresh machine), start a real headless ComfyUI
# with the pack, queue the example workflows through the HTTP API and write the results to out/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CVD_VENV:-$ROOT/.venv}"
CVD_VENV="$VENV" bash "$ROOT/scripts/setup_env.sh"
exec "$VENV/bin/python" "$ROOT/scripts/run_demo.py" "$@"
