"""The pack's main job, end to end: start a real headless ComfyUI with the pack loaded, queue the
example workflows through the HTTP API, copy the results to ``out/`` and print their paths.

Run through ``scripts/demo.sh`` (which installs everything first). Options:
``--workflow NAME`` (repeatable; default: every workflow in workflows/api), ``--out DIR``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.comfy_harness import ComfyServer, output_files  # noqa: E402
from tests.support.test_models import install_test_models  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", action="append", help="workflow name in workflows/api (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "out"), help="where to copy the results (default: out/)")
    args = parser.parse_args()
    names = args.workflow or [p.stem for p in sorted((ROOT / "workflows" / "api").glob("*.json"))]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="cvd-demo-") as tmp:
        server = ComfyServer(Path(tmp))
        install_test_models(server.root)
        print(f"[demo] starting ComfyUI (the real server, CPU) in {tmp} ...", flush=True)
        with server:
            print(f"[demo] ComfyUI ready at {server.url} after {server.start_seconds:.1f} s", flush=True)
            for name in names:
                api_path = ROOT / "workflows" / "api" / f"{name}.json"
                if not api_path.exists():
                    print(f"[demo] no workflow named {name!r} in workflows/api", file=sys.stderr)
                    return 2
                ui_path = ROOT / "workflows" / f"{name}.json"
                ui = json.loads(ui_path.read_text()) if ui_path.exists() else None
                started = time.monotonic()
                entry = server.run(json.loads(api_path.read_text()), workflow=ui, timeout=1800)
                print(f"[demo] {name}: done in {time.monotonic() - started:.1f} s", flush=True)
                for items in output_files(entry).values():
                    for item in items:
                        if item.get("type", "output") != "output":
                            continue
                        source = server.output_dir / item.get("subfolder", "") / item["filename"]
                        target = out_dir / name / item["filename"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(source, target)
                        written.append(target)
    print("[demo] results:")
    for path in written:
        print(f"  {path}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
