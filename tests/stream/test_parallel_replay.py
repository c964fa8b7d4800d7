"""Parallel replay (workers folding file regions, the parent merging) must give exactly the
rows, counts and dead letters of folding everything in one process."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import snapshot
from runwatch.projections import Event
from runwatch.sinks.store.keys import GroupKey, IndexEntry
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import wall_clock
from runwatch.stream.core.decode import NO_LATEST, decode
from runwatch.stream.core.groups import new_state
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.errors import InputError
from runwatch.stream.services import partitions
from runwatch.stream.services.parallel import Part, fold_parts, folder_for, refolder
from runwatch.stream.services.partitions import PartitionedFold, owners_of, partition_of, pick
from runwatch.stream.services.replay import replay
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.discovery import expand

START = 1767261600  # 2026-01-01T10:00:00Z


@contextmanager
def merges_counted() -> Iterator[list[str]]:
    """The names of the groups the parent merges (rather than adopts), in order."""
    calls: list[str] = []
    merge = Processor.merge

    def counted(self: Processor, key: Any, *args: Any) -> set[str]:
        calls.append(key.name)
        return merge(self, key, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Processor, "merge", counted)
        yield calls


def test_workers_and_single_process_build_identical_databases(tmp_path: Path) -> None:
    """Regions cut mid-file, many small files per task, garbage lines, a line over the
    limit and duplicates across files: the merged result equals the sequential one,
    dead-letter offsets and line numbers included."""
    corpus = tmp_path / "corpus"
    simulate(corpus, runs=40, seed=11)
    big = corpus / "orchestrator" / "events-000.jsonl"
    lines = big.read_bytes().splitlines(keepends=True)
    middle = len(lines) // 2
    too_long = b'{"run_id": "' + b"x" * 5000 + b'"}\n'
    lines[middle:middle] = [b"not json\n", b'{"event_type": "run_started"}\n', too_long]
    lines.append(b"\xff\xfe\n")
    big.write_bytes(b"".join(lines))
    (corpus / "copy.jsonl").write_bytes(b"".join(lines[:300]))  # duplicates, other file
    files = expand([str(corpus)])

    sequential, parallel = tmp_path / "one.db", tmp_path / "many.db"
    settings = Settings(cache_groups=8, max_line_bytes=4096)
    one = replay(files, sequential, settings, progress=False, workers=0)
    many = replay(files, parallel, settings, progress=False, workers=2, chunk_bytes=16 * 1024)

    assert snapshot(parallel) == snapshot(sequential)
    assert many.as_dict() | {"seconds": 0, "events_per_s": 0, "database": ""} == one.as_dict() | {
        "seconds": 0,
        "events_per_s": 0,
        "database": "",
    }
    assert one.tally.duplicate >= 290
    letters = snapshot(sequential)["dead_letters"]
    assert [(d["line"], d["reason"]) for d in letters] == [
        (middle + 1, "invalid_json"),
        (middle + 2, "missing_time"),
        (middle + 3, "line_too_long"),
        (len(lines), "invalid_utf8"),
    ]
    assert letters[2]["offset"] == sum(map(len, lines[: middle + 2]))
    assert orjson.loads(orjson.dumps(many.as_dict()))["events_rejected"] == 4


def _decided(db: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Derived events and outbox entries, without the wall-clock columns or the order of
    writing (the workers decide in which commit a run is observed, not what is observed)."""
    connection = sqlite3.connect(db)
    try:
        derived = connection.execute(
            "SELECT type, run_id, event_time, data FROM derived_events"
        ).fetchall()
        entries = connection.execute(
            "SELECT id, kind, target, alert_id, rule, run_id, state, payload, event_time "
            "FROM outbox"
        ).fetchall()
    finally:
        connection.close()
    return sorted(derived), sorted(entries)


