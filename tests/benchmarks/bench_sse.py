"""Benchmark the dashboard's live feed inside `runwatch tail`: append → SSE message latency,
and append → commit latency while many browsers hold `/api/events` open. Figures, not
assertions: targets are printed beside them.

What it measures, and how:

* The service runs as in bench_tail.py (built-in defaults, --quiet) with `metrics_addr` on a
  free loopback port, so it serves the dashboard. For each --clients count, a fresh service
  and database: that many SSE clients connect to `/api/events?after=0` (plain sockets on one
  asyncio loop in a thread of this process) and the latency writer of tailer.py appends
  --rate events/s for --seconds, each line stamped with its wall clock (`payload.sent_ns`).
* Append → SSE (target: within 1 s). Each `run` event carries the run's row; the m-th line
  of run R has reached a client when that client first sees R with `events_total >= m`
  (several lines of one run in one commit arrive as one event). --measure clients (the first
  ones) parse every event; the others only read and count, so the bench itself stays light.
  Latency = arrival (wall clock) - sent_ns, over every line and every measuring client.
* Append → commit (target p99 <= 100 ms) with the clients held: the counter poller of
  tailer.py reads `events_accepted` every --poll-ms, exactly as bench_tail.py's latency phase.
* Clients still connected at the end and the events each received show whether any was
  dropped for being slow. 0 clients is the baseline: the same service and writer, no stream.

Usage:  .venv/bin/python tests/benchmarks/bench_sse.py [--clients 0,1,200] [--rate 1000]
        [--seconds 20] [--measure 10] [--poll-ms 2] [--out DIR] [--json FILE]
Smoke:  .venv/bin/python tests/benchmarks/bench_sse.py --clients 1,20 --rate 200 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchkit import (
    BenchError,
    add_output_options,
    fresh_dir,
    log,
    machine_facts,
    machine_line,
    main_for,
    percentile,
    render,
    verdict,
    write_json,
)
from tailer import LATENCY_WRITER, CounterPoller, Tailer, commit_latencies, run_writer

TARGET_COMMIT_P99_MS: Final = 100.0
TARGET_SSE_MS: Final = 1000.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Clients:
    """`count` SSE clients on one event loop in a thread; the first `measure` of them note
    when each (run, events_total) first arrived."""

    def __init__(self, port: int, count: int, measure: int) -> None:
        self.port, self.count, self.measure = port, count, measure
        self.arrivals: list[dict[str, list[tuple[int, int]]]] = [
            {} for _ in range(min(measure, count))
        ]
        """Per measuring client: run → (events_total, wall clock ns) each time it grew."""
        self.events = [0] * count
        self.open = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="sse")
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        for index in range(self.count):
            asyncio.run_coroutine_threadsafe(self._spawn(index), self.loop).result()
        deadline = time.monotonic() + timeout
        while self.open < self.count:
            if time.monotonic() > deadline:
                raise BenchError(f"only {self.open} of {self.count} SSE clients connected")
            time.sleep(0.05)

    async def _spawn(self, index: int) -> None:
        self.tasks.append(asyncio.ensure_future(self._client(index)))

    async def _client(self, index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 22)
        writer.write(
            b"GET /api/events?after=0 HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise BenchError(f"SSE client {index}: {status!r}")
        self.open += 1
        measuring = index < len(self.arrivals)
        name = b""
        try:
            while line := await reader.readline():
                if line.startswith(b"event: "):
                    name = line[7:].strip()
                elif name == b"run" and line.startswith(b"data: "):
                    self.events[index] += 1
                    if measuring:
                        self._note(index, line[6:])
                    name = b""
        finally:
            self.open -= 1
            writer.close()

    def _note(self, index: int, data: bytes) -> None:
        now = time.time_ns()
        row = json.loads(data)
        steps = self.arrivals[index].setdefault(row["run_id"], [])
        if not steps or row["events_total"] > steps[-1][0]:
            steps.append((row["events_total"], now))

    def stop(self) -> None:
        for task in self.tasks:
            self.loop.call_soon_threadsafe(task.cancel)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def sse_latencies(
    lines: list[dict[str, Any]], steps: dict[str, list[tuple[int, int]]]
) -> list[float]:
    """For the m-th line of each run, ms until the client first saw that run with at least
    m events."""
    counts: dict[str, int] = {}
    out: list[float] = []
    for line in lines:
        run = line["run_id"]
        counts[run] = m = counts.get(run, 0) + 1
        arrival = next((ns for total, ns in steps.get(run, []) if total >= m), None)
        if arrival is not None:
            out.append((arrival - line["payload"]["sent_ns"]) / 1e6)
    return out


def bench_clients(args: argparse.Namespace, out: Path, count: int) -> dict[str, Any]:
    workdir = fresh_dir(out / f"sse-{count}")
    watched = workdir / "events"
    watched.mkdir()
    log_file = watched / "orchestrator.jsonl"
    log_file.write_bytes(b"")
    port = free_port()
    config = workdir / "runwatch.yaml"
    config.write_text(f"metrics_addr: 127.0.0.1:{port}\n")
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, config).start()
    clients = Clients(port, count, args.measure)
    try:
        tailer.wait_started()
        clients.start()
        log(f"{count} SSE clients held; {args.rate:g} events/s for {args.seconds:g} s")
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            written = run_writer(LATENCY_WRITER, log_file, args.rate, args.seconds, args.seed)
            lines = int(written["lines"])
            done = poller.wait_for(lines, tailer, args.timeout, f"{count} clients")
        time.sleep(1.5)  # the last commit's events reach the clients
        still_open = clients.open
        cpu = tailer.cpu_seconds()
        code, _ = tailer.stop()
    finally:
        clients.stop()
        tailer.kill()
    decoded = [json.loads(line) for line in log_file.read_bytes().splitlines()]
    commit = sorted(commit_latencies(poller.changes, [d["payload"]["sent_ns"] for d in decoded], 0))
    sse = sorted(v for arrivals in clients.arrivals for v in sse_latencies(decoded, arrivals))
    result: dict[str, Any] = {
        "clients": count,
        "lines": lines,
        "complete": done is not None,
        "clients_open_at_end": still_open,
        "events_per_client_min": min(clients.events, default=0),
        "events_per_client_max": max(clients.events, default=0),
        "tail_cpu_s": round(cpu, 2),
        "exit_code": code,
    }
    if commit:
        result |= {f"commit_p{p}_ms": percentile(commit, p) for p in (50, 90, 99)}
        result["commit_max_ms"] = commit[-1]
        result["commit_meets_target"] = result["commit_p99_ms"] <= TARGET_COMMIT_P99_MS
    if sse:
        result |= {f"sse_p{p}_ms": percentile(sse, p) for p in (50, 90, 99)}
        result["sse_max_ms"] = sse[-1]
        result["sse_samples"] = len(sse)
        result["sse_meets_target"] = result["sse_max_ms"] <= TARGET_SSE_MS
    return result


def report(machine: dict[str, Any], figures: list[dict[str, Any]]) -> None:
    print(f"\n{machine_line(machine)}")
    rows = []
    for f in figures:

        def ms(key: str, f: dict[str, Any] = f) -> str:
            return f"{f[key]:.1f}" if key in f else "-"

        rows.append(
            [
                str(f["clients"]),
                f"{f['clients_open_at_end']}",
                ms("sse_p50_ms"),
                ms("sse_p99_ms"),
                ms("sse_max_ms"),
                verdict(f.get("sse_meets_target")),
                ms("commit_p50_ms"),
                ms("commit_p99_ms"),
                verdict(f.get("commit_meets_target")),
            ]
        )
    headers = [
        "clients",
        "open at end",
        "SSE p50 ms",
        "SSE p99 ms",
        "SSE max ms",
        f"SSE <= {TARGET_SSE_MS:.0f} ms",
        "commit p50 ms",
        "commit p99 ms",
        f"commit p99 <= {TARGET_COMMIT_P99_MS:.0f} ms",
    ]
    print(render(headers, rows, text_columns=1))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the dashboard's live feed: append → SSE latency, and append → "
        "commit latency while many SSE clients are connected."
    )
    parser.add_argument(
        "--clients", default="0,1,200", help="client counts, one run each (0: the baseline)"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the writer appends")
    parser.add_argument("--measure", type=int, default=10, help="clients that time every event")
    parser.add_argument("--poll-ms", type=float, default=2.0, help="counter poll interval")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    add_output_options(parser)
    args = parser.parse_args(argv)
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients takes numbers separated by commas, not {args.clients!r}")
    if not args.client_counts or min(args.client_counts) < 0 or args.rate <= 0:
        parser.error("--clients must be counts (0 or more) and --rate positive")
    return args


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_facts()
    figures = [bench_clients(args, out, count) for count in args.client_counts]
    report(machine, figures)
    write_json(
        {
            "machine": machine,
            "targets": {"commit_p99_ms_max": TARGET_COMMIT_P99_MS, "sse_ms_max": TARGET_SSE_MS},
            "figures": figures,
        },
        args.json,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_sse", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
