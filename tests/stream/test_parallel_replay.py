"""Parallel replay (workers folding file regions, the parent merging) must give exactly the
rows, counts and dead letters of folding everything in one process."""

from __future__ import annotations

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
