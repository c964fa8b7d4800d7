"""Alert decisions and jobs as replay and the service make them, on real databases."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from runwatch.projections import DerivedEvent, detect_stalls
from runwatch.projections.events import format_time, to_micros
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.core.decisions import SETTLE_RULE, Decisions
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.services.replay import replay
from runwatch.stream.settings.alerts import default_alert_setup
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.discovery import expand


def outbox(db: Path) -> set[tuple[str, str, str, str]]:
    connection = sqlite3.connect(db)
    try:
        return set(connection.execute("SELECT id, kind, target, state FROM outbox"))
    finally:
        connection.close()


def test_replay_decides_the_same_whatever_the_workers(tmp_path: Path) -> None:
    """Decisions are made in event time: file order and worker count must not change them,
    or a rebuilt database would disagree with itself about what was announced."""
    corpus = tmp_path / "corpus"
    simulate(corpus, runs=40, seed=11, fail_rate=0.4, stall_rate=0.2)
    files = expand([str(corpus)])
    replay(files, tmp_path / "one.db", Settings(), progress=False, workers=0)
    replay(
        list(reversed(files)),
        tmp_path / "many.db",
        Settings(),
        progress=False,
        workers=2,
        chunk_bytes=16 * 1024,
    )
    one, many = outbox(tmp_path / "one.db"), outbox(tmp_path / "many.db")
    assert one == many
    kinds = {(kind, target) for _, kind, target, _ in one}
    assert ("alert", "console") in kinds and ("job", "archive") in kinds
    assert {state for *_, state in one} == {"recorded"}, "replay delivers nothing"


def test_files_that_repeat_each_other_trigger_once(tmp_path: Path) -> None:
    """Job files repeat the global pattern file: one failure must not become two alerts."""
    corpus = tmp_path / "corpus"
    simulate(corpus, runs=30, seed=3, fail_rate=0.5)
    replay(expand([str(corpus)]), tmp_path / "rw.db", Settings(), progress=False, workers=0)
    connection = sqlite3.connect(tmp_path / "rw.db")
    rows = connection.execute(
        "SELECT alert_id, count(*) FROM alerts GROUP BY alert_id, channel HAVING count(*) > 1"
    ).fetchall()
    pattern = connection.execute(
        "SELECT count(*) FROM alerts WHERE rule='pattern_failure'"
    ).fetchone()[0]
    connection.close()
    assert rows == [] and pattern > 0


def test_a_stall_that_began_before_the_horizon_is_history() -> None:
    """A new service must not page about runs that went quiet long before it started."""
    setup = default_alert_setup()
    now = to_micros(datetime(2026, 1, 2, 12, 0))
    hour = 3_600_000_000
    decisions = Decisions(setup.rules, None, setup.policy(deliver=True, since_us=now - hour))
    changes = Changes()
    silent_since = {
        "OLD": to_micros(datetime(2026, 1, 2, 9, 0)),
        "NEW": to_micros(datetime(2026, 1, 2, 11, 20)),
    }
    stalls = detect_stalls(
        {run: (last, False) for run, last in silent_since.items()}, now, 1800 * 1_000_000
    )
    decisions.decide([], stalls, now, changes)
    states = {entry.run_id: entry.state for entry in changes.outbox}
    assert states == {"OLD": "skipped", "NEW": "pending"}


def test_completed_runs_start_report_and_archive_jobs_with_stable_ids() -> None:
    """Jobs are idempotent by id: deciding the same completion twice gives the same ids."""
    setup = default_alert_setup()
    done = DerivedEvent("RUN_COMPLETED", 5, "R1", {"status": "succeeded"})
    changed = DerivedEvent(
        "RUN_STATUS_CHANGED", 9, "R1", {"status": "failed", "previous_status": "succeeded"}
    )
    ids = []
    for _ in range(2):
        changes = Changes()
        Decisions(setup.rules, None, setup.policy(deliver=True)).decide(
            [], [done, changed], 10, changes
        )
        ids.append([(e.target, e.id) for e in changes.outbox if e.kind == "job"])
    assert ids[0] == ids[1]
    # After the completion, the archive job only records what the archive lacks.
    assert [target for target, _ in ids[0]] == ["report", "archive", "report", "archive"]
    assert len({job_id for _, job_id in ids[0]}) == 4


def _jobs(changes: Changes) -> list[tuple[str, str, str]]:
    return [
        (e.target, e.payload["trigger"], e.payload["event_time"])
        for e in changes.outbox
        if e.kind == "job"
    ]


SECOND = 1_000_000


def test_an_implicit_completion_waits_for_its_explicit_end() -> None:
    """The jobs of a run whose tasks all ended wait `settle` for its run_completed, so its
    report and archive hold the final event; they start at once when it comes."""
    setup = default_alert_setup()
    decisions = Decisions(setup.rules, None, setup.policy(deliver=True), settle_s=5)
    implicit = DerivedEvent("RUN_COMPLETED", 100 * SECOND, "R1", {"status": "succeeded"})
    implicit.data["explicit"] = False
    first = Changes()
    decisions.decide([], [implicit], 100 * SECOND, first)
    assert _jobs(first) == []
    assert [(rule, group) for rule, group, _ in first.alert_states] == [(SETTLE_RULE, "R1")]
    assert not decisions.has_due(104 * SECOND) and decisions.has_due(105 * SECOND)
    explicit = DerivedEvent(
        "RUN_UPDATED", 100 * SECOND + 50_000, "R1", {"status": "succeeded", "explicit": True}
    )
    second = Changes()
    decisions.decide([], [explicit], 100 * SECOND + 60_000, second)
    when = format_time(100 * SECOND + 50_000)
    assert _jobs(second) == [("report", "RUN_COMPLETED", when), ("archive", "RUN_COMPLETED", when)]
    assert second.alert_states_deleted == [(SETTLE_RULE, "R1")]
    assert not decisions.has_due(200 * SECOND)


def test_a_settle_that_ends_starts_the_jobs_and_survives_a_restart(tmp_path: Path) -> None:
    """No explicit end: the jobs start once `settle` is over, also when the service was
    killed meanwhile (the wait is stored with the completion), and only once."""
    setup = default_alert_setup()
    store = SqliteStore(tmp_path / "rw.db")
    try:
        decisions = Decisions(setup.rules, store, setup.policy(deliver=True), settle_s=5)
        implicit = DerivedEvent(
            "RUN_COMPLETED", 100 * SECOND, "R1", {"status": "failed", "explicit": False}
        )
        changes = Changes()
        decisions.decide([], [implicit], 101 * SECOND, changes)
        store.commit(changes, "2026-01-01T00:00:00.000000Z")
        restarted = Decisions(setup.rules, store, setup.policy(deliver=True), settle_s=5)
        assert not restarted.has_due(105 * SECOND)  # from when it was learnt: 101 s
        assert restarted.has_due(106 * SECOND)
        due = Changes()
        restarted.decide([], [], 106 * SECOND, due)
        assert _jobs(due) == [
            ("report", "RUN_COMPLETED", format_time(100 * SECOND)),
            ("archive", "RUN_COMPLETED", format_time(100 * SECOND)),
        ]
        store.commit(due, "2026-01-01T00:00:06.000000Z")
        again = Decisions(setup.rules, store, setup.policy(deliver=True), settle_s=5)
        assert not again.has_due(10_000 * SECOND)
    finally:
        store.close()


def test_replay_settles_in_event_time_whatever_the_commits() -> None:
    """A replay that saw the implicit end and the explicit one in separate commits decides
    the jobs a replay that saw both at once decides."""
    setup = default_alert_setup()
    done = {"status": "succeeded"}
    at_once = Changes()
    whole = Decisions(setup.rules, None, setup.policy(deliver=False), hold=True, settle_s=5)
    whole.decide(
        [],
        [DerivedEvent("RUN_COMPLETED", 103 * SECOND, "R1", {**done, "explicit": True})],
        0,
        at_once,
    )
    whole.release(200 * SECOND, at_once)
    split = Changes()
    parts = Decisions(setup.rules, None, setup.policy(deliver=False), hold=True, settle_s=5)
    parts.decide(
        [],
        [DerivedEvent("RUN_COMPLETED", 100 * SECOND, "R1", {**done, "explicit": False})],
        0,
        split,
    )
    parts.decide(
        [], [DerivedEvent("RUN_UPDATED", 103 * SECOND, "R1", {**done, "explicit": True})], 0, split
    )
    parts.release(200 * SECOND, split)
    assert {e.id for e in split.outbox if e.kind == "job"} == {
        e.id for e in at_once.outbox if e.kind == "job"
    }
    late = Changes()
    slow = Decisions(setup.rules, None, setup.policy(deliver=False), hold=True, settle_s=5)
    slow.decide(
        [],
        [DerivedEvent("RUN_COMPLETED", 100 * SECOND, "R1", {**done, "explicit": False})],
        0,
        late,
    )
    slow.decide(
        [], [DerivedEvent("RUN_UPDATED", 106 * SECOND, "R1", {**done, "explicit": True})], 0, late
    )
    slow.release(200 * SECOND, late)
    assert [(trigger, when) for _, trigger, when in _jobs(late)] == [
        ("RUN_COMPLETED", format_time(100 * SECOND)),
        ("RUN_COMPLETED", format_time(100 * SECOND)),
        ("RUN_UPDATED", format_time(106 * SECOND)),
        ("RUN_UPDATED", format_time(106 * SECOND)),
    ], "an end later than settle is a late event: it regenerates the reports"
