"""`runwatch tail` as a real process: follows a file, commits, stops cleanly on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import orjson

from helpers import TailProcess, converged, replay_into


def test_follows_appends_and_matches_replay(tmp_path: Path, log: Path) -> None:
    """Lines appended while the service runs land in the projection, equal to a replay."""
    events = log.parent
    db = tmp_path / "live.db"
    with TailProcess(tmp_path, db, events) as tail:
        with log.open("ab") as handle:
            for second in range(20):
                handle.write(
                    orjson.dumps(
                        {
                            "event_type": "task_started" if second % 2 else "task_completed",
                            "timestamp": f"2026-11-22T05:00:{second:02d}Z",
                            "run_id": "R1",
                            "task_id": f"t{second // 2}",
                        }
                    )
                    + b"\n"
                )
                handle.flush()
        tail.wait_for_accepted(20)
        assert tail.stop() == 0
    assert "MONITOR_STOPPED" in tail.output()
    replayed = tmp_path / "replay.db"
    replay_into(replayed, events)
    assert converged(db) == converged(replayed)
