"""Parallel replay (workers folding file regions, the parent merging) must give exactly the
rows, counts and dead letters of folding everything in one process."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from helpers import snapshot
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.services.replay import replay
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.discovery import expand


def test_workers_and_single_process_build_identical_databases(tmp_path: Path) -> None:
    """Regions cut mid-file, many small files per task, garbage lines and duplicates across
    files: the merged result equals the sequential one, dead-letter line numbers included."""
    corpus = tmp_path / "corpus"
    simulate(corpus, runs=40, seed=11)
    big = corpus / "orchestrator" / "events-000.jsonl"
    lines = big.read_bytes().splitlines(keepends=True)
    middle = len(lines) // 2
    lines[middle:middle] = [b"not json\n", b'{"event_type": "run_started"}\n']
    lines.append(b"\xff\xfe\n")
    big.write_bytes(b"".join(lines))
    (corpus / "copy.jsonl").write_bytes(b"".join(lines[:300]))  # duplicates, other file
    files = expand([str(corpus)])

    sequential, parallel = tmp_path / "one.db", tmp_path / "many.db"
    one = replay(files, sequential, Settings(cache_groups=8), progress=False, workers=0)
    many = replay(
        files, parallel, Settings(cache_groups=8), progress=False, workers=2, chunk_bytes=16 * 1024
    )

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
        (len(lines), "invalid_utf8"),
    ]
    assert orjson.loads(orjson.dumps(many.as_dict()))["events_rejected"] == 3


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
