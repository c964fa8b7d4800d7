"""Group keys and index entries: typed in the code, byte-identical to the stored forms that
existing databases hold (`r:<run>`, `p:<task>`, `o:`; a JSON list of 4-element lists)."""

from __future__ import annotations

from pathlib import Path

import orjson

from runwatch.sinks.store.keys import GroupKey, IndexEntry, dump_index, load_index
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import wall_clock
from runwatch.stream.core.decode import parse_time
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor

T0 = "2025-11-26T14:46:52.742613Z"


def test_group_key_text_round_trips() -> None:
    """A key read back from the database is the key that wrote it, colons in names included."""
    for text in ("r:RUN-1", "p:PRUN-1", "o:", "r:a:b"):
        assert GroupKey.parse(text).text == text
    assert GroupKey.run("RUN-1") == GroupKey("r", "RUN-1") == ("r", "RUN-1")


def test_index_entries_serialise_as_lists() -> None:
    """Typed entries and the fold's plain tuples are stored alike, and load back typed."""
    blob = dump_index([("e1", 1, 0, 10), IndexEntry("e2", 2, 10, 5)])
    assert blob == orjson.dumps([["e1", 1, 0, 10], ["e2", 2, 10, 5]])
    assert load_index(blob) == [IndexEntry("e1", 1, 0, 10), IndexEntry("e2", 2, 10, 5)]


def test_processor_stores_the_historic_key_forms(tmp_path: Path) -> None:
    """A run and a pattern run land under the keys older databases use; runless events under
    `o:<UTC day>`, each day a small group of its own."""
    lines = [
        orjson.dumps({"event_type": "run_started", "timestamp": T0, "run_id": "RUN-1"}) + b"\n",
        orjson.dumps(
            {"event_type": "pattern.execution.started", "timestamp": T0, "pattern_run_id": "P-1"}
        )
        + b"\n",
        orjson.dumps({"event_type": "note", "timestamp": T0, "run_id": None}) + b"\n",
    ]
    store = SqliteStore(tmp_path / "db.sqlite")
    try:
        processor = Processor(
            store, stall_after_s=60, max_line_bytes=1 << 20, wall_clock=wall_clock
        )
        items = [line.rstrip(b"\n") for line in lines]
        end = sum(len(line) for line in lines)
        assert processor.process("events.jsonl", 1, Lines(0, 1, items, end, {})) == 3
        processor.commit([])
        index = dict(store.db.execute("SELECT group_key, entries FROM event_index").fetchall())
        states = {key for (key,) in store.db.execute("SELECT group_key FROM fold_state")}
    finally:
        store.close()
    day = f"o:{parse_time(T0) // 86_400_000_000}"
    assert set(index) == {"r:RUN-1", "p:P-1", day}
    assert states == {"r:RUN-1", "p:P-1", day}
    first = load_index(index["r:RUN-1"])
    assert [(e.source_id, e.offset, e.length) for e in first] == [(1, 0, len(items[0]))]
    assert load_index(index[day])[0].offset == len(lines[0]) + len(lines[1])
