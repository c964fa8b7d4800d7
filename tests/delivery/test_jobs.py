"""The report and archive jobs on a real replayed SQLite projection and real files, with the
values and folders hostile logs and runs bring."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import replay_into
from runwatch.sinks.archive import ArchiveConfig, verify_archive
from runwatch.sinks.reports import ReportsConfig
from runwatch.sinks.store import Connection, connect
from runwatch.stream.delivery import jobs
from runwatch.stream.settings.service import Settings


def line(n: int, kind: str, **extra: Any) -> bytes:
    event = {"event_id": f"e{n}", "event_type": kind, "run_id": "R1", **extra}
    return json.dumps({**event, "timestamp": f"2026-01-01T00:00:0{n}Z"}).encode() + b"\n"


def deep(levels: int) -> Any:
    """Nested deeper than orjson writes (255 levels); json writes it, and orjson reads it."""
    value: Any = "bottom"
    for _ in range(levels):
        value = {"cause": value}
    return value


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A finished run R1 whose failed task's error is nested 300 levels deep, replayed."""
    logs = tmp_path / "in"
    logs.mkdir()
    (logs / "events.jsonl").write_bytes(
        line(1, "run_started")
        + line(2, "task_started", task_id="T1")
        + line(3, "task_failed", task_id="T1", payload={"error": deep(300)})
        + line(4, "run_completed")
    )
    db = tmp_path / "rw.db"
    replay_into(db, logs)
    return Settings(
        database=db,
        logs_dir=tmp_path / "logs",
        reports=ReportsConfig(directory=tmp_path / "reports"),
        archive=ArchiveConfig(
            directory=tmp_path / "archive", artifacts=str(tmp_path / "worktrees" / "{run_id}")
        ),
    )


@pytest.fixture
def connection(settings: Settings) -> Iterator[Connection]:
    opened = connect(settings.database)
    yield opened
    opened.close()


def test_a_deeply_nested_error_is_reported_and_archived(
    settings: Settings, connection: Connection
) -> None:
    """JSON nested beyond what the encoder takes (255) must not cost the run its reports or
    its archive."""
    reported = jobs.report(connection, settings, "R1")
    assert reported.status == "delivered"
    assert [event["type"] for event in reported.derived] == ["REPORT_GENERATED"]
    summary = orjson.loads((settings.reports.directory / "R1_summary.json").read_bytes())
    assert summary["errors"]["failed_tasks"][0]["error"].startswith('{"cause":{"cause":')
    archived = jobs.archive(connection, settings, "R1")
    assert archived.status == "delivered"
    assert archived.derived[0]["type"] == "RUN_ARCHIVED"
    assert verify_archive(Path(archived.derived[0]["path"])) == []


def test_any_archive_failure_is_recorded_as_archival_failed(
    settings: Settings, connection: Connection
) -> None:
    """Not only the failures the archive names: an artifact tree 600 folders deep, which the
    archiver's walk cannot descend, still ends in ARCHIVAL_FAILED (retried), not an
    anonymous internal error."""
    folder = Path(settings.archive.artifacts.replace("{run_id}", "R1"))
    folder.mkdir(parents=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(600):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    result = jobs.archive(connection, settings, "R1")
    assert result.status == "retry"
    [failed] = result.derived
    assert failed["type"] == "ARCHIVAL_FAILED" and failed["run_id"] == "R1"
    assert (failed["reason"], failed["detail"]) == ("internal_error", "RecursionError")
    assert not list(settings.archive.directory.glob("*.zip"))
