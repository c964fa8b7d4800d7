"""The PostgreSQL projection store: SqliteStore's tables, rows and delivery contract, kept in
one schema of a PostgreSQL database through psycopg 3 (the URL: see postgres_dialect).

Delivery contract: as SqliteStore's. One `commit` is one transaction; every write is an
upsert keyed by the projection's primary keys, sent as one INSERT … SELECT FROM unnest(…)
per table. Writers serialize like SQLite's: `transaction()` (and `BEGIN IMMEDIATE` on `db`)
takes a per-schema advisory lock, so `derived_events.seq` becomes visible in commit order and
compare-and-set stream positions always compare with the last commit.

Replay: build with `PostgresStore(url naming a scratch schema, fast_unsafe=True)` (after
`drop_schema` of a leftover one), `finalize()`, `close()`, then `swap_schema`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from runwatch.sinks.store.api import Changes, StoreError, UnstorableValue
from runwatch.sinks.store.postgres_sql import PgConnection, PgTransaction, ddl, to_postgres
from runwatch.sinks.store.schema import CONVERGED, SCHEMA_VERSION, TABLES, check_version
from runwatch.sinks.store.shared import RUN_CHANGE, SharedQueries, parts
from runwatch.sinks.store.target import NAME, Target, with_schema


@dataclass(frozen=True, slots=True)
class Batch:
    """One table's rows of a `Changes`, written by one INSERT … SELECT FROM unnest(arrays):
    `insert` keeps the rows' order (identity columns number them as SQLite does), `nothing`
    keeps the row already there, `update` replaces it (the batch's last row per key wins, as
    with one statement per row), `add` adds the new value to the old one."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ()
    conflict: str = "insert"

    def statement(self, types: Mapping[str, str]) -> str:
        names = [to_postgres(c, False) for c in self.columns]
        arrays = ", ".join(f"%s::{types[c]}[]" for c in self.columns)
        out = (
            f"INSERT INTO {self.table} ({', '.join(names)}) SELECT {', '.join(names)} "
            f"FROM unnest({arrays}) WITH ORDINALITY AS u({', '.join(names)}, ord) "
            "ORDER BY ord"
        )
        if self.conflict == "nothing":
            return out + " ON CONFLICT DO NOTHING"
        if self.conflict in ("update", "add"):
            plus = f"{self.table}.{{0}} + " if self.conflict == "add" else ""
            sets = ", ".join(
                f"{n} = {plus.format(n)}excluded.{n}"
                for c, n in zip(self.columns, names, strict=True)
                if c not in self.key
            )
            return out + f" ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {sets}"
        return out

    def arrays(self, rows: Sequence[Sequence[Any]], types: Mapping[str, str]) -> list[list[Any]]:
        """The rows as one list per column, in the column's Python type."""
        if self.conflict == "update":
            at = [self.columns.index(k) for k in self.key]
            rows = list({tuple(row[i] for i in at): row for row in rows}.values())
        return [
            _coerce(list(values), types[column])
            for column, values in zip(self.columns, zip(*rows, strict=True), strict=True)
        ]


def _coerce(values: list[Any], kind: str) -> list[Any]:
    """One type per array: SQLite stores True as 1 and 2 in a REAL column as 2.0."""
    if kind == "bigint":
        return [None if v is None else int(v) for v in values]
    if kind == "double precision":
        return [None if v is None else float(v) for v in values]
    return values


def _batch(table: str, conflict: str = "insert") -> Batch:
    """The batch of a whole table's `inserted` columns, upserted by its key."""
    spec = TABLES[table]
    return Batch(table, spec.inserted, spec.key, conflict)


