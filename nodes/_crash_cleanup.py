"""At pack load: remove what a killed ComfyUI left in its output and temp folders.

A save, export or preview stages its files under hidden names (``cvd_core.io.staging``). When the
server is killed mid-write (the OOM killer, a second Ctrl+C, a crashed driver) those entries stay;
this sweep removes the ones whose writer is dead and finishes commits that were interrupted between
their renames. Entries of a live writer (another ComfyUI sharing the folder) and every file that is
not a staging entry of this pack are left alone. Each save also sweeps its own folder first.

The walk is bounded (hidden folders are not entered, at most ``MAX_DEPTH`` levels and
``MAX_ENTRIES`` names), so a huge output folder cannot delay the server's start.
"""

from __future__ import annotations

import os
import time
from typing import Iterable

from cvd_core.io.staging import SweepReport, sweep_stale

from . import _comfy

MAX_DEPTH = 6
MAX_ENTRIES = 200_000


def sweep_tree(root: str, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES) -> SweepReport:
    """Sweep ``root`` and its visible subfolders, breadth first, within the bounds."""
    report = SweepReport()
    level = [root]
    for _ in range(max_depth + 1):
        following = []
        for folder in level:
            if report.scanned >= max_entries:
                _comfy.LOG.warning("cvd-multiview: the crash cleanup stopped after %d names under %s", report.scanned,
                                   root)
                return report
            report.merge(sweep_stale(folder))
            try:
                with os.scandir(folder) as entries:
                    following += [e.path for e in entries if not e.name.startswith(".")
                                  and e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
        level = following
        if not level:
            break
    return report


def _folders() -> Iterable[str]:
    """ComfyUI's output and temp folders, also as its command line names them: ComfyUI (2024 and
    0.3.x) applies ``--output-directory`` / ``--temp-directory`` only after importing custom nodes."""
    for get in (_comfy.output_directory, _comfy.temp_directory):
        try:
            yield get()
        except Exception:  # outside ComfyUI (folder_paths missing): nothing to sweep
            return
    try:
        from comfy.cli_args import args
    except Exception:
        return
    if getattr(args, "output_directory", None):
        yield args.output_directory
    if getattr(args, "temp_directory", None):
        yield os.path.join(os.path.abspath(args.temp_directory), "temp")


def sweep_at_load() -> SweepReport:
    """Sweep ComfyUI's output and temp folders; never raises (the pack must load anyway)."""
    started = time.perf_counter()
    total = SweepReport()
    for root in dict.fromkeys(os.path.abspath(f) for f in _folders()):
        try:
            total.merge(sweep_tree(root))
        except Exception as exc:
            _comfy.LOG.warning("cvd-multiview: crash cleanup of %s failed: %s", root, exc)
    if total.removed or total.completed or total.live:  # quiet when there was nothing to do
        _comfy.LOG.info("cvd-multiview: crash cleanup: %d stale staging entr%s removed, %d output(s) of interrupted "
                        "commits completed, %d entr%s of running writers kept (%d names in %.2f s)",
                        len(total.removed), "y" if len(total.removed) == 1 else "ies", len(total.completed),
                        total.live, "y" if total.live == 1 else "ies", total.scanned,
                        time.perf_counter() - started)
    return total
