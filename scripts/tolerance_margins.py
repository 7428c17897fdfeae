"""How close does every tolerance of the suite come to failing, under CPU kernels this machine would
not pick by itself?

Runs the given tests (default: ``tests/core``) once per kernel setting below with the
``tests.support.tolerance_probe`` plugin, then prints each check's worst *use* of its tolerance
(1.0 = exactly at the bound) and the setting where it occurred. A healthy bound stays well below 1
everywhere; a use near 1 marks a bound tuned to one machine's rounding.

    .venv/bin/python scripts/tolerance_margins.py [--only NAME ...] [pytest args, e.g. tests/core -k cvvae]

The settings emulate other machines with the kernels this CPU has: ATen's vector width
(``ATEN_CPU_CAPABILITY`` default = no SIMD, avx2), oneDNN's instruction set (``ONEDNN_MAX_CPU_ISA``),
MKL's code path (``MKL_ENABLE_INSTRUCTIONS``, ``MKL_CBWR``), OpenBLAS's kernel (numpy;
``OPENBLAS_CORETYPE``) and thread counts (reduction order). AVX-512/AMX kernels cannot be emulated on a
CPU without them: run this script on such a machine to cover them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {
    "as is": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "threads-1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "threads-2": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl-sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "openblas-prescott": {"OPENBLAS_CORETYPE": "Prescott"},
    "openblas-haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "all-generic-1-thread": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                             "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OPENBLAS_CORETYPE": "Prescott",
                             "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}


def run(setting: str, env_extra: dict, pytest_args: list, log: Path) -> dict:
    env = dict(os.environ, CVD_TOLERANCE_LOG=str(log), **env_extra)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.support.tolerance_probe",
                             "-p", "no:cacheprovider", *pytest_args], cwd=ROOT, env=env, capture_output=True, text=True)
    tail = result.stdout.strip().splitlines()[-1:] or [""]
    return {"setting": setting, "rc": result.returncode, "seconds": round(time.monotonic() - started), "summary": tail[0],
            "failures": [line for line in result.stdout.splitlines() if line.startswith("FAILED")]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    parser.add_argument("--json", help="write the per-site worst uses here")
    args, pytest_args = parser.parse_known_args()
    pytest_args = pytest_args or ["tests/core"]
    worst = defaultdict(lambda: (0.0, ""))
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for name, env_extra in SETTINGS.items():
            if args.only and name not in args.only:
                continue
            log = Path(folder) / f"{name}.jsonl"
            runs.append(run(name, env_extra, pytest_args, log))
            print(f"[{name}] rc {runs[-1]['rc']} in {runs[-1]['seconds']} s: {runs[-1]['summary']}", flush=True)
            for failure in runs[-1]["failures"]:
                print(f"    {failure}", flush=True)
            if not log.exists():
                continue
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                use = entry.get("use", float("nan"))
                if use >= worst[entry["site"]][0]:
                    worst[entry["site"]] = (use, name)
    print("\nworst use of each tolerance (1.0 = at the bound), highest first:")
    for site, (use, name) in sorted(worst.items(), key=lambda kv: -kv[1][0]):
        if use > 0:
            print(f"  {use:9.3g}  {site}  ({name})")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "worst": dict(worst)}, indent=2))
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
