"""Ownership among processors sharing one PostgreSQL projection: a session advisory lock per
partition, held by whoever took it until its connection ends (a crash included)."""

from __future__ import annotations

from typing import Final

from runwatch.sinks.store.api import Connection

PARTITION_LOCKS: Final = 0x72770001
"""The first key of the partition advisory locks (the second is the partition number)."""


def try_partition_lock(connection: Connection, partition: int) -> bool:
    """Take `partition`'s lock for this session if no other session holds it."""
    row = connection.execute(
        "SELECT pg_try_advisory_lock(?, ?)", (PARTITION_LOCKS, partition)
    ).fetchone()
    return bool(row[0])
