"""Benchmark the live service, `runwatch tail`, from the outside: latency, throughput, idle
CPU and restart catch-up. Figures, not assertions: targets are printed beside them.

What it measures, and how:

* Latency (target p99 <= 100 ms). A writer process appends orchestrator events to one file
  at --rate events/s for --seconds, one `write` per line on an O_APPEND descriptor (so every
  line is flushed as it is written); each line carries `payload.sent_ns`, the wall clock read
  just before its write. A poller thread here reads the `events_accepted` counter through a
  read-only WAL connection every --poll-ms and notes when each count was first seen. Line k
  is committed once the count reaches k (one file, distinct events: commits follow file
  order), so its latency is (first time count >= k) - sent_ns of line k. The poll interval
  adds up to --poll-ms to every figure.
* Throughput (target >= 80 % of replay's rate). The service runs idle on an empty folder;
  a writer copies a simulated corpus (--events, `runwatch simulate --seed 1`, job-scoped
  pattern files and their repeated events included) into it as fast as it can in 1 MiB
  appends. Rate = lines / (last commit seen - first append). `runwatch replay` of the same
  files into a fresh database is timed right after (wall clock of the command), with its
  default workers (the target's yardstick) and with --workers 0 (one process, like tail).
* Idle CPU (target <= 0.5 s of CPU per 60 s). The service follows a folder that has been
  read to its end; after 5 s its utime+stime (/proc/PID/stat, all threads, clock ticks)
  is read at the start and the end of --idle-seconds.
* Restart catch-up. The service is started once on an empty folder and stopped (SIGTERM),
  the corpus is copied in while it is down, and it is started again: time from the start
  to the last event committed. Then, 5 s later, its idle CPU is measured again as above,
  now following the whole corpus (thousands of files, hundreds of open runs): the idle
  cost of a service with a realistic folder, not an empty one.

The service always runs with built-in defaults (its working directory holds no
config/runwatch.yaml) unless --tail-config is given, with --quiet, and its database in
--out. The script fails only when a command fails (exit 1), never on a target.

Usage:  .venv/bin/python tests/benchmarks/bench_tail.py [--seconds 60] [--rate 1000]
        [--events 1000000] [--idle-seconds 60] [--phases latency,throughput,idle,catchup]
        [--out DIR] [--tail-config FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from benchkit import BenchError, count_lines, main_for, simulator_digest

REPO: Final = Path(__file__).resolve().parents[2]
RUNWATCH: Final = [sys.executable, "-m", "runwatch.stream.cli.main"]
EVENTS_PER_RUN: Final = 199  # what `runwatch simulate` writes per run, on average
SEED: Final = 1
MARKER: Final = ".bench-corpus.json"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PHASES: Final = ("latency", "throughput", "idle", "catchup")
TARGET_P99_MS: Final = 100.0
TARGET_RATIO: Final = 0.8
TARGET_IDLE_CPU_S: Final = 0.5  # per 60 s
IDLE_SETTLE_S: Final = 5.0
COPY_CHUNK: Final = 1 << 20

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


def log(message: str) -> None:
    print(f"[bench_tail] {message}", file=sys.stderr, flush=True)


# --- the service as a process -------------------------------------------------------------


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
        fields = Path(f"/proc/{self.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def thread_cpu_seconds(self) -> float:
        """The same summed over the live threads (a cross-check of `cpu_seconds`)."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

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


# --- watching the counters ----------------------------------------------------------------


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


# --- corpus -------------------------------------------------------------------------------


@dataclass(slots=True)
class Corpus:
    path: Path
    runs: int
    events: int  # distinct
    lines: int  # with the job-scoped repeats
    files: int
    bytes: int


