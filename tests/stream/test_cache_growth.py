"""More runs in flight than the cache holds: the cache grows (up to its ceiling) instead of
writing each run out and reading it back again and again — and the rows stay the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from runwatch.projections.events import format_time
from runwatch.sinks.store.sqlite import SqliteStore
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
