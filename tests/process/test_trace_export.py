"""Runs as traces end to end: a real `runwatch tail` exports each finished run once through
the outbox to a real OTLP/HTTP receiver, across kill -9; `replay` exports nothing; `runwatch
traces export` from a rebuilt database sends the very same trace."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from helpers import TailProcess, run_cli
from otlp import OtlpReceiver, ReceivedSpan, roots


def line(n: int, kind: str, run_id: str, at: float, **fields: Any) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"
    record = {"event_id": f"{run_id}-{n}", "event_type": kind, "run_id": run_id, "timestamp": stamp}
    return orjson.dumps(record | fields) + b"\n"


def retried_run(run_id: str, start: float) -> bytes:
    """Explicitly completed; task T1 fails once and then succeeds."""
    steps = [
        ("run_created", {"payload": {"total_tasks": 2, "pipeline": "nightly"}}),
        ("run_started", {}),
        ("task_created", {"task_id": "T1", "workstream_id": "WS-A", "payload": {"name": "tests"}}),
        ("task_started", {"task_id": "T1", "workstream_id": "WS-A"}),
        ("task_failed", {"task_id": "T1", "workstream_id": "WS-A", "payload": {"error": "boom"}}),
        ("task_started", {"task_id": "T1", "workstream_id": "WS-A"}),
        ("task_completed", {"task_id": "T1", "workstream_id": "WS-A"}),
        ("task_started", {"task_id": "T2", "workstream_id": "WS-A"}),
        ("task_completed", {"task_id": "T2", "workstream_id": "WS-A"}),
        ("run_completed", {"payload": {"status": "succeeded"}}),
    ]
    return b"".join(line(n, k, run_id, start + n, **f) for n, (k, f) in enumerate(steps))


def implicit_run(run_id: str, start: float) -> bytes:
    """Complete once its one declared task ends: its jobs wait for the settle window."""
    return (
        line(0, "run_created", run_id, start, payload={"total_tasks": 1})
        + line(1, "task_started", run_id, start + 1, task_id="T1")
        + line(2, "task_failed", run_id, start + 2, task_id="T1", payload={"error": "oom"})
    )


def trace_jobs(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT run_id, state FROM outbox WHERE kind='job' AND target='trace'"
        ).fetchall()
        return dict(rows)
    except sqlite3.OperationalError:
        return {}
    finally:
        connection.close()


def comparable(spans: list[ReceivedSpan]) -> list[tuple[Any, ...]]:
    """What a backend keeps of a span (the SDK's per-process service.instance.id aside)."""
    return sorted(
        (
            s.trace_id,
            s.span_id,
            s.parent_id,
            s.name,
            s.kind,
            s.start_ns,
            s.end_ns,
            json.dumps(s.attributes, sort_keys=True),
            s.status,
            s.message,
            repr(s.events),
            repr(s.links),
            s.resource["service.name"],
        )
        for s in spans
    )


def test_each_finished_run_is_exported_once_across_kill_9_and_replays_send_the_same(
    tmp_path: Path,
) -> None:
    """The live export is a completion job: a kill -9 while one waits loses and repeats
    nothing; a replay records the jobs but sends nothing; and the trace exported from the
    rebuilt database is identical, ids included."""
    logs = tmp_path / "in"
    logs.mkdir()
    db = tmp_path / "rw.db"
    (tmp_path / "rw.yaml").write_text("settle: 3s\n")
    start = float(int(time.time()) - 60)  # whole seconds: the expected times are exact
    with OtlpReceiver() as collector:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_SERVICE_NAME": "ci-runs",
        }
        with TailProcess(tmp_path, db, logs, args=("--config", "rw.yaml"), env=env) as service:
            (logs / "events.jsonl").write_bytes(retried_run("R1", start))
            service.wait_until(lambda: trace_jobs(db).get("R1") == "delivered")
            with (logs / "events.jsonl").open("ab") as handle:
                handle.write(implicit_run("R2", start + 20))
            service.wait_until(lambda: trace_jobs(db).get("R2") == "pending")
            service.kill()
            assert [r.attributes["cicd.pipeline.run.id"] for r in roots(collector.spans())] == [
                "R1"
            ]
            service.start()
            service.wait_until(lambda: trace_jobs(db).get("R2") == "delivered")
            assert service.stop() == 0
            assert "Traceback" not in service.output()
        live = collector.spans()
        sent_before_replay = len(collector.requests)
        fresh = tmp_path / "fresh.db"
        replayed = run_cli("replay", logs, "--db", fresh, cwd=tmp_path, env=env)
        assert replayed.returncode == 0, replayed.stderr
        assert trace_jobs(fresh) == {"R1": "recorded", "R2": "recorded"}
        assert len(collector.requests) == sent_before_replay, "replay sent a trace"

    assert sorted(r.attributes["cicd.pipeline.run.id"] for r in roots(live)) == ["R1", "R2"]
    assert len({(s.trace_id, s.span_id) for s in live}) == len(live), "a span arrived twice"
    r1 = [s for s in live if s.attributes.get("cicd.pipeline.run.id") == "R1"]
    [root] = roots(r1)
    assert (root.name, root.kind, root.attributes["cicd.pipeline.result"]) == (
        "RUN nightly",
        "server",
        "success",
    )
    assert (root.start_ns, root.end_ns) == (
        int((start + 1) * 1e6) * 1000,
        int((start + 9) * 1e6) * 1000,
    )
    assert root.resource["service.name"] == "ci-runs"
    first, second = sorted(
        (s for s in r1 if s.name == "tests"), key=lambda s: s.attributes["runwatch.task.attempt"]
    )
    assert first.attributes["cicd.pipeline.task.run.result"] == "failure"
    assert first.events[-1][2]["exception.message"] == "boom"
    assert second.links[0][1] == first.span_id
    trail = (tmp_path / "logs" / "monitor.jsonl").read_text()
    assert trail.count('"type":"TRACE_EXPORTED"') == 2

    with OtlpReceiver() as again:
        exported = run_cli(
            "traces",
            "export",
            "--db",
            fresh,
            "--since",
            "1h",
            "--endpoint",
            again.url,
            "--json",
            cwd=tmp_path,
            env=env,
        )
        assert exported.returncode == 0, exported.stderr
        assert json.loads(exported.stdout)["runs_exported"] == 2
        assert comparable(again.spans()) == comparable(live)


