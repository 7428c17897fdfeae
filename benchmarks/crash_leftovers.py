"""Hidden leftovers after a SIGKILL during a save, before and after a restart and the next save.

A child process (the writer) imports ``cvd_core`` from ``--pack`` (a checkout of this pack: run it
once on main's code and once on yours) and writes ``--views`` x ``--frames`` PNG frames with
``write_multiview`` into ``out/cvd/``, as CVD Save Multi-View Video does. Once it is a third of the
way through, it gets SIGKILL. Then, each in a fresh process of the same pack:

- ``restart``: what the pack does when ComfyUI loads it (``nodes/_crash_cleanup.sweep_tree`` on the
  output folder, where the pack has it; nothing otherwise);
- ``next save``: one more small save into the same folder.

After each step it counts the hidden entries the writer left (top level), the files inside them and
their bytes, and whether anything partial is visible. With ``--window`` it also times the commit
window of a whole save set (3 views + grid + poster + cameras: the time between the first and the
last rename, taken from ``os.replace`` calls) in the save node's sequence of that pack's version.

    python benchmarks/crash_leftovers.py --pack /path/to/checkout [--frames 200] [--window]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

WRITER = """
import sys
import numpy as np
from cvd_core.io import write_multiview
folder, views, frames, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pixels = np.random.default_rng(0).integers(0, 255, (views, frames, size, size, 3), dtype=np.uint8)
write_multiview(pixels, folder, lambda k: f"killtest_00001_{k}", format="png")
"""

RESTART = """
import os, sys
try:
    from nodes._crash_cleanup import sweep_tree
except ImportError:
    sys.exit(0)  # this pack cleans nothing at load
sweep_tree(sys.argv[1])
"""

NEXT_SAVE = """
import sys
import numpy as np
from cvd_core.io import write_multiview
write_multiview(np.zeros((1, 1, 8, 8, 3), np.uint8), sys.argv[1], lambda k: f"next_00002_{k}", format="png")
"""

WINDOW = """
import inspect, json, os, sys, tempfile, time
import numpy as np
from cvd_core.io import write_multiview
from cvd_core.io.atomic import StagedOutputs

# The save node's sequence of this pack's version: views + grid + poster + cameras sidecar.
one_commit = "staged" in inspect.signature(write_multiview).parameters
frames = np.zeros((3, 2, 16, 16, 3), np.uint8)
stem = lambda k: f"s_{k}" if k == "grid" else f"s_v{k}"
real_replace, renames = os.replace, []
def replace(source, target):
    real_replace(source, target)
    renames.append(time.perf_counter())
windows = []
for run in range(int(sys.argv[1])):
    with tempfile.TemporaryDirectory() as folder:
        renames.clear()
        with StagedOutputs(folder) as staged:
            extra = {"last": True} if one_commit else {}
            open(staged.stage("s_poster.png", **extra), "wb").write(b"x" * 1024)
            os.replace = replace
            written = write_multiview(frames, folder, stem, format="mp4", **({"staged": staged} if one_commit else {}))
            with open(staged.stage("s_cameras.json", **extra), "w") as handle:
                json.dump(written, handle)
            staged.commit()
            os.replace = real_replace
        windows.append(renames[-1] - renames[0])
print(json.dumps({"one_commit": one_commit, "renames": len(renames), "windows": windows}))
"""


def _run(pack: str, code: str, *args: str, wait: bool = True):
    env = dict(os.environ, PYTHONPATH=pack, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    if not wait:
        return subprocess.Popen(command, cwd=pack, env=env)
    return subprocess.run(command, cwd=pack, env=env, check=True, capture_output=True, text=True).stdout


def _count(folder: str, prefix: str) -> dict:
    """Hidden entries whose name starts with ``.<prefix>``, files inside them, bytes; visible ones."""
    hidden = [n for n in os.listdir(folder) if n.startswith("." + prefix)]
    files = size = 0
    for name in hidden:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            for root, _, names in os.walk(path):
                files += len(names)
                size += sum(os.path.getsize(os.path.join(root, n)) for n in names)
        else:
            files += 1
            size += os.path.getsize(path)
    visible = [n for n in os.listdir(folder) if n.startswith(prefix)]
    return {"hidden_entries": len(hidden), "hidden_files": files, "hidden_bytes": size, "visible": len(visible)}


def _frames_written(folder: str) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        total += sum(n.endswith(".png") for n in names)
    return total


def measure(pack: str, views: int, frames: int, size: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, "output", "cvd")
        os.makedirs(folder)
        writer = _run(pack, WRITER, folder, str(views), str(frames), str(size), wait=False)
        target = views * frames // 3
        deadline = time.monotonic() + 300
        while _frames_written(folder) < target:
            if writer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the writer ended before it could be killed; use more --frames")
            time.sleep(0.005)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        result = {"killed_after_frames": _frames_written(folder), "after_kill": _count(folder, "killtest")}
        _run(pack, RESTART, os.path.join(root, "output"))
        result["after_restart"] = _count(folder, "killtest")
        _run(pack, NEXT_SAVE, folder)
        result["after_next_save"] = _count(folder, "killtest")
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True, help="a checkout of this pack (its cvd_core and nodes are used)")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=0, help="also time this many commits of a save set")
    args = parser.parse_args()
    pack = os.path.abspath(args.pack)
    runs = [measure(pack, args.views, args.frames, args.size) for _ in range(args.repeats)]
    report = {"pack": pack, "views": args.views, "frames": args.frames, "size": args.size, "runs": runs}
    if args.window:
        window = json.loads(_run(pack, WINDOW, str(args.window)))
        report["commit_window_us"] = {"one_commit": window["one_commit"], "renames": window["renames"],
                                      "median": statistics.median(window["windows"]) * 1e6,
                                      "max": max(window["windows"]) * 1e6, "commits": len(window["windows"])}
    report["summary"] = {stage: {key: statistics.median(r[stage][key] for r in runs) for key in runs[0][stage]}
                         for stage in ("after_kill", "after_restart", "after_next_save")}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
