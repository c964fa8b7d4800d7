"""Values no store column can hold (an integer outside signed 64 bits, a text with NUL),
found in one commit's rows before they reach the store."""

from __future__ import annotations

from typing import Final, NamedTuple

import orjson

from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.keys import PATTERN, RUN, GroupKey
from runwatch.stream.core.decode import RAW_KEEP, preview

_INT64: Final = range(-(2**63), 2**63)
ROW_TABLES: Final = (
    ("runs", RUN, "run_id"),
    ("tasks", RUN, "run_id"),
    ("workstreams", RUN, "run_id"),
    ("pattern_runs", PATTERN, "pattern_run_id"),
)


def unstorable_rows(changes: Changes) -> dict[str, str]:
    """Group key → the first row value no store column can hold (an integer outside signed
    64 bits, a text with NUL), for every group whose rows hold one."""
    found: dict[str, str] = {}
    for table, group_kind, id_name in ROW_TABLES:
        for row in getattr(changes, table):
            for name, value in row.items():
                kind = type(value)
                if (kind is int and value not in _INT64) or (kind is str and "\x00" in value):
                    key = GroupKey(group_kind, str(row[id_name])).text
                    found.setdefault(key, f"{table}.{name}={preview(value)}")
    return found


def read_back(source: str, offset: int, length: int) -> bytes:
    """The bytes of an accepted line, read again from its file (best effort)."""
    try:
        with open(source, "rb") as handle:
            handle.seek(offset)
            return handle.read(min(length, RAW_KEEP))
    except OSError:
        return b""


class LostLine(NamedTuple):
    """An accepted line of a group set aside: where it is and why."""

    source_id: int
    offset: int
    length: int
    detail: str


def set_aside(changes: Changes) -> tuple[list[GroupKey], list[LostLine]]:
    """Take every group whose rows hold an unstorable value out of `changes` (rows, states,
    task states, index); return those groups and the lines they had taken in this batch."""
    unstorable = unstorable_rows(changes)
    if not unstorable:
        return [], []
    for table, kind, id_name in ROW_TABLES:
        rows = getattr(changes, table)
        rows[:] = [row for row in rows if GroupKey(kind, str(row[id_name])).text not in unstorable]
    changes.states = [(key, blob) for key, blob in changes.states if key not in unstorable]
    changes.task_states = [part for part in changes.task_states if part[0] not in unstorable]
    kept: list[tuple[str, bytes]] = []
    lines: list[LostLine] = []
    for key, blob in changes.index:
        if key not in unstorable:
            kept.append((key, blob))
            continue
        for event_id, source_id, offset, length in orjson.loads(blob):
            detail = f"{unstorable[key]} cannot be stored (event {preview(event_id)})"
            lines.append(LostLine(source_id, offset, length, detail))
    changes.index = kept
    return [GroupKey.parse(text) for text in unstorable], lines
