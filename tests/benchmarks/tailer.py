"""A `runwatch tail` process watched from the outside: its CPU and memory from /proc, its
counters and derived events read through read-only SQLite connections, when each committed
line was first seen, and the writers that feed it (paced lines, or a corpus copied in)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchkit import BenchError, log
from measure import CLOCK_TICKS, cpu_seconds

RUNWATCH: Final = [sys.executable, "-m", "runwatch.stream.cli.main"]

LATENCY_WRITER: Final = r'''
"""Append orchestrator events to PATH at RATE lines/s for SECONDS, one write per line,
each stamped with the wall clock read just before its write (payload.sent_ns)."""
import os, random, sys, time
from datetime import UTC, datetime
import orjson

path, rate, seconds, seed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rng = random.Random(int(seed))
total = int(rate * seconds)

def runs():
    n = 0
    while True:
        n += 1
        run, tasks = f"LAT-{seed}-{n:06d}", rng.randint(4, 12)
        yield run, "run_created", None, {"total_tasks": tasks}
        yield run, "run_started", None, {}
        for t in range(tasks):
            task = f"{run}-T{t:02d}"
            yield run, "task_created", task, {"name": f"step-{t}"}
            yield run, "task_started", task, {}
            for p in range(rng.randint(0, 3)):
                yield run, "task_progress", task, {"percent": 25 * (p + 1)}
            yield run, "task_failed" if rng.random() < 0.05 else "task_completed", task, {}
        yield run, "run_completed", None, {}

active = [runs() for _ in range(4)]  # a few runs unfold at once, interleaved
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
started = time.monotonic()
for k in range(total):
    due = started + k / rate
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    run, kind, task, payload = next(rng.choice(active))
    now = time.time_ns()
    stamp = datetime.fromtimestamp(now / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    line = orjson.dumps({"event_type": kind, "timestamp": stamp, "severity": "info",
                         "run_id": run, "workstream_id": "WS-A", "task_id": task,
                         "payload": {**payload, "sent_ns": time.time_ns()}}) + b"\n"
    os.write(fd, line)
os.close(fd)
print(orjson.dumps({"lines": total, "seconds": time.monotonic() - started}).decode())
'''

COPY_WRITER: Final = r'''
"""Copy every *.jsonl below SRC to the same place below DST, in CHUNK-byte appends, as fast
as possible; print the wall clock of the first and after the last write."""
import json, os, sys, time
from pathlib import Path

src, dst, chunk = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
files = sorted(src.rglob("*.jsonl"))
first = time.time_ns()
written = 0
for path in files:
    target = dst / path.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            written += os.write(fd, block)
    os.close(fd)
print(json.dumps({"first_ns": first, "last_ns": time.time_ns(), "bytes": written,
                  "files": len(files)}))
'''


def run_writer(script: str, *args: object) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"writer failed ({result.returncode}):\n{result.stderr.strip()}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


class Tailer:
    """A `runwatch tail` process whose CPU and memory can be read from /proc."""

    def __init__(self, workdir: Path, db: Path, watched: Path, config: Path | None) -> None:
        self.workdir = workdir
        self.db = db
        self.command = [*RUNWATCH, "tail", str(watched), "--db", str(db), "--quiet"]
        if config is not None:
            self.command += ["--config", str(config)]
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_ns = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Tailer:
        self.starts += 1
        with (self.workdir / f"tail-{self.starts}.out").open("wb") as out:
            self.started_ns = time.time_ns()
            self.process = subprocess.Popen(
                self.command, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def output(self) -> str:
        text = (self.workdir / f"tail-{self.starts}.out").read_text(errors="replace")
        return text[-2000:]

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(
                f"`runwatch tail` exited with {self.process.returncode}:\n{self.output()}"
            )

    def wait_started(self, timeout: float = 30.0) -> None:
        """Until this start's MONITOR_STARTED is committed (the observer starts right
        after), plus a moment for the watches to be in place."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if read_derived(self.db, "MONITOR_STARTED") >= self.starts:
                time.sleep(0.5)
                return
            time.sleep(0.02)
        raise BenchError(f"`runwatch tail` did not start within {timeout} s:\n{self.output()}")

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (every thread, live or exited)."""
        return cpu_seconds(self.pid)

    def thread_cpu_seconds(self) -> float:
        """The same summed over the live threads (a cross-check of `cpu_seconds`)."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def threads(self) -> int:
        return len(list(Path(f"/proc/{self.pid}/task").iterdir()))

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the service took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise BenchError(
                f"`runwatch tail` did not stop within {timeout} s of SIGTERM"
            ) from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def read_derived(db: Path, kind: str) -> int:
    if not db.exists():
        return 0
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = connection.execute(
                "SELECT count(*) FROM derived_events WHERE type=?", (kind,)
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def open_runs(db: Path) -> int:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute(
            "SELECT count(*) FROM runs WHERE status IN ('pending', 'running')"
        ).fetchone()
    finally:
        connection.close()
    return int(row[0])


@dataclass(slots=True)
class Seen:
    """When the counters first showed a value: wall clock ns, accepted, all lines seen."""

    ns: int
    accepted: int
    seen: int


class CounterPoller:
    """A thread that reads the service's counters every `interval` s and keeps every change."""

    def __init__(self, db: Path, interval: float) -> None:
        self.db = db
        self.interval = interval
        self.changes: list[Seen] = []
        self.polls = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="counter-poller", daemon=True)

    def __enter__(self) -> CounterPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def last(self) -> Seen:
        return self.changes[-1] if self.changes else Seen(0, 0, 0)

    def _loop(self) -> None:
        try:
            connection = sqlite3.connect(
                f"file:{self.db}?mode=ro", uri=True, timeout=5, check_same_thread=False
            )
            query = "SELECT name, value FROM counters"
            accepted = seen = -1
            while not self._stop.is_set():
                rows = connection.execute(query).fetchall()
                now = time.time_ns()
                self.polls += 1
                counts = dict(rows)
                new_accepted = counts.get("events_accepted", 0)
                new_seen = (
                    new_accepted
                    + counts.get("events_duplicate", 0)
                    + sum(v for k, v in counts.items() if k.startswith("rejected."))
                )
                if new_accepted != accepted or new_seen != seen:
                    accepted, seen = new_accepted, new_seen
                    self.changes.append(Seen(now, accepted, seen))
                time.sleep(self.interval)
            connection.close()
        except BaseException as exc:  # reported by the waiting thread
            self.error = exc

    def wait_for(self, seen: int, tailer: Tailer, timeout: float, what: str) -> Seen | None:
        """The first observation with at least `seen` lines seen; None after `timeout`."""
        deadline = time.monotonic() + timeout
        next_log = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.error is not None:
                raise BenchError(f"counter poller failed: {self.error!r}")
            if self.last.seen >= seen:
                return next(c for c in self.changes if c.seen >= seen)
            tailer.check_alive()
            if time.monotonic() >= next_log:
                log(f"{what}: {self.last.seen:,} of {seen:,} lines committed")
                next_log += 10
            time.sleep(0.05)
        log(f"{what}: gave up after {timeout:.0f} s with {self.last.seen:,} of {seen:,} lines")
        return None


def commit_latencies(changes: Iterable[Seen], sent: Sequence[int], base: int) -> list[float]:
    """Milliseconds from each line's write (`sent`, wall clock ns, in file order) to the
    first observation whose accepted count covers it; the file's lines follow `base`
    accepted events and are distinct, so commits follow file order."""
    latencies: list[float] = []
    seen = iter(changes)
    current = next(seen, None)
    for k, sent_ns in enumerate(sent, start=base + 1):
        while current is not None and current.accepted < k:
            current = next(seen, None)
        if current is None:
            break
        latencies.append((current.ns - sent_ns) / 1e6)
    return latencies
