"""All-or-nothing creation of several output files/folders in one directory.

Every output is first written under a hidden temporary name in the *same* directory (so the final
``os.replace`` is an atomic rename on one filesystem). Only when every output is complete are they
renamed into place; on any exception, including a cancel raised from a progress callback, the
temporaries are deleted and the exception continues. A cancelled run therefore leaves no file at all.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Optional


def _remove(path: str) -> None:
    """Delete a file or folder if it exists; never raises (used during cleanup of another error)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


class StagedOutputs:
    """Context manager that stages outputs under temporary names and commits them together.

    >>> with StagedOutputs(folder) as staged:
    ...     tmp = staged.stage("view_0.mp4")   # write to tmp
    ...     staged.commit()                    # renames every staged output into place
    """

    def __init__(self, out_dir: str, overwrite: bool = False):
        self.out_dir = os.path.abspath(out_dir)
        self.overwrite = bool(overwrite)
        self._staged: list[tuple[str, str, bool]] = []  # (temporary, final, is_folder)
        self._committed = False

    def __enter__(self) -> "StagedOutputs":
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

    def stage(self, name: str, folder: bool = False) -> str:
        """Reserve a temporary path for output ``name`` (a folder is created, a file is not)."""
        self.check_free(name)
        temporary = os.path.join(self.out_dir, f".{name}.{uuid.uuid4().hex[:10]}.partial")
        if folder:
            os.mkdir(temporary)
        self._staged.append((temporary, self.final_path(name), folder))
        return temporary

    def commit(self) -> None:
        """Rename every staged output to its final name; on failure undo the renames done so far."""
        done: list[tuple[str, Optional[str]]] = []  # (final, trash holding a replaced folder)
        try:
            for temporary, final, folder in self._staged:
                self.check_free(os.path.basename(final))
                trash = None
                if folder and os.path.lexists(final):
                    # os.replace cannot replace a non-empty folder: move the old one aside first.
                    trash = f"{final}.{uuid.uuid4().hex[:10]}.old"
                    os.replace(final, trash)
                os.replace(temporary, final)
                done.append((final, trash))
        except BaseException:
            for final, trash in reversed(done):
                _remove(final)
                if trash is not None:
                    os.replace(trash, final)
            raise
        for _, trash in done:
            if trash is not None:
                _remove(trash)
        self._committed = True

    def discard(self) -> None:
        """Delete every staged temporary (safe to call twice)."""
        for temporary, _, _ in self._staged:
            _remove(temporary)
        self._staged.clear()
