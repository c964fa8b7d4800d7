"""The dashboard as users run it: inside `runwatch tail` on its metrics address, and
`runwatch serve` over the database the service writes; both push a new run live."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

from helpers import RunwatchProcess, TailProcess
from webcorpus import START, Stream, event


def announced(process: RunwatchProcess, pattern: str) -> str:
    process.wait_until(lambda: re.search(pattern, process.output()) is not None)
    found = re.search(pattern, process.output())
    assert found is not None
    return found.group(1)


def test_service_and_serve_push_a_new_run_live(tmp_path: Path) -> None:
    """An appended line becomes a `run` event on both dashboards, without anyone polling
    the API; `serve` stops cleanly on SIGTERM."""
    logs = tmp_path / "in"
    logs.mkdir()
    db = tmp_path / "rw.db"
    with TailProcess(tmp_path, db, logs, args=("--metrics-addr", "127.0.0.1:0")) as service:
        inside = announced(service, r"dashboard on (http://127\.0\.0\.1:\d+)/")
        with RunwatchProcess(
            tmp_path, "serve", "serve", "--db", db, "--addr", "127.0.0.1:0", "--poll", "0.1"
        ) as serve:
            outside = announced(serve, r"dashboard on (http://127\.0\.0\.1:\d+)/")
            page = requests.get(outside + "/", timeout=10)
            assert page.status_code == 200 and "/static/index.js" in page.text
            streams = [Stream(f"{url}/api/events?after=0") for url in (inside, outside)]
            try:
                for stream in streams:
                    stream.next(name="stats")
                appended = time.monotonic()
                # Stamped now: an older run would be flagged stalled at the service's next
                # tick, a second change that may reach the stream first.
                now = (datetime.now(UTC) - START).total_seconds()
                (logs / "a.jsonl").write_bytes(event(1, "run_started", "R-web", now) + b"\n")
                for stream in streams:
                    _, seq, row = stream.next(deadline_s=10)
                    assert row["run_id"] == "R-web" and row["status"] == "running"
                    assert seq == "1"
                assert time.monotonic() - appended < 5
            finally:
                for stream in streams:
                    stream.close()
            runs = requests.get(outside + "/api/runs", timeout=10).json()
            assert [r["run_id"] for r in runs] == ["R-web"]
            assert serve.stop() == 0
        assert service.stop() == 0
