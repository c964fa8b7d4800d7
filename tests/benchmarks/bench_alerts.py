"""Benchmark alert latency: from an appended `run_failed` line to the webhook receiver's
request, through a real `runwatch tail` (inotify, fold, commit, outbox, dispatcher, HTTP).

Each of --alerts runs is a new run id, so every line is one notification (no throttling).
A line is appended with one `write` on an O_APPEND descriptor; the wall clock is read just
before it. The receiver (an HTTP server in this process, on 127.0.0.1) notes the wall clock
when the request arrives. Latency = arrival - append. Lines are sent one at a time, each after
the previous alert arrived plus --gap-ms, so the figure is the latency of one alert, not of a
queue. Target: p99 <= 150 ms. Figures, not assertions: the script fails only on errors.

Usage:  .venv/bin/python tests/benchmarks/bench_alerts.py [--alerts 200] [--gap-ms 20]
        [--out DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchkit import BenchError, main_for, percentile, report_figures

from receivers import WebhookReceiver  # the tests' own loopback receiver

TARGET_P99_MS = 150.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=200, help="notifications to time")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between alerts")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out/alerts"), help="working folder (emptied first)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def alerts_file(path: Path, url: str) -> None:
    path.write_text(f"""
channels:
  hook: {{type: webhook, url: "{url}", secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}}
rules:
  - name: run_failure
    severity: critical
    match: [{{type: run_failed}}, {{type: RUN_COMPLETED, status: [failed]}}]
    channels: [hook]
    throttle: 15m
""")


def run(args: argparse.Namespace) -> dict[str, object]:
    args.out = args.out.resolve()
    shutil.rmtree(args.out, ignore_errors=True)
    logs = args.out / "in"
    logs.mkdir(parents=True)
    latencies: list[float] = []
    with WebhookReceiver() as hook:
        alerts_file(args.out / "alerts.yaml", hook.url)
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runwatch.stream.cli.main",
                "tail",
                str(logs),
                "--db",
                str(args.out / "rw.db"),
                "--alerts",
                str(args.out / "alerts.yaml"),
                "--quiet",
            ],
            cwd=args.out,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 20
            while not (args.out / "logs" / "monitor.jsonl").exists():
                if time.monotonic() > deadline or service.poll() is not None:
                    raise BenchError("the service did not start")
                time.sleep(0.05)
            time.sleep(0.5)
            fd = os.open(logs / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                for n in range(args.alerts):
                    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    line = json.dumps(
                        {
                            "event_id": f"bench-{n}",
                            "event_type": "run_failed",
                            "run_id": f"BENCH-{n:05d}",
                            "timestamp": now,
                        }
                    )
                    sent = time.time()
                    os.write(fd, line.encode() + b"\n")
                    [*_, arrived] = hook.wait_for(n + 1, timeout=10)
                    latencies.append((arrived.received_wall - sent) * 1000)
                    time.sleep(args.gap_ms / 1000)
            finally:
                os.close(fd)
            time.sleep(0.5)
            extra = len(hook.requests) - args.alerts
        finally:
            service.terminate()
            service.wait(10)
    p50, p99 = statistics.median(latencies), percentile(latencies, 99)
    return {
        "benchmark": "alert latency, appended run_failed line -> webhook request",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "alerts": args.alerts,
        "duplicate_requests": extra,
        "p50_ms": round(p50, 1),
        "p90_ms": round(percentile(latencies, 90), 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(max(latencies), 1),
        "target_p99_ms": TARGET_P99_MS,
        "met": p99 <= TARGET_P99_MS,
    }


def report(args: argparse.Namespace) -> int:
    report_figures(run(args), args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_alerts", parse_args, report, argv)


if __name__ == "__main__":
    sys.exit(main())
