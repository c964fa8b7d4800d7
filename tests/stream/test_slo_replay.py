"""SLOs over a replayed history: a burst of failures is recorded as SLO_BURN at event time
(with the slo_burn alert it causes), the same on every replay, and `runwatch slo` reports
the figures of the contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from helpers import derived_events, jsonl, replay_into, run_cli
from runwatch.sinks.analysis import render
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.analysis.analyze import analyze_logs
from runwatch.stream.settings.service import Settings

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SLOS = [
    {"name": "pipeline_success", "sli": "success", "objective": 0.95},
    {"name": "pipeline_fast", "sli": "duration", "objective": 0.5, "threshold": "10m"},
]
CONFIG = "slos:\n" + "".join(
    f"  - {json.dumps(slo)}\n" for slo in SLOS
)  # JSON is YAML: one flow mapping per SLO


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history(path: Path, start: datetime = START) -> datetime:
    """From `start`, 20 good runs, one every 10 minutes, then 10 failures within 5 minutes
    (4 h after `start`); returns the end of the first failure."""
    lines = []
    for i in range(20):
        began = start + timedelta(minutes=10 * i)
        lines += [
            jsonl(event_type="run_started", timestamp=stamp(began), run_id=f"ok{i}"),
            jsonl(
                event_type="run_succeeded",
                timestamp=stamp(began + timedelta(minutes=2)),
                run_id=f"ok{i}",
            ),
        ]
    burst = start + timedelta(hours=4)
    for i in range(10):
        began = burst + timedelta(seconds=30 * i)
        lines += [
            jsonl(event_type="run_started", timestamp=stamp(began), run_id=f"bad{i}"),
            jsonl(
                event_type="run_failed",
                timestamp=stamp(began + timedelta(seconds=20)),
                run_id=f"bad{i}",
            ),
        ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return burst + timedelta(seconds=20)


def slo_records(db: Path) -> list[dict[str, object]]:
    return [e for e in derived_events(db) if str(e["type"]).startswith("SLO_")]


def test_a_burst_of_failures_is_recorded_as_slo_burn_at_event_time(tmp_path: Path) -> None:
    """A replay must show when the budget started to burn, in the logs' own time, and what
    the alert rules made of it (recorded, never sent), identically on every rebuild."""
    log = tmp_path / "events.jsonl"
    first_failure = history(log)
    db = tmp_path / "rw.db"
    replay_into(db, log, slos=SLOS)
    records = slo_records(db)
    burns = [r for r in records if r["type"] == "SLO_BURN" and r["slo"] == "pipeline_success"]
    # The second failure tips 3d/6h (a ticket: 2 of 22 runs, 1.8x); the page needs 6h ≥ 6x,
    # i.e. 9 failures beside the 20 good runs, with 30m ≥ 6x: raised at the ninth.
    assert [(b["level"], b["previous_level"]) for b in burns] == [
        ("ticket", None),
        ("page", "ticket"),
    ], records
    ticket, page = burns
    assert ticket["event_time"] == stamp(first_failure + timedelta(seconds=30))
    assert page["event_time"] == stamp(first_failure + timedelta(seconds=30 * 8))
    assert page["runs"][:2] == ["bad8", "bad7"]  # type: ignore[index]
    assert page["burn_rates"]["6h"] >= 6  # type: ignore[index]
    assert not any(r["slo"] == "pipeline_fast" for r in records), "every run took < 10 min"

    store = SqliteStore(db)
    try:
        alerts = store.db.execute(
            "SELECT state, payload FROM outbox WHERE rule = 'slo_burn' AND target = 'console'"
        ).fetchall()
    finally:
        store.close()
    assert alerts and all(state == "recorded" for state, _ in alerts)
    sent = [orjson.loads(payload) for _, payload in alerts]
    assert [(n["state"], n["severity"]) for n in sent] == [
        ("firing", "warning"),
        ("firing", "critical"),
    ]
    assert sent[0]["labels"]["slo"] == "pipeline_success"
    assert sent[0]["runbook_url"].endswith("#slo-burn")

    again = tmp_path / "again.db"
    replay_into(again, log, slos=SLOS)
    assert slo_records(again) == records


def test_slo_command_reports_the_contract_figures(tmp_path: Path) -> None:
    """`runwatch slo --json` is what scripts read: one object per SLO with the contract's
    fields; the table is for people; --at judges any moment."""
    log = tmp_path / "events.jsonl"
    first_failure = history(log)
    db = tmp_path / "rw.db"
    replay_into(db, log)
    config = tmp_path / "runwatch.yaml"
    config.write_text(CONFIG)
    at = stamp(first_failure + timedelta(minutes=5))
    done = run_cli("slo", "--db", db, "--config", config, "--at", at, "--json")
    assert done.returncode == 0, done.stderr
    success, fast = json.loads(done.stdout)
    assert list(success) == [
        "name",
        "sli",
        "objective",
        "window_s",
        "total",
        "good",
        "bad",
        "ratio",
        "budget_remaining",
        "burn_rates",
        "alert",
    ]
    assert (success["total"], success["good"], success["bad"]) == (30, 20, 10)
    assert success["budget_remaining"] == pytest.approx(1 - 10 / (0.05 * 30))
    assert success["burn_rates"]["5m"] == 20.0 and success["alert"] == "page"
    assert (fast["good"], fast["bad"], fast["alert"]) == (30, 0, None)
    table = run_cli("slo", "--db", db, "--config", config, "--at", at)
    assert table.returncode == 0
    assert "pipeline_success" in table.stdout and "page" in table.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text('slos:\n  - {name: "Pipeline Success", sli: success, objective: 1.5}\n')
    refused = run_cli("slo", "--db", db, "--config", bad)
    assert refused.returncode == 2
    assert "slos.0.name" in refused.stderr and "slos.0.objective" in refused.stderr


def test_status_watch_shows_the_service_levels(tmp_path: Path) -> None:
    """The live view puts each SLO's level beside the runs: the burst that ended an hour
    ago no longer pages (its short windows are empty) but still holds a ticket open."""
    log = tmp_path / "events.jsonl"
    history(log, datetime.now(UTC) - timedelta(hours=5))
    db = tmp_path / "rw.db"
    replay_into(db, log)
    config = tmp_path / "runwatch.yaml"
    config.write_text(CONFIG)
    shown = run_cli("status", "--watch", "--db", db, "--config", config)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "SERVICE LEVELS" in lines
    (success,) = [line for line in lines if "pipeline_success" in line]
    assert "TICKET" in success and "good 66.7% of 30" in success
    (fast,) = [line for line in lines if "pipeline_fast" in line]
    assert " OK " in fast


def test_analyze_reports_service_levels_and_their_incidents(tmp_path: Path) -> None:
    """Months of logs answer "how often did we burn the budget": analyze judges each SLO at
    the end of the logs and counts the pages and tickets SLO_BURN would have raised."""
    log = tmp_path / "events.jsonl"
    history(log)
    analysis = analyze_logs([log], Settings(slos=SLOS), progress=False, workers=0)
    success, fast = analysis["service_levels"]
    assert (success["slo"], success["pages"], success["tickets"]) == ("pipeline_success", 1, 1)
    assert (success["total"], success["bad"], success["alert"]) == (30, 10, "page")
    assert (fast["slo"], fast["pages"], fast["tickets"], fast["alert"]) == (
        "pipeline_fast",
        0,
        0,
        "ok",
    )
    table = render(analysis, "table").decode()
    assert "Service levels" in table and "pipeline_success" in table
    assert "pipeline_success" in render(analysis, "html").decode()
