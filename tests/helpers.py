"""Test helpers shared by every test folder (importable as `helpers`)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

import orjson

from runwatch.projections import Event
from runwatch.sinks.store import open_store
from runwatch.sinks.store.api import Changes, OutboxEntry
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.core.decode import decode
from runwatch.stream.services.replay import ReplaySummary, replay
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.discovery import expand

FIXTURES = Path(__file__).parent / "fixtures"
UPSTREAM = FIXTURES / "upstream"
RUNWATCH = [sys.executable, "-m", "runwatch.stream.cli.main"]

# The pattern_runs row the real upstream semgrep sample must give (six phases share one time).
SEMGREP_RUN = {
    "pattern_run_id": "PRUN-01KB0A3BJ6Y76MT7R6HYDJAQC5",
    "pattern_id": "PAT-SEMGRP-001",
    "job_id": "JOB-01JH9F8P2ZJ1A8E5R6C792Q2EQ",
    "step_id": "STEP-003",
    "run_id": None,
    "status": "succeeded",
    "phase": "execution",
    "started_at": "2025-11-26T14:46:52.742613Z",
    "finished_at": "2025-11-26T14:46:53.254031Z",
    "duration_s": 18.74,
    "error_message": None,
}


def replay_into(db: Path, *paths: Path | str, **settings: Any) -> ReplaySummary:
    """Replay files (or directories) into `db` with default settings, no progress bar."""
    return replay(expand([str(p) for p in paths]), db, Settings(**settings), progress=False)


def snapshot(db: Path) -> dict[str, list[dict[str, Any]]]:
    store = SqliteStore(db)
    try:
        return store.snapshot()
    finally:
        store.close()


def run_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `runwatch ARGS` as a real subprocess and capture its output."""
    return subprocess.run(
        [*RUNWATCH, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def counters(db: Path) -> dict[str, int]:
    """The store's counters, read without disturbing a running service (WAL reader)."""
    if not db.exists():
        return {}
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return dict(connection.execute("SELECT name, value FROM counters").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        connection.close()


def converged(db: Path) -> dict[str, Any]:
    """Rows a live database must share with a replay of the same files: the stalled flag is
    judged on the wall clock live and on event time in replay, so it is left out."""
    rows = snapshot(db)
    for row in rows["runs"]:
        row.pop("stalled")
    return rows


def jsonl(**fields: Any) -> bytes:
    """One JSONL line (without its line ending) holding `fields` (ints of any size allowed)."""
    return json.dumps(fields).encode()


def accepted(raw: bytes) -> Event:
    """Decode a line that must be accepted."""
    result = decode(raw)
    assert isinstance(result, Event), f"{raw!r} was rejected: {result}"
    return result


def notification(**changes: Any) -> dict[str, Any]:
    """An alert notification as `Decisions` writes it into the outbox, with `changes`."""
    note: dict[str, Any] = {
        "id": "9f1c0aa5d2e34b7c",
        "alert_id": "a1b2c3",
        "rule": "run_failure",
        "state": "firing",
        "severity": "critical",
        "group_key": "run_id=R1",
        "labels": {
            "alertname": "run_failure",
            "severity": "critical",
            "run_id": "R1",
            "team": "ml",
        },
        "summary": "run R1 failed: 3 of 10 tasks failed",
        "description": "tasks t3, t7, t9",
        "run_id": "R1",
        "event": {
            "type": "run_finished",
            "event_time": "2026-11-22T07:00:00Z",
            "status": "failed",
            "failed": 3,
        },
        "event_time": "2026-11-22T07:00:00.000000Z",
        "starts_at": "2026-11-22T07:00:00.000000Z",
        "ends_at": None,
        "suppressed": 0,
        "test": False,
    }
    return note | changes


def record_alerts(store_target: Path | str, *entry_ids: str, channel: str = "hook") -> None:
    """Record pending alert entries for `channel`, one run each, as a commit of the service
    does."""
    entries = [
        OutboxEntry(
            entry_id,
            "alert",
            channel,
            "pending",
            notification(
                id=entry_id,
                alert_id=f"alert-{entry_id}",
                group_key=f"run_id=R-{entry_id}",
                labels={"run_id": f"R-{entry_id}"},
                summary=f"run R-{entry_id} failed",
                run_id=f"R-{entry_id}",
            ),
            run_id=f"R-{entry_id}",
            alert_id=f"alert-{entry_id}",
            rule="run_failure",
            event_time="2026-01-05T08:00:00.000000Z",
        )
        for entry_id in entry_ids
    ]
    store = open_store(store_target)
    try:
        store.commit(Changes(outbox=entries), "2026-01-05T08:00:01.000000Z")
    finally:
        store.close()


def derived_events(store_target: Path | str) -> list[dict[str, Any]]:
    """The derived events a store recorded (ALERT_SENT, ALERT_FAILED, …), oldest first."""
    store = open_store(store_target)
    try:
        found = store.db.execute("SELECT data FROM derived_events ORDER BY seq").fetchall()
        return [orjson.loads(data) for (data,) in found]
    finally:
        store.close()


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    show: Iterable[RunwatchProcess] = (),
) -> None:
    """Poll until `predicate` holds; on timeout fail naming `what`, with the output of the
    processes in `show`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(
        f"{what}: not after {timeout} s\n"
        + "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in show)
    )


class RunwatchProcess:
    """A real `runwatch ARGS` subprocess, restartable, with the output of every start
    captured in `<name>-<n>.out` in its working directory."""

    def __init__(
        self, workdir: Path, name: str, *args: str | Path, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.command = [*RUNWATCH, *map(str, args)]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Self:
        self.starts += 1
        with (self.workdir / f"{self.name}-{self.starts}.out").open("wb") as out:
            self.process = subprocess.Popen(
                self.command, cwd=self.workdir, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def output(self) -> str:
        return "".join(
            (self.workdir / f"{self.name}-{n}.out").read_text(errors="replace")
            for n in range(1, self.starts + 1)
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        wait_until(predicate, "condition", timeout, show=[self])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: a runwatch service finishes its batch, commits and exits 0."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.running():
            self.kill()


class TailProcess(RunwatchProcess):
    """A real `runwatch tail` subprocess on database `db`."""

    def __init__(
        self,
        workdir: Path,
        db: Path,
        *patterns: str | Path,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, "tail", "tail", *patterns, "--db", db, *args, env=env)
        self.db = db

    def wait_for_accepted(self, count: int, timeout: float = 30.0) -> None:
        """Block until the service has committed `count` accepted events."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if counters(self.db).get("events_accepted", 0) >= count:
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"tail exited with {self.process.returncode}:\n{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"only {counters(self.db).get('events_accepted', 0)} of {count} "
            f"events committed after {timeout} s:\n{self.output()}"
        )


def checkpointed(db: Path) -> set[tuple[int, int]]:
    """The (device, inode) of every file a service or shipper holds a checkpoint for (none
    while it has not made its database yet)."""
    if not db.exists():
        return set()
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return set(connection.execute("SELECT device, inode FROM checkpoints").fetchall())
    except sqlite3.OperationalError:
        return set()
    finally:
        connection.close()
