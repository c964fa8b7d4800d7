"""Garbage in a real file: every bad line is dead-lettered exactly, good lines still count."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import UPSTREAM, replay_into, run_cli
from runwatch.projections import Event, RunState
from runwatch.sinks.store import open_store
from runwatch.sinks.store.keys import GroupKey
from runwatch.stream.console import wall_clock
from runwatch.stream.core.decode import RAW_KEEP, decode
from runwatch.stream.core.lines import BOM, Lines
from runwatch.stream.core.processor import Processor
from runwatch.stream.services.replay import ReplaySummary

BIG_LINE = b"garbage!" * (5 * 1024 * 1024 // 8) + b"tail"  # a little over 5 MiB, not JSON


def ev(etype: str, at: str, **fields: Any) -> bytes:
    """An event-bus shape line at 2025-03-01T`at`Z."""
    return orjson.dumps({"event_type": etype, "timestamp": f"2025-03-01T{at}Z", **fields})


@dataclass
class JsonlFile:
    """Builds a JSONL file byte by byte and remembers where each line starts."""

    data: bytearray = field(default_factory=bytearray)
    number: int = 0
    bad: list[tuple[int, int, str, bytes]] = field(default_factory=list)

    def add(self, raw: bytes, reason: str | None = None, ending: bytes = b"\n") -> None:
        self.number += 1
        if reason is not None:
            self.bad.append((len(self.data), self.number, reason, raw))
        self.data += raw + ending

    def write(self, path: Path) -> Path:
        path.write_bytes(bytes(self.data))
        return path


def garbage_file() -> JsonlFile:
    """Good events of two runs and a pattern run, interleaved with every kind of bad line."""
    f = JsonlFile(bytearray(BOM))
    f.add(ev("run_created", "10:00:00", run_id="run-a", payload={"total_tasks": 2}))
    f.add(ev("task_started", "10:00:01", run_id="run-a", task_id="t1", workstream_id="ws1"))
    f.add(b'{"event_type": "task_started", "run_id": ', "invalid_json")
    f.add(b'{"event_type": "note \xff\xfe", "timestamp": "2025-03-01T10:00:02Z"}', "invalid_utf8")
    f.add(b"")
    f.add(b'[{"event_type": "note"}]', "not_object")
    f.add(b'"just a string"', "not_object")
    f.add(ev("task_completed", "10:00:05", run_id="run-a", task_id="t1"), ending=b"\r\n")
    f.add(orjson.dumps({"timestamp": "2025-03-01T10:00:03Z", "run_id": "run-a"}), "missing_type")
    f.add(
        orjson.dumps({"event_type": "task_progress", "run_id": "run-a", "task_id": "t1"}),
        "missing_time",
    )
    f.add(
        orjson.dumps(
            {"event_type": "task_progress", "timestamp": "last tuesday", "run_id": "run-a"}
        ),
        "bad_time",
    )
    f.add(
        ev("task_progress", "10:00:04", run_id="run-a", task_id="t1", payload=[1, 2]), "bad_payload"
    )
    f.add(ev("run_started", "10:00:04"), "missing_run_id")
    f.add(
        ev("pattern.execution.started", "10:00:04", status="in_progress"), "missing_pattern_run_id"
    )
    f.add(BIG_LINE, "invalid_json")
    f.add(b"\x00" * 4096, "nul_bytes")
    f.add(b" \t ")
    f.add(
        orjson.dumps(
            {
                "event_id": "01JNB0000000000000000000B1",
                "run_id": "run-b",
                "ts": "2025-03-01T10:01:00Z",
                "kind": "run_started",
                "payload": {},
            }
        )
    )
    f.add(
        orjson.dumps(
            {
                "event_id": "01JNB0000000000000000000B2",
                "run_id": "run-b",
                "ts": "2025-03-01T10:02:00Z",
                "kind": "run_failed",
                "payload": {"error": "boom"},
            }
        )
    )
    f.add((UPSTREAM / "pattern_events" / "pattern_events.jsonl").read_bytes().split(b"\n")[0])
    f.add(ev("task_started", "10:00:06", run_id="run-a", task_id="t2"), ending=b"\r\n")
    f.add(ev("task_completed", "10:00:09", run_id="run-a", task_id="t2"), ending=b"")
    return f


ACCEPTED = 8
BLANK = 2
REJECTED = {
    "bad_payload": 1,
    "bad_time": 1,
    "invalid_json": 2,
    "invalid_utf8": 1,
    "missing_pattern_run_id": 1,
    "missing_run_id": 1,
    "missing_time": 1,
    "missing_type": 1,
    "not_object": 2,
    "nul_bytes": 1,
}


@dataclass
class Replayed:
    path: Path
    db: Path
    built: JsonlFile
    summary: ReplaySummary


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    folder = tmp_path_factory.mktemp("garbage")
    built = garbage_file()
    path = built.write(folder / "events.jsonl")
    db = folder / "state" / "runwatch.db"
    return Replayed(path, db, built, replay_into(db, path))


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def dead_letters(db: Path) -> list[tuple[Any, ...]]:
    return query(
        db, "SELECT source, offset, line, reason, raw, raw_size FROM dead_letters ORDER BY offset"
    )


def test_every_bad_line_is_dead_lettered_where_it_is(replayed: Replayed) -> None:
    """Nothing is dropped silently: each bad line can be found by file, byte, line and bytes."""
    source = str(replayed.path.resolve())
    expected = [
        (source, offset, number, reason, raw[:RAW_KEEP], len(raw))
        for offset, number, reason, raw in replayed.built.bad
    ]
    assert dead_letters(replayed.db) == expected
    for offset, _, _, raw in replayed.built.bad:
        assert replayed.path.read_bytes()[offset : offset + min(len(raw), 100)] == raw[:100]


def test_huge_garbage_line_keeps_its_head_and_real_size(replayed: Replayed) -> None:
    """A 5 MB line must not bloat the store, yet the operator learns how big it was."""
    rows = query(
        replayed.db,
        f"SELECT reason, raw, raw_size, detail FROM dead_letters WHERE raw_size > {RAW_KEEP}",
    )
    assert len(rows) == 1
    reason, raw, raw_size, detail = rows[0]
    assert reason == "invalid_json"
    assert raw == BIG_LINE[:RAW_KEEP]
    assert len(raw) == 64 * 1024
    assert raw_size == len(BIG_LINE)
    assert detail


def test_dead_letters_say_why(replayed: Replayed) -> None:
    """Each dead letter carries a readable detail and the time it was seen."""
    for detail, seen_at in query(replayed.db, "SELECT detail, seen_at FROM dead_letters"):
        assert detail
        assert seen_at.endswith("Z")


def test_good_events_around_the_garbage_are_all_folded(replayed: Replayed) -> None:
    """BOM, CRLF, blank lines and the unterminated last line must not cost a single event."""
    runs = {
        row[0]: row[1:]
        for row in query(
            replayed.db,
            "SELECT run_id, status, tasks_total, tasks_succeeded, tasks_failed, "
            "events_total, created_at, last_event_at FROM runs",
        )
    }
    assert runs == {
        "run-a": (
            "succeeded",
            2,
            2,
            0,
            5,
            "2025-03-01T10:00:00.000000Z",
            "2025-03-01T10:00:09.000000Z",
        ),
        "run-b": (
            "failed",
            0,
            0,
            0,
            2,
            "2025-03-01T10:01:00.000000Z",
            "2025-03-01T10:02:00.000000Z",
        ),
    }
    tasks = query(
        replayed.db, "SELECT run_id, task_id, workstream_id, status FROM tasks ORDER BY task_id"
    )
    assert tasks == [("run-a", "t1", "ws1", "succeeded"), ("run-a", "t2", None, "succeeded")]
    patterns = query(replayed.db, "SELECT pattern_run_id, status, phase FROM pattern_runs")
    assert patterns == [("PRUN-01KB0A3BJ6Y76MT7R6HYDJAQC5", "running", "selection")]


def test_counters_count_every_line(replayed: Replayed) -> None:
    """Counters let an operator see at a glance how much input was refused, and why."""
    counters = dict(query(replayed.db, "SELECT name, value FROM counters"))
    assert counters == {
        "events_accepted": ACCEPTED,
        "lines_blank": BLANK,
        **{f"rejected.{reason}": n for reason, n in REJECTED.items()},
    }


def test_replay_summary_reports_the_same_numbers(replayed: Replayed) -> None:
    """The summary printed to the user must agree with what the database holds."""
    data = replayed.summary.as_dict()
    assert data["database"] == str(replayed.db)
    assert data["files"] == 1
    assert data["bytes"] == len(replayed.built.data)
    assert data["lines"] == replayed.built.number
    assert data["events_accepted"] == ACCEPTED
    assert data["events_duplicate"] == 0
    assert data["events_rejected"] == sum(REJECTED.values())
    assert data["rejected_by_reason"] == REJECTED
    assert data["blank_lines"] == BLANK
    assert data["runs_by_status"] == {"failed": 1, "succeeded": 1}
    assert data["pattern_runs"] == 1
    assert orjson.loads(orjson.dumps(data)) == data


def test_checkpoint_covers_the_unterminated_last_line(replayed: Replayed) -> None:
    """Replay takes a last line without `\\n`, so the file is read to its very end."""
    rows = query(replayed.db, "SELECT offset, line FROM checkpoints")
    assert rows == [(len(replayed.built.data), replayed.built.number + 1)]


def test_long_valid_line_is_line_too_long_and_reading_goes_on(tmp_path: Path, db: Path) -> None:
    """A limit protects memory; the event over it is refused visibly, the next one is read."""
    long_event = ev(
        "task_started", "11:00:01", run_id="run-c", task_id="t1", payload={"pad": "x" * 4800}
    )
    long_event = long_event[:-2] + b" " * (5000 - len(long_event)) + long_event[-2:]
    assert len(long_event) == 5000
    f = JsonlFile()
    f.add(ev("run_created", "11:00:00", run_id="run-c"))
    f.add(long_event, "line_too_long")
    f.add(ev("task_started", "11:00:02", run_id="run-c", task_id="t2"))
    f.add(b"{oops", "invalid_json")
    path = f.write(tmp_path / "long.jsonl")
    summary = replay_into(db, path, max_line_bytes=1024)
    source = str(path.resolve())
    assert dead_letters(db) == [
        (source, offset, number, reason, raw, len(raw)) for offset, number, reason, raw in f.bad
    ]
    assert query(db, "SELECT run_id, events_total, tasks_total, tasks_running FROM runs") == [
        ("run-c", 2, 1, 1)
    ]
    assert query(db, "SELECT task_id FROM tasks") == [("t2",)]
    assert summary.as_dict()["rejected_by_reason"] == {"invalid_json": 1, "line_too_long": 1}
    assert summary.as_dict()["events_accepted"] == 2


def test_line_too_long_across_read_chunks_keeps_later_offsets_exact(
    tmp_path: Path, db: Path
) -> None:
    """A long line spanning replay's 1 MiB reads must not shift the offsets of later lines."""
    f = JsonlFile()
    f.add(ev("run_created", "11:00:00", run_id="run-d"))
    f.add(b"z" * 1_500_000, "line_too_long")
    f.add(b"{oops", "invalid_json")
    f.add(ev("run_started", "11:00:01", run_id="run-d"))
    path = f.write(tmp_path / "spanning.jsonl")
    replay_into(db, path, max_line_bytes=1024)
    got = query(db, "SELECT offset, line, reason, raw_size FROM dead_letters ORDER BY line")
    assert got == [(offset, number, reason, len(raw)) for offset, number, reason, raw in f.bad]
    assert [row[4] for row in dead_letters(db)] == [raw[:RAW_KEEP] for *_, raw in f.bad]
    assert query(db, "SELECT run_id, events_total FROM runs") == [("run-d", 2)]


