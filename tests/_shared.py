"""Access to the parity data in ``../shared/fixtures`` (beside the project root).

A user's clone has no ``../shared``: tests that need it skip with a message saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_ROOT = Path(os.environ.get("CVD_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
FIXTURES = SHARED_ROOT / "fixtures"


def shared_fixture(relative: str) -> Path:
    """Path of a parity fixture, or skip the calling test when it is not available."""
    path = FIXTURES / relative
    if not path.exists():
        pytest.skip(f"parity fixture {relative} not found under {FIXTURES} "
                    "(the ../shared folder is only present in the development checkout)")
    return path
