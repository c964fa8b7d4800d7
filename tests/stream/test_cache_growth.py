"""More runs in flight than the cache holds: the cache grows (up to its ceiling) instead of
writing each run out and reading it back again and again — and the rows stay the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from runwatch.projections.events import format_time
from runwatch.sinks.store.keys import GroupKey
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.core.groups import Group
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor

SECOND = 1_000_000
T0 = 1_767_225_600 * SECOND  # 2026-01-01T00:00:00Z
RUNS = 60
ROUNDS = 8


class CountingStore(SqliteStore):
    """A real SQLite store that counts the groups read back."""

    loads = 0

    def load_group(self, group_key: str) -> tuple[dict[str, Any] | None, set[str]]:
        self.loads += 1
        return super().load_group(group_key)


def interleaved() -> list[bytes]:
    """Every run gets one task event per round, round after round."""
    lines = []
    for round_ in range(ROUNDS):
        for run in range(RUNS):
            at = T0 + (round_ * RUNS + run) * SECOND
            record = {
                "event_id": f"e{run}-{round_}",
                "event_type": "task_started",
                "timestamp": format_time(at),
                "run_id": f"R{run}",
                "task_id": f"t{round_}",
            }
            lines.append(orjson.dumps(record))
    return lines


def replay_with(db: Path, ceiling: int) -> tuple[int, list[Any]]:
    store = CountingStore(db)
    processor = Processor(
        store,
        stall_after_s=1800,
        max_line_bytes=8 << 20,
        wall_clock=lambda: "2026-01-01T00:00:00.000000Z",
        max_groups=8,
        max_groups_ceiling=ceiling,
    )
    items = interleaved()
    for start in range(0, len(items), RUNS):
        chunk = items[start : start + RUNS]
        processor.process("events.jsonl", 1, Lines(0, 1, chunk, sum(len(i) + 1 for i in chunk)))
        processor.commit([], everything=False)
    processor.commit([])
    rows = store.db.execute("SELECT * FROM tasks ORDER BY run_id, task_id").fetchall()
    loads = store.loads
    store.close()
    return loads, rows


def test_the_cache_grows_while_evicted_runs_come_back(tmp_path: Path) -> None:
    fixed_loads, fixed_rows = replay_with(tmp_path / "fixed.db", ceiling=8)
    grown_loads, grown_rows = replay_with(tmp_path / "grown.db", ceiling=1024)
    assert grown_rows == fixed_rows and len(grown_rows) == RUNS * ROUNDS
    assert fixed_loads >= RUNS * (ROUNDS - 1), "a fixed cache reads every run back each round"
    assert grown_loads <= 2 * RUNS, "read back for about one round while it grows"


def test_the_ceiling_bounds_the_growth(tmp_path: Path) -> None:
    loads, _ = replay_with(tmp_path / "capped.db", ceiling=20)
    assert loads >= (RUNS - 20) * (ROUNDS - 1), "past the ceiling, runs are read back"


def test_lines_of_one_run_in_a_row_with_a_cache_of_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`process` keeps the group of the line before for the next line of the same run; with
    room for one group, each switch of run still evicts one and loads the other."""
    lines = [
        orjson.dumps(
            {
                "event_id": f"e{run}-{round_}-{step}",
                "event_type": "task_started",
                "timestamp": format_time(T0 + (round_ * 100 + run * 10 + step) * SECOND),
                "run_id": f"R{run}",
                "task_id": f"t{step}",
            }
        )
        for round_ in range(2)
        for run in range(5)
        for step in range(3)
    ]
    loaded: list[GroupKey] = []
    load = Processor._load

    def counted(self: Processor, key: GroupKey) -> Group:
        loaded.append(key)
        return load(self, key)

    monkeypatch.setattr(Processor, "_load", counted)
    results = []
    for room in (1, 1024):
        loaded.clear()
        store = SqliteStore(tmp_path / f"{room}.db")
        processor = Processor(
            store,
            stall_after_s=1800,
            max_line_bytes=8 << 20,
            wall_clock=lambda: "2026-01-01T00:00:00.000000Z",
            max_groups=room,
        )
        end = sum(len(line) + 1 for line in lines)
        assert processor.process("events.jsonl", 1, Lines(0, 1, lines, end)) == len(lines)
        processor.commit([])
        rows = store.db.execute("SELECT * FROM tasks ORDER BY run_id, task_id").fetchall()
        results.append((len(loaded), rows))
        store.close()
    (small_loads, small_rows), (large_loads, large_rows) = results
    assert small_rows == large_rows and len(small_rows) == 5 * 3
    assert (small_loads, large_loads) == (10, 5), "a load per switch of run, not per line"
