"""The audit trail `logs/monitor.jsonl`: every derived and lifecycle event, once, in order,
in a tamper-evident hash chain.

Delivery contract: events reach the trail only through the `derived_events` table, written
in the same transaction as the state that caused them. `drain` appends the rows past the
trail's position in one write, then fsyncs. Each record carries its own gapless `seq`, the
database it came from (`db`) and that database's row number (`db_seq`), so after a crash the
trail is cut back to its last complete line and resumes exactly where it stopped. A rebuilt
database (a new `db`) resumes at its newest row: the history a replay recorded is not
re-announced, but the chain and `seq` carry on.

Record: the event's fields (`type`, `event_time`, `run_id`, ...) plus the trail's own keys,
which win over an event field of the same name: `seq` (1, 2, 3, ... one per line),
`wall_time` (when the event was recorded), `db`, `db_seq`, `prev` and `hash`.

Canonical JSON: the record without its `hash` key, serialised by orjson with `OPT_SORT_KEYS`
(keys sorted at every level, no whitespace, UTF-8, no newline). `hash` is the lowercase hex
SHA-256 of those bytes. The line on disk is exactly those bytes with `,"hash":"<hash>"`
inserted before the final `}`, then `\\n`: every byte of a line is covered, since an edit
either changes the hash or leaves a line that is not in canonical form.

Chain: `prev` is the previous line's `hash`; on line 1 it is `GENESIS` (64 zeros).

Trails written before the chain (records without `prev` and `hash`) are sealed, not
rewritten: the first chained record's `prev` is the SHA-256 of every byte before it. From then
on any edit to the old lines breaks the chain, but they were unprotected until the seal, so
`verify_trail` passes them with a warning count (`legacy_lines`); an unchained line after the
chain began is always a failure.

Anchor: after each batch the head of the trail is stored in the database's `meta` under
`audit_head`. A trail cut back while the service was down is continued after the anchor, so
the loss stays visible as a gap, and `verify_trail(path, store)` checks the trail against it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from runwatch.sinks.atomic import fsync_path
from runwatch.sinks.store import Store, reads

GENESIS: Final = "0" * 64
HEAD_KEY: Final = "audit_head"
_HASH_KEY: Final = b',"hash":"'


@dataclass(frozen=True, slots=True)
class Head:
    """The end of a trail: the next record continues after `seq` with `prev` = `hash`."""

    seq: int = 0
    hash: str = GENESIS
    db: str | None = None
    db_seq: int = 0


@dataclass(frozen=True, slots=True)
class TrailReport:
    """What `verify_trail` found: `problem` names the first bad line and what it means;
    `last_hash` is what the next line's `prev` must be, and `legacy_lines` counts lines from
    before the chain (a warning, not a failure)."""

    ok: bool
    records: int
    first_bad_line: int | None
    problem: str | None
    last_hash: str
    legacy_lines: int = 0


class AuditLog:
    """Appends `derived_events` rows to a JSONL hash chain, exactly once each."""

    def __init__(self, path: Path, store: Store, *, head_key: str = HEAD_KEY) -> None:
        """`head_key` names the anchor in `meta`: one per trail when several services
        (partition processors) share one database."""
        self.path = path
        self.store = store
        self.head_key = head_key
        meta = store.meta()
        self.database_id = meta["database_id"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            fsync_path(path.parent)
        head = max(_trail_head(path), _stored_head(meta, head_key), key=lambda h: h.seq)
        self.seq, self.prev = head.seq, head.hash
        if head.db == self.database_id:
            self.position = head.db_seq
        else:
            self.position = reads.last_derived_seq(store.db)

    def drain(self) -> list[dict[str, Any]]:
        """Append every recorded event not yet in the trail; returns the records written."""
        rows = reads.derived_since(self.store.db, self.position)
        if not rows:
            return []
        records, lines = self._extend(rows)
        _append(self.path, lines)
        self.seq, self.prev, self.position = records[-1]["seq"], records[-1]["hash"], rows[-1][0]
        self.store.set_meta(
            [
                (
                    self.head_key,
                    orjson.dumps(
                        {"seq": self.seq, "hash": self.prev, "db_seq": self.position}
                    ).decode(),
                )
            ]
        )
        return records

    def _extend(self, rows: list[tuple[int, str, bytes]]) -> tuple[list[dict[str, Any]], bytes]:
        """The records that continue the chain from the current head, and their lines."""
        records: list[dict[str, Any]] = []
        lines: list[bytes] = []
        prev = self.prev
        for number, (db_seq, recorded_at, data) in enumerate(rows, self.seq + 1):
            record = orjson.loads(data) | {
                "seq": number,
                "wall_time": recorded_at,
                "db": self.database_id,
                "db_seq": db_seq,
                "prev": prev,
            }
            record.pop("hash", None)
            canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
            record["hash"] = prev = hashlib.sha256(canonical).hexdigest()
            records.append(record)
            lines.append(_line(canonical, prev))
        return records, b"".join(lines)


def verify_trail(
    path: Path, store: Store | None = None, *, head_key: str = HEAD_KEY
) -> TrailReport:
    """Check every line (chain, hashes, canonical form, gapless seq), and with `store` the
    anchored head too. Streams line by line, so a trail of any size fits in memory; raises
    OSError if the file cannot be read."""
    anchor = _stored_head(store.meta(), head_key) if store is not None else Head()
    check = _Verifier(anchor)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            problem = check.line(number, line)
            if problem is not None:
                return check.report(number, problem)
    if anchor.seq > check.seq:
        return check.report(
            check.records + 1,
            f"the trail ends at seq {check.seq} but the "
            f"database's {HEAD_KEY} is seq {anchor.seq} (tail truncated)",
        )
    return check.report(None, None)


class _Verifier:
    """How far a verification pass has got: the last good seq and the hash the next needs."""

    def __init__(self, anchor: Head) -> None:
        self.anchor = anchor
        self.records = 0
        self.seq = 0
        self.hash = GENESIS
        self.chained = False
        self.legacy = hashlib.sha256()
        self.legacy_lines = 0

    def line(self, number: int, line: bytes) -> str | None:
        """Why line `number` breaks the trail, or None after moving past it."""
        record = _record(line)
        if isinstance(record, str):
            return record
        claimed = record.pop("hash", None)
        if claimed is not None or "prev" in record:
            problem = self._chain(number, line, record, claimed)
        else:
            problem = self._unchained()
        problem = problem or self._next_seq(record.get("seq"))
        if problem is None and record["seq"] == self.anchor.seq and claimed != self.anchor.hash:
            problem = f"hash differs from the database's {HEAD_KEY} (trail rewritten)"
        if problem is None:
            self._advance(record["seq"], line, claimed)
        return problem

    def _chain(
        self, number: int, line: bytes, record: dict[str, Any], claimed: object
    ) -> str | None:
        """A chained line must hash to its claim, be canonical, and link to the line before."""
        if not isinstance(claimed, str):
            return "hash missing or malformed (record altered)"
        canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        if hashlib.sha256(canonical).hexdigest() != claimed:
            return "hash mismatch (record altered)"
        if line != _line(canonical, claimed):
            return "not in canonical form (record altered)"
        if record.get("prev") == self.hash:
            return None
        if number == 1:
            return "prev is not the genesis value (the trail's beginning is missing)"
        if not self.chained:
            return (
                f"prev does not match the seal of legacy lines 1-{number - 1} "
                "(a legacy line altered, removed or reordered)"
            )
        return f"prev does not match line {number - 1}'s hash (line removed or reordered)"

    def _unchained(self) -> str | None:
        """Unchained (legacy) lines are only allowed before the seal."""
        if self.chained:
            return "no hash after the chain began (line forged or appended by other means)"
        return None

    def _next_seq(self, seq: object) -> str | None:
        """Every line's seq is exactly one more than the line before's."""
        if type(seq) is not int:
            return "seq missing or not an integer"
        if seq == self.seq + 1:
            return None
        reason = "gap" if seq > self.seq + 1 else "duplicate or out of order"
        return f"seq {seq} after {self.seq} ({reason})"

    def _advance(self, seq: int, line: bytes, claimed: str | None) -> None:
        """Move past a good line: the next must link to its hash, or to the legacy seal."""
        self.records, self.seq = self.records + 1, seq
        if claimed is None:
            self.legacy.update(line)
            self.legacy_lines += 1
            self.hash = self.legacy.hexdigest()
        else:
            self.hash, self.chained = claimed, True

    def report(self, number: int | None, problem: str | None) -> TrailReport:
        """The outcome, stopping at line `number` (None: the whole trail is good)."""
        return TrailReport(
            problem is None,
            self.records,
            number,
            problem and f"line {number}: {problem}",
            self.hash,
            self.legacy_lines,
        )


def _record(line: bytes) -> dict[str, Any] | str:
    """A complete line's JSON object, or why it is not one."""
    if not line.endswith(b"\n"):
        return "torn last line (no newline)"
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not valid JSON"
    return record if isinstance(record, dict) else "not a JSON object"


def _line(canonical: bytes, digest: str) -> bytes:
    """A record's line: its canonical JSON with the hash as the last key."""
    return b'%s%s%s"}\n' % (canonical[:-1], _HASH_KEY, digest.encode())


def _append(path: Path, data: bytes) -> None:
    """Write all of `data` at the end of `path` and make it durable before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _stored_head(meta: dict[str, str], key: str) -> Head:
    """The head anchored in the database's meta (the trail may be ahead of it, never behind)."""
    if key not in meta:
        return Head()
    head = orjson.loads(meta[key])
    return Head(int(head["seq"]), str(head["hash"]), meta["database_id"], int(head["db_seq"]))


def _trail_head(path: Path) -> Head:
    """Where the file's chain ends; a file from before the chain ends at its seal."""
    last = _repair_and_read_last(path)
    if not last:
        return Head()
    if "hash" in last:
        digest = str(last["hash"])
    else:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return Head(int(last.get("seq", 0)), digest, last.get("db"), int(last.get("db_seq", 0)))


def _repair_and_read_last(path: Path) -> dict[str, Any]:
    """The last complete record; a torn last line (a crash mid-write) is cut off first."""
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
