"""A big run's finished tasks leave memory for disk and come back when an event of one turns
up: the rows are those of a fold that kept everything, at every commit, while the memory
held follows the tasks in flight."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import snapshot
from runwatch.projections import Event, RunState
from runwatch.projections.events import format_time
from runwatch.sinks.store.spill import TasksOnDisk
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import wall_clock
from runwatch.stream.core.decode import decode
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor
from runwatch.stream.core.retire import JUST_FINISHED, Bloom, Retirement, _grown
from runwatch.stream.services.replay import replay
from runwatch.stream.settings.service import Settings

RUN = "BIG"
START = 1_767_261_600
KEEP_ALL = 10**9


def event(kind: str, at: int, task: str | None = None, **fields: Any) -> bytes:
    line: dict[str, Any] = {"event_type": kind, "timestamp": START + at, "run_id": RUN, **fields}
    if task is not None:
        line["task_id"] = task
        line["workstream_id"] = f"W{int(task[1:]) % 3}"
    return orjson.dumps(line)


def finished_tasks(first: int, last: int, ends: dict[int, int] | None = None) -> list[bytes]:
    out = []
    for n in range(first, last):
        end = (ends or {}).get(n, 2 * n + 1)
        out += [event("task_started", 2 * n, f"t{n}"), event("task_completed", end, f"t{n}")]
    return out


def retiring(store: SqliteStore, retire_from: int, just_finished: int = JUST_FINISHED) -> Processor:
    return Processor(
        store,
        stall_after_s=3600,
        max_line_bytes=1 << 20,
        wall_clock=wall_clock,
        retirement=Retirement(TasksOnDisk, retire_from, just_finished),
    )


def commit_lines(processor: Processor, lines: list[bytes], offset: int) -> int:
    """Fold `lines`, found at `offset` of one file, and commit; returns where they end."""
    end = offset + sum(len(line) + 1 for line in lines)
    processor.process("big.jsonl", 1, Lines(offset, 1, lines, end, {}))
    processor.commit([])
    return end


def the_run(processor: Processor) -> RunState | None:
    """The big run's state in memory (None: it left the cache, as a finished run does)."""
    group = processor._cache.get(("r", RUN))
    return group.state if group is not None and isinstance(group.state, RunState) else None


FIRST = [
    event("run_created", 0, payload={"total_tasks": 399}),
    *finished_tasks(0, 200, ends={100: 5000, 150: 4000}),
]
ERROR = event("task_failed", 3, "t7", severity="error")  # older than t7's end: counts only
STAGES: list[list[bytes]] = [
    FIRST,
    [*FIRST, ERROR],  # repeats of tasks retired at the last commit, and an error event
    [ERROR, event("task_progress", 30, "t17")],  # a repeat, and an event changing nothing
    # The run ends (399 of 400 tasks ended) while t100, whose end was the latest among the
    # retired, runs again: t150's end is the run's.
    [*finished_tasks(200, 400), event("task_started", 6000, "t100")],
    [event("task_started", 7000, "t400"), event("task_completed", 799, "t399")],
]


def fold_in_stages(db: Path, retire_from: int) -> tuple[list[dict[str, Any]], list[int | None]]:
    """The snapshot after each stage's commit, and the run's tasks in memory then (None:
    the run left the cache, as a finished one does at a commit)."""
    store = SqliteStore(db)
    processor = retiring(store, retire_from, just_finished=0)
    offset = 0
    built: list[dict[str, Any]] = []
    in_memory: list[int | None] = []
    try:
        for lines in STAGES:
            offset = commit_lines(processor, lines, offset)
            built.append(store.snapshot())
            state = the_run(processor)
            in_memory.append(None if state is None else len(state.tasks))
    finally:
        store.close()
    return built, in_memory


def test_a_run_with_its_finished_tasks_on_disk_writes_the_rows_of_one_that_kept_them(
    tmp_path: Path,
) -> None:
    kept, kept_in_memory = fold_in_stages(tmp_path / "kept.db", KEEP_ALL)
    retired, in_memory = fold_in_stages(tmp_path / "retired.db", 100)
    for stage, (mine, theirs) in enumerate(zip(retired, kept, strict=True)):
        assert mine == theirs, f"after stage {stage}"
    assert kept_in_memory == [200, 200, 200, None, None]
    # Retired at each commit while 100 or more are in memory: the two back at stage 2 stay.
    assert in_memory == [0, 0, 2, None, None]
    rows = [stage["runs"][0] for stage in retired]
    assert [row["status"] for row in rows] == ["running"] * 3 + ["succeeded"] * 2
    assert rows[3]["ended_at"] == format_time((START + 4000) * 1_000_000)
    assert [row["events_total"] for row in rows] == [401, 402, 403, 804, 805]
    assert [row["error_events"] for row in rows] == [0, 1, 1, 1, 1]


