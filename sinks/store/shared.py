"""The SQL both stores run the same way, through connections that take `?` parameters:
reads, metadata and the compare-and-set of stream positions."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final

import orjson

from runwatch.sinks.store.api import Changes, Checkpoint, Connection, OwnershipLost
from runwatch.sinks.store.schema import SNAPSHOT


def iter_dicts(db: Any, sql: str, params: Sequence[object] = ()) -> Iterator[dict[str, Any]]:
    """Rows as dicts keyed by column name, one at a time, from any store connection (`?`
    parameters)."""
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def fetch_dicts(db: Any, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
    """All of `iter_dicts` at once."""
    return list(iter_dicts(db, sql, params))


@contextmanager
def transaction(connection: Connection) -> Iterator[Connection]:
    """BEGIN IMMEDIATE (the one writer) … COMMIT, rolled back on any exception."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class SharedQueries:
    """What both stores do the same way, in SQL their `db` connections both take (`?`
    parameters; PostgreSQL's connection rewrites them): the reads, the metadata and the
    compare-and-set of stream positions. Each store brings `db`, `transaction` and `write`."""

    db: Any

    def transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def write(self, changes: Changes, seen_at: str) -> None:
        raise NotImplementedError

    def commit(self, changes: Changes, seen_at: str) -> None:
        """Write one batch atomically (the whole delivery contract lives here)."""
        with self.transaction():
            self.write(changes, seen_at)

    def _advance(self, stream: str, expected: int | None, new: int, seen_at: str) -> None:
        """Compare-and-set one stream position; no matching row means another owner."""
        if expected is None:
            cursor = self.db.execute(
                "INSERT INTO stream_positions VALUES (?, ?, ?, ?) ON CONFLICT (stream) DO NOTHING",
                (stream, new, owner_name(), seen_at),
            )
        else:
            cursor = self.db.execute(
                "UPDATE stream_positions SET position=?, owner=?, updated_at=? "
                "WHERE stream=? AND position=?",
                (new, owner_name(), seen_at, stream, expected),
            )
        if cursor.rowcount != 1:
            row = self.db.execute(
                "SELECT position, owner FROM stream_positions WHERE stream=?", (stream,)
            ).fetchone()
            raise OwnershipLost(stream, expected, *(row or (None, None)))

    def position(self, stream: str) -> int | None:
        """The committed position of a stream, or None if no process has claimed it yet."""
        row = self.db.execute(
            "SELECT position FROM stream_positions WHERE stream=?", (stream,)
        ).fetchone()
        return None if row is None else int(row[0])

    def load_group(self, group_key: str) -> tuple[dict[str, Any] | None, set[str]]:
        """A group's saved fold state and the ids of the events already folded into it.
        A state saved in parts (a run's) comes back whole: its header with the saved tasks
        under "tasks". The runless events' group has ids but no state: its ids are read
        all the same."""
        row = self.db.execute(
            "SELECT state FROM fold_state WHERE group_key=?", (group_key,)
        ).fetchone()
        state = None if row is None else orjson.loads(row[0])
        tasks = {
            task_id: orjson.loads(blob)
            for task_id, blob in self.db.execute(
                "SELECT task_id, state FROM fold_tasks WHERE group_key=?", (group_key,)
            )
        }
        if state is not None and tasks:
            state["tasks"] = tasks
        seen: set[str] = set()
        for (entries,) in self.db.execute(
            "SELECT entries FROM event_index WHERE group_key=?", (group_key,)
        ):
            seen.update(entry[0] for entry in orjson.loads(entries))
        return state, seen

    def open_runs(self) -> Iterator[tuple[str, str, int]]:
        """(run_id, last_event_at, stalled) of every run that is not terminal."""
        return iter(
            self.db.execute(
                "SELECT run_id, last_event_at, stalled FROM runs "
                "WHERE status IN ('pending', 'running')"
            ).fetchall()
        )

    def checkpoints(self) -> dict[tuple[int, int], Checkpoint]:
        """Every checkpoint, keyed by the file's (device, inode)."""
        rows = self.db.execute(
            "SELECT device, inode, source, fingerprint, offset, line, tail_hash FROM checkpoints"
        ).fetchall()
        return {(r[0], r[1]): Checkpoint(*r) for r in rows}

    def alert_states(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every stored (rule, group, state) of the alert book."""
        for rule, group, blob in self.db.execute("SELECT * FROM alert_state").fetchall():
            yield rule, group, orjson.loads(blob)

    def unevaluated(self) -> list[tuple[int, dict[str, Any]]]:
        """Derived events recorded outside the fold (by deliveries and jobs) that alert rules
        have not seen yet."""
        return [
            (seq, orjson.loads(data))
            for seq, data in self.db.execute(
                "SELECT seq, data FROM derived_events WHERE unevaluated=1 ORDER BY seq"
            )
        ]

    def counters(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    def set_meta(self, items: Iterable[tuple[str, str]]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value=excluded.value",
                list(items),
            )

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every converged row, in key order: equal snapshots mean equal projections."""
        out = {}
        for table, (order, columns) in SNAPSHOT.items():
            out[table] = fetch_dicts(self.db, f"SELECT {columns} FROM {table} ORDER BY {order}")
        return out


def parts(changes: Changes, seen_at: str) -> Iterator[tuple[str, Sequence[Sequence[Any]]]]:
    """Every part of `changes` but the converged rows, in the order both stores write them,
    as the tuples their statements take (the table's `inserted` columns, in order)."""
    yield "states", changes.states
    yield "task_states", changes.task_states
    yield "index", changes.index
    yield "stalled", changes.stalled
    yield (
        "dead_letters",
        [
            (d.source, d.offset, d.line, d.reason, d.detail, d.raw, d.raw_size, seen_at)
            for d in changes.dead_letters
        ],
    )
    yield (
        "checkpoints",
        [
            (c.device, c.inode, c.source, c.fingerprint, c.offset, c.line, c.tail_hash, seen_at)
            for c in changes.checkpoints
        ],
    )
    yield "forget", changes.forget
    yield "counters", sorted(changes.counters.items())
    yield (
        "derived",
        [
            (d["type"], d.get("run_id"), d["event_time"], orjson.dumps(d), seen_at)
            for d in changes.derived
        ],
    )
    yield (
        "outbox",
        [
            (
                o.id,
                o.kind,
                o.target,
                o.alert_id,
                o.rule,
                o.run_id,
                o.state,
                orjson.dumps(o.payload),
                o.event_time,
                seen_at,
                o.not_before,
            )
            for o in changes.outbox
        ],
    )
    yield "hastened", [(at, run_id, at) for run_id, at in changes.hastened]
    yield "alert_states", changes.alert_states
    yield "alert_states_deleted", changes.alert_states_deleted
    yield "evaluated", [(seq,) for seq in changes.evaluated]
    yield "run_changes", [(run_id,) for run_id in changed_runs(changes)]


RUN_CHANGE: Final = (
    "INSERT INTO run_changes (run_id, seq) VALUES "
    "(?, (SELECT coalesce(max(seq), 0) + 1 FROM run_changes)) "
    "ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq"
)
"""A run's row changed: it takes the next change number. Writers commit one at a time (the
store's writer lock), so the numbers grow in commit order and a reader that has seen up to N
misses nothing by asking for the changes after N (the web dashboard's event ids)."""


def changed_runs(changes: Changes) -> list[str]:
    """The runs whose `runs` row this commit writes, each once, in the order written."""
    touched = [row["run_id"] for row in changes.runs]
    touched += [run_id for _, run_id in changes.stalled]
    return list(dict.fromkeys(touched))


def owner_name() -> str:
    """Who writes a stream position: host and pid (read at each write, so a fork shows)."""
    return f"{socket.gethostname()}:{os.getpid()}"