def test_time_beyond_year_9999_in_utc_is_dead_lettered(tmp_path: Path, db: Path) -> None:
    """A valid-looking ISO time that overflows once made UTC must be refused, not crash replay."""
    f = JsonlFile()
    f.add(ev("run_started", "12:00:00", run_id="run-e"))
    f.add(
        orjson.dumps(
            {
                "event_type": "run_completed",
                "run_id": "run-e",
                "timestamp": "9999-12-31T23:59:59-05:00",
            }
        ),
        "bad_time",
    )
    f.add(ev("run_succeeded", "12:00:05", run_id="run-e"))
    path = f.write(tmp_path / "future.jsonl")
    summary = replay_into(db, path)
    assert [row[3] for row in dead_letters(db)] == ["bad_time"]
    assert query(db, "SELECT run_id, status FROM runs") == [("run-e", "succeeded")]
    assert summary.as_dict()["events_accepted"] == 2


def test_cli_replay_reports_rejections_as_json(replayed: Replayed, tmp_path: Path) -> None:
    """Users see the rejections in the real command's output, and garbage is not a failure."""
    db = tmp_path / "cli" / "runwatch.db"
    result = run_cli("replay", replayed.path, "--db", db, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["events_accepted"] == ACCEPTED
    assert data["events_rejected"] == sum(REJECTED.values())
    assert data["rejected_by_reason"] == REJECTED
    assert data["blank_lines"] == BLANK
    assert data["database"] == str(db)
    assert dead_letters(db) == dead_letters(replayed.db)


def test_cli_replay_of_a_missing_path_is_a_usage_error(tmp_path: Path, db: Path) -> None:
    """A typo in a path must say which path, exit 2, and leave no database behind."""
    result = run_cli("replay", "/nonexistent", "--db", db, cwd=tmp_path)
    assert result.returncode == 2
    assert "/nonexistent" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def hostile_file() -> JsonlFile:
    """Lines that once stopped replay and tail for good, between good events of one run."""
    f = JsonlFile()
    f.add(ev("run_created", "13:00:00", run_id="run-h", payload={"total_tasks": 1}))
    f.add(b'{"event_type": %s, "timestamp": 0}' % nested(1000).encode(), "bad_type")
    f.add(
        ev("run_created", "13:00:01", run_id="run-big", payload={"total_tasks": 2**63}),
        "bad_payload",
    )
    f.add(ev("task_started", "13:00:02", run_id="run-h", task_id="t1", message="C:\\u0000"))
    f.add(orjson.dumps({"event_type": "note", "timestamp": "1999-12-31T23:59:59Z"}), "bad_time")
    f.add(orjson.dumps({"event_type": "note", "timestamp": "2999-01-01T00:00:00Z"}), "bad_time")
    f.add(
        b'{"event_type": "pattern.execution.failed", "timestamp": "2025-03-01T13:00:03Z", '
        b'"pattern_run_id": "PRUN-H", "status": "failed", "details": {"error_message": %s}}'
        % nested(1000).encode(),
        "internal_error",
    )
    f.add(ev("task_completed", "13:00:04", run_id="run-h", task_id="t1"))
    f.add(ev("run_completed", "13:00:05", run_id="run-h"))
    return f


def test_hostile_lines_are_dead_lettered_and_the_fold_goes_on(tmp_path: Path, db: Path) -> None:
    """One bad line must never stop the service: each is dead-lettered where it is, with its
    bytes and a short detail, and the events after it are folded."""
    f = hostile_file()
    path = f.write(tmp_path / "hostile.jsonl")
    summary = replay_into(db, path)
    letters = dead_letters(db)
    assert [row[:5] for row in letters] == [
        (str(path.resolve()), offset, number, reason, raw) for offset, number, reason, raw in f.bad
    ]
    details = dict(query(db, "SELECT reason, detail FROM dead_letters WHERE reason != 'bad_time'"))
    assert all(len(detail) < 300 for detail in details.values())
    assert "payload.total_tasks" in details["bad_payload"]
    assert "RecursionError" in details["internal_error"]
    assert query(db, "SELECT run_id, status, tasks_total, events_total FROM runs") == [
        ("run-h", "succeeded", 1, 4)
    ]
    assert summary.as_dict()["rejected_by_reason"] == {
        "bad_type": 1,
        "bad_payload": 1,
        "bad_time": 2,
        "internal_error": 1,
    }


def test_max_future_skew_bounds_event_times_from_the_wall_clock(tmp_path: Path, db: Path) -> None:
    """A clock a day ahead is a broken producer; the bound is a setting, read at replay start."""
    soon = datetime.now(UTC) + timedelta(hours=2)
    f = JsonlFile()
    f.add(orjson.dumps({"event_type": "note", "timestamp": soon.isoformat()}))
    path = f.write(tmp_path / "soon.jsonl")
    assert replay_into(db, path).as_dict()["events_accepted"] == 1
    strict = tmp_path / "strict.db"
    assert replay_into(strict, path, max_future_skew="1h").as_dict()["rejected_by_reason"] == {
        "bad_time": 1
    }


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_row_value_no_store_can_hold_sets_its_lines_aside(
    tmp_path: Path, db: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Should a projection ever yield a value no store column takes (here a 2**63 task total
    that decode would refuse, handed over as a replay worker's folded state, standing in for
    a projection bug), the commit must not fail on every restart: the store refuses it, the
    lines that made that run's rows this batch are dead-lettered with their bytes, and the
    rest is written."""
    big = orjson.dumps(
        {"event_type": "run_created", "timestamp": "2025-03-01T14:00:00Z", "run_id": "r-big"}
    )
    good = ev("run_created", "14:00:01", run_id="r-ok")
    path = tmp_path / "events.jsonl"
    path.write_bytes(big + b"\n" + good + b"\n")
    target = db if kind == "sqlite" else request.getfixturevalue("postgres_url")
    store = open_store(target)
    try:
        processor = Processor(
            store, stall_after_s=60, max_line_bytes=1 << 20, wall_clock=wall_clock
        )
        source_id = store.source_id(str(path))
        partial = RunState("r-big")
        event = decode(big)
        assert isinstance(event, Event)
        event.payload = {"total_tasks": 2**63}
        assert partial.apply(event)
        index = orjson.dumps([[event.id, source_id, 0, len(big)]])
        processor.merge(GroupKey.run("r-big"), partial, index)
        processor.process(str(path), source_id, Lines(len(big) + 1, 2, [good], len(big + good) + 2))
        processor.commit([])
        later = ev("run_started", "14:00:02", run_id="r-ok")
        processor.process(str(path), source_id, Lines(len(big + good) + 2, 3, [later], 0))
        processor.commit([])

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in store.db.execute(sql).fetchall()]

        assert rows("SELECT run_id, events_total FROM runs") == [("r-ok", 2)]
        assert rows("SELECT source, offset, reason, raw, raw_size FROM dead_letters") == [
            (str(path), 0, "unstorable_value", big, len(big))
        ]
        assert "tasks_total" in rows("SELECT detail FROM dead_letters")[0][0]
        assert dict(rows("SELECT name, value FROM counters")) == {
            "events_accepted": 2,
            "rejected.unstorable_value": 1,
        }
    finally:
        store.close()
