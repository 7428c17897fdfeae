"""Crash-safe staging: writer-identifying names, the sweep of dead writers' entries (never a live
writer's, never a user's file), and real SIGKILLs of a writing process, while encoding and between
the renames of a commit (the next sweep completes that set)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cvd_core.io import staging
from cvd_core.io.staging import StagedOutputs, Writer, parse_entry, staging_name, sweep_stale, this_writer, writer_alive

ROOT = Path(__file__).resolve().parents[2]


def _child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, text=True)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    if process.stdout:
        process.stdout.close()


def _dead_writer() -> Writer:
    """A writer whose process has ended (a real child that exited)."""
    child = _child("import os; from cvd_core.io.staging import this_writer; print(this_writer().tag)")
    tag = child.stdout.read().strip()
    _kill(child)
    host, boot, pid, start = tag.split("-")
    return Writer(host, boot, int(pid), int(start))


def _entry_name(name: str, writer: Writer, kind: str = "partial") -> str:
    return f".{name}.{staging.TAG}-{writer.tag}-0123abcd.{kind}"


def test_names_identify_the_writer_and_only_dead_writers_are_stale(tmp_path):
    me = this_writer()
    name = staging_name("view_0.mp4")
    assert name.startswith(".view_0.mp4.cvdstage-") and name.endswith(".partial")
    assert parse_entry(name) == ("view_0.mp4", me, "partial")
    assert writer_alive(me)
    dead = _dead_writer()
    assert dead.pid != me.pid and not writer_alive(dead)
    sleeper = _child("import time; from cvd_core.io.staging import this_writer; print(this_writer().tag, flush=True); "
                     "time.sleep(60)")
    try:
        host, boot, pid, start = sleeper.stdout.readline().strip().split("-")
        live = Writer(host, boot, int(pid), int(start))
        assert writer_alive(live)
        assert not writer_alive(Writer(host, boot, int(pid), int(start) + 1))  # the PID reused by another process
    finally:
        _kill(sleeper)
    zombie = _child("from cvd_core.io.staging import this_writer; print(this_writer().tag)")  # exits, not reaped
    host, boot, pid, start = zombie.stdout.read().strip().split("-")
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").exists() and b") Z " not in Path(f"/proc/{pid}/stat").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not writer_alive(Writer(host, boot, int(pid), int(start)))  # killed but not yet reaped: dead
    _kill(zombie)
    assert writer_alive(Writer("0" * 8 if me.host != "0" * 8 else "1" * 8, me.boot, dead.pid, 1))  # another host
    assert not writer_alive(Writer(me.host, "f" * 8 if me.boot != "f" * 8 else "e" * 8, me.pid, me.start))  # a past boot


def test_sweep_removes_dead_writers_entries_only(tmp_path):
    dead, me = _dead_writer(), this_writer()
    other_host = Writer("0" * 8 if me.host != "0" * 8 else "1" * 8, me.boot, dead.pid, dead.start)
    stale = [_entry_name("a_v0.mp4", dead), _entry_name("a_v1", dead), _entry_name("b_old", dead, "old")]
    kept = [_entry_name("mine.mp4", me), _entry_name("remote.mp4", other_host),
            ".a_v0.mp4.partial", "a_v0.mp4", f"a_v0.mp4.{staging.TAG}-{dead.tag}-0123abcd.partial",
            ".notes.cvdstage-zz.partial", ".git", ".fresh.0123456789.partial"]
    for name in stale + kept:
        path = tmp_path / name
        if name in (stale[1], stale[2], ".git"):
            path.mkdir()
            (path / "frame_00000.png").write_bytes(b"x")
        else:
            path.write_bytes(b"x")
    legacy = tmp_path / ".old_run_00001_v0.mp4.abcdef0123.partial"  # the former naming, untouched for an hour
    legacy.write_bytes(b"x")
    os.utime(legacy, (time.time() - 3600, time.time() - 3600))
    report = sweep_stale(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert sorted(map(os.path.basename, report.removed)) == sorted(stale + [legacy.name])
    assert report.live == 2 and report.completed == []
    assert sweep_stale(str(tmp_path / "missing")).removed == []  # a missing folder is not an error


WRITE_AND_WAIT = """
import os, sys, time
import numpy as np
from cvd_core.io import write_multiview
from cvd_core.progress import CallbackProgress

