"""The dashboard's fixtures: the crafted logs replayed into a real SQLite projection, the
dashboard served over it by uvicorn on 127.0.0.1, and another writer of the same file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import replay_into
from runwatch.sinks.store import Store, open_store
from runwatch.stream.web.app import Dashboard
from runwatch.stream.web.server import WebServer
from webcorpus import crafted_logs


@pytest.fixture(scope="module")
def projection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The crafted logs replayed into a SQLite projection (the logs stay beside it, so the
    run page reads its events back through the event index)."""
    root = tmp_path_factory.mktemp("web")
    (root / "logs").mkdir()
    (root / "logs" / "events.jsonl").write_bytes(b"\n".join(crafted_logs()) + b"\n")
    replay_into(root / "rw.db", root / "logs")
    return root / "rw.db"


@pytest.fixture(scope="module")
def served(projection: Path) -> Iterator[WebServer]:
    """The dashboard over the projection, as `runwatch serve` runs it."""
    server = WebServer("127.0.0.1", 0, Dashboard(projection, poll_s=0.05, ping_s=0.3))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def writer(projection: Path) -> Iterator[Store]:
    """Another writer of the same database, committing as the service does."""
    store = open_store(projection)
    yield store
    store.close()
