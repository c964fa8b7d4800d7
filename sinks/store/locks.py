"""Ownership among processors sharing one PostgreSQL projection: a session advisory lock per
partition, held by whoever took it until its connection ends (a crash included)."""

from __future__ import annotations

import hashlib

from runwatch.sinks.store.api import Connection


def try_partition_lock(connection: Connection, partition: int) -> bool:
    """Take `partition`'s lock for this session if no other session holds it. The locks are
    the schema's own: deployments in other schemas of the same database never wait on it."""
    (search_path,) = connection.execute("SELECT current_setting('search_path')").fetchone()
    row = connection.execute(
        "SELECT pg_try_advisory_lock(?, ?)", (partition_namespace(search_path), partition)
    ).fetchone()
    return bool(row[0])


def partition_namespace(search_path: str) -> int:
    """The first key of the partition locks of the schema that `search_path` names (a
    signed 32-bit int; the second key is the partition number)."""
    digest = hashlib.blake2b(f"runwatch:partitions:{search_path}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)
