#!/usr/bin/env bash
# The prepared GPU check: every GPU figure of issue 12 in one run; writes OUTDIR/report.json and report.md.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--wheels DIR] [--shared DIR]
#        [--official-cvvae DIR] [--official-cvd DIR] [--budget SECONDS] OUTDIR
#
# For a machine with an NVIDIA GPU whose Python has a CUDA torch and maybe nothing else of ours:
# - wheels: from --wheels DIR, else .gpu_carry/wheels/ if present (benchmarks/carry_for_gpu.sh makes it
#   from benchmarks/gpu_wheels.txt on a machine that reaches PyPI), installed with --no-deps into
#   $CVD_WHEEL_TARGET (default /tmp/cvd_gpu_site) and put on PYTHONPATH. Nothing is installed globally.
# - parity fixtures: --shared DIR (a folder holding fixtures/, like ../shared), else $CVD_SHARED_DIR,
#   else .gpu_carry/shared/ if present, else ../shared beside the checkout (tests skip what is missing).
# - Python: $PYTHON, else ./.venv/bin/python if present, else python3.
# --device cpu --quick runs every section at toy sizes (the test suite runs this, so it cannot rot).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi

WHEELS=""; SHARED=""; ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --shared) SHARED="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ -z "$WHEELS" ] && [ -d "$ROOT/.gpu_carry/wheels" ] && WHEELS="$ROOT/.gpu_carry/wheels"
if [ -n "$WHEELS" ]; then
  shopt -s nullglob
  wheel_files=("$WHEELS"/*.whl)
  shopt -u nullglob
  if [ ${#wheel_files[@]} -gt 0 ]; then
    TARGET="${CVD_WHEEL_TARGET:-/tmp/cvd_gpu_site}"
    echo "[gpu-check] installing ${#wheel_files[@]} wheels from $WHEELS into $TARGET (--no-deps)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$TARGET" \
        "${wheel_files[@]}"
    export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
if [ -n "$SHARED" ]; then export CVD_SHARED_DIR="$(cd "$SHARED" && pwd)"
elif [ -z "${CVD_SHARED_DIR:-}" ] && [ -d "$ROOT/.gpu_carry/shared/fixtures" ]; then
  export CVD_SHARED_DIR="$ROOT/.gpu_carry/shared"
fi
echo "[gpu-check] python $("$PY" -c 'import sys; print(sys.version.split()[0])'), fixtures: ${CVD_SHARED_DIR:-../shared (default)}"
cd "$ROOT"
exec "$PY" benchmarks/gpu_check.py "${ARGS[@]}"
