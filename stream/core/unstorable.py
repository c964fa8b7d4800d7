"""Values no store column can hold (an integer outside signed 64 bits, a text with NUL),
found in one commit's rows before they reach the store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import orjson

from runwatch.projections import DerivedEvent
from runwatch.sinks.store.api import Changes, DeadLetter
from runwatch.sinks.store.keys import PATTERN, RUN, GroupKey
from runwatch.stream.core.decode import RAW_KEEP, preview
from runwatch.stream.core.tally import Tally

_INT64: Final = range(-(2**63), 2**63)
UNSTORABLE: Final = "unstorable_value"
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
    """The first bytes of an accepted line, read again from its file (best effort; only
    when a group is set aside, which a projection bug alone causes: the fold keeps no
    line's bytes)."""
    try:
        with open(source, "rb") as handle:
            handle.seek(offset)
            return handle.read(min(length, RAW_KEEP))
    except OSError:
        return b""


def set_aside(changes: Changes, sources: dict[int, str], tally: Tally) -> list[GroupKey]:
    """Take every group whose rows hold an unstorable value out of `changes` (rows, states,
    task states, index) and return them; the lines they had taken in this batch become
    dead letters in `changes` and move from accepted to rejected in `tally` (`sources`:
    source id → path, to read their bytes back)."""
    unstorable = unstorable_rows(changes)
    if not unstorable:
        return []
    for table, kind, id_name in ROW_TABLES:
        rows = getattr(changes, table)
        rows[:] = [row for row in rows if GroupKey(kind, str(row[id_name])).text not in unstorable]
    changes.states = [(key, blob) for key, blob in changes.states if key not in unstorable]
    changes.task_states = [part for part in changes.task_states if part[0] not in unstorable]
    kept: list[tuple[str, bytes]] = []
    letters: list[DeadLetter] = []
    for key, blob in changes.index:
        if key not in unstorable:
            kept.append((key, blob))
            continue
        for event_id, source_id, offset, length in orjson.loads(blob):
            source = sources.get(source_id, f"source #{source_id}")
            detail = f"{unstorable[key]} cannot be stored (event {preview(event_id)})"
            raw = read_back(source, offset, length)
            letters.append(DeadLetter(source, offset, 0, UNSTORABLE, detail, raw, length))
    changes.index = kept
    changes.dead_letters.extend(letters)
    tally.accepted -= len(letters)
    tally.rejected[UNSTORABLE] = tally.rejected.get(UNSTORABLE, 0) + len(letters)
    return [GroupKey.parse(text) for text in unstorable]


def drop_runs(changes: Changes, runs: set[str]) -> None:
    """Take the outbox entries and hastened jobs of `runs` out of `changes`."""
    changes.outbox = [entry for entry in changes.outbox if entry.run_id not in runs]
    changes.hastened = [(run, at) for run, at in changes.hastened if run not in runs]


def rejections(letters: Iterable[DeadLetter], time: int) -> list[DerivedEvent]:
    """The EVENT_REJECTED derived event of each dead letter, at event time `time`."""
    return [
        DerivedEvent(
            "EVENT_REJECTED",
            time,
            None,
            {
                "source": d.source,
                "offset": d.offset,
                "line": d.line,
                "reason": d.reason,
                "detail": d.detail,
            },
        )
        for d in letters
    ]