def ensure_corpus(out: Path, events: int) -> Corpus:
    """`runwatch simulate --seed 1` with about `events` events, reused while its marker
    records the same arguments and simulator source."""
    runs = max(1, events // EVENTS_PER_RUN)
    path = out / f"tail-corpus-{runs}runs-seed{SEED}"
    key = {"runs": runs, "seed": SEED, "simulator_sha256": simulator_digest()}
    try:
        record = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        record = {}
    files = sorted(path.rglob("*.jsonl"))
    if record.get("key") != key or record.get("bytes") != sum(f.stat().st_size for f in files):
        if path.exists():
            shutil.rmtree(path)
        log(f"generating {path.name}: runwatch simulate --runs {runs} --seed {SEED}")
        result = subprocess.run(
            [*RUNWATCH, "simulate", "--out", str(path), "--runs", str(runs), "--seed", str(SEED)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"runwatch simulate failed:\n{result.stderr.strip()}")
        files = sorted(path.rglob("*.jsonl"))
        match = re.search(r"simulated \d+ runs: (\d+) events", result.stdout)
        distinct = int(match.group(1)) if match else count_lines(files)
        record = {"key": key, "events": distinct, "bytes": sum(f.stat().st_size for f in files)}
        (path / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    else:
        log(f"reusing {path.name}")
    return Corpus(path, runs, record["events"], count_lines(files), len(files), record["bytes"])


# --- phases -------------------------------------------------------------------------------


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def run_writer(script: str, *args: object) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"writer failed ({result.returncode}):\n{result.stderr.strip()}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def bench_latency(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    workdir = fresh_dir(out / "tail-latency")
    watched = workdir / "events"
    watched.mkdir()
    log_file = watched / "orchestrator.jsonl"
    log_file.write_bytes(b"")
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, args.tail_config).start()
    try:
        tailer.wait_started()
        log(f"latency: {args.rate:g} events/s for {args.seconds:g} s")
        base = 0  # a fresh database
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            written = run_writer(LATENCY_WRITER, log_file, args.rate, args.seconds, SEED)
            lines = int(written["lines"])
            done = poller.wait_for(base + lines, tailer, args.timeout, "latency")
        cpu = tailer.cpu_seconds()
        code, stop_s = tailer.stop()
    finally:
        tailer.kill()
    sent = [json.loads(line)["payload"]["sent_ns"] for line in log_file.read_bytes().splitlines()]
    latencies: list[float] = []
    changes = iter(poller.changes)
    current: Seen | None = next(changes, None)
    for k, sent_ns in enumerate(sent, start=base + 1):
        while current is not None and current.accepted < k:
            current = next(changes, None)
        if current is None:
            break
        latencies.append((current.ns - sent_ns) / 1e6)
    ordered = sorted(latencies)
    result: dict[str, Any] = {
        "rate": args.rate,
        "seconds": args.seconds,
        "lines": lines,
        "writer_seconds": round(written["seconds"], 3),
        "committed": len(latencies),
        "complete": done is not None,
        "poll_ms": args.poll_ms,
        "polls": poller.polls,
        "commits_seen": len(poller.changes),
        "tail_cpu_s": round(cpu, 2),
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 3),
    }
    if ordered:
        result |= {
            "p50_ms": percentile(ordered, 50),
            "p90_ms": percentile(ordered, 90),
            "p99_ms": percentile(ordered, 99),
            "max_ms": ordered[-1],
            "mean_ms": statistics.fmean(ordered),
        }
        result["meets_target"] = done is not None and result["p99_ms"] <= TARGET_P99_MS
    return result


def time_replay(corpus_dir: Path, workdir: Path, lines: int, *options: str) -> dict[str, Any]:
    db = workdir / "replay.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    result = subprocess.run(
        [
            *RUNWATCH,
            "replay",
            str(corpus_dir),
            "--db",
            str(db),
            "--json",
            "--no-progress",
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"runwatch replay failed:\n{result.stderr.strip()}")
    summary = json.loads(result.stdout)
    return {
        "wall_s": round(wall, 3),
        "lines_per_s": round(lines / wall),
        "reported_events_per_s": summary["events_per_s"],
        "lines": summary["lines"],
    }


def bench_throughput(args: argparse.Namespace, out: Path, corpus: Corpus) -> dict[str, Any]:
    workdir = fresh_dir(out / "tail-throughput")
    watched = workdir / "events"
    watched.mkdir()
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, args.tail_config).start()
    try:
        tailer.wait_started()
        cpu_before = tailer.cpu_seconds()
        log(f"throughput: copying {corpus.lines:,} lines ({corpus.bytes / 1e6:,.0f} MB) in")
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            written = run_writer(COPY_WRITER, corpus.path, watched, COPY_CHUNK)
            at_writer_end = poller.last.seen
            done = poller.wait_for(corpus.lines, tailer, args.timeout, "throughput")
        cpu = tailer.cpu_seconds() - cpu_before
        rss = tailer.peak_rss_mb()
        code, stop_s = tailer.stop()
    finally:
        tailer.kill()
    end_ns = done.ns if done is not None else time.time_ns()
    seconds = (end_ns - written["first_ns"]) / 1e9
    committed = done.seen if done is not None else poller.last.seen
    result: dict[str, Any] = {
        "lines": corpus.lines,
        "bytes": corpus.bytes,
        "complete": done is not None,
        "committed": committed,
        "seconds": round(seconds, 3),
        "lines_per_s": round(committed / seconds) if seconds > 0 else 0,
        "writer_seconds": round((written["last_ns"] - written["first_ns"]) / 1e9, 3),
        "committed_when_writer_done": at_writer_end,
        "tail_cpu_s": round(cpu, 2),
        "tail_peak_rss_mb": round(rss, 1),
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 3),
    }
    log("throughput: timing runwatch replay of the same files")
    replay = time_replay(watched, workdir, corpus.lines)
    result["replay"] = replay
    result["ratio_to_replay"] = round(result["lines_per_s"] / replay["lines_per_s"], 3)
    single = time_replay(watched, workdir, corpus.lines, "--workers", "0")
    result["replay_one_process"] = single
    result["ratio_to_replay_one_process"] = round(result["lines_per_s"] / single["lines_per_s"], 3)
    result["meets_target"] = done is not None and result["ratio_to_replay"] >= TARGET_RATIO
    return result


