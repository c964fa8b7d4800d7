"""Soak the live service with runs that never end: is its memory bounded by configuration?

A real `runwatch tail` follows one file, with a short `stall_after` and `forget_after`.
The script appends --quiet-runs distinct `run_started` lines (runs that then stay silent)
as fast as it can, waits until every one of them has stalled and been abandoned, then
writes --good-runs complete runs (started, three tasks, completed) at --rate events/s, each
line stamped with the wall clock just before its write. A run silent past `forget_after`
before it was found stalled is abandoned without a stall, so `runs_stalled` may be fewer
than the quiet runs on a slow machine. Reported: the service's peak RSS
(VmHWM, target <= 250 MB) and its RSS at the end, the stall notifications decided (one
channel; the grouped ones and how many stalls they hold), and the append → commit latency
of the good runs' lines (p50/p99, measured like bench_tail's latency phase: a poller reads
the `events_accepted` counter, so the poll interval adds up to --poll-ms).

Figures, not assertions; the script fails only when a command fails (exit 1).

Usage:  .venv/bin/python tests/benchmarks/bench_soak.py [--quiet-runs 100000]
        [--good-runs 1000] [--rate 1000] [--out DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from benchkit import BenchError, fresh_dir, log, main_for, percentile, report_figures
from tailer import CounterPoller, Tailer, commit_latencies, read_derived

TARGET_RSS_MB: Final = 250.0
STALL_AFTER_S: Final = 2.0
FORGET_AFTER_S: Final = 30.0


def stamp(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds")


def append_quiet_runs(path: Path, count: int) -> None:
    """`count` runs that start and then say nothing more, in 1 MiB appends."""
    now = stamp(time.time_ns())
    block: list[bytes] = []
    with path.open("ab") as out:
        for index in range(count):
            record = {
                "event_id": f"q{index}",
                "event_type": "run_started",
                "timestamp": now,
                "run_id": f"quiet-{index:06}",
            }
            block.append(json.dumps(record).encode() + b"\n")
            if len(block) >= 8192:
                out.write(b"".join(block))
                block = []
        out.write(b"".join(block))


def good_run(index: int) -> list[dict[str, Any]]:
    run = f"good-{index:05}"
    events: list[dict[str, Any]] = [{"event_type": "run_started", "run_id": run}]
    for task in range(3):
        events.append({"event_type": "task_started", "run_id": run, "task_id": f"t{task}"})
        events.append({"event_type": "task_completed", "run_id": run, "task_id": f"t{task}"})
    events.append(
        {"event_type": "run_completed", "run_id": run, "payload": {"status": "succeeded"}}
    )
    for number, event in enumerate(events):
        event["event_id"] = f"{run}-{number}"
    return events


def write_good_runs(path: Path, runs: int, rate: float) -> list[int]:
    """One `write` per line on an O_APPEND descriptor at `rate` lines/s; each line's send
    time (wall clock ns) in file order."""
    sent: list[int] = []
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
    started = time.monotonic()
    try:
        for index in range(runs):
            for event in good_run(index):
                due = started + len(sent) / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                now = time.time_ns()
                event["timestamp"] = stamp(now)
                os.write(descriptor, json.dumps(event).encode() + b"\n")
                sent.append(now)
    finally:
        os.close(descriptor)
    return sent


def wait_for_derived(tailer: Tailer, kind: str, count: int, timeout: float) -> float:
    """Seconds until `count` derived events of `kind` are committed."""
    started = time.monotonic()
    next_log = started + 10
    while time.monotonic() - started < timeout:
        tailer.check_alive()
        found = read_derived(tailer.db, kind)
        if found >= count:
            return time.monotonic() - started
        if time.monotonic() >= next_log:
            log(f"{kind}: {found:,} of {count:,}")
            next_log += 10
        time.sleep(0.5)
    raise BenchError(f"only {read_derived(tailer.db, kind):,} of {count:,} {kind} in {timeout} s")


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stall_notifications(db: Path) -> dict[str, int]:
    """Stall notifications decided for the console (every channel gets the same ones)."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = connection.execute(
            "SELECT json_extract(payload, '$.state'), json_extract(payload, '$.event.type'), "
            "json_extract(payload, '$.suppressed') FROM outbox "
            "WHERE kind='alert' AND rule='run_stalled' AND target='console'"
        ).fetchall()
        alert_states = connection.execute("SELECT count(*) FROM alert_state").fetchone()[0]
    finally:
        connection.close()
    grouped = [row for row in rows if row[1] == "ALERTS_GROUPED"]
    return {
        "stall_notifications": len(rows),
        "firing": sum(1 for row in rows if row[0] == "firing"),
        "resolved": sum(1 for row in rows if row[0] == "resolved"),
        "grouped_notifications": len(grouped),
        "stalls_in_grouped": sum(int(row[2]) for row in grouped),
        "alert_state_rows_left": int(alert_states),
    }


