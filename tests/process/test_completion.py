"""Completion sinks end to end: a finished run is reported and archived by the service."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from helpers import TailProcess, run_cli
from runwatch.sinks.archive import verify_archive


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(kind: str, run_id: str, n: int, **extra: Any) -> bytes:
    return (
        orjson.dumps(
            {
                "event_id": f"{run_id}-{n}-{kind}",
                "event_type": kind,
                "run_id": run_id,
                "timestamp": stamp(datetime.now(UTC)),
                **extra,
            }
        )
        + b"\n"
    )


def finished_run(run_id: str, *, fail: bool = False) -> bytes:
    end = "task_failed" if fail else "task_completed"
    return b"".join(
        [
            event("run_started", run_id, 1),
            event("task_started", run_id, 2, task_id="T1"),
            event(end, run_id, 3, task_id="T1", payload={"error": "<script>x</script>"}),
            event("task_started", run_id, 4, task_id="T2"),
            event("task_completed", run_id, 5, task_id="T2"),
            event("run_completed", run_id, 6),
        ]
    )


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def jobs(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            f"{run}/{target}": state
            for run, target, state in connection.execute(
                "SELECT run_id, target, state FROM outbox WHERE kind='job'"
            )
        }
    except sqlite3.OperationalError:
        return {}
    finally:
        connection.close()


def trail_types(workdir: Path) -> list[str]:
    trail = workdir / "logs" / "monitor.jsonl"
    if not trail.exists():
        return []
    return [json.loads(line)["type"] for line in trail.read_text().splitlines()]


def make_artifacts(workdir: Path, run_id: str) -> Path:
    folder = workdir / ".worktrees" / run_id
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text("print('hello')\n")
    (folder / "result.txt").write_text("ok\n")
    (workdir / "secret.txt").write_text("do not archive me\n")
    os.symlink(workdir / "secret.txt", folder / "escape")
    return folder


def test_completed_run_is_reported_and_archived_once(tmp_path: Path) -> None:
    """The whole point of the sinks: a finished run leaves a verified archive, reports, a
    log row and audit lines, without anyone lifting a finger, and only once."""
    logs = tmp_path / "in"
    logs.mkdir()
    make_artifacts(tmp_path, "R1")
    db = tmp_path / "rw.db"
    with TailProcess(tmp_path, db, logs) as service:
        append(logs / "events.jsonl", finished_run("R1", fail=True))
        service.wait_until(
            lambda: jobs(db) == {"R1/report": "delivered", "R1/archive": "delivered"}
        )
        service.wait_until(lambda: "RUN_ARCHIVED" in trail_types(tmp_path))
        assert service.stop() == 0
    archive = tmp_path / ".archive" / "R1.zip"
    assert verify_archive(archive) == []
    with zipfile.ZipFile(archive) as opened:
        names = set(opened.namelist())
        manifest = json.loads(opened.read("manifest.json"))
        for entry in manifest["members"]:
            data = opened.read(entry["name"])
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        events = opened.read("events.jsonl").decode().splitlines()
    assert {
        "events.jsonl",
        "artifacts/src/main.py",
        "artifacts/result.txt",
        "reports/R1_summary.json",
        "reports/R1.html",
    } <= names
    assert len(events) == 6
    assert "do not archive me" not in archive.read_bytes().decode("latin-1")
    for name in ("R1_summary.json", "R1_metrics.json", "R1.html", "index.html"):
        assert (tmp_path / "reports" / name).is_file()
    connection = sqlite3.connect(db)
    [row] = connection.execute("SELECT run_id, archive_path, sha256 FROM archival_log").fetchall()
    connection.close()
    assert row[2] == hashlib.sha256(archive.read_bytes()).hexdigest()
    [logged] = (tmp_path / "logs" / "archival.jsonl").read_text().splitlines()
    assert json.loads(logged)["sha256"] == row[2]
    types = trail_types(tmp_path)
    assert types.count("RUN_ARCHIVED") == 1 and types.count("REPORT_GENERATED") == 1
    before = (archive.stat().st_mtime_ns, archive.read_bytes())
    again = run_cli("archive", "R1", "--db", db, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "created=False" in again.stdout
    assert (archive.stat().st_mtime_ns, archive.read_bytes()) == before
    assert sorted(
        p.name for p in (tmp_path / ".archive").iterdir() if not p.name.startswith(".")
    ) == ["R1.zip"]
    assert len((tmp_path / "logs" / "archival.jsonl").read_text().splitlines()) == 1
    verified = run_cli("archive", "--verify", "R1", "--db", db, cwd=tmp_path)
    assert verified.returncode == 0 and "OK" in verified.stdout


def test_insufficient_space_fails_archival_and_raises_the_alert(tmp_path: Path) -> None:
    """A full disk must not leave a half archive: it fails loudly and retries later."""
    logs = tmp_path / "in"
    logs.mkdir()
    (tmp_path / "rw.yaml").write_text("archive:\n  reserve_bytes: 1000000000000000\n")
    db = tmp_path / "rw.db"
    with TailProcess(tmp_path, db, logs, args=("--config", str(tmp_path / "rw.yaml"))) as service:
        append(logs / "events.jsonl", finished_run("R1"))
        service.wait_until(lambda: "ARCHIVAL_FAILED" in trail_types(tmp_path))
        service.wait_until(lambda: "archival_failure" in service.output())
        assert service.stop() == 0
    assert not list((tmp_path / ".archive").glob("*.zip"))
    trail = (tmp_path / "logs" / "monitor.jsonl").read_text()
    assert '"reason":"insufficient_space"' in trail
    assert (tmp_path / "reports" / "R1.html").is_file(), "reports do not depend on the archive"


def test_kill_9_while_archiving_leaves_no_partial_zip_and_finishes_after_restart(
    tmp_path: Path,
) -> None:
    """A crash mid-archive must never leave a file that looks like a finished archive."""
    logs = tmp_path / "in"
    logs.mkdir()
    folder = tmp_path / ".worktrees" / "BIG"
    folder.mkdir(parents=True)
    for n in range(6):
        (folder / f"blob{n}.bin").write_bytes(os.urandom(40 << 20))
    db = tmp_path / "rw.db"
    service = TailProcess(tmp_path, db, logs).start()
    append(logs / "events.jsonl", finished_run("BIG"))
    archive_dir = tmp_path / ".archive"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if archive_dir.exists() and any(p.name.endswith(".tmp") for p in archive_dir.iterdir()):
            break
        time.sleep(0.01)
    else:
        raise AssertionError("archiving never started:\n" + service.output())
    service.kill()
    assert not (archive_dir / "BIG.zip").exists()
    service.start()
    service.wait_until(lambda: jobs(db).get("BIG/archive") == "delivered", timeout=120)
    assert service.stop() == 0
    assert verify_archive(archive_dir / "BIG.zip") == []
    assert not [p for p in archive_dir.iterdir() if p.name.endswith(".tmp")]


@contextmanager
def archived_then_late(
    workdir: Path, kind: str, **extra: Any
) -> Iterator[tuple[TailProcess, bytes]]:
    """A service on workdir/rw.db that archived the finished run R1 and was then handed a
    late `kind` event of R1's (stamped after the run's end); with the archive's bytes from
    before the late event."""
    logs = workdir / "in"
    logs.mkdir()
    db = workdir / "rw.db"
    with TailProcess(workdir, db, logs) as service:
        append(logs / "events.jsonl", finished_run("R1"))
        service.wait_until(lambda: jobs(db).get("R1/archive") == "delivered")
        archive = (workdir / ".archive" / "R1.zip").read_bytes()
        append(logs / "events.jsonl", event(kind, "R1", 7, **extra))
        yield service, archive


def test_late_event_regenerates_reports_but_not_the_archive(tmp_path: Path) -> None:
    """A finished run's archive is immutable; its reports follow the latest truth."""
    db = tmp_path / "rw.db"
    with archived_then_late(tmp_path, "task_failed", task_id="T2") as (
        service,
        archive,
    ):
        service.wait_until(lambda: "RUN_STATUS_CHANGED" in trail_types(tmp_path))
        service.wait_until(lambda: trail_types(tmp_path).count("REPORT_GENERATED") == 2)
        assert service.stop() == 0
    summary = json.loads((tmp_path / "reports" / "R1_summary.json").read_text())
    assert summary["status"] != "succeeded"
    assert (tmp_path / ".archive" / "R1.zip").read_bytes() == archive
    newer = run_cli("archive", "R1", "--new-version", "--db", db, cwd=tmp_path)
    assert newer.returncode == 0, newer.stderr
    versions = sorted(p.name for p in (tmp_path / ".archive").glob("*.zip"))
    assert len(versions) == 2 and "R1.zip" in versions