def test_export_in_worker_processes_sends_what_one_process_sends(tmp_path: Path) -> None:
    """A backfill spreads reading, building and sending over processes: the same spans
    arrive, each once; a refused request stops it with exit 1 and says what was not sent."""
    events, db = tmp_path / "events", tmp_path / "rw.db"
    made = run_cli("simulate", "--out", events, "--runs", "80", "--seed", "5", "--stall-rate", "0")
    assert made.returncode == 0, made.stderr
    assert run_cli("replay", events, "--db", db, cwd=tmp_path).returncode == 0
    received = []
    for workers in ("0", "2"):
        with OtlpReceiver() as collector:
            exported = run_cli(
                "traces",
                "export",
                "--db",
                db,
                "--endpoint",
                collector.url,
                "--workers",
                workers,
                "--json",
                cwd=tmp_path,
            )
            assert exported.returncode == 0, exported.stderr
            summary = json.loads(exported.stdout)
            spans = collector.spans()
        assert summary["runs_exported"] == summary["runs_selected"] == len(roots(spans)) > 64
        assert summary["spans"] == len(spans) == len({(s.trace_id, s.span_id) for s in spans})
        received.append(comparable(spans))
    assert received[0] == received[1]
    with OtlpReceiver() as refusing:
        refusing.script((400,))
        failed = run_cli(
            "traces",
            "export",
            "--db",
            db,
            "--endpoint",
            refusing.url,
            "--workers",
            "0",
            cwd=tmp_path,
        )
    assert failed.returncode == 1
    assert "not sent: HTTP 400; run the command again" in failed.stderr
