"""Alert decisions and jobs as replay and the service make them, on real databases."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from runwatch.projections import DerivedEvent, detect_stalls
from runwatch.projections.events import to_micros
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.spill import HeldOnDisk
from runwatch.stream.core.decisions import Decisions
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


SECOND = 1_000_000


def _due(changes: Changes) -> list[tuple[str, str, float]]:
    return [(e.target, e.payload["trigger"], e.not_before) for e in changes.outbox]


def test_an_implicit_completion_waits_for_its_explicit_end() -> None:
    """The jobs of a run whose tasks all ended are written at once but due `settle` later,
    so its report and archive can hold its run_completed; when that comes, they are due."""
    setup = default_alert_setup()
    decisions = Decisions(setup.rules, None, setup.policy(deliver=True), settle_s=5)
    implicit = DerivedEvent(
        "RUN_COMPLETED", 100 * SECOND, "R1", {"status": "succeeded", "explicit": False}
    )
    first = Changes()
    decisions.decide([], [implicit], 101 * SECOND, first)  # learnt at 101 s (wall clock)
    assert _due(first) == [("report", "RUN_COMPLETED", 106.0), ("archive", "RUN_COMPLETED", 106.0)]
    explicit = DerivedEvent(
        "RUN_UPDATED", 100 * SECOND + 50_000, "R1", {"status": "succeeded", "explicit": True}
    )
    second = Changes()
    decisions.decide([], [explicit], 101 * SECOND + 60_000, second)
    assert second.outbox == [] and second.hastened == [("R1", 101.06)]
    later = Changes()
    decisions.decide([], [explicit], 200 * SECOND, later)
    assert [e.payload["trigger"] for e in later.outbox] == ["RUN_UPDATED", "RUN_UPDATED"]
    assert later.hastened == [], "once settled, an event is a late event"


def test_live_settle_counts_from_the_wall_clock_even_for_events_stamped_ahead() -> None:
    """A producer whose clock runs ahead must not hold a run's jobs back by that much: live,
    the settle runs from when the service learnt of the completion."""
    setup = default_alert_setup()
    decisions = Decisions(setup.rules, None, setup.policy(deliver=True), settle_s=5)
    ahead = DerivedEvent(
        "RUN_COMPLETED", 3 * 3600 * SECOND, "R1", {"status": "succeeded", "explicit": False}
    )
    changes = Changes()
    decisions.decide([], [ahead], 100 * SECOND, changes)
    assert [due for *_, due in _due(changes)] == [105.0, 105.0]


def test_an_explicit_completion_and_a_zero_settle_start_the_jobs_at_once() -> None:
    """Only an implicit end waits; with `settle: 0` nothing waits."""
    setup = default_alert_setup()
    for settle, explicit in ((5, True), (0, False)):
        changes = Changes()
        done = {"status": "failed", "explicit": explicit}
        Decisions(setup.rules, None, setup.policy(deliver=True), settle_s=settle).decide(
            [], [DerivedEvent("RUN_COMPLETED", 100 * SECOND, "R1", done)], 101 * SECOND, changes
        )
        assert [e.not_before for e in changes.outbox if e.kind == "job"] == [0.0, 0.0]


def test_replay_settles_in_event_time() -> None:
    """A replay measures the settle from the completion's event time, whatever its wall
    clock: the same logs give the same entries, and an end inside the settle makes the
    jobs due at its own time."""
    setup = default_alert_setup()
    done = {"status": "succeeded"}
    outcomes = []
    for _ in range(2):
        changes = Changes()
        replaying = Decisions(
            setup.rules, None, setup.policy(deliver=False), holding=HeldOnDisk(), settle_s=5
        )
        replaying.decide(
            [],
            [
                DerivedEvent("RUN_COMPLETED", 100 * SECOND, "R1", {**done, "explicit": False}),
                DerivedEvent("RUN_UPDATED", 103 * SECOND, "R1", {**done, "explicit": True}),
                DerivedEvent("RUN_COMPLETED", 100 * SECOND, "R2", {**done, "explicit": False}),
                DerivedEvent("RUN_UPDATED", 106 * SECOND, "R2", {**done, "explicit": True}),
            ],
            0,
            changes,
        )
        replaying.release(200 * SECOND, changes, changes.outbox.extend)
        entries = [
            (e.id, e.run_id, e.target, e.payload["trigger"], e.not_before) for e in changes.outbox
        ]
        outcomes.append((entries, changes.hastened))
    assert outcomes[0] == outcomes[1]
    entries, hastened = outcomes[0]
    assert hastened == [("R1", 103.0)]
    assert [(run, trigger, due) for _, run, _, trigger, due in entries] == [
        ("R1", "RUN_COMPLETED", 105.0),
        ("R1", "RUN_COMPLETED", 105.0),
        ("R2", "RUN_COMPLETED", 105.0),
        ("R2", "RUN_COMPLETED", 105.0),
        ("R2", "RUN_UPDATED", 0.0),
        ("R2", "RUN_UPDATED", 0.0),
    ], "an end later than the settle is a late event: it regenerates the reports"
