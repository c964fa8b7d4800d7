"""The benchmark corpora: deterministic, of the asked-for size and shape, and all valid input."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from corpus import INTERLEAVED_FILES, SHAPES, corpus_files, ensure

from runwatch.stream.services.replay import replay
from runwatch.stream.settings.service import Settings

EVENTS = 4_000
# The giant shape's 50 small runs alone are ~5,600 events: give its giant run some room.
EVENTS_OF = {"giant": 20_000}


@pytest.mark.parametrize("shape", ["single", "interleaved", "giant"])
def test_the_same_seed_writes_the_same_bytes(tmp_path: Path, shape: str) -> None:
    first, _ = ensure(shape, EVENTS, 3, tmp_path / "a")
    second, _ = ensure(shape, EVENTS, 3, tmp_path / "b")
    one, two = corpus_files(Path(first.path)), corpus_files(Path(second.path))
    assert [p.name for p in one] == [p.name for p in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two, strict=True))
    other, _ = ensure(shape, EVENTS, 4, tmp_path / "c")
    assert corpus_files(Path(other.path))[0].read_bytes() != one[0].read_bytes()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_line_is_accepted_and_the_counts_hold(tmp_path: Path, shape: str) -> None:
    events = EVENTS_OF.get(shape, EVENTS)
    info, reused = ensure(shape, events, 1, tmp_path)
    files = corpus_files(Path(info.path))
    lines = sum(p.read_bytes().count(b"\n") for p in files)
    assert not reused
    assert lines == info.events
    assert abs(info.events - events) < 0.1 * events
    assert info.files == len(files)
    assert info.bytes == sum(p.stat().st_size for p in files)

    summary = replay(files, tmp_path / "out.db", Settings(), progress=False, workers=0)

    assert summary.tally.accepted + summary.tally.duplicate == info.events
    assert summary.tally.rejected_total == 0
    assert sum(summary.runs_by_status.values()) == info.runs
    if shape == "simulator":  # its job files repeat lines of the patterns file
        return
    assert summary.tally.duplicate == 0
    largest = sqlite3.connect(tmp_path / "out.db").execute("SELECT max(tasks_total) FROM runs")
    assert largest.fetchone()[0] == info.largest_run_tasks
    assert "succeeded" in summary.runs_by_status


def test_interleaved_runs_straddle_the_rolled_files(tmp_path: Path) -> None:
    info, _ = ensure("interleaved", EVENTS, 1, tmp_path)
    files_of_run: dict[str, set[str]] = {}
    for path in corpus_files(Path(info.path)):
        for line in path.read_bytes().splitlines():
            files_of_run.setdefault(orjson.loads(line)["run_id"], set()).add(path.name)
    assert info.files == len({name for names in files_of_run.values() for name in names})
    assert info.files == INTERLEAVED_FILES
    assert sum(len(names) > 1 for names in files_of_run.values()) > info.runs // 2


def test_a_marked_corpus_is_reused_and_a_changed_one_rewritten(tmp_path: Path) -> None:
    info, _ = ensure("single", EVENTS, 1, tmp_path)
    again, reused = ensure("single", EVENTS, 1, tmp_path)
    assert reused and again == info
    corpus_files(Path(info.path))[0].write_bytes(b"truncated\n")
    rebuilt, reused = ensure("single", EVENTS, 1, tmp_path)
    assert not reused
    assert corpus_files(Path(rebuilt.path))[0].stat().st_size == info.bytes


def test_hostile_lines_are_counted_and_leave_every_good_run_as_it_was(tmp_path: Path) -> None:
    """Throughput and memory figures with bad input present mean something only if the bad
    lines really reach the fold as bad lines and the corpus's own runs still fold the same."""
    clean, _ = ensure("interleaved", EVENTS, 1, tmp_path)
    mixed, _ = ensure("interleaved", EVENTS, 1, tmp_path, hostile_share=0.05)
    mixed_files = corpus_files(Path(mixed.path))
    assert mixed.hostile > 0.03 * clean.events
    assert mixed.events == clean.events + mixed.hostile
    assert sum(p.read_bytes().count(b"\n") for p in mixed_files) == mixed.events
    assert mixed.bytes == sum(p.stat().st_size for p in mixed_files)

    settings = Settings()
    replay(
        corpus_files(Path(clean.path)), tmp_path / "clean.db", settings, progress=False, workers=0
    )
    summary = replay(mixed_files, tmp_path / "mixed.db", settings, progress=False, workers=0)

    tally = summary.tally
    assert tally.accepted + tally.duplicate + tally.rejected_total == mixed.events
    assert tally.rejected_total > mixed.hostile // 2
    assert tally.rejected["line_too_long"] == 1
    assert {"invalid_json", "invalid_utf8", "nul_bytes"} <= set(tally.rejected)
    query = "SELECT run_id, status, tasks_total, tasks_failed FROM runs ORDER BY run_id"
    clean_runs = sqlite3.connect(tmp_path / "clean.db").execute(query).fetchall()
    mixed_runs = dict(
        (row[0], row) for row in sqlite3.connect(tmp_path / "mixed.db").execute(query)
    )
    assert [mixed_runs.get(row[0]) for row in clean_runs] == clean_runs
