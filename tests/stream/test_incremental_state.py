"""A commit's cost follows what changed, not the size of the run: a run's state is saved as
a small header plus one row per task, and a commit writes the header and the tasks that
changed since the last one (measured in rows and bytes written, never in time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import wall_clock
from runwatch.stream.core.groups import HELD_EVENTS
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor

RUN = "GIANT"


def line(etype: str, second: int, **fields: Any) -> bytes:
    when = f"2026-01-05T{8 + second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"
    return orjson.dumps({"event_type": etype, "timestamp": when, "run_id": RUN, **fields})


def run_lines(tasks: int) -> list[bytes]:
    """An open run (it declares more tasks than it has) of `tasks` finished tasks."""
    out = [line("run_created", 0, payload={"total_tasks": tasks + 100})]
    for n in range(tasks):
        out += [
            line("task_started", 1 + n % 3000, task_id=f"t{n}", workstream_id=f"W{n % 4}"),
            line("task_completed", 2 + n % 3000, task_id=f"t{n}"),
        ]
    return out


LATER = [
    line("task_started", 9000, task_id="t1", workstream_id="W1"),
    line("task_failed", 9001, task_id="t1"),
    line("task_started", 9002, task_id="t2"),
    line("task_started", 9003, task_id="new", workstream_id="W0"),
    line("note", 9004, severity="error"),
]
"""Five more events of the run: two tasks it had, one new task, one error."""


class Feed:
    """Lines of one source handed to a processor in batches, as the tailer does."""

    def __init__(self) -> None:
        self.offset = 0
        self.number = 1

    def process(self, processor: Processor, lines: list[bytes]) -> None:
        end = self.offset + sum(len(item) + 1 for item in lines)
        processor.process("events.jsonl", 1, Lines(self.offset, self.number, lines, end, {}))
        self.offset, self.number = end, self.number + len(lines)


def later_commit(db: Path, tasks: int) -> dict[str, Any]:
    """What the commit of LATER writes into a store that holds a run of `tasks` tasks,
    once with the run in memory and once read back after a restart."""
    store = SqliteStore(db)
    feed = Feed()
    try:
        processor = Processor(
            store, stall_after_s=3600, max_line_bytes=1 << 20, wall_clock=wall_clock
        )
        feed.process(processor, run_lines(tasks))
        processor.commit([])
        before = store.db.total_changes
        feed.process(processor, LATER)
        processor.commit([])
        written = store.db.total_changes - before
        restarted = Processor(
            store, stall_after_s=3600, max_line_bytes=1 << 20, wall_clock=wall_clock
        )
        before = store.db.total_changes
        feed.process(restarted, [line("task_completed", 9100, task_id="t2"), LATER[0]])
        restarted.commit([])
        written_after_restart = store.db.total_changes - before
        [(header,)] = store.db.execute(
            "SELECT length(state) FROM fold_state WHERE group_key=?", (f"r:{RUN}",)
        ).fetchall()
        [run] = store.snapshot()["runs"]
        [(saved_tasks,)] = store.db.execute("SELECT count(*) FROM fold_tasks").fetchall()
    finally:
        store.close()
    return {
        "rows": written,
        "rows after restart": written_after_restart,
        "header bytes": header,
        "run": run,
        "saved tasks": saved_tasks,
        "accepted": processor.total.accepted + restarted.total.accepted,
        "duplicate": restarted.total.duplicate,
    }


def test_a_commit_writes_what_changed_not_the_whole_run(tmp_path: Path) -> None:
    small, giant = (
        later_commit(tmp_path / "small.db", 100),
        later_commit(tmp_path / "giant.db", 5000),
    )
    # Rows: runs 1, tasks 3, fold_tasks 3, workstreams 3 (W0 new; W1 and W2 of the two
    # tasks that changed), fold_state 1, event_index 1, counters 1 (events_accepted),
    # run_changes 1 (the run's change number).
    assert small["rows"] == giant["rows"] == 14
    assert small["rows after restart"] == giant["rows after restart"] < 14
    # The header holds nothing per task; only its numbers have more digits.
    assert small["header bytes"] <= giant["header bytes"] <= small["header bytes"] + 4 < 400
    assert (giant["saved tasks"], giant["accepted"], giant["duplicate"]) == (5001, 10007, 1)
    run = giant["run"]
    assert (run["tasks_total"], run["tasks_succeeded"], run["tasks_failed"]) == (5100, 4999, 1)
    assert (run["tasks_running"], run["events_total"], run["error_events"]) == (1, 10007, 2)


def test_a_build_commit_writes_a_run_holding_many_unwritten_events(tmp_path: Path) -> None:
    """A replay's commits write only evicted groups, but a run holding HELD_EVENTS unwritten
    events is written all the same (it lets go of its index entries); the rows at the end
    are those of a build that wrote it only once."""
    lines = run_lines(HELD_EVENTS // 2)
    small = orjson.dumps(
        {"event_type": "run_started", "timestamp": "2026-01-05T08:00Z", "run_id": "S"}
    )
    built: list[dict[str, Any]] = []
    for everything in (False, True):
        store = SqliteStore(tmp_path / f"{everything}.db")
        feed = Feed()
        try:
            processor = Processor(
                store, stall_after_s=3600, max_line_bytes=1 << 20, wall_clock=wall_clock
            )
            feed.process(processor, [*lines, small])
            if not everything:
                processor.commit([], everything=False)
                assert groups_written(store) == {f"r:{RUN}"}
            feed.process(processor, LATER)
            processor.commit([])
            assert groups_written(store) == {f"r:{RUN}", "r:S"}
            built.append(store.snapshot())
        finally:
            store.close()
    assert built[0] == built[1]


def groups_written(store: SqliteStore) -> set[str]:
    states = {key for (key,) in store.db.execute("SELECT group_key FROM fold_state")}
    indexed = {key for (key,) in store.db.execute("SELECT group_key FROM event_index")}
    assert states == indexed
    return states
