"""Crash-safe staging: several outputs in one folder appear together or not at all, and what a
killed writer leaves behind is recognised and cleaned up later.

Every output is first written under a hidden staging name in the *same* folder (so the final
``os.replace`` is an atomic rename on one filesystem)::

    .<name>.cvdstage-<host>-<boot>-<pid>-<start>-<random>.partial     an output being written
    .<name>.cvdstage-<host>-<boot>-<pid>-<start>-<random>.old         a replaced folder, moved aside
    .<name>.cvdstage-<host>-<boot>-<pid>-<start>-<random>.commit      the journal of a running commit

``host`` and ``boot`` are 8 hex digits of a hash of the host name (with the PID namespace, so
containers count as hosts of their own) and of the kernel's boot id,
``pid`` and ``start`` identify the writing process (its start time in clock ticks since boot, so a
reused PID is told apart). From the name alone :func:`writer_alive` decides whether the writer still
runs; :func:`sweep_stale` removes the entries of dead writers, and only those:

- an entry of a live process (another ComfyUI sharing the folder) is never touched;
- an entry written on another host (a network share) is left for that host to clean;
- an entry of this host from an earlier boot is stale;
- nothing that does not match the pattern above is touched (no user file has this name). Entries
  of the older naming (``.<name>.<10 hex>.partial``, no writer in the name) are removed only when
  untouched for :data:`LEGACY_STALE_S`.

Commit: when every output is complete, :meth:`StagedOutputs.commit` writes the journal (the list of
renames), renames each output into place (``last=True`` outputs, such as a manifest, last), then
deletes the journal. A writer killed between the first and the last rename leaves a partial set for
the moment; the next sweep finds its journal and finishes the renames (roll forward: every staged
output was already complete), so after a restart the set is whole. The renames themselves take
microseconds (``benchmarks/crash_leftovers.py`` measures them); during that window another process
listing the folder may see part of the set. A single output needs no journal (one rename).

Durability against a power cut is out of scope (no fsync): a SIGKILL leaves the page cache intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

LOG = logging.getLogger("cvd_multiview.staging")

TAG = "cvdstage"
KINDS = ("partial", "old", "commit")
JOURNAL_FORMAT = "cvd_staging_commit/1"
# Older releases named staging entries ``.<name>.<10 hex>.partial`` with no writer in the name; such
# an entry is taken as stale once nothing has written to it for this long (a live writer touches its
# file or folder with every frame).
LEGACY_STALE_S = 600.0

_ENTRY = re.compile(r"^\.(?P<name>.+)\.cvdstage-(?P<host>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-(?P<pid>\d+)-"
                    r"(?P<start>\d+)-(?P<rand>[0-9a-f]{8})\.(?P<kind>partial|old|commit)$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{10}\.partial$")


# ------------------------------------------------------------------------------ who writes

def _hash8(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:8]


def _boot_id() -> str:
    """Changes at every boot: the kernel's boot id on Linux, the boot time elsewhere ('' if unknown)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        pass
    try:
        import psutil  # ComfyUI depends on it; optional here
        return str(int(psutil.boot_time()))
    except Exception:
        return ""


def _pid_namespace() -> str:
    """The PID namespace (Linux): containers sharing a folder and a host name see other PIDs."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> Optional[int]:
    """Start time of process ``pid`` (clock ticks since boot on Linux, ms since the epoch elsewhere).

    ``None`` when no such process runs (a zombie, killed but not yet reaped, counts as gone); ``-1``
    when it exists but its start time cannot be read.
    """
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
            # the command name (field 2) may hold spaces and parentheses: fields follow the last ')'
            fields = stat[stat.rindex(b")") + 2:].split()
            return None if fields[0] in (b"Z", b"X") else int(fields[19])
        except (OSError, ValueError, IndexError):  # gone, or hidden by a hidepid mount: kill(pid, 0) tells
            return None if not _pid_exists(pid) else -1
    try:
        import psutil
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else int(process.create_time() * 1000)
    except ImportError:
        return None if not _pid_exists(pid) else -1
    except Exception:  # psutil.NoSuchProcess / AccessDenied without importing their names
        return None if not _pid_exists(pid) else -1


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


@dataclass(frozen=True)
class Writer:
    host: str
    boot: str
    pid: int
    start: int

    @property
    def tag(self) -> str:
        return f"{self.host}-{self.boot}-{self.pid}-{self.start}"


_SELF: dict = {}


def this_writer() -> Writer:
    """The current process as a writer (recomputed after a fork: the PID differs)."""
    pid = os.getpid()
    if _SELF.get("pid") != pid:
        start = process_start(pid)
        _SELF.update(pid=pid, writer=Writer(_hash8(socket.gethostname() + _pid_namespace()), _hash8(_boot_id()), pid,
                                            max(int(start or 0), 0)))
    return _SELF["writer"]


def writer_alive(writer: Writer) -> bool:
    """Whether the process that wrote an entry may still be running (True when it cannot be told)."""
    me = this_writer()
    if writer.host != me.host:
        return True  # another machine on a shared folder: not ours to judge
    if writer.boot != me.boot:
        return False  # written before this host's last boot
    if writer.pid == me.pid:
        return writer.start == me.start or me.start == 0
    start = process_start(writer.pid)
    if start is None:
        return False
    return start == -1 or writer.start == 0 or start == writer.start


def staging_name(name: str, kind: str = "partial") -> str:
    """A fresh hidden staging name for output ``name`` written by this process."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return f".{name}.{TAG}-{this_writer().tag}-{uuid.uuid4().hex[:8]}.{kind}"