_BATCHES: Final = {
    **{field: _batch(table.name, "update") for field, table in CONVERGED.items()},
    "states": _batch("fold_state", "update"),
    "task_states": _batch("fold_tasks", "update"),
    "index": _batch("event_index"),
    "dead_letters": _batch("dead_letters", "nothing"),
    "checkpoints": _batch("checkpoints", "update"),
    "counters": _batch("counters", "add"),
    "derived": _batch("derived_events"),
    "outbox": _batch("outbox", "nothing"),
    "alert_states": _batch("alert_state", "update"),
}
_SMALL: Final = {
    "stalled": "UPDATE runs SET stalled=%s WHERE run_id=%s",
    "forget": "DELETE FROM checkpoints WHERE device=%s AND inode=%s",
    "evaluated": "UPDATE derived_events SET unevaluated=0 WHERE seq=%s",
    "alert_states_deleted": "DELETE FROM alert_state WHERE rule=%s AND group_key=%s",
    "hastened": "UPDATE outbox SET next_attempt_at=%s "
    "WHERE run_id=%s AND kind='job' AND state='pending' AND next_attempt_at > %s",
    "run_changes": to_postgres(RUN_CHANGE),
}
"""Updates and deletes of a few rows each, one statement per row (pipelined)."""


def _rows(changes: Changes, seen_at: str) -> Iterator[tuple[str, Sequence[Sequence[Any]]]]:
    """Each part of `changes`, in SqliteStore.write's order, with the values it writes."""
    for field, table in CONVERGED.items():
        rows: list[dict[str, Any]] = getattr(changes, field)
        yield field, [tuple(row[c] for c in table.names) for row in rows]
    yield from parts(changes, seen_at)


class PostgresStore(SharedQueries):
    """One projection in one schema of a PostgreSQL database. Not thread-safe: one owner,
    one connection; other threads and processes open their own with `store.connect`."""

    def __init__(self, url: str, *, fast_unsafe: bool = False) -> None:
        """Open the schema `url` names, creating its tables if it has none. `fast_unsafe`
        turns off synchronous commit, for a scratch schema swapped in only once complete."""
        self.target = Target.parse(url)
        self.path = self.target.printable
        self.db = PgConnection(self.target, lock_timeout_ms=5000)
        self._raw = self.db.raw
        try:
            with self.transaction():
                self._create_or_check()
            if fast_unsafe:
                self._raw.execute("SET synchronous_commit TO off")
            self._source_ids: dict[str, int] = dict(
                self._raw.execute("SELECT path, source_id FROM sources").fetchall()
            )
            self._types = self._column_types()
            self._inserts = {
                name: batch.statement(self._types[batch.table]) for name, batch in _BATCHES.items()
            }
        except psycopg.Error as exc:
            self.db.close()
            raise StoreError(
                f"{self.path}: not a usable runwatch database "
                f"({' '.join(str(exc).split())}); rebuild it from the logs "
                "with `runwatch replay`"
            ) from exc
        except BaseException:
            self.db.close()
            raise

    def _create_or_check(self) -> None:
        schema = self.target.schema
        row = self._raw.execute(
            "SELECT count(c.oid), to_regclass(format('%%I.meta', %s::text)) IS NOT NULL "
            "FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid "
            "WHERE n.nspname = %s",
            (schema, schema),
        ).fetchone()
        if row is None or row[0] == 0:
            self._create()
        elif not row[1]:
            raise StoreError(
                f"{self.path}: not a runwatch database (no schema version); "
                "point --db at another schema or rebuild with `runwatch replay`"
            )
        else:
            found = self._raw.execute(
                "SELECT value FROM meta WHERE key='schema_version'"
            ).fetchone()
            if found is None:
                raise StoreError(
                    f"{self.path}: not a runwatch database (no schema version)"
                    "; point --db at another schema or rebuild with "
                    "`runwatch replay`"
                )
            check_version(self.path, found[0])

    def _create(self) -> None:
        self._raw.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.target.schema))
        )
        for statement in ddl():
            self._raw.execute(statement)
        self._raw.cursor().executemany(
            "INSERT INTO meta VALUES (%s, %s)",
            [("schema_version", str(SCHEMA_VERSION)), ("database_id", uuid.uuid4().hex)],
        )

    def _column_types(self) -> dict[str, dict[str, str]]:
        """table → column → its PostgreSQL type, as the casts of the unnest arrays."""
        types: dict[str, dict[str, str]] = {}
        for table, column, kind in self._raw.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = "
            "c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' AND a.attnum > 0 "
            "AND NOT a.attisdropped",
            (self.target.schema,),
        ):
            types.setdefault(table, {})[column] = kind
        return types

    def transaction(self) -> PgTransaction:
        return PgTransaction(self.db)

    def source_id(self, path: str) -> int:
        """A small stable number for a source path, used by the event index."""
        found = self._source_ids.get(path)
        if found is None:
            row = self._raw.execute(
                "SELECT source_id FROM sources WHERE path=%s", (path,)
            ).fetchone()
            if row is None:  # an upsert spends an identity value even when it conflicts
                row = self._raw.execute(
                    "INSERT INTO sources (path) VALUES (%s) ON CONFLICT (path) DO UPDATE "
                    "SET path=excluded.path RETURNING source_id",
                    (path,),
                ).fetchone()
            assert row is not None, "INSERT … RETURNING gives a row"
            found = self._source_ids[path] = int(row[0])
        return found

    def write(self, changes: Changes, seen_at: str) -> None:
        """Write inside an open transaction, the same rows as SqliteStore.write; stream
        positions first, so a lost stream raises OwnershipLost before anything is written."""
        for stream, expected, new in changes.positions:
            self._advance(stream, expected, new, seen_at)
        cursor = self._raw.cursor()
        try:
            for name, rows in _rows(changes, seen_at):
                if not rows:
                    continue
                batch = _BATCHES.get(name)
                if batch is None:
                    cursor.executemany(_SMALL[name], rows)
                else:
                    arrays = batch.arrays(rows, self._types[batch.table])
                    cursor.execute(self._inserts[name], arrays)
        except psycopg.DataError as exc:  # bigint out of range, NUL in text, …
            raise UnstorableValue(f"{self.path}: {' '.join(str(exc).split())}") from exc

    def finalize(self) -> None:
        """Refresh the planner's statistics (replay's scratch schema becomes the real one)."""
        for (table,) in self._raw.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname=%s", (self.target.schema,)
        ).fetchall():
            self._raw.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))

    def close(self) -> None:
        self.db.close()


