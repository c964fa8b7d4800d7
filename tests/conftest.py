"""Shared fixtures; the helper functions live in helpers.py (on pytest's pythonpath)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from helpers import replay_into, run_cli, snapshot

# CI explores a fixed set of examples, so a landing never depends on luck; developers'
# runs keep exploring new ones (and replay any failure from .hypothesis/).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

__all__ = ["replay_into", "run_cli", "snapshot"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database path in a folder that does not exist yet."""
    return tmp_path / "state" / "runwatch.db"