def test_any_number_of_workers_builds_the_same_database(tmp_path: Path) -> None:
    """Runs cut by region boundaries, spread over several files and repeated by a copy:
    0, 1, 2 and 4 workers give the same rows, derived events and outbox, whichever worker
    saw a run first and whether its earlier part was committed before the rest came."""
    corpus = tmp_path / "corpus"
    simulate(corpus, runs=60, seed=5, fail_rate=0.3, stall_rate=0.2)
    big = max(corpus.rglob("*.jsonl"), key=lambda path: path.stat().st_size)
    lines = big.read_bytes().splitlines(keepends=True)
    (corpus / "copy.jsonl").write_bytes(b"".join(lines[len(lines) // 3 : len(lines) // 2]))
    files = expand([str(corpus)])
    chunk = 8 * 1024
    before_cut, after_cut, offset = set(), set(), 0
    for line in lines:
        run_id = orjson.loads(line).get("run_id")
        (before_cut if offset < chunk else after_cut).add(run_id)
        offset += len(line)
    assert (before_cut & after_cut) - {None}, "some run straddles the first region boundary"

    built = {}
    for workers in (0, 1, 2, 4):
        db = tmp_path / f"w{workers}.db"
        summary = replay(
            files,
            db,
            Settings(cache_groups=8),
            progress=False,
            workers=workers,
            chunk_bytes=chunk,
        )
        built[workers] = (snapshot(db), _decided(db), summary.tally)

    rows, (derived, entries), tally = built[0]
    assert rows["runs"] and derived and entries and tally.duplicate > 0
    assert {row["status"] for row in rows["runs"]} >= {"succeeded", "failed"}
    for workers in (1, 2, 4):
        assert built[workers] == built[0], f"{workers} workers"


def test_runs_split_across_workers_or_handed_over_early_are_merged(tmp_path: Path) -> None:
    """Interleaved files, a run whose id is written three ways (so the byte-level partition
    sends its lines to different workers) and a cache of two runs per worker (so runs in
    flight are handed over and their later parts merged): the rows equal one process's."""
    corpus = tmp_path / "corpus"
    simulate(corpus, runs=50, seed=7, fail_rate=0.2)
    lines = [
        line for path in sorted(corpus.rglob("*.jsonl")) for line in path.read_bytes().splitlines()
    ]
    runs = sorted({orjson.loads(line).get("run_id") for line in lines} - {None})
    odd = runs[0]
    mixed = []
    for number, line in enumerate(lines):
        event = orjson.loads(line)
        if event.get("run_id") == odd and number % 3:
            event.pop("run_id")  # the id only in the payload, or spaced out
            if number % 3 == 1:
                event["payload"] = {**(event.get("payload") or {}), "run_id": odd}
                line = orjson.dumps(event)
            else:
                line = orjson.dumps(event).replace(b"{", b'{"run_id": "' + odd.encode() + b'",', 1)
        mixed.append(line)
    shards = tmp_path / "shards"
    shards.mkdir()
    for shard in range(4):  # runs interleaved across files, as rolled logs of a busy host
        (shards / f"log-{shard}.jsonl").write_bytes(b"\n".join(mixed[shard::4]) + b"\n")
    files = expand([str(shards)])
    settings = Settings(cache_groups=2, cache_groups_max=2)

    one = replay(files, tmp_path / "one.db", settings, progress=False, workers=0)
    for workers in (1, 2, 3):
        db = tmp_path / f"w{workers}.db"
        with merges_counted() as calls:
            many = replay(files, db, settings, progress=False, workers=workers, chunk_bytes=4096)
        assert calls, "runs reached the parent in parts"
        assert snapshot(db) == snapshot(tmp_path / "one.db"), f"{workers} workers"
        assert many.tally == one.tally
    assert any(row["run_id"] == odd for row in snapshot(tmp_path / "one.db")["runs"])


def test_a_line_goes_to_exactly_one_partition_with_its_place() -> None:
    """Every line, whatever it holds, is folded by one worker, at its own offset and number."""
    items = [
        b'{"run_id":"a","x":1}',
        b'{"run_id": "b"}',
        b"",
        b'{"run_id":7}',
        b'{"run_id":null}',
        b"not json",
        b'{"run_id":"unterminated',
        b'{"payload":{"run_id":"c"}}',
        b'{"run_id":"c"}',
    ] * 3
    end = 100 + sum(len(item) + 1 for item in items)
    lines = Lines(100, 10, items, end, {4: 5000})
    expected, offset = [], 100
    for index, item in enumerate(items):
        expected.append((offset, 10 + index, item, 5000 if index == 4 else None))
        offset += (5000 if index == 4 else len(item)) + 1
    for parts in (2, 3):
        seen: list[tuple[int, int, bytes, int | None]] = []
        owners = owners_of(lines, parts)
        for part in range(parts):
            share = pick(lines, owners, part)
            assert share.offsets is not None and share.numbers is not None
            for index, item in enumerate(share.items):
                seen.append(
                    (share.offsets[index], share.numbers[index], item, share.oversize.get(index))
                )
                assert partition_of(item, parts) == part
        assert sorted(seen) == expected
    with pytest.raises(InputError, match="a file changed during the replay"):
        pick(lines, owners_of(lines, 2)[:-1], 0)
    assert partition_of(b'{"run_id":"b"}', 7) == partition_of(b'{"run_id": "b", "x": 2}', 7)
    assert partition_of(b'{"run_id":7}', 7) == partition_of(b"garbage", 7) == 0


@pytest.fixture
def built(tmp_path: Path) -> tuple[list[Path], Path, dict[str, Any]]:
    """Simulated logs, the database one process built from them, and its snapshot."""
    corpus = tmp_path / "corpus"
    simulate(corpus, runs=20, seed=3)
    files = expand([str(corpus)])
    target = tmp_path / "built.db"
    replay(files, target, Settings(), progress=False, workers=0)
    return files, target, snapshot(target)


def test_a_failing_worker_stops_the_replay_with_its_error(
    built: tuple[list[Path], Path, dict[str, Any]],
) -> None:
    """A worker that fails does not leave the parent waiting: the replay ends with its error
    and the old database stays."""
    files, target, before = built
    fold = partitions.fold_parts

    def fail_in_worker_one(*args: Any) -> Any:
        if args[-1] == 1:
            raise ValueError("a bug in the fold")
        return fold(*args)

    with pytest.MonkeyPatch.context() as patch:  # the forked workers inherit the patch
        patch.setattr(partitions, "fold_parts", fail_in_worker_one)
        with pytest.raises(RuntimeError, match=r"(?s)replay worker 1 failed.*a bug in the fold"):
            replay(files, target, Settings(), progress=False, workers=2, chunk_bytes=4096)
    assert snapshot(target) == before


def test_a_file_gone_during_the_replay_stops_it_with_the_old_database_kept(
    built: tuple[list[Path], Path, dict[str, Any]],
) -> None:
    """A file measured, then removed before the workers read it: the replay ends with an
    error that names it, and the old database stays."""
    files, target, before = built
    gone = files[-1]
    fold = PartitionedFold.__init__

    def start_then_vanish(self: PartitionedFold, *args: Any, **kwargs: Any) -> None:
        gone.unlink()  # after the parent measured it, before a worker reads it
        fold(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PartitionedFold, "__init__", start_then_vanish)
        with pytest.raises(RuntimeError, match=rf"(?s)replay worker \d failed.*{gone.name}"):
            replay(files, target, Settings(), progress=False, workers=2, chunk_bytes=4096)
    assert snapshot(target) == before


@contextmanager
def adoptions_counted() -> Iterator[list[tuple[str, bool]]]:
    """(group name, adopted over an earlier part) of each group the parent adopts."""
    calls: list[tuple[str, bool]] = []
    adopt = Processor.adopt

    def counted(self: Processor, key: Any, *args: Any, again: bool = False) -> bool:
        adopted = adopt(self, key, *args, again=again)
        if adopted:
            calls.append((key.name, again))
        return adopted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Processor, "adopt", counted)
        yield calls


def giant_log(path: Path, run_id: str = "giant", elsewhere_from: int | None = None) -> Path:
    """A run of 15,000 tasks (45,000 events) among small ones. From task `elsewhere_from` on,
    every 500th task's last line writes the run id with a space before its colon (valid
    JSON that `partition_of` does not read: the line goes to the first worker)."""
    lines: list[bytes] = []
    start = 1767261600
    for task in range(15_000):
        for step, kind in enumerate(("task_created", "task_started", "task_completed")):
            line: dict[str, Any] = {
                "event_type": kind,
                "timestamp": start + task + step,
                "run_id": run_id,
                "task_id": f"t{task}",
                "workstream_id": f"ws{task % 7}",
            }
            text = orjson.dumps(line)
            if (
                elsewhere_from is not None
                and task >= elsewhere_from
                and task % 500 == 0 == step - 2
            ):
                text = text.replace(b'"run_id":', b'"run_id" :')
            lines.append(text)
        if task % 500 == 0:
            small = f"small-{task}"
            for kind, at in (("run_started", start + task), ("run_completed", start + task + 1)):
                lines.append(orjson.dumps({"event_type": kind, "timestamp": at, "run_id": small}))
    end = {"event_type": "run_completed", "timestamp": start + 20_000, "run_id": run_id}
    path.write_bytes(b"".join(line + b"\n" for line in [*lines, orjson.dumps(end)]))
    return path


def test_a_giant_run_is_sent_in_parts_while_its_worker_folds_on(tmp_path: Path) -> None:
    """A giant run's worker sends what it holds every 20,000 events instead of keeping it
    all to the end; the parent writes each part over the one before (it merges nothing:
    the worker holds the whole run) into the rows one process builds."""
    log = giant_log(tmp_path / "giant.jsonl")
    one = replay([log], tmp_path / "one.db", Settings(), progress=False, workers=0)
    with merges_counted() as merged, adoptions_counted() as adopted:
        two = replay(
            [log], tmp_path / "two.db", Settings(), progress=False, workers=2, chunk_bytes=64 * 1024
        )
    assert snapshot(tmp_path / "two.db") == snapshot(tmp_path / "one.db")
    assert two.tally == one.tally
    assert "giant" not in merged
    # the first part whole, then at 40,000 events and at its end over it
    assert [again for name, again in adopted if name == "giant"] == [False, True, True]


def test_a_giant_run_with_lines_at_another_worker_is_merged_from_there_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Late in a giant run, some of its lines go to the first worker while the rest go to
    the second: once a part comes from elsewhere the parent merges, over what it wrote of
    the earlier parts (some in the store already: a commit came in between), and builds
    what one process builds."""
    run_id = next(f"giant-{n}" for n in range(100) if zlib.crc32(f"giant-{n}".encode()) % 2)
    log = giant_log(tmp_path / "giant.jsonl", run_id, elsewhere_from=14_000)
    monkeypatch.setattr("runwatch.stream.services.replay.COMMIT_EVERY", 5_000)
    one = replay([log], tmp_path / "one.db", Settings(), progress=False, workers=0)
    with merges_counted() as merged, adoptions_counted() as adopted:
        two = replay(
            [log], tmp_path / "two.db", Settings(), progress=False, workers=2, chunk_bytes=64 * 1024
        )
    assert snapshot(tmp_path / "two.db") == snapshot(tmp_path / "one.db")
    assert two.tally == one.tally
    assert (run_id, True) in adopted and run_id in merged


def test_a_run_gone_quiet_leaves_its_worker_and_is_merged_if_it_comes_back(tmp_path: Path) -> None:
    """A run with no line in a whole batch is handed over (a run that never ends must not
    stay in a worker's memory to the end of the input); if it speaks again, the parent
    merges the later part, and the rows equal one process's."""
    start = 1767261600

    def event(kind: str, run: str, at: int, task: str | None = None) -> bytes:
        line = {"event_type": kind, "timestamp": start + at, "run_id": run, "task_id": task}
        return orjson.dumps(line) + b"\n"

    lines = [event("run_started", "quiet", 0), event("task_started", "quiet", 1, "q1")]
    for run in range(400):
        name = f"busy-{run}"
        lines += [event("run_started", name, 10 + run), event("run_completed", name, 11 + run)]
    lines.append(event("task_completed", "quiet", 500, "q1"))
    log = tmp_path / "quiet.jsonl"
    log.write_bytes(b"".join(lines))

    replay([log], tmp_path / "one.db", Settings(), progress=False, workers=0)
    with merges_counted() as calls:
        replay([log], tmp_path / "w1.db", Settings(), progress=False, workers=1, chunk_bytes=4096)
    assert snapshot(tmp_path / "w1.db") == snapshot(tmp_path / "one.db")
    assert calls == ["quiet"]


def test_a_pattern_run_goes_whole_to_one_worker_whatever_run_its_lines_name(
    tmp_path: Path,
) -> None:
    """Lines are dealt out by the key of the group they fold into: a pattern run's lines by
    its pattern run id, even when only some of them name a run. A repeated event id with
    other content (a mangled copy) is then a duplicate in file order, as in one process,
    not two partial states merged with both contents."""
    run = next(name for name in (f"run-{n}" for n in range(100)) if zlib.crc32(name.encode()) % 2)
    start = 1767261600
    first = {
        "event_id": "e1",
        "event_type": "pattern.selection.started",
        "timestamp": start,
        "pattern_run_id": "PRUN-1",
        "status": "in_progress",
    }
    filler = [
        {"event_type": "task_progress", "timestamp": start + n, "run_id": f"r{n}", "task_id": "t"}
        for n in range(300)
    ]
    # The same event id with another content, a few lines on (in the same batch).
    lines = [first, *filler[:10], {**first, "run_id": run}, *filler[10:]]
    log = tmp_path / "patterns.jsonl"
    log.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))

    replay([log], tmp_path / "one.db", Settings(), progress=False, workers=0)
    replay([log], tmp_path / "two.db", Settings(), progress=False, workers=2, chunk_bytes=2048)
    assert snapshot(tmp_path / "two.db") == snapshot(tmp_path / "one.db")
    assert snapshot(tmp_path / "one.db")["pattern_runs"][0]["run_id"] is None
    assert partition_of(orjson.dumps(lines[11]), 2) == partition_of(orjson.dumps(first), 2)


def _copies_much_later(
    path: Path, firsts: list[dict[str, Any]], copies: list[dict[str, Any]]
) -> Path:
    """`firsts`, then 600 lines of other runs, `copies`, and 50 more: enough batches apart
    (at 4 KB a batch) that the first lines' runs have left their workers."""
    filler = [
        {"event_type": "task_progress", "timestamp": START + n, "run_id": f"r{n}", "task_id": "t"}
        for n in range(650)
    ]
    lines = [*firsts, *filler[:600], *copies, *filler[600:]]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("workers", [2, 4])
def test_a_mangled_copy_batches_later_changes_nothing_as_in_one_process(
    tmp_path: Path, workers: int
) -> None:
    """An event id repeated with other content (an earlier time, another status) long after
    its run and its pattern run went quiet and left their workers: the part holding the copy
    repeats an event the parent has, so it is folded again without it, from the file, and
    the copy is a duplicate that changes nothing, as in one process."""
    run_event = {
        "event_id": "r-1",
        "event_type": "task_started",
        "timestamp": START + 5,
        "run_id": "run-a",
        "task_id": "t1",
    }
    pattern_event = {
        "event_id": "p-1",
        "event_type": "pattern.selection.started",
        "timestamp": START + 5,
        "pattern_run_id": "PRUN-a",
        "status": "in_progress",
    }
    mangled = [
        {**run_event, "timestamp": START - 86_400, "event_type": "task_failed"},
        {**pattern_event, "timestamp": START - 86_400, "status": "failed"},
    ]
    log = _copies_much_later(tmp_path / "copies.jsonl", [run_event, pattern_event], mangled)

    one = replay([log], tmp_path / "one.db", Settings(), progress=False, workers=0)
    many = replay(
        [log], tmp_path / "many.db", Settings(), progress=False, workers=workers, chunk_bytes=4096
    )
    built = snapshot(tmp_path / "many.db")
    assert built == snapshot(tmp_path / "one.db")
    assert many.tally == one.tally and one.tally.duplicate == 2
    [task] = [t for t in built["tasks"] if t["run_id"] == "run-a"]
    assert task["status"] == "running"
    [pattern_run] = built["pattern_runs"]
    assert pattern_run["status"] == "running"


def test_one_process_numbers_the_lines_of_a_big_file_across_its_regions(tmp_path: Path) -> None:
    """A file cut into regions and read in this process: a refused line deep in it is named
    by its line in the file, not in its region."""
    lines = [
        orjson.dumps({"event_type": "run_started", "timestamp": 1767261600 + n, "run_id": f"r{n}"})
        for n in range(2000)
    ]
    lines[1500] = b"not json"
    log = tmp_path / "big.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    for workers in (0, 2):
        db = tmp_path / f"w{workers}.db"
        replay([log], db, Settings(), progress=False, workers=workers, chunk_bytes=8192)
        letters = snapshot(db)["dead_letters"]
        assert [(d["line"], d["reason"]) for d in letters] == [(1501, "invalid_json")], workers


def test_a_part_adopted_over_a_committed_one_then_merged_gives_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent adopts a run's first part, commits, adopts the next part over it (from the
    same worker, which folded on), then merges a part from another worker before the next
    commit: the state it merges into is the store's plus what it adopted since, and the rows
    equal one process's."""
    monkeypatch.setattr("runwatch.stream.core.groups.HELD_EVENTS", 50)
    items = [
        orjson.dumps(
            {
                "event_type": kind,
                "timestamp": 1767261600 + task * 3 + step,
                "run_id": "r",
                "task_id": f"t{task}",
                "workstream_id": f"ws{task % 3}",
                "severity": "error" if task % 9 == 0 and step == 2 else "info",
            }
        )
        for task in range(80)
        for step, kind in enumerate(("task_created", "task_started", "task_failed"))
    ]

    def part(start: int, stop: int) -> Iterator[Part]:
        offset = sum(len(item) + 1 for item in items[:start])
        lines = Lines(offset, start + 1, items[start:stop], offset + 1)
        yield Part("log.jsonl", 1, lines, True, stop - start)

    def parent(name: str) -> tuple[Processor, SqliteStore]:
        store = SqliteStore(tmp_path / f"{name}.db")
        store.source_id("log.jsonl")
        return Processor(
            store, stall_after_s=3600, max_line_bytes=1 << 20, wall_clock=wall_clock
        ), store

    whole, whole_store = parent("whole")
    whole.process("log.jsonl", 1, next(part(0, len(items)))[2])
    whole.commit([])

    built, built_store = parent("built")
    worker, other = (
        folder_for(1 << 20, None, None, NO_LATEST),
        folder_for(1 << 20, None, None, NO_LATEST),
    )
    owners: dict[str, int] = {}

    def send(folder: Processor, start: int, stop: int, keep: int, number: int) -> None:
        folded = fold_parts(folder, part(start, stop), keep, None, None, number)
        folded.merge_into(built, None, owners)

    with merges_counted() as merged, adoptions_counted() as adopted:
        send(worker, 0, 60, 10, 1)  # flushed at 50 events, kept: adopted whole
        built.commit([])
        send(worker, 60, 120, 10, 1)  # adopted over the committed part
        send(other, 120, 130, 0, 0)  # merged into the store's part and the adopted one
        send(worker, 130, len(items), 0, 1)  # merged: the parent holds the run now
        built.commit([])
    assert adopted == [("r", False), ("r", True)]
    assert merged == ["r", "r"]
    tables = ("runs", "tasks", "workstreams")
    expected, got = whole_store.snapshot(), built_store.snapshot()
    assert {t: got[t] for t in tables} == {t: expected[t] for t in tables}
    whole_store.close()
    built_store.close()


