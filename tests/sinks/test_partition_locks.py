"""Partition ownership among processors sharing a PostgreSQL projection: a schema's partition
locks are its own, so deployments in other schemas of one database never wait on them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from runwatch.sinks.store import connect
from runwatch.sinks.store.api import Connection
from runwatch.sinks.store.locks import try_partition_lock


@pytest.fixture
def other_schema_url(postgres_url: str) -> Iterator[str]:
    """A second throw-away schema in the same database."""
    base = postgres_url.rsplit("schema=", 1)[0]
    other = f"rwtest_{uuid.uuid4().hex[:12]}"
    yield f"{base}schema={other}"
    admin_url = base.rstrip("?&")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {other} CASCADE")


def _sessions(*urls: str) -> list[Connection]:
    return [connect(url) for url in urls]


def _taken_within(session: Connection, partition: int, seconds: float) -> bool:
    """The server frees a closed session's locks when its backend exits, a moment after
    the client closed: try until the lock is taken or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not try_partition_lock(session, partition):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_partition_has_one_owner_per_schema(postgres_url: str, other_schema_url: str) -> None:
    first, rival, elsewhere = _sessions(postgres_url, postgres_url, other_schema_url)
    try:
        assert try_partition_lock(first, 0)
        assert not try_partition_lock(rival, 0), "a second processor of the schema waits"
        assert try_partition_lock(rival, 1), "other partitions are free"
        assert try_partition_lock(elsewhere, 0), "another schema's partition 0 is its own"
        first.close()
        assert _taken_within(rival, 0, 10.0), "the owner's session ended: the lock is free"
    finally:
        for session in (first, rival, elsewhere):
            session.close()
