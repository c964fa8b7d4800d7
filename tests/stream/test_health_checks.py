"""The liveness checks' verdicts and words, as `/healthz` and `runwatch health` show them."""

from __future__ import annotations

from runwatch.stream.services.health import heartbeat, ingest_lag


def test_a_loop_older_than_its_limit_says_the_service_is_stuck() -> None:
    fine, stuck = heartbeat(1.25, 30), heartbeat(45.0, 30)
    assert (fine.ok, fine.detail, fine.value) == (True, "last loop iteration 1.2 s ago", 1.25)
    assert (stuck.ok, stuck.value) == (False, 45.0)
    assert stuck.detail == "last loop iteration 45.0 s ago (limit 30 s): the service is stuck"
    assert not heartbeat(None, 30).ok


def test_ingest_lag_names_its_limit_only_when_over_it() -> None:
    assert ingest_lag(2.0, 60).detail == "2.0 s behind the newest appended byte"
    over = ingest_lag(90.5, 60)
    assert (over.ok, over.detail) == (False, "90.5 s behind the newest appended byte (limit 60 s)")
    assert ingest_lag(None, 60).detail == "unknown: the service is not running"