def parse_entry(filename: str) -> Optional[Tuple[str, Writer, str]]:
    """``(output name, writer, kind)`` of a staging entry's file name, or None for any other name."""
    match = _ENTRY.match(filename)
    if match is None:
        return None
    writer = Writer(match["host"], match["boot"], int(match["pid"]), int(match["start"]))
    return match["name"], writer, match["kind"]


# ------------------------------------------------------------------------------ cleanup

def _remove(path: str) -> None:
    """Delete a file or folder if it exists; never raises (used during cleanup of another error)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


@dataclass
class SweepReport:
    removed: List[str] = field(default_factory=list)       # stale entries deleted (absolute paths)
    completed: List[str] = field(default_factory=list)     # outputs an interrupted commit put in place
    live: int = 0                                          # entries of running writers, left alone
    scanned: int = 0

    def merge(self, other: "SweepReport") -> None:
        self.removed += other.removed
        self.completed += other.completed
        self.live += other.live
        self.scanned += other.scanned


def _roll_forward(folder: str, journal_path: str, report: SweepReport) -> None:
    """Finish the renames of a dead writer's interrupted commit (its staged outputs were complete)."""
    try:
        with open(journal_path, encoding="utf-8") as handle:
            journal = json.load(handle)
        entries = journal["entries"] if journal.get("format") == JOURNAL_FORMAT else []
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        entries = []  # killed while writing the journal: no rename had started yet
    for entry in entries:
        try:
            temporary, final = (os.path.join(folder, os.path.basename(entry[k])) for k in ("temporary", "final"))
            trash = os.path.join(folder, os.path.basename(entry["trash"])) if entry.get("trash") else None
            if not os.path.lexists(temporary):
                continue  # renamed before the kill
            if trash is not None and os.path.isdir(final) and not os.path.lexists(trash):
                os.replace(final, trash)
            if os.path.lexists(final) and (os.path.isdir(final) or not entry.get("overwrite")):
                continue  # someone else's output has this name now: the staged copy goes as stale
            os.replace(temporary, final)
            report.completed.append(final)
        except (OSError, KeyError, TypeError) as exc:
            LOG.warning("cvd-multiview: finishing an interrupted commit in %s: %s", folder, exc)
    _remove(journal_path)
    report.removed.append(journal_path)


def _legacy_stale(path: str, now: float) -> bool:
    try:
        return now - os.lstat(path).st_mtime > LEGACY_STALE_S
    except OSError:
        return False


def sweep_stale(folder: str) -> SweepReport:
    """Remove this pack's staging entries of dead writers in ``folder`` (not recursive); never raises.

    Interrupted commits are finished first, so a set whose renames had started is completed, not lost.
    """
    report = SweepReport()
    try:
        names = os.listdir(folder)
    except OSError:
        return report
    report.scanned = len(names)
    parsed = [(n, parse_entry(n)) for n in names if n.startswith(".")]
    stale = {}  # writer -> True when it is dead (asked once per writer)
    for name, entry in parsed:
        if entry is not None and not stale.setdefault(entry[1], not writer_alive(entry[1])):
            report.live += 1
    for name, entry in parsed:  # journals first: they may still need their staged outputs
        if entry is not None and entry[2] == "commit" and stale[entry[1]]:
            _roll_forward(folder, os.path.join(folder, name), report)
    now = time.time()
    for name, entry in parsed:
        path = os.path.join(folder, name)
        if entry is not None and entry[2] != "commit" and stale[entry[1]] and os.path.lexists(path):
            _remove(path)
            report.removed.append(path)
        elif entry is None and _LEGACY.match(name) and _legacy_stale(path, now):
            _remove(path)
            report.removed.append(path)
    if report.removed:
        LOG.info("cvd-multiview: removed %d staging entr%s left by a killed writer in %s%s", len(report.removed),
                 "y" if len(report.removed) == 1 else "ies", folder,
                 f"; completed {len(report.completed)} interrupted output(s)" if report.completed else "")
    return report