def test_a_giant_run_replayed_with_its_finished_tasks_on_disk_builds_the_same_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process and two workers (the giant run's worker retires its tasks, the parent
    writes each part it sends) build what a replay keeping every task builds; the file
    repeats its first lines at the end, so retired tasks come back."""
    lines = [event("run_created", 0, payload={"total_tasks": 3000})]
    lines += finished_tasks(0, 3000)
    lines += [*finished_tasks(0, 300), event("task_started", 7000, "t7")]
    rng = random.Random(7)
    lines += [
        orjson.dumps(
            {
                "event_type": "run_started",
                "timestamp": START + rng.randrange(6000),
                "run_id": f"small-{n}",
            }
        )
        for n in range(200)
    ]
    log = tmp_path / "giant.jsonl"
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    built = {}
    for name, retire_from, workers in (("kept", KEEP_ALL, 0), ("w0", 500, 0), ("w2", 500, 2)):
        monkeypatch.setattr("runwatch.stream.core.retire.RETIRE_FROM", retire_from)
        monkeypatch.setattr("runwatch.stream.services.replay.COMMIT_EVERY", 1_000)
        summary = replay(
            [log],
            tmp_path / f"{name}.db",
            Settings(),
            progress=False,
            workers=workers,
            chunk_bytes=32 * 1024,
        )
        built[name] = (snapshot(tmp_path / f"{name}.db"), summary.tally)
    assert built["w0"] == built["kept"]
    assert built["w2"] == built["kept"]
    [giant] = [row for row in built["kept"][0]["runs"] if row["run_id"] == RUN]
    assert (giant["tasks_total"], giant["tasks_running"], giant["events_total"]) == (3000, 1, 6002)


def test_a_fold_holds_the_tasks_in_flight_not_the_tasks_of_the_run(tmp_path: Path) -> None:
    """20,000 tasks, 50 running at any time, committed every 2,000 events: what stays in
    memory is the ids of the first 999 tasks, the tasks that finished last and those since
    the last commit, the same at the end as halfway through."""
    store = SqliteStore(tmp_path / "big.db")
    processor = retiring(store, 500)
    lines = [event("run_created", 0, payload={"total_tasks": 20_000})]
    for n in range(20_000):
        lines.append(event("task_started", n, f"t{n}"))
        if n >= 50:
            lines.append(event("task_completed", n, f"t{n - 50}"))
    held: list[int] = []
    offset = 0
    try:
        for start in range(0, len(lines), 2_000):
            offset = commit_lines(processor, lines[start : start + 2_000], offset)
            state = the_run(processor)
            assert state is not None
            held.append(len(state.tasks) + len(state.seen))
            tasks_held = len(state.tasks)
        [run] = store.snapshot()["runs"]
    finally:
        store.close()
    assert run["tasks_total"] == 20_000 and run["tasks_running"] == 50
    assert run["events_total"] == len(lines)
    assert tasks_held == 50 + 1_000  # running, and the finished that ended last (they stay)
    half = len(held) // 2
    assert max(held[half:]) <= max(held[:half]) < 2 * 999 + 3 * 2_000


def test_a_bloom_filter_never_forgets_a_member_and_grows_from_disk() -> None:
    keys = [f"task-{n}" for n in range(70_000)]
    bloom = Bloom(1 << 16)
    for key in keys[:4_000]:
        bloom.update([key])
    assert all(key in bloom for key in keys[:4_000])
    strangers = sum(key in bloom for key in keys[4_000:])
    assert strangers < 66_000 * 0.01  # about 1 in 200 at capacity
    disk = TasksOnDisk()
    try:
        disk.put(1, ((key, 0, b"[]") for key in keys))
        disk.put(2, [("other", 0, b"[]")])
        grown = _grown(len(keys), disk, 1)
        assert grown.capacity >= 2 * len(keys)
        assert all(key in grown for key in keys)
        assert disk.take(1, "task-3") == (b"[]", 0) and disk.take(1, "task-3") is None
        disk.drop([1])
        assert list(disk.task_ids(1)) == [] and list(disk.task_ids(2)) == ["other"]
    finally:
        disk.close()


def test_late_parts_merged_into_a_run_with_retired_tasks_bring_them_back_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open run of 3,000 tasks falls quiet, so its worker hands it over; its later lines,
    repeats and late events of long finished tasks, come from a worker as parts the parent
    merges into its own state of the run, whose finished tasks it has retired by then (it
    writes the run at its commits once it holds 400 unwritten events)."""
    big = [event("run_created", 0, payload={"total_tasks": 5000}), *finished_tasks(0, 3000)]

    def filler(tag: str) -> list[bytes]:
        return [
            orjson.dumps(
                {"event_type": "run_started", "timestamp": START + n, "run_id": f"{tag}{n}"}
            )
            for n in range(3000)
        ]

    late = [event("task_progress", 7000 + n, f"t{n}") for n in range(0, 3000, 7)]
    again = [*finished_tasks(0, 400), ERROR, event("task_started", 8000, "t100")]
    lines = [*big, *filler("a"), *late, *filler("b"), *again, *filler("c")]
    log = tmp_path / "late.jsonl"
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    merged: list[str] = []
    merge = Processor.merge

    def counted(self: Processor, key: Any, *args: Any) -> set[str]:
        merged.append(key.name)
        return merge(self, key, *args)

    built = {}
    monkeypatch.setattr("runwatch.stream.services.replay.COMMIT_EVERY", 2_000)
    monkeypatch.setattr("runwatch.stream.core.groups.HELD_EVENTS", 400)
    for name, retire_from in (("kept", KEEP_ALL), ("retired", 500)):
        monkeypatch.setattr("runwatch.stream.core.retire.RETIRE_FROM", retire_from)
        with monkeypatch.context() as patch:
            patch.setattr(Processor, "merge", counted)
            replay(
                [log],
                tmp_path / f"{name}.db",
                Settings(),
                progress=False,
                workers=2,
                chunk_bytes=48 * 1024,
            )
        built[name] = snapshot(tmp_path / f"{name}.db")
    assert built["retired"] == built["kept"]
    assert merged.count(RUN) >= 4  # two late parts, each merged by both replays
    [row] = [row for row in built["kept"]["runs"] if row["run_id"] == RUN]
    assert (row["events_total"], row["error_events"], row["tasks_running"]) == (6432, 1, 430)