def test_manual_report_and_archive_work_without_the_service(tmp_path: Path) -> None:
    """`runwatch report|archive RUN` are usable any time, e.g. after a replay."""
    logs = tmp_path / "in"
    logs.mkdir()
    append(logs / "events.jsonl", finished_run("R1") + finished_run("R2", fail=True))
    db = tmp_path / "rw.db"
    assert run_cli("replay", logs, "--db", db, cwd=tmp_path).returncode == 0
    assert not (tmp_path / "reports").exists(), "replay runs no jobs without --deliver"
    made = run_cli("report", "R2", "--db", db, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "reports" / "R2.html").is_file()
    missing = run_cli("archive", "NOPE", "--db", db, cwd=tmp_path)
    assert missing.returncode == 1 and "NOPE" in missing.stderr
    delivered = run_cli("replay", logs, "--db", db, "--deliver", cwd=tmp_path)
    assert delivered.returncode == 0, delivered.stderr
    assert {p.name for p in (tmp_path / ".archive").glob("*.zip")} == {"R1.zip", "R2.zip"}


def test_audit_verify_detects_one_changed_byte(tmp_path: Path) -> None:
    """The trail proves what the monitor did only if tampering shows."""
    logs = tmp_path / "in"
    logs.mkdir()
    db = tmp_path / "rw.db"
    with TailProcess(tmp_path, db, logs) as service:
        append(logs / "events.jsonl", finished_run("R1"))
        service.wait_until(lambda: "RUN_ARCHIVED" in trail_types(tmp_path))
        assert service.stop() == 0
    trail = tmp_path / "logs" / "monitor.jsonl"
    good = run_cli("audit", "verify", trail, cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    data = bytearray(trail.read_bytes())
    lines = data.split(b"\n")
    target = len(lines[0]) + 1 + lines[1].index(b'"type":"') + 9  # inside line 2's type
    data[target] ^= 0x01
    trail.write_bytes(bytes(data))
    bad = run_cli("audit", "verify", trail, cwd=tmp_path)
    assert bad.returncode == 1
    assert "line 2" in bad.stdout


def test_retention_prunes_the_oldest_archive_with_an_audit_record(tmp_path: Path) -> None:
    """Retention must not delete silently: each removal is on the record."""
    logs = tmp_path / "in"
    logs.mkdir()
    append(logs / "events.jsonl", finished_run("R1") + finished_run("R2"))
    (tmp_path / "rw.yaml").write_text("archive:\n  keep_last: 1\n")
    db = tmp_path / "rw.db"
    config = ("--config", str(tmp_path / "rw.yaml"))
    assert run_cli("replay", logs, "--db", db, *config, cwd=tmp_path).returncode == 0
    assert run_cli("archive", "R1", "--db", db, *config, cwd=tmp_path).returncode == 0
    os.utime(tmp_path / ".archive" / "R1.zip", (1, 1))  # clearly the oldest
    second = run_cli("archive", "R2", "--db", db, *config, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "ARCHIVE_PRUNED" in second.stdout
    assert [p.name for p in (tmp_path / ".archive").glob("*.zip")] == ["R2.zip"]
    assert "ARCHIVE_PRUNED" in trail_types(tmp_path)


def test_a_new_service_does_not_archive_history(tmp_path: Path) -> None:
    """Months of old logs must not start thousands of jobs on the first start."""
    logs = tmp_path / "in"
    logs.mkdir()
    old = finished_run("OLD").replace(
        datetime.now(UTC).strftime("%Y-%m-%d").encode(), b"2025-01-01"
    )
    append(logs / "events.jsonl", old)
    db = tmp_path / "rw.db"
    with TailProcess(tmp_path, db, logs) as service:
        service.wait_until(lambda: jobs(db) == {"OLD/report": "skipped", "OLD/archive": "skipped"})
        append(logs / "events.jsonl", finished_run("NEW"))
        service.wait_until(lambda: jobs(db).get("NEW/archive") == "delivered")
        assert service.stop() == 0
    assert [p.name for p in (tmp_path / ".archive").glob("*.zip")] == ["NEW.zip"]


def implicit_run(run_id: str) -> bytes:
    """A run that declares two tasks and finishes both, without a run-level end."""
    return b"".join(
        [
            event("run_created", run_id, 1, payload={"total_tasks": 2}),
            event("run_started", run_id, 2),
            event("task_started", run_id, 3, task_id="T1"),
            event("task_completed", run_id, 4, task_id="T1"),
            event("task_started", run_id, 5, task_id="T2"),
            event("task_completed", run_id, 6, task_id="T2"),
        ]
    )


def waiting_jobs(db: Path) -> dict[str, str]:
    """The run's jobs that are pending but not yet due (settling), by target."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(
            connection.execute(
                "SELECT target, run_id FROM outbox WHERE kind='job' AND state='pending' "
                "AND next_attempt_at > ?",
                (time.time(),),
            )
        )
    finally:
        connection.close()


def report_files(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "reports").iterdir())}


def archived_lines(workdir: Path, run_id: str) -> list[dict[str, Any]]:
    with zipfile.ZipFile(workdir / ".archive" / f"{run_id}.zip") as opened:
        return [json.loads(line) for line in opened.read("events.jsonl").splitlines()]


def test_an_explicit_end_50_ms_after_the_implicit_one_reaches_report_and_archive(
    tmp_path: Path,
) -> None:
    """All declared tasks ended, so the run completed; its run_completed 50 ms later must
    still be in the report and the archive, and what the service left on disk must be what
    `runwatch report` writes."""
    logs = tmp_path / "in"
    logs.mkdir()
    db = tmp_path / "rw.db"
    with TailProcess(tmp_path, db, logs) as service:
        append(logs / "events.jsonl", implicit_run("R1"))
        service.wait_until(lambda: "RUN_COMPLETED" in trail_types(tmp_path))
        time.sleep(0.05)
        append(logs / "events.jsonl", event("run_completed", "R1", 7, payload={"note": "end"}))
        service.wait_until(
            lambda: jobs(db) == {"R1/report": "delivered", "R1/archive": "delivered"}
        )
        service.wait_until(lambda: "RUN_ARCHIVED" in trail_types(tmp_path))
        assert service.stop() == 0
    assert [e["event_type"] for e in archived_lines(tmp_path, "R1")][-1] == "run_completed"
    summary = json.loads((tmp_path / "reports" / "R1_summary.json").read_text())
    assert summary["counts"]["events"] == 7
    on_disk = report_files(tmp_path)
    again = run_cli("report", "R1", "--db", db, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert report_files(tmp_path) == on_disk
    assert trail_types(tmp_path).count("RUN_ARCHIVED") == 1


def test_a_late_event_regenerates_the_reports_and_is_recorded_against_the_archive(
    tmp_path: Path,
) -> None:
    """An event for a run that was archived changes its reports, not its archive; the
    archival log says which events the archive lacks, and `status --run` shows them."""
    db = tmp_path / "rw.db"
    with archived_then_late(tmp_path, "artifact_uploaded") as (service, archive):
        service.wait_until(lambda: "RUN_UPDATED" in trail_types(tmp_path))
        service.wait_until(lambda: trail_types(tmp_path).count("REPORT_GENERATED") == 2)
        service.wait_until(lambda: trail_types(tmp_path).count("RUN_ARCHIVED") == 2)
        service.wait_until(lambda: "pending" not in jobs(db).values())
        assert service.stop() == 0
    assert (tmp_path / ".archive" / "R1.zip").read_bytes() == archive
    summary = json.loads((tmp_path / "reports" / "R1_summary.json").read_text())
    assert summary["counts"]["events"] == 7
    connection = sqlite3.connect(db)
    late = connection.execute("SELECT run_id, event_id, event_type FROM archival_late").fetchall()
    connection.close()
    assert late == [("R1", "R1-7-artifact_uploaded", "artifact_uploaded")]
    shown = run_cli("status", "--db", db, "--run", "R1", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "late_events:" in shown.stdout and "R1-7-artifact_uploaded" in shown.stdout
    detail = json.loads(run_cli("status", "--db", db, "--run", "R1", "--json", cwd=tmp_path).stdout)
    assert [e["event_id"] for e in detail["late_events"]] == ["R1-7-artifact_uploaded"]
    assert [a["archive_path"] for a in detail["archives"]] == [".archive/R1.zip"]
    on_disk = report_files(tmp_path)
    assert run_cli("report", "R1", "--db", db, cwd=tmp_path).returncode == 0
    assert report_files(tmp_path) == on_disk


def test_kill_9_while_a_completion_settles_neither_loses_nor_repeats_its_jobs(
    tmp_path: Path,
) -> None:
    """The waiting jobs are in the outbox with the completion: a crash inside the settle,
    then a restart, gives each job exactly once, after the settle."""
    logs = tmp_path / "in"
    logs.mkdir()
    db = tmp_path / "rw.db"
    service = TailProcess(tmp_path, db, logs).start()
    append(logs / "events.jsonl", implicit_run("R1"))
    service.wait_until(lambda: "R1/archive" in jobs(db))
    service.kill()
    assert waiting_jobs(db) == {"report": "R1", "archive": "R1"}, "settle: 5 s by default"
    service.start()
    service.wait_until(lambda: jobs(db) == {"R1/report": "delivered", "R1/archive": "delivered"})
    service.wait_until(lambda: "RUN_ARCHIVED" in trail_types(tmp_path))
    assert service.stop() == 0
    connection = sqlite3.connect(db)
    count = connection.execute("SELECT count(*) FROM outbox WHERE kind='job'").fetchone()[0]
    connection.close()
    assert count == 2
    assert len(archived_lines(tmp_path, "R1")) == 6
    assert trail_types(tmp_path).count("RUN_ARCHIVED") == 1