# ------------------------------------------------------------------------------ staging

class StagedOutputs:
    """Context manager that stages outputs under hidden names and commits them together.

    >>> with StagedOutputs(folder) as staged:
    ...     tmp = staged.stage("view_0.mp4")   # write to tmp
    ...     staged.commit()                    # renames every staged output into place

    Entering sweeps ``folder`` for stale entries of dead writers (:func:`sweep_stale`).
    ``commit_seconds`` is the measured time between the first and the last rename of the commit.
    """

    def __init__(self, out_dir: str, overwrite: bool = False):
        self.out_dir = os.path.abspath(out_dir)
        self.overwrite = bool(overwrite)
        self._staged: List[Tuple[str, str, bool, bool]] = []  # (temporary, final, is_folder, last)
        self._committed = False
        self.commit_seconds: Optional[float] = None

    def __enter__(self) -> "StagedOutputs":
        sweep_stale(self.out_dir)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.discard()

    def final_path(self, name: str) -> str:
        """Absolute final path of output ``name`` inside the output folder."""
        return os.path.join(self.out_dir, name)

    def check_free(self, name: str) -> None:
        """Raise ``FileExistsError`` when ``name`` exists and overwriting is off."""
        final = self.final_path(name)
        if os.path.lexists(final) and not self.overwrite:
            raise FileExistsError(f"{final} already exists; choose another file name or pass overwrite=True")

    def stage(self, name: str, folder: bool = False, last: bool = False) -> str:
        """Reserve a staging path for output ``name`` (a folder is created, a file is not).

        ``last``: rename it after every other output (a manifest or poster that names the others).
        """
        self.check_free(name)
        if any(os.path.basename(final) == name for _, final, _, _ in self._staged):
            raise FileExistsError(f"{name} is staged twice")
        temporary = os.path.join(self.out_dir, staging_name(name))
        if folder:
            os.mkdir(temporary)
        self._staged.append((temporary, self.final_path(name), folder, bool(last)))
        return temporary

    def _plan(self) -> List[dict]:
        ordered = [s for s in self._staged if not s[3]] + [s for s in self._staged if s[3]]
        plan = []
        for temporary, final, folder, _ in ordered:
            trash = None
            if folder and os.path.lexists(final):  # os.replace cannot replace a non-empty folder
                trash = os.path.join(self.out_dir, staging_name(os.path.basename(final), "old"))
            plan.append({"temporary": temporary, "final": final, "folder": folder, "trash": trash,
                         "overwrite": self.overwrite})
        return plan

    def _write_journal(self, plan: List[dict]) -> Optional[str]:
        if len(plan) == 1 and plan[0]["trash"] is None:
            return None  # one rename is atomic by itself
        path = os.path.join(self.out_dir, staging_name(os.path.basename(plan[0]["final"]), "commit"))
        entries = [{k: (os.path.basename(v) if isinstance(v, str) else v) for k, v in e.items()} for e in plan]
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"format": JOURNAL_FORMAT, "entries": entries}, handle)
        return path

    def commit(self) -> None:
        """Rename every staged output to its final name; on failure undo the renames done so far."""
        for _, final, _, _ in self._staged:
            self.check_free(os.path.basename(final))
        plan = self._plan()
        journal = self._write_journal(plan) if plan else None
        done: List[dict] = []
        try:
            started = time.perf_counter()
            for step in plan:
                if step["trash"] is not None:
                    os.replace(step["final"], step["trash"])
                    done.append(dict(step, placed=False))  # the old folder is aside: put it back on failure
                os.replace(step["temporary"], step["final"])
                if step["trash"] is not None:
                    done[-1]["placed"] = True
                else:
                    done.append(dict(step, placed=True))
            self.commit_seconds = time.perf_counter() - started
        except BaseException:
            for step in reversed(done):
                if step["placed"]:
                    _remove(step["final"])
                if step["trash"] is not None:
                    os.replace(step["trash"], step["final"])
            if journal is not None:
                _remove(journal)
            raise
        if journal is not None:
            _remove(journal)
        for step in done:
            if step["trash"] is not None:
                _remove(step["trash"])
        self._committed = True

    def discard(self) -> None:
        """Delete every staged temporary (safe to call twice)."""
        for temporary, _, _, _ in self._staged:
            _remove(temporary)
        self._staged.clear()