def swap_schema(url: str, scratch: str, target: str) -> None:
    """Replace schema `target` by `scratch` in one transaction (PostgreSQL's DDL is
    transactional): readers see the old projection or the new one, never a mix, and a
    failure leaves the old one as it was. Waits at most 10 s for the old one's writer lock."""
    for name in (scratch, target):
        if not NAME.fullmatch(name):
            raise StoreError(f"schema {name!r} is not a plain name")
    old = Target.parse(with_schema(url, target))
    db = PgConnection(old, lock_timeout_ms=10_000)
    try:
        with PgTransaction(db):
            db.raw.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(target))
            )
            db.raw.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    sql.Identifier(scratch), sql.Identifier(target)
                )
            )
    except psycopg.Error as exc:
        raise StoreError(
            f"{old.printable}: could not swap in schema {scratch!r} "
            f"({' '.join(str(exc).split())}); the old projection is unchanged"
        ) from exc
    finally:
        db.close()


def drop_schema(url: str) -> None:
    """Remove the schema `url` names and everything in it (a scratch build left behind)."""
    target = Target.parse(url)
    db = PgConnection(target, lock_timeout_ms=10_000)
    try:
        with PgTransaction(db):
            db.raw.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(target.schema))
            )
    except psycopg.Error as exc:
        raise StoreError(
            f"{target.printable}: could not drop the schema ({' '.join(str(exc).split())})"
        ) from exc
    finally:
        db.close()