def bench_idle(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    workdir = fresh_dir(out / "tail-idle")
    watched = workdir / "events"
    (watched / "patterns").mkdir(parents=True)
    for n in range(3):  # a few files, read to their end before the measurement
        name = watched / ("patterns" if n else "") / f"events-{n}.jsonl"
        name.write_bytes(
            b"".join(
                json.dumps(
                    {
                        "event_type": "task_started",
                        "timestamp": f"2026-01-05T08:00:{i % 60:02d}Z",
                        "run_id": f"IDLE-{n}",
                        "task_id": f"t{i}",
                    }
                ).encode()
                + b"\n"
                for i in range(100)
            )
        )
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, args.tail_config).start()
    try:
        tailer.wait_started()
        time.sleep(IDLE_SETTLE_S)
        log(f"idle: measuring CPU over {args.idle_seconds:g} s")
        before, threads_before = tailer.cpu_seconds(), tailer.thread_cpu_seconds()
        time.sleep(args.idle_seconds)
        tailer.check_alive()
        cpu, threads_cpu = (
            tailer.cpu_seconds() - before,
            tailer.thread_cpu_seconds() - threads_before,
        )
        threads = tailer.threads()
        code, stop_s = tailer.stop()
    finally:
        tailer.kill()
    per_60 = cpu * 60 / args.idle_seconds
    return {
        "seconds": args.idle_seconds,
        "cpu_s": round(cpu, 3),
        "cpu_s_live_threads": round(threads_cpu, 3),
        "cpu_s_per_60s": round(per_60, 3),
        "threads": threads,
        "tick_s": 1 / CLK_TCK,
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 3),
        "meets_target": per_60 <= TARGET_IDLE_CPU_S,
    }


def bench_catchup(
    args: argparse.Namespace, out: Path, corpus: Corpus, replay: dict[str, Any] | None
) -> dict[str, Any]:
    workdir = fresh_dir(out / "tail-catchup")
    watched = workdir / "events"
    watched.mkdir()
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, args.tail_config).start()
    try:
        tailer.wait_started()
        tailer.stop()
        log(f"catch-up: {corpus.lines:,} lines appended while the service is down")
        run_writer(COPY_WRITER, corpus.path, watched, COPY_CHUNK)
        count_lines(sorted(watched.rglob("*.jsonl")))  # same warm page cache as replay
        tailer.start()
        first: Seen | None = None
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            done = poller.wait_for(corpus.lines, tailer, args.timeout, "catch-up")
            first = next((c for c in poller.changes if c.seen > 0), None)
        rss = tailer.peak_rss_mb()
        cpu = tailer.cpu_seconds()
        time.sleep(IDLE_SETTLE_S)
        log(f"catch-up: measuring idle CPU over {args.idle_seconds:g} s on the full folder")
        idle_before = tailer.cpu_seconds()
        time.sleep(args.idle_seconds)
        tailer.check_alive()
        idle_cpu = tailer.cpu_seconds() - idle_before
        code, stop_s = tailer.stop()
    finally:
        tailer.kill()
    end_ns = done.ns if done is not None else time.time_ns()
    seconds = (end_ns - tailer.started_ns) / 1e9
    committed = done.seen if done is not None else poller.last.seen
    result: dict[str, Any] = {
        "lines": corpus.lines,
        "complete": done is not None,
        "committed": committed,
        "seconds": round(seconds, 3),
        "first_commit_s": round((first.ns - tailer.started_ns) / 1e9, 3) if first else None,
        "lines_per_s": round(committed / seconds) if seconds > 0 else 0,
        "tail_cpu_s": round(cpu, 2),
        "tail_peak_rss_mb": round(rss, 1),
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 3),
        "files": corpus.files,
        "open_runs": open_runs(tailer.db),
        "idle_seconds": args.idle_seconds,
        "idle_cpu_s": round(idle_cpu, 3),
        "idle_cpu_s_per_60s": round(idle_cpu * 60 / args.idle_seconds, 3),
    }
    result["idle_meets_target"] = result["idle_cpu_s_per_60s"] <= TARGET_IDLE_CPU_S
    if replay is not None:
        result["ratio_to_replay"] = round(result["lines_per_s"] / replay["lines_per_s"], 3)
    return result


