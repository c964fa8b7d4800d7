"""Benchmark the scale-out path: shipper → JetStream → partition processors → PostgreSQL.

What it measures (a private nats-server with the 4-partition mapping, a throw-away schema
in the PostgreSQL at --postgres):

* Shipper rate: one `runwatch ship` publishes a simulated corpus (--runs runs) into an
  empty stream; lines / (last line in the stream − start).
* Processor rate with 1, 2 and 4 processors: the stream is full; the processors (the 4
  partitions dealt out among them) start together; events / (all committed − start). Each
  processor's own rate (its events / its busy time) is printed too, so what N machines
  would give can be read off: on this 2-core machine the processors, the shipper, NATS and
  PostgreSQL share two cores, and the PostgreSQL writer lock serialises commits.
* Latency: with 2 processors caught up, single `run_started` lines are appended to a
  shipped file one at a time; latency = the run's row visible in PostgreSQL − the append.

Figures, not assertions. Usage:
    .venv/bin/python tests/benchmarks/bench_scaleout.py [--runs 400] [--latency 100]
        [--postgres URL] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchkit import main_for, percentile, report_figures
from measure import cpu_seconds

from natsserver import NatsServer  # the tests' private nats-server
from runwatch.stream.devtools.writer import simulate

RUNWATCH = [sys.executable, "-m", "runwatch.stream.cli.main"]
SPLITS = {1: ["0,1,2,3/4"], 2: ["0,1/4", "2,3/4"], 4: ["0/4", "1/4", "2/4", "3/4"]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400, help="simulated runs in the corpus")
    parser.add_argument("--latency", type=int, default=100, help="lines timed for latency")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL URL (a throw-away schema is created and dropped)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def scalar(url: str, schema: str, sql: str) -> int:
    try:
        with psycopg.connect(url, autocommit=True) as db:
            row = db.execute(f"SELECT {sql}".replace("$", f"{schema}.")).fetchone()
    except psycopg.Error:
        return 0
    return int(row[0] or 0) if row else 0


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([*RUNWATCH, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(30)


def stream_count(nats_url: str) -> int:
    import asyncio

    import nats

    async def count() -> int:
        client = await nats.connect(nats_url)
        try:
            info = await client.jetstream().stream_info("runwatch")
            return int(info.state.messages)
        except Exception:  # no stream yet
            return 0
        finally:
            await client.close()

    return asyncio.run(count())


def run(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="rw-scaleout-"))
    corpus = work / "host" / "events"
    summary = simulate(corpus, runs=args.runs, seed=1)
    lines = sum(len(p.read_bytes().splitlines()) for p in corpus.rglob("*.jsonl"))
    figures: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "corpus": f"{args.runs} runs, {summary.events} events, {lines} lines",
    }
    with NatsServer(work / "nats", partitions=4) as nats_server:
        began = time.monotonic()
        shipper = start(
            ["ship", str(corpus), "--nats", nats_server.url, "--db", str(work / "ship.db")],
            work,
            work / "ship.log",
        )
        seen, last_change = 0, time.monotonic()
        while seen == 0 or time.monotonic() - last_change < 2.0:  # shipped, then quiet
            time.sleep(0.05)
            count = stream_count(nats_server.url)
            if count != seen:
                seen, last_change = count, time.monotonic()
        figures["ship_lines_per_s"] = round(seen / (last_change - began))
        figures["stream_messages"] = seen
        rates: dict[int, int] = {}
        per_core: dict[int, int] = {}
        for count, splits in SPLITS.items():
            schema = f"rwbench_{uuid.uuid4().hex[:10]}"
            url = f"{args.postgres}?schema={schema}"
            began = time.monotonic()
            processors = [
                start(
                    [
                        "tail",
                        "--nats",
                        nats_server.url,
                        "--partition",
                        split,
                        "--db",
                        url,
                        "--quiet",
                    ],
                    work,
                    work / f"p{count}.log",
                )
                for split in splits
            ]
            while (
                scalar(args.postgres, schema, "value FROM $counters WHERE name='events_accepted'")
                < summary.events
            ):
                time.sleep(0.05)
            elapsed = time.monotonic() - began
            rates[count] = round(summary.events / elapsed)
            cpu = sum(cpu_seconds(process.pid) for process in processors)
            per_core[count] = round(summary.events / cpu) if cpu else 0
            if count == 2:
                figures["latency_ms"] = latency(args, nats_server.url, url, schema, work)
            stop(processors)
            with psycopg.connect(args.postgres, autocommit=True) as db:
                db.execute(f"DROP SCHEMA {schema} CASCADE")
        stop([shipper])
    figures["processor_events_per_s"] = rates
    figures["processor_events_per_cpu_s"] = per_core
    best = max(per_core.values())
    figures["model_n_machines_events_per_s"] = {
        n: n * best for n in (1, 2, 4, 8)
    }  # one processor per machine, CPU-bound
    figures["speedup_2_vs_1"] = round(rates[2] / rates[1], 2)
    figures["speedup_4_vs_1"] = round(rates[4] / rates[1], 2)
    return figures


def latency(
    args: argparse.Namespace, nats_url: str, url: str, schema: str, work: Path
) -> dict[str, float]:
    """Append → the run's row committed in PostgreSQL, one line at a time."""
    live = work / "live"
    live.mkdir(exist_ok=True)
    shipper = start(
        ["ship", str(live), "--nats", nats_url, "--db", str(work / "live.db")],
        work,
        work / "live-ship.log",
    )
    time.sleep(2.0)
    samples = []
    fd = os.open(live / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for n in range(args.latency):
            run_id = f"LAT-{uuid.uuid4().hex[:12]}"
            line = (
                json.dumps(
                    {
                        "event_id": f"lat-{n}",
                        "event_type": "run_started",
                        "run_id": run_id,
                        "timestamp": datetime.now(UTC).isoformat(),
                    }
                ).encode()
                + b"\n"
            )
            sent = time.monotonic()
            os.write(fd, line)
            while not scalar(args.postgres, schema, f"count(*) FROM $runs WHERE run_id='{run_id}'"):
                time.sleep(0.002)
            samples.append((time.monotonic() - sent) * 1000)
    finally:
        os.close(fd)
        stop([shipper])
    return {
        "p50": round(statistics.median(samples), 1),
        "p99": round(percentile(samples, 99), 1),
        "max": round(max(samples), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_scaleout", parse_args, lambda args: report(run(args), args), argv)


def report(figures: dict[str, object], args: argparse.Namespace) -> int:
    report_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