def test_a_retired_task_paged_back_in_is_the_task_that_left() -> None:
    """The pure half: `retire` takes finished tasks out of the state with their event ids
    and gives their saved form; `page_in` puts each back; the rows never change, and a
    state missing tasks refuses to be merged into another (its counts would be lost)."""
    events = [decoded(line) for line in STAGES[0]]
    whole, parted = RunState(RUN), RunState(RUN)
    for e in events:
        whole.apply(e)
        parted.apply(e)
    parted.retire(["t3", "t100"])  # tracking starts here: their ids stay in `seen`
    parted.apply(decoded(event("task_progress", 3, "t4")))
    whole.apply(decoded(event("task_progress", 3, "t4")))
    left = {task_id: saved for task_id, _, saved in parted.retire(["t4", "t5"])}
    assert left["t4"][6] and not left["t5"][6]  # only ids seen since tracking started
    assert parted.row() == whole.row() and parted.events_total == whole.events_total
    with pytest.raises(ValueError, match="only a whole state"):
        RunState(RUN).merge(parted)
    parted.page_in("t4", left["t4"], retired_end=parted.retired_end)
    assert parted.task_rows({"t4"}) == whole.task_rows({"t4"})
    assert parted.apply(decoded(event("task_progress", 3, "t4"))) is False  # a repeat
    assert parted.row() == whole.row()


def decoded(line: bytes) -> Event:
    event = decode(line)
    assert isinstance(event, Event)
    return event


def test_a_big_run_read_back_after_a_restart_lets_its_finished_tasks_and_ids_go(
    tmp_path: Path,
) -> None:
    """A restarted service reads the open run back whole from the store (its tasks saved
    with their event ids once it retired some); its next commit retires the finished tasks
    again, ids and all, and the rows are a kept fold's."""
    first = [event("run_created", 0, payload={"total_tasks": 5000}), *finished_tasks(0, 2000)]
    later = [event("task_started", 9000, "t3"), *finished_tasks(2000, 2100)]
    built, held = {}, {}
    for name, retire_from in (("kept", KEEP_ALL), ("retired", 100)):
        store = SqliteStore(tmp_path / f"{name}.db")
        offset = 0
        try:
            for lines in (first, later):  # a new processor each time: a restart
                processor = retiring(store, retire_from, just_finished=0)
                offset = commit_lines(processor, lines, offset)
            state = the_run(processor)
            assert state is not None
            held[name] = (len(state.tasks), len(state.seen))
            built[name] = store.snapshot()
        finally:
            store.close()
    assert built["retired"] == built["kept"]
    assert held["kept"] == (2100, 4202)
    # In memory: t3, running again; in `seen`: the run's first event, the ids of the tasks
    # before its 1,000th (from which the run keeps ids per task), and t3's new one.
    assert held["retired"] == (1, 1 + 2 * 999 + 1)
