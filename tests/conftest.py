"""Shared fixtures; the helper functions live in helpers.py (on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import replay_into, run_cli, snapshot

__all__ = ["replay_into", "run_cli", "snapshot"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database path in a folder that does not exist yet."""
    return tmp_path / "state" / "runwatch.db"
