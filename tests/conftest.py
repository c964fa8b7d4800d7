"""Shared fixtures; the helper functions live in helpers.py (on pytest's pythonpath)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from hypothesis import settings

from helpers import replay_into, run_cli, snapshot
from receivers import WebhookReceiver
from runwatch.sinks.store import Store, open_store

# CI explores a fixed set of examples, so a landing never depends on luck; developers'
# runs keep exploring new ones (and replay any failure from .hypothesis/).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

__all__ = ["replay_into", "run_cli", "snapshot"]

POSTGRES_URL = os.environ.get("RUNWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SKIPPED_SERVICES: dict[str, tuple[str, int]] = {}
"""Service name → (why its tests were skipped, how many), for the terminal summary."""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database path in a folder that does not exist yet."""
    return tmp_path / "state" / "runwatch.db"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """An empty log file, alone in the folder tmp_path/events."""
    folder = tmp_path / "events"
    folder.mkdir()
    path = folder / "run.jsonl"
    path.write_bytes(b"")
    return path


def skip_unreachable(service: str, address: str, reason: str) -> None:
    """Skip a test whose service is down, and say so loudly at the end; under CI, fail:
    CI runs these tests for real, so a missing service must not pass as green."""
    message = f"{address} unreachable ({reason})"
    if os.environ.get("CI"):
        pytest.fail(f"{service} {message}; CI runs these tests for real")
    _, count = SKIPPED_SERVICES.get(service, (message, 0))
    SKIPPED_SERVICES[service] = (message, count + 1)
    pytest.skip(f"{service} {message}")


@cache
def _postgres_down() -> str | None:
    """Why the test PostgreSQL cannot be reached, or None when it can."""
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:  # libpq's first line ends with the cause
        return (str(exc).splitlines() or ["unknown error"])[0].rpartition("failed: ")[2]
    return None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A store URL naming a throw-away schema in the test PostgreSQL, dropped afterwards."""
    reason = _postgres_down()
    if reason is not None:
        parts = urlsplit(POSTGRES_URL)
        skip_unreachable("POSTGRESQL", f"{parts.hostname}:{parts.port or 5432}", reason)
    schema = f"rwtest_{uuid.uuid4().hex[:12]}"
    yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store lives, once for each backend: a SQLite file in a folder that does not
    exist yet, or a PostgreSQL URL naming a fresh schema."""
    if request.param == "sqlite":
        return tmp_path / "state" / "runwatch.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_target: str | Path) -> Iterator[Store]:
    """An open store on each backend in turn."""
    opened = open_store(store_target)
    yield opened
    opened.close()


PROCESS_TESTS = Path(__file__).parent / "process"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under process/ runs real services for seconds each: `slow`, so that
    `pytest -m "not slow"` is the quick in-process run."""
    for item in items:
        if PROCESS_TESTS in item.path.parents:
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Name every service whose tests were skipped, last, so a green run cannot hide them."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for service, (message, count) in sorted(SKIPPED_SERVICES.items()):
        if reporter is not None:
            reporter.write_sep(
                "!", f"{service} TESTS SKIPPED: {message} — {count} test(s)", red=True, bold=True
            )


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    """A loopback webhook receiver, answering 200 unless scripted otherwise."""
    with WebhookReceiver() as receiver:
        yield receiver