# --- report -------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "runwatch_source": f"{commit}{' + uncommitted changes' if dirty else ''}",
    }


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "meets target" if ok else "MISSES target"


def rows_for(figures: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    lat = figures.get("latency")
    if lat:
        if "p99_ms" in lat:
            rows.append(
                [
                    "latency",
                    f"p50 / p90 / p99 / max (ms), {lat['rate']:g} ev/s for {lat['seconds']:g} s",
                    f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f} / {lat['p99_ms']:.1f} / "
                    f"{lat['max_ms']:.1f}",
                    f"p99 <= {TARGET_P99_MS:.0f}",
                    verdict(lat["meets_target"]),
                ]
            )
        rows.append(
            [
                "latency",
                "lines committed / written",
                f"{lat['committed']:,} / {lat['lines']:,}",
                "all",
                verdict(lat["complete"]),
            ]
        )
    thr = figures.get("throughput")
    if thr:
        rep = thr["replay"]
        rows.append(
            [
                "throughput",
                f"live, {thr['lines']:,} lines appended flat out",
                f"{thr['lines_per_s']:,} lines/s in {thr['seconds']:.1f} s",
                "",
                "",
            ]
        )
        rows.append(
            [
                "throughput",
                "replay of the same files (wall)",
                f"{rep['lines_per_s']:,} lines/s in {rep['wall_s']:.1f} s",
                "",
                "",
            ]
        )
        rows.append(
            [
                "throughput",
                "live / replay",
                f"{thr['ratio_to_replay']:.2f}",
                f">= {TARGET_RATIO:.2f}",
                verdict(thr["meets_target"]),
            ]
        )
        one = thr["replay_one_process"]
        rows.append(
            [
                "throughput",
                "replay --workers 0 (one process), live / that",
                f"{one['lines_per_s']:,} lines/s in {one['wall_s']:.1f} s; "
                f"{thr['ratio_to_replay_one_process']:.2f}",
                "",
                "",
            ]
        )
        rows.append(
            [
                "throughput",
                "committed when the writer finished",
                f"{thr['committed_when_writer_done']:,} (writer {thr['writer_seconds']:.2f} s)",
                "",
                "",
            ]
        )
        rows.append(
            [
                "throughput",
                "tail CPU s / peak RSS MB",
                f"{thr['tail_cpu_s']:.1f} / {thr['tail_peak_rss_mb']:.0f}",
                "",
                "",
            ]
        )
    idle = figures.get("idle")
    if idle:
        rows.append(
            [
                "idle",
                f"CPU over {idle['seconds']:g} s (per 60 s)",
                f"{idle['cpu_s']:.2f} s ({idle['cpu_s_per_60s']:.2f} s)",
                f"<= {TARGET_IDLE_CPU_S} s / 60 s",
                verdict(idle["meets_target"]),
            ]
        )
    cat = figures.get("catchup")
    if cat:
        first = "-" if cat["first_commit_s"] is None else f"{cat['first_commit_s']:.2f} s"
        rows.append(
            [
                "catch-up",
                f"{cat['lines']:,}-line backlog, start to last commit",
                f"{cat['seconds']:.1f} s = {cat['lines_per_s']:,} lines/s",
                "",
                verdict(None) if cat["complete"] else "INCOMPLETE",
            ]
        )
        rows.append(["catch-up", "start to first commit", first, "", ""])
        if "ratio_to_replay" in cat:
            rows.append(
                ["catch-up", "catch-up / replay rate", f"{cat['ratio_to_replay']:.2f}", "", ""]
            )
        rows.append(
            [
                "catch-up",
                "tail CPU s / peak RSS MB",
                f"{cat['tail_cpu_s']:.1f} / {cat['tail_peak_rss_mb']:.0f}",
                "",
                "",
            ]
        )
        rows.append(
            [
                "idle",
                f"CPU over {cat['idle_seconds']:g} s after the catch-up "
                f"({cat['files']:,} files, {cat['open_runs']:,} open runs) (per 60 s)",
                f"{cat['idle_cpu_s']:.2f} s ({cat['idle_cpu_s_per_60s']:.2f} s)",
                f"<= {TARGET_IDLE_CPU_S} s / 60 s",
                verdict(cat["idle_meets_target"]),
            ]
        )
    for phase in ("latency", "throughput", "idle", "catchup"):
        entry = figures.get(phase)
        if entry and "sigterm_to_exit_s" in entry:
            rows.append(
                [
                    phase,
                    "exit code, SIGTERM to exit",
                    f"{entry['exit_code']}, {entry['sigterm_to_exit_s']:.2f} s",
                    "0, < 2 s",
                    verdict(entry["exit_code"] == 0 and entry["sigterm_to_exit_s"] < 2),
                ]
            )
    return rows


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def report(
    machine: dict[str, Any], corpus: Corpus | None, figures: dict[str, Any], stream: IO[str]
) -> None:
    print(
        f"runwatch tail benchmark, {machine['date']}, source {machine['runwatch_source']}",
        file=stream,
    )
    print(
        f"machine: nproc {machine['nproc']}, {machine['cpu']}, Python {machine['python']}, "
        f"load at start {' '.join(map(str, machine['load_average_1_5_15']))}",
        file=stream,
    )
    if corpus is not None:
        print(
            f"corpus: {corpus.path.name}: {corpus.events:,} events, {corpus.lines:,} lines, "
            f"{corpus.files} files, {corpus.bytes / 1e6:,.0f} MB",
            file=stream,
        )
    print("", file=stream)
    print(
        render(["phase", "measure", "value", "target", "verdict"], rows_for(figures)), file=stream
    )


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure `runwatch tail` from the outside: commit latency, live "
        "throughput against replay, idle CPU and restart catch-up."
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="latency: how long the writer appends (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="latency: events per second (default: %(default)s)",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        help="throughput and catch-up: events in the corpus (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=60.0,
        help="idle: how long CPU time is measured (default: %(default)s)",
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated subset of %(default)s"
    )
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=2.0,
        help="how often the counters are read (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="give up waiting for a phase's commits after this many seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--tail-config",
        type=Path,
        metavar="FILE",
        help="a config file for the service (default: built-in defaults)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench-out",
        metavar="DIR",
        help="corpus and scratch folders (default: bench-out/ in the repo)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every figure as JSON to FILE"
    )
    args = parser.parse_args(argv)
    args.phase_list = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phase_list) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.seconds <= 0 or args.rate <= 0 or args.events < 1 or args.idle_seconds <= 0:
        parser.error("--seconds, --rate, --events and --idle-seconds must be positive")
    if args.tail_config is not None:
        args.tail_config = args.tail_config.resolve()
    return args


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_facts()
    figures: dict[str, Any] = {}
    corpus = None
    if "throughput" in args.phase_list or "catchup" in args.phase_list:
        corpus = ensure_corpus(out, args.events)
    if "latency" in args.phase_list:
        figures["latency"] = bench_latency(args, out)
    if "throughput" in args.phase_list and corpus is not None:
        figures["throughput"] = bench_throughput(args, out, corpus)
    if "idle" in args.phase_list:
        figures["idle"] = bench_idle(args, out)
    if "catchup" in args.phase_list and corpus is not None:
        replay = figures.get("throughput", {}).get("replay")
        figures["catchup"] = bench_catchup(args, out, corpus, replay)
    report(machine, corpus, figures, sys.stdout)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "options": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    },
                    "targets": {
                        "latency_p99_ms_max": TARGET_P99_MS,
                        "throughput_ratio_to_replay_min": TARGET_RATIO,
                        "idle_cpu_s_per_60s_max": TARGET_IDLE_CPU_S,
                    },
                    "corpus": None
                    if corpus is None
                    else {
                        "path": str(corpus.path),
                        "runs": corpus.runs,
                        "events": corpus.events,
                        "lines": corpus.lines,
                        "files": corpus.files,
                        "bytes": corpus.bytes,
                    },
                    "figures": figures,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"\nfigures written to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_tail", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
