"""Both stores keep settling jobs alike: written due later, made due by the explicit end."""

from __future__ import annotations

from runwatch.sinks.store import Store
from runwatch.sinks.store.api import Changes, OutboxEntry

NOW = "2026-01-01T00:00:00.000000Z"


def job(entry_id: str, run_id: str, not_before: float) -> OutboxEntry:
    payload = {"run_id": run_id, "job": "report"}
    return OutboxEntry(
        entry_id, "job", "report", "pending", payload, run_id=run_id, not_before=not_before
    )


def due(store: Store) -> dict[str, float]:
    return {
        entry_id: float(at)
        for entry_id, at in store.db.execute("SELECT id, next_attempt_at FROM outbox")
    }


def test_a_settling_job_is_due_later_until_its_run_ends_explicitly(store: Store) -> None:
    """The outbox holds a settling job with its due time (so a crash keeps it); the run's
    explicit end makes that run's waiting jobs due, and no other run's."""
    store.commit(
        Changes(outbox=[job("a", "R1", 2000.0), job("b", "R2", 2000.0), job("c", "R1", 0.0)]), NOW
    )
    assert due(store) == {"a": 2000.0, "b": 2000.0, "c": 0.0}
    store.commit(Changes(hastened=[("R1", 1500.0)]), NOW)
    assert due(store) == {"a": 1500.0, "b": 2000.0, "c": 0.0}
    store.commit(Changes(outbox=[job("a", "R1", 9999.0)]), NOW)
    assert due(store)["a"] == 1500.0, "recording the same job again changes nothing"
