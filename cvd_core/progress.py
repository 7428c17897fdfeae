"""A tiny progress/cancellation protocol so that long loops in ``cvd_core`` can report progress
without importing ComfyUI. ``nodes/_comfy.py`` binds it to ``comfy.utils.ProgressBar``, whose
update is also ComfyUI's cancellation point (it raises when the user presses Cancel).
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol


class Progress(Protocol):
    """What a long-running core function receives.

    ``start(total)`` announces the number of units, ``advance(n)`` reports ``n`` finished units
    and may raise to cancel (ComfyUI's interrupt), ``check()`` is a cancellation point without
    progress.
    """

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def check(self) -> None: ...


class NullProgress:
    """Progress that reports nowhere; the default for library use and tests."""

    def start(self, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def check(self) -> None:
        pass


class CallbackProgress:
    """Progress backed by plain callables (used by ``nodes/`` and by tests that count calls)."""

    def __init__(self, on_update: Callable[[int, int], None], on_check: Optional[Callable[[], None]] = None):
        self._on_update = on_update
        self._on_check = on_check
        self.total = 0
        self.done = 0

    def start(self, total: int) -> None:
        self.total = int(total)
        self.done = 0
        self._on_update(self.done, self.total)

    def advance(self, n: int = 1) -> None:
        self.done += int(n)
        self._on_update(self.done, self.total)

    def check(self) -> None:
        if self._on_check is not None:
            self._on_check()


def ensure_progress(progress: Optional[Progress]) -> Progress:
    """Return ``progress`` or a ``NullProgress`` so callers never test for ``None``."""
    return progress if progress is not None else NullProgress()