def run(args: argparse.Namespace) -> int:
    workdir = fresh_dir(args.out / "soak")
    watched = workdir / "events"
    watched.mkdir()
    log_file = watched / "orchestrator.jsonl"
    log_file.write_bytes(b"")
    config = workdir / "runwatch.yaml"
    config.write_text(
        f"stall_after: {STALL_AFTER_S}s\nforget_after: {FORGET_AFTER_S}s\n"
        "tick_interval: 0.5s\nheartbeat_interval: 5s\n",
        encoding="utf-8",
    )
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, config).start()
    try:
        tailer.wait_started()
        log(f"appending {args.quiet_runs:,} runs that stay silent")
        started = time.monotonic()
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            append_quiet_runs(log_file, args.quiet_runs)
            if poller.wait_for(args.quiet_runs, tailer, args.timeout, "quiet runs") is None:
                raise BenchError("the quiet runs were not all committed")
        ingest_s = time.monotonic() - started
        abandoned_s = wait_for_derived(tailer, "RUN_ABANDONED", args.quiet_runs, args.timeout)
        rss_after_abandon = current_rss_mb(tailer.pid)
        log(f"writing {args.good_runs:,} good runs at {args.rate:g} events/s")
        base = args.quiet_runs
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            sent = write_good_runs(log_file, args.good_runs, args.rate)
            done = poller.wait_for(base + len(sent), tailer, args.timeout, "good runs")
        peak = tailer.peak_rss_mb()
        rss_end = current_rss_mb(tailer.pid)
        code, _ = tailer.stop()
    finally:
        tailer.kill()
    latencies = commit_latencies(poller.changes, sent, base)
    figures: dict[str, Any] = {
        "quiet_runs": args.quiet_runs,
        "good_runs": args.good_runs,
        "stall_after_s": STALL_AFTER_S,
        "forget_after_s": FORGET_AFTER_S,
        "quiet_ingest_s": round(ingest_s, 1),
        "runs_stalled": read_derived(workdir / "state" / "tail.db", "RUN_STALLED"),
        "all_abandoned_after_s": round(abandoned_s, 1),
        "peak_rss_mb": round(peak, 1),
        "rss_after_abandon_mb": round(rss_after_abandon, 1),
        "rss_end_mb": round(rss_end, 1),
        "meets_rss_target": peak <= TARGET_RSS_MB,
        **stall_notifications(workdir / "state" / "tail.db"),
        "good_lines_committed": len(latencies),
        "good_complete": done is not None,
        "poll_ms": args.poll_ms,
        "exit_code": code,
    }
    if latencies:
        figures["good_p50_ms"] = round(percentile(latencies, 50), 1)
        figures["good_p99_ms"] = round(percentile(latencies, 99), 1)
    report_figures(figures, args.json)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet-runs", type=int, default=100_000)
    parser.add_argument("--good-runs", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="good-run events per second")
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=lambda text: Path(text).resolve(), default="bench-out")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_soak", parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
