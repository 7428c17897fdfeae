"""The former name of :mod:`cvd_core.io.staging` (all-or-nothing outputs); kept for importers of it."""

from .staging import StagedOutputs, sweep_stale  # noqa: F401
