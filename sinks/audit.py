"""The audit trail `logs/monitor.jsonl`: every derived and lifecycle event, once, in order.

Delivery contract: events reach the trail only through the `derived_events` table, written
in the same transaction as the state that caused them. `drain` appends the rows past the
trail's position, then fsyncs. Each record carries its own gapless `seq`, the database it
came from (`db`) and that database's row number (`db_seq`), so after a crash the trail is cut
back to its last complete line and resumes exactly where it stopped. A rebuilt database (a new
`db`) resumes at its newest row: the history a replay recorded is not re-announced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from .sqlite_store import SqliteStore


class AuditLog:
    """Appends `derived_events` rows to a JSONL file, exactly once each."""

    def __init__(self, path: Path, store: SqliteStore) -> None:
        self.path = path
        self.store = store
        self.database_id = store.meta()["database_id"]
        path.parent.mkdir(parents=True, exist_ok=True)
        last = _repair_and_read_last(path)
        self.seq = int(last.get("seq", 0))
        if last.get("db") == self.database_id:
            self.position = int(last["db_seq"])
        else:
            row = store.db.execute("SELECT max(seq) FROM derived_events").fetchone()
            self.position = int(row[0] or 0)

    def drain(self) -> list[dict[str, Any]]:
        """Append every recorded event not yet in the trail; returns the records written."""
        rows = self.store.db.execute(
            "SELECT seq, recorded_at, data FROM derived_events WHERE seq > ? ORDER BY seq",
            (self.position,)).fetchall()
        if not rows:
            return []
        records = []
        for db_seq, recorded_at, data in rows:
            self.seq += 1
            records.append({"seq": self.seq, "wall_time": recorded_at, **orjson.loads(data),
                            "db": self.database_id, "db_seq": db_seq})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"".join(orjson.dumps(r) + b"\n" for r in records))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.position = rows[-1][0]
        return records


def _repair_and_read_last(path: Path) -> dict[str, Any]:
    """The last complete record; a torn last line (a crash mid-write) is cut off first."""
    if not path.exists():
        return {}
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        block = min(size, 1 << 20)
        handle.seek(size - block)
        tail = handle.read(block)
        if tail and not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            handle.truncate(size - block + cut)
            tail = tail[:cut]
    last = tail.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        record = orjson.loads(last) if last else {}
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}
