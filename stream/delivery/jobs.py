"""Completion jobs: a finished run's reports and archive, from the projection and the logs.

A job reads only committed rows, and the run's own events through the event index (source,
offset, length), so it never rescans the logs. Every job is idempotent: reports are rewritten
only when their bytes change, and an archive that exists and verifies is never rewritten.
Used by the dispatcher (RUN_COMPLETED, RUN_STATUS_CHANGED) and by `runwatch report|archive`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any

import orjson

from runwatch.projections import RUN_TERMINAL, Event
from runwatch.projections.events import format_time
from runwatch.sinks.archive import (
    ArchiveError,
    ArchiveResult,
    apply_retention,
    archived_events,
    build_archive,
    run_archives,
)
from runwatch.sinks.reports import build_index, build_run_reports, write_reports
from runwatch.sinks.store import Connection, reads
from runwatch.stream.core.decode import decode
from runwatch.stream.delivery.dispatcher import Result
from runwatch.stream.settings.service import Settings


@dataclass(slots=True)
class RunData:
    """One run as the reports and the archive see it."""

    run: dict[str, Any]
    tasks: list[dict[str, Any]]
    workstreams: list[dict[str, Any]]
    pattern_runs: list[dict[str, Any]]
    lines: list[bytes]
    events: list[dict[str, Any]]
    missing: int


Fetch = Callable[[str], list[bytes]]
"""run id → raw lines that hold the run's events (and maybe others), when the logs are
not local files (a processor reads them back from JetStream)."""


def load_run(connection: Connection, run_id: str, fetch: Fetch | None = None) -> RunData | None:
    """The run's rows and its accepted events in (time, id) order; None if there is no run.
    `missing` counts indexed events whose bytes are no longer where they were read."""
    detail = reads.run_detail(connection, run_id)
    if detail is None:
        return None
    lines, events, missing = _run_events(connection, run_id, fetch)
    return RunData(
        detail["run"],
        detail["tasks"],
        detail["workstreams"],
        detail["pattern_runs"],
        lines,
        events,
        missing,
    )


def _run_events(
    connection: Connection, run_id: str, fetch: Fetch | None
) -> tuple[list[bytes], list[dict[str, Any]], int]:
    entries = reads.run_index(connection, run_id)
    if fetch is not None:
        return _fetched_events(fetch(run_id), {entry.event_id for entry in entries})
    sources = reads.source_paths(connection)
    found: dict[str, tuple[Event, bytes]] = {}
    missing = 0
    handles: dict[int, Any] = {}
    try:
        for event_id, source_id, offset, length in sorted(
            entries, key=attrgetter("source_id", "offset")
        ):
            if event_id in found:
                continue
            line = _read_at(handles, sources.get(source_id), source_id, offset, length)
            event = decode(line) if line is not None else None
            if isinstance(event, Event) and event.id == event_id:
                found[event_id] = (event, line)  # type: ignore[assignment]  # not None here
            else:
                missing += 1  # rotated away or rewritten since it was read
    finally:
        for handle in handles.values():
            handle.close()
    ordered = sorted(found.values(), key=lambda pair: (pair[0].time, pair[0].id))
    return [line for _, line in ordered], [_event_dict(e) for e, _ in ordered], missing


def _fetched_events(
    lines: list[bytes], accepted: set[str]
) -> tuple[list[bytes], list[dict[str, Any]], int]:
    """The accepted events among fetched lines, each once, in (time, id) order."""
    found: dict[str, tuple[Event, bytes]] = {}
    for line in lines:
        event = decode(line)
        if isinstance(event, Event) and event.id in accepted and event.id not in found:
            found[event.id] = (event, line)
    ordered = sorted(found.values(), key=lambda pair: (pair[0].time, pair[0].id))
    return (
        [line for _, line in ordered],
        [_event_dict(e) for e, _ in ordered],
        len(accepted) - len(found),
    )


def _read_at(
    handles: dict[int, Any], path: str | None, source_id: int, offset: int, length: int
) -> bytes | None:
    if path is None:
        return None
    handle = handles.get(source_id)
    if handle is None:
        try:
            handle = handles[source_id] = open(path, "rb")  # noqa: SIM115  # closed by caller
        except OSError:
            return None
    data = os.pread(handle.fileno(), length, offset)
    return data if len(data) == length else None


def _event_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "time": format_time(event.time),
        "severity": event.severity,
        "task_id": event.task if event.family == "o" else None,
        "workstream_id": event.workstream,
        "payload": event.payload,
    }


class RunIndex:
    """`reports/index.html` lists the newest `reports.index_limit` runs and counts the rest.
    Rebuilding it after each of thousands of reports (a service catching up) would still
    cost a query each: it is rebuilt at most every INDEX_EVERY_S while reports are being
    written, and once more when they stop."""

    INDEX_EVERY_S = 2.0

    def __init__(self) -> None:
        self.dirty = False
        self.written_at = 0.0

    def refresh(
        self, connection: Connection, settings: Settings, *, force: bool = False
    ) -> list[Path]:
        now = time.monotonic()
        if not self.dirty or (not force and now - self.written_at < self.INDEX_EVERY_S):
            return []
        written = write_reports(
            settings.reports.directory, {"index.html": build_index_page(connection, settings)}
        )
        self.dirty, self.written_at = False, now
        return written


def build_index_page(connection: Connection, settings: Settings) -> bytes:
    counts = reads.status_counts(connection)
    return build_index(reads.newest_runs(connection, settings.reports.index_limit), counts)


def report(
    connection: Connection,
    settings: Settings,
    run_id: str,
    *,
    fetch: Fetch | None = None,
    index: RunIndex | None = None,
) -> Result:
    """Write the run's reports and refresh index.html (now, or soon with `index`);
    REPORT_GENERATED or REPORT_FAILED."""
    data = load_run(connection, run_id, fetch)
    if data is None:
        return Result("failed", f"no run {run_id!r} in the database")
    index = index or RunIndex()
    try:
        files = _reports(data)
        written = write_reports(settings.reports.directory, files)
        index.dirty = True
        written += index.refresh(connection, settings)
    except OSError as exc:
        return Result(
            "retry",
            f"writing reports: {exc.strerror}",
            derived=[
                derived_event("REPORT_FAILED", run_id, {"error": f"{exc.strerror}: {exc.filename}"})
            ],
        )
    return Result(
        "delivered",
        f"{len(written)} file(s) written",
        derived=[
            derived_event(
                "REPORT_GENERATED",
                run_id,
                {
                    "directory": str(settings.reports.directory),
                    "files": sorted(files),
                    "changed": sorted(p.name for p in written),
                    "events_missing": data.missing,
                },
            )
        ],
    )


def _reports(data: RunData) -> dict[str, bytes]:
    return build_run_reports(data.run, data.tasks, data.workstreams, data.pattern_runs, data.events)


def archive(
    connection: Connection,
    settings: Settings,
    run_id: str,
    *,
    new_version: bool = False,
    fetch: Fetch | None = None,
    finished_only: bool = False,
) -> Result:
    """Archive the run (artifacts, events, reports, manifest) and apply retention;
    RUN_ARCHIVED, or ARCHIVAL_FAILED with a reason (retried: space may be freed). When the
    run already has an archive, the events it lacks (they came later) go to `archival_late`.
    `finished_only`: a run that is not finished gets no new archive (the service's job)."""
    data = load_run(connection, run_id, fetch)
    if data is None:
        return Result("failed", f"no run {run_id!r} in the database")
    if (
        finished_only
        and data.run["status"] not in RUN_TERMINAL
        and not run_archives(settings.archive.directory, run_id)
    ):
        return Result("delivered", f"run {run_id!r} is {data.run['status']}: not archived")
    now = datetime.now(UTC)
    try:
        result = build_archive(
            run_id,
            config=settings.archive,
            events=b"".join(line + b"\n" for line in data.lines),
            reports=_reports(data),
            new_version=new_version,
            now=now,
        )
    except ArchiveError as exc:
        return _archival_failed(run_id, exc.reason, exc.detail)
    except Exception as exc:  # a bug must still leave ARCHIVAL_FAILED on the record
        return _archival_failed(run_id, "internal_error", type(exc).__name__)
    writes = [] if result.created else _late_events(data, result.path, now)
    derived = [derived_event("RUN_ARCHIVED", run_id, _archived(result, data.missing, len(writes)))]
    if result.created:
        archived_at = format_time(int(now.timestamp() * 1e6))
        writes.append(
            (
                "archival_log",
                (
                    run_id,
                    str(result.path),
                    result.sha256,
                    result.size_bytes,
                    result.members,
                    archived_at,
                ),
            )
        )
        _append_line(
            settings.logs_dir / "archival.jsonl",
            {
                "run_id": run_id,
                "archive_path": str(result.path),
                "sha256": result.sha256,
                "size_bytes": result.size_bytes,
                "members": result.members,
                "archived_at": archived_at,
            },
        )
    for path in apply_retention(settings.archive, now):
        derived.append(derived_event("ARCHIVE_PRUNED", None, {"path": str(path)}))
    return Result("delivered", str(result.path), derived=derived, writes=writes)


def _archival_failed(run_id: str, reason: str, detail: str) -> Result:
    """Retried: space may be freed, a folder fixed, a bug fixed."""
    return Result(
        "retry",
        f"{reason}: {detail}",
        derived=[derived_event("ARCHIVAL_FAILED", run_id, {"reason": reason, "detail": detail})],
    )


def _late_events(data: RunData, path: Path, now: datetime) -> list[tuple[str, tuple[Any, ...]]]:
    """`archival_late` rows for the run's events that its archive `path` does not hold."""
    held = set()
    for line in archived_events(path):
        event = decode(line)
        if isinstance(event, Event):
            held.add(event.id)
    noted_at = format_time(int(now.timestamp() * 1e6))
    return [
        (
            "archival_late",
            (data.run["run_id"], e["id"], str(path), e["type"], e["time"], noted_at),
        )
        for e in data.events
        if e["id"] not in held
    ]


def _archived(result: ArchiveResult, missing: int, late: int) -> dict[str, Any]:
    return {
        "path": str(result.path),
        "sha256": result.sha256,
        "size_bytes": result.size_bytes,
        "members": result.members,
        "created": result.created,
        "events_missing": missing,
        "late_events": late,
        "skipped": [list(item) for item in result.skipped],
        "corrupt": [[str(path), problem] for path, problem in result.corrupt],
    }


def derived_event(kind: str, run_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
    """What a job did, stamped now, for the audit trail and the alert rules."""
    out: dict[str, Any] = {
        "type": kind,
        "event_time": format_time(int(datetime.now(UTC).timestamp() * 1e6)),
    }
    if run_id is not None:
        out["run_id"] = run_id
    return {**out, **data}


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """At least once: a crash before the database commit repeats the line on retry, with
    the same run, path and sha256, so readers can drop the repeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, orjson.dumps(record) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