def test_a_repeat_read_back_from_a_replaced_file_stops_the_replay(tmp_path: Path) -> None:
    """Folding a part again reads its lines back from the file; if the file was replaced
    meanwhile, the replay stops naming the file and byte, rather than fold other lines."""
    log = tmp_path / "log.jsonl"
    line = orjson.dumps({"event_type": "run_started", "timestamp": START, "run_id": "a"})
    log.write_bytes(line + b"\n")
    event = decode(line)
    assert isinstance(event, Event)
    entry = IndexEntry(event.id, 1, 0, len(line))
    key = GroupKey.run("a")
    refold = refolder(key, new_state(key), {1: log}, NO_LATEST)
    assert refold([entry]).seen == {entry.event_id}
    log.write_bytes(line.replace(b'"a"', b'"b"') + b"\n")
    with pytest.raises(InputError, match=r"log\.jsonl: byte 0 no longer holds the line"):
        refold([entry])


def test_a_mangled_copy_naming_another_task_leaves_the_run_as_one_process_folds_it(
    tmp_path: Path,
) -> None:
    """A late copy of an event that names another task: the worker folded (and wrote a row
    for) a task the run never had; the merge marks for rewriting only the tasks the run has,
    so it does not fail, and the run and its real task come out as in one process."""
    first = {
        "event_id": "r-1",
        "event_type": "task_started",
        "timestamp": START + 5,
        "run_id": "run-a",
        "task_id": "t1",
    }
    copy = {**first, "task_id": "t9", "event_type": "task_failed"}
    log = _copies_much_later(tmp_path / "copies.jsonl", [first], [copy])

    replay([log], tmp_path / "one.db", Settings(), progress=False, workers=0)
    replay([log], tmp_path / "two.db", Settings(), progress=False, workers=2, chunk_bytes=4096)
    one, two = snapshot(tmp_path / "one.db"), snapshot(tmp_path / "two.db")
    assert [r for r in two["runs"] if r["run_id"] == "run-a"] == [
        r for r in one["runs"] if r["run_id"] == "run-a"
    ]
    real = [t for t in one["tasks"] if t["run_id"] == "run-a"]
    assert [t for t in two["tasks"] if (t["run_id"], t["task_id"]) == ("run-a", "t1")] == real
