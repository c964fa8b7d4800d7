"""Memory bounded by configuration, not by history: abandoned runs, forgotten alert states,
runless events in small groups, and alert storms — on real stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from runwatch.projections import detect_stalls
from runwatch.projections.events import format_time
from runwatch.sinks.store import Store, open_store
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.keys import ORPHANS, GroupKey
from runwatch.stream.core.decisions import Decisions
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor
from runwatch.stream.settings.alerts import default_alert_setup

SECOND = 1_000_000
DAY = 86_400 * SECOND
T0 = 1_767_225_600 * SECOND  # 2026-01-01T00:00:00Z
NOW = "2026-01-01T00:00:00.000000Z"


def line(kind: str, at: int, eid: str, run: str | None = "R1") -> bytes:
    record = {"event_id": eid, "event_type": kind, "timestamp": format_time(at)}
    if run is not None:
        record["run_id"] = run
    return orjson.dumps(record)


def feed(processor: Processor, *items: bytes) -> None:
    end = sum(len(item) + 1 for item in items)
    processor.process("events.jsonl", 1, Lines(0, 1, list(items), end))


def processor_on(store: Store, decisions: Decisions | None = None, **options: float) -> Processor:
    return Processor(
        store,
        stall_after_s=options.get("stall_after_s", 1800),
        forget_after_s=options.get("forget_after_s", 7 * 86_400),
        max_line_bytes=8 << 20,
        wall_clock=lambda: NOW,
        decisions=decisions,
    )


def status(db: Path, run: str) -> str:
    connection = sqlite3.connect(db)
    try:
        return str(
            connection.execute("SELECT status FROM runs WHERE run_id=?", (run,)).fetchone()[0]
        )
    finally:
        connection.close()


def test_a_run_silent_past_forget_after_is_abandoned_and_leaves_memory(tmp_path: Path) -> None:
    """20,000 runs that never end must not stay in memory: once silent past forget_after a
    run is announced once, shows `abandoned`, and the processor lets it go; an event of it
    later brings it back and it is folded normally."""
    db = tmp_path / "rw.db"
    store = open_store(db)
    processor = processor_on(store)
    feed(
        processor,
        line("run_started", T0, "a1", "QUIET"),
        line("run_started", T0 + 8 * DAY, "b1", "BUSY"),
    )
    processor.commit([])
    processor.detect(T0 + 8 * DAY)
    derived = processor.commit([])
    assert [(d.type, d.run_id) for d in derived] == [("RUN_ABANDONED", "QUIET")]
    assert list(processor.open_runs) == ["BUSY"]
    assert GroupKey.run("QUIET") not in processor.resident
    assert status(db, "QUIET") == "abandoned"
    processor.detect(T0 + 9 * DAY)
    assert "RUN_ABANDONED" not in [d.type for d in processor.commit([])], "announced once"
    store.close()

    store = open_store(db)  # a restart does not bring it back either
    processor = processor_on(store)
    assert "QUIET" not in processor.open_runs
    feed(processor, line("task_started", T0 + 10 * DAY, "a2", "QUIET"))
    processor.commit([])
    assert status(db, "QUIET") == "running"
    assert "QUIET" in processor.open_runs
    store.close()


def test_a_stalled_run_that_is_abandoned_resolves_its_stall_alert(tmp_path: Path) -> None:
    setup = default_alert_setup()
    store = open_store(tmp_path / "rw.db")
    decisions = Decisions(setup.rules, store, setup.policy(deliver=True))
    processor = processor_on(store, decisions, stall_after_s=60, forget_after_s=3600)
    feed(processor, line("run_started", T0, "a1", "R1"))
    processor.detect(T0 + 120 * SECOND)
    processor.commit([], now=T0 + 120 * SECOND)
    processor.detect(T0 + 2 * 3600 * SECOND)
    derived = processor.commit([], now=T0 + 2 * 3600 * SECOND)
    assert [(d.type, d.data.get("reason")) for d in derived] == [
        ("RUN_RECOVERED", "abandoned"),
        ("RUN_ABANDONED", None),
    ]
    announced = store.db.execute(
        "SELECT json_extract(payload, '$.state') FROM outbox "
        "WHERE rule='run_stalled' AND target='console' ORDER BY event_time"
    ).fetchall()
    assert announced == [("firing",), ("resolved",)]
    assert store.db.execute("SELECT count(*) FROM alert_state").fetchone()[0] == 0, (
        "resolved, announced and past its window: forgotten"
    )
    assert store.db.execute("SELECT stalled FROM runs").fetchone()[0] == 0
    store.close()


def test_runless_events_stay_deduplicated_in_small_groups(tmp_path: Path) -> None:
    """Runless events were one group holding every id ever seen; they are grouped per day
    now, and a group written out and read back still recognises its events."""
    db = tmp_path / "rw.db"
    store = open_store(db)
    processor = processor_on(store)
    first, second = line("patch_failed", T0, "x1", None), line("patch_failed", T0 + DAY, "x2", None)
    feed(processor, first, second)
    processor.commit([])
    runless = sorted(key.text for key in processor.resident if key.kind == ORPHANS)
    assert runless == ["o:20454", "o:20455"]
    store.close()

    store = open_store(db)
    processor = processor_on(store)
    feed(processor, first, second, line("patch_failed", T0, "x3", None))
    processor.commit([])
    assert (processor.total.accepted, processor.total.duplicate) == (1, 2)
    store.close()


def test_resolved_alert_states_are_deleted_once_their_window_is_over(store: Store) -> None:
    setup = default_alert_setup()
    hour = 3600 * SECOND
    stalled = detect_stalls({"R1": (T0, False)}, T0 + hour, 1800 * SECOND)
    recovered = detect_stalls({"R1": (T0 + hour, True)}, T0 + hour, 1800 * SECOND)
    for derived, now in ((stalled, T0 + hour), (recovered, T0 + hour), ([], T0 + 4 * hour)):
        decisions = Decisions(setup.rules, store, setup.policy(deliver=True))
        changes = Changes()
        decisions.decide([], derived, now, changes)
        store.commit(changes, NOW)
        if now == T0 + hour:
            assert store.db.execute("SELECT count(*) FROM alert_state").fetchone()[0] == 1
    assert store.db.execute("SELECT count(*) FROM alert_state").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM outbox").fetchone()[0] > 0


def test_100000_runs_going_quiet_give_a_bounded_number_of_notifications(tmp_path: Path) -> None:
    """A storm of stalls pages at most `max_notifications_per_minute` per rule, channel and
    minute; the rest arrive as one grouped notification per minute, also after a restart."""
    setup = default_alert_setup()
    store = open_store(tmp_path / "rw.db")
    minute = 60 * SECOND
    quiet = {f"R{i:06}": (T0 + i * 1200, False) for i in range(100_000)}  # over 2 minutes
    changes = Changes()
    now = T0 + 33 * minute  # the stalls fall in minutes 30 and 31
    decisions = Decisions(setup.rules, store, setup.policy(deliver=True))
    decisions.decide([], detect_stalls(quiet, now, 1800 * SECOND), now, changes)
    store.commit(changes, NOW)
    alerts = [e for e in changes.outbox if e.kind == "alert" and e.target == "console"]
    assert len(alerts) == 2 * (30 + 1)
    grouped = [e.payload for e in alerts if e.payload["event"].get("type") == "ALERTS_GROUPED"]
    assert sum(p["suppressed"] for p in grouped) == 100_000 - 2 * 30

    restarted = Decisions(setup.rules, store, setup.policy(deliver=True))
    changes = Changes()
    late = {"LATE": (T0 + 100_000 * 1200 - 1, False)}  # minute 31 again, seen late
    restarted.decide([], detect_stalls(late, now, 1800 * SECOND), now + minute, changes)
    assert [e.payload["event"].get("type") for e in changes.outbox if e.target == "console"] == [
        "ALERTS_GROUPED"
    ]
    store.close()


def test_one_tick_changes_at_most_a_cache_of_runs(tmp_path: Path) -> None:
    """100,000 runs going quiet at once must not become one commit holding them all: each
    detection takes at most `cache_groups` of them, the next ones the rest."""
    store = open_store(tmp_path / "rw.db")
    processor = Processor(
        store,
        stall_after_s=60,
        max_line_bytes=8 << 20,
        wall_clock=lambda: NOW,
        max_groups=50,
    )
    feed(processor, *(line("run_started", T0, f"e{i}", f"R{i:03}") for i in range(120)))
    processor.commit([])
    batches = []
    while len(batches) < 5:
        processor.detect(T0 + 120 * SECOND)
        batches.append(sum(d.type == "RUN_STALLED" for d in processor.commit([])))
        assert len(processor.resident) <= 50
    assert batches == [50, 50, 20, 0, 0]
    assert all(flagged for _, flagged in processor.open_runs.values())
    store.close()
