"""The real upstream event files (tests/fixtures/upstream) replay to the rows they must give."""

from __future__ import annotations

from pathlib import Path

from helpers import SEMGREP_RUN, UPSTREAM, replay_into, snapshot

PYTEST_RUN = {
    "pattern_run_id": "PRUN-TEST-001",
    "pattern_id": "PAT-PYTEST-001",
    "job_id": "JOB-TEST-001",
    "step_id": None,
    "run_id": None,
    "status": "succeeded",
    "phase": "execution",
    "started_at": "2025-11-26T14:46:53.256036Z",
    "finished_at": "2025-11-26T14:46:53.256036Z",
    "duration_s": 5.3,
    "error_message": None,
}
JOB_FILES = sorted((UPSTREAM / "pattern_events" / "jobs").rglob("*.jsonl"))


def test_pattern_runs_of_the_real_samples(db: Path) -> None:
    """Six phases share one timestamp upstream: only the phase rank yields execution/succeeded."""
    replay_into(db, UPSTREAM)
    assert snapshot(db)["pattern_runs"] == [SEMGREP_RUN, PYTEST_RUN]


def test_job_scoped_copies_are_duplicates(db: Path) -> None:
    """Upstream writes each pattern event twice (global and job file); counting both would lie."""
    repeated = sum(len(path.read_bytes().splitlines()) for path in JOB_FILES)
    assert repeated == 8
    summary = replay_into(db, UPSTREAM)
    assert summary.tally.duplicate == 8
    assert summary.tally.rejected_total == 0
    assert summary.tally.accepted == 14  # 8 pattern + 5 trigger executions + 1 alert


def test_job_files_alone_give_the_same_pattern_runs(db: Path) -> None:
    """Either copy of a pattern event is enough: the job files alone converge to the same rows."""
    replay_into(db, *JOB_FILES)
    assert snapshot(db)["pattern_runs"] == [SEMGREP_RUN, PYTEST_RUN]


def test_trigger_executions_make_run_123(db: Path) -> None:
    """Events that only name a run (no task, no lifecycle type) still make that run visible."""
    replay_into(db, UPSTREAM / "trigger_executions.jsonl")
    runs = {row["run_id"]: row for row in snapshot(db)["runs"]}
    assert list(runs) == ["run-123"]
    run = runs["run-123"]
    assert run["events_total"] == 5
    assert run["created_at"] == "2025-12-05T18:39:49.620279Z"
    assert run["last_event_at"] == "2025-12-05T18:40:42.556302Z"
    assert run["status"] == "pending"


def test_runless_alert_is_accepted_not_dead_lettered(db: Path) -> None:
    """`patch_failed` is no run/task/workstream event: lacking run_id is no reason to reject."""
    summary = replay_into(db, UPSTREAM / "alerts.jsonl")
    assert (summary.tally.accepted, summary.tally.rejected_total) == (1, 0)
    assert snapshot(db)["dead_letters"] == []


def test_whole_upstream_folder_has_no_dead_letters(db: Path) -> None:
    """Every real upstream line is valid input; a dead letter here means a decoding regression."""
    replay_into(db, UPSTREAM)
    rows = snapshot(db)
    assert rows["dead_letters"] == []
    assert [run["run_id"] for run in rows["runs"]] == ["run-123"]
