"""Test helpers shared by every test folder (importable as `helpers`)."""


from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from runwatch.sinks.sqlite_store import SqliteStore
from runwatch.stream.files import expand
from runwatch.stream.replay import ReplaySummary, replay
from runwatch.stream.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
UPSTREAM = FIXTURES / "upstream"
RUNWATCH = [sys.executable, "-m", "runwatch.stream.cli"]


def replay_into(db: Path, *paths: Path | str, **settings: Any) -> ReplaySummary:
    """Replay files (or directories) into `db` with default settings, no progress bar."""
    return replay(expand([str(p) for p in paths]), db, Settings(**settings), progress=False)


def snapshot(db: Path) -> dict[str, list[dict[str, Any]]]:
    store = SqliteStore(db)
    try:
        return store.snapshot()
    finally:
        store.close()


def run_cli(*args: str | Path, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `runwatch ARGS` as a real subprocess and capture its output."""
    return subprocess.run([*RUNWATCH, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=300, check=False)