folder, format = sys.argv[1], sys.argv[2]
frames = np.zeros((2, 40, 32, 32, 3), np.uint8)
def advance(done, total):
    if done == 45:  # the first view written, the second being encoded
        print("writing", flush=True)
        time.sleep(60)  # killed here
write_multiview(frames, folder, lambda k: f"run_{k}", format=format, progress=CallbackProgress(advance))
"""


@pytest.mark.parametrize("format", ["mp4", "png"])
def test_sigkill_while_encoding_leaves_entries_the_next_save_removes(tmp_path, format):
    pytest.importorskip("av")
    writer = _child(WRITE_AND_WAIT, str(tmp_path), format)
    try:
        assert writer.stdout.readline().strip() == "writing"
        staged = sorted(os.listdir(tmp_path))
        assert staged and all(parse_entry(n)[1].pid == writer.pid for n in staged)  # hidden, named by the writer
        assert sweep_stale(str(tmp_path)).live == len(staged) and sorted(os.listdir(tmp_path)) == staged  # kept
    finally:
        _kill(writer)
    assert parse_entry(staged[0])[0] == ("run_0.mp4" if format == "mp4" else "run_0")
    with StagedOutputs(str(tmp_path)) as staged:  # the next save into the folder sweeps it first
        (Path(staged.stage("next.txt"))).write_text("ok")
        staged.commit()
    assert os.listdir(tmp_path) == ["next.txt"]


COMMIT_AND_DIE = """
import os, sys, time
from cvd_core.io.staging import StagedOutputs

folder, how = sys.argv[1], sys.argv[2]
real_replace, renames = os.replace, []
def replace(source, target):
    real_replace(source, target)
    renames.append(target)
    if len(renames) == 2:  # between the renames of the commit
        print("renamed", flush=True)
        if how == "die":
            os.kill(os.getpid(), 9)
        time.sleep(60)
with StagedOutputs(folder) as staged:
    for name in ("run_v0.txt", "run_v1.txt", "run_grid.txt"):
        with open(staged.stage(name), "w") as handle:
            handle.write(name)
    os.mkdir(staged.stage("run_v2", folder=True) + "/frames")
    with open(staged.stage("run_cameras.json", last=True), "w") as handle:
        handle.write("{}")
    os.replace = replace
    staged.commit()
"""


def test_sigkill_between_the_renames_of_a_commit_is_completed_by_the_sweep(tmp_path):
    outputs = ["run_cameras.json", "run_grid.txt", "run_v0.txt", "run_v1.txt", "run_v2"]
    sleeper = _child(COMMIT_AND_DIE, str(tmp_path), "sleep")
    try:
        assert sleeper.stdout.readline().strip() == "renamed"
        before = sorted(os.listdir(tmp_path))
        assert sweep_stale(str(tmp_path)).removed == [] and sorted(os.listdir(tmp_path)) == before  # live: untouched
    finally:
        _kill(sleeper)
    visible = sorted(n for n in os.listdir(tmp_path) if not n.startswith("."))
    assert visible == ["run_v0.txt", "run_v1.txt"]  # a partial set, until the sweep
    journal = [n for n in os.listdir(tmp_path) if n.endswith(".commit")]
    assert len(journal) == 1
    order = [e["final"] for e in json.loads((tmp_path / journal[0]).read_text())["entries"]]
    assert order[-1] == "run_cameras.json"  # the manifest is renamed last
    report = sweep_stale(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == outputs  # completed: nothing hidden left, nothing missing
    assert sorted(map(os.path.basename, report.completed)) == ["run_cameras.json", "run_grid.txt", "run_v2"]
    assert (tmp_path / "run_grid.txt").read_text() == "run_grid.txt" and (tmp_path / "run_v2" / "frames").is_dir()

    os.mkdir(tmp_path / "again")
    dead = _child(COMMIT_AND_DIE, str(tmp_path / "again"), "die")
    assert dead.stdout.readline().strip() == "renamed"
    _kill(dead)
    assert dead.returncode == -signal.SIGKILL
    sweep_stale(str(tmp_path / "again"))
    assert sorted(os.listdir(tmp_path / "again")) == outputs


def test_commit_measures_its_window_and_a_single_output_needs_no_journal(tmp_path):
    with StagedOutputs(str(tmp_path)) as staged:
        Path(staged.stage("only.txt")).write_text("x")
        assert staged._write_journal(staged._plan()) is None
        staged.commit()
    assert os.listdir(tmp_path) == ["only.txt"] and staged.commit_seconds >= 0
