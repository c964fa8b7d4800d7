"""The change numbers behind the dashboard's live feed, on both stores: every commit that
writes a run's row gives it the next number, so "changes after N" misses nothing."""

from __future__ import annotations

from pathlib import Path

from runwatch.sinks.store import Store, web_reads
from runwatch.sinks.store.web_reads import open_reader
from webcorpus import commit_runs, run_row


def changed(store_target: str | Path, after: int) -> list[tuple[int, str, str, int]]:
    reader = open_reader(store_target)
    try:
        return [
            (seq, row["run_id"], row["status"], row["stalled"])
            for seq, row in web_reads.changes_after(reader, after, 100)
        ]
    finally:
        reader.close()


def test_changes_are_numbered_in_commit_order(store_target: str | Path, store: Store) -> None:
    """A stall flip is a change too; a run changed twice shows once, under its latest number."""
    commit_runs(store, run_row("A"), run_row("B"))
    assert changed(store_target, 0) == [(1, "A", "running", 0), (2, "B", "running", 0)]
    commit_runs(store, run_row("A", status="failed"))
    commit_runs(store, stalled=[(1, "B")])
    assert changed(store_target, 2) == [(3, "A", "failed", 0), (4, "B", "running", 1)]
    assert changed(store_target, 0) == changed(store_target, 2), "each run once, as it is now"
    assert changed(store_target, 4) == []
    reader = open_reader(store_target)
    try:
        assert web_reads.change_seq(reader) == 4
    finally:
        reader.close()


def test_the_reader_cannot_write(store_target: str | Path, store: Store) -> None:
    """The dashboard's connections are read-only, whatever a bug in it might try."""
    commit_runs(store, run_row("A"))
    reader = open_reader(store_target)
    try:
        try:
            reader.execute("DELETE FROM runs")
        except Exception as exc:  # each driver has its own error type
            assert "read" in str(exc).lower()
        else:
            raise AssertionError("a reader deleted rows")
    finally:
        reader.close()
    assert changed(store_target, 0) == [(1, "A", "running", 0)]
