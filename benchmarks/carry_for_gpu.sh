#!/usr/bin/env bash
# Prepare what the GPU check needs on a machine that has only a CUDA torch: .gpu_carry/ (git-ignored).
#
#   bash benchmarks/carry_for_gpu.sh [--wheels] [--with-av] [--python-version 3.12]
#        [--fixtures all|cvvae,cvd_backbone,cvd_epipolar,mcm] [--shared DIR]
#
# --wheels    pip download (on this machine, which must reach PyPI) the pinned list benchmarks/gpu_wheels.txt
#             for the GPU machine's Python (default 3.12) and manylinux x86_64, --no-deps, into .gpu_carry/wheels
# --fixtures  copy the parity fixtures (../shared/fixtures, or --shared DIR/fixtures) into
#             .gpu_carry/shared/fixtures; gpu_check.sh points CVD_SHARED_DIR there by itself
# Then copy or carry the checkout with .gpu_carry/ to the GPU machine and run bash benchmarks/gpu_check.sh OUTDIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
WANT_WHEELS=0; WITH_AV=0; PYVER=3.12; FIXTURES=""; SHARED="$ROOT/../shared"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WANT_WHEELS=1; shift ;;
    --with-av) WITH_AV=1; shift ;;
    --python-version) PYVER="$2"; shift 2 ;;
    --fixtures) FIXTURES="$2"; shift 2 ;;
    --shared) SHARED="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
CARRY="$ROOT/.gpu_carry"
mkdir -p "$CARRY"
if [ "$WANT_WHEELS" = 1 ]; then
  mkdir -p "$CARRY/wheels"
  mapfile -t PINS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$ROOT/benchmarks/gpu_wheels.txt" | grep -v '^$')
  [ "$WITH_AV" = 1 ] && PINS+=("av==18.1.0")
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: --python-version "$PYVER" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d "$CARRY/wheels" "${PINS[@]}"
fi
if [ -n "$FIXTURES" ]; then
  SRC="$SHARED/fixtures"
  [ -d "$SRC" ] || { echo "no fixtures at $SRC (give --shared DIR)" >&2; exit 1; }
  mkdir -p "$CARRY/shared/fixtures"
  cp "$SRC/README.md" "$CARRY/shared/fixtures/" 2>/dev/null || true
  if [ "$FIXTURES" = all ]; then FIXTURES="$(cd "$SRC" && ls -d */ | tr -d / | paste -sd, -)"; fi
  IFS=, read -r -a PARTS <<< "$FIXTURES"
  for part in "${PARTS[@]}"; do
    [ -d "$SRC/$part" ] || { echo "no fixture folder $SRC/$part" >&2; exit 1; }
    rm -rf "$CARRY/shared/fixtures/$part"
    cp -r "$SRC/$part" "$CARRY/shared/fixtures/$part"
    chmod -R u+w "$CARRY/shared/fixtures/$part"
  done
fi
echo "[carry] .gpu_carry holds $(du -sh "$CARRY" | cut -f1):"
du -sh "$CARRY"/* "$CARRY"/shared/fixtures/* 2>/dev/null | sed 's/^/[carry]   /'
