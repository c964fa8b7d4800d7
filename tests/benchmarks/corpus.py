"""Benchmark corpora in the shapes real deployments write, deterministic from a seed.

Four shapes, each sized by an event count:

* `single`: one big file of sequential runs (5-40 tasks each), as one orchestrator writes.
* `interleaved`: one stream of ~3,000 runs in flight at once, rolled into 40 files of equal
  line counts (as logrotate leaves them), so most runs straddle two or more files.
* `giant`: one file holding one run with most of the events (~5 events a task: 150k tasks
  at ~0.76M events, ~195k at 1M; the task count scales with the event count) and 50 small
  runs written, each in one piece, while it runs.
* `simulator`: `runwatch simulate`'s corpus (thousands of small job files, ~199 events a run).

Lines are the orchestrator's as the simulator writes them (event_type, timestamp, severity,
message, run_id, workstream_id, job_id, task_id, tool_id, worker_id, file_id, payload; no
event_id, so replay names each line by its hash). Runs have workstreams that interleave, tool
calls, progress, retries, failing tasks and runs, and a few runs that stall. The writers
stream: memory is bounded by the runs in flight, never by the corpus size. A run's events
are drawn by a generator, and the event counts are met by calibrating the mean run size on a
scratch generator first, so a corpus lands within a run or two of the asked-for count.

With a hostile share, `hostile.py` then inserts bad lines (mutated upstream lines, deep
nesting, huge integers, invalid UTF-8, NUL bytes, over-long lines) before about that share
of the lines; `events` counts them too (lines, as everywhere here), `hostile` says how many.

Usage:  .venv/bin/python tests/benchmarks/corpus.py SHAPE --events N --out DIR [--seed S]
        [--hostile-percent P]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from random import Random
from typing import IO, Any, Final

import hostile
import orjson

from runwatch.stream.devtools import expected, plan, writer
from runwatch.stream.devtools.plan import FILES, MESSAGES, TOOLS, Stamper, make_ulid
from runwatch.stream.devtools.writer import simulate

SHAPES: Final = ("single", "interleaved", "giant", "simulator")
MARKER: Final = ".bench-corpus.json"
SIMULATOR_EVENTS_PER_RUN: Final = 199
INTERLEAVED_FILES: Final = 40
IN_FLIGHT: Final = 3_000
GIANT_SMALL_RUNS: Final = 50
GIANT_WORKSTREAMS: Final = 32
TASKS_PER_RUN: Final = (5, 40)
FAIL_RUN_SHARE: Final = 0.15
STALL_SHARE: Final = 0.02
WORKSTREAM_EVENT_SHARE: Final = 0.6
START_US: Final = 1_767_600_000 * 1_000_000  # 2026-01-05, as the simulator starts
CALIBRATION_RUNS: Final = 400

_S: Final = 1_000_000
_DUMPS: Final = orjson.dumps
_NL: Final = orjson.OPT_APPEND_NEWLINE
_TASK_NAMES: Final = ("plan", "implement", "refactor", "lint", "typecheck", "unit-tests", "docs")
_TASK_ERRORS: Final = ("tool exited with status 1", "timeout after 300s", "tests failed: 3 of 42")
# Unlike the simulator's lines, progress lines here name the job.
_JOB_KINDS: Final = frozenset(
    {"task_created", "task_started", "task_completed", "task_failed", "task_progress"}
)

# One event before its time is known: (kind, task index or -1, workstream, payload,
# severity, tool, file). The writer of a shape decides when it happens.
Step = tuple[str, int, str | None, dict[str, Any], str, str | None, str | None]


@dataclass(slots=True)
class CorpusInfo:
    shape: str
    path: str
    events: int
    runs: int
    files: int
    bytes: int
    largest_run_tasks: int
    seed: int
    hostile: int = 0  # hostile lines mixed in, counted in `events`


# --- one run --------------------------------------------------------------------------------


class Lines:
    """Formats orchestrator lines: the simulator's ids and timestamps from one generator."""

    def __init__(self, rng: Random) -> None:
        self.rng = rng
        self._stamp = Stamper()

    def ulid(self, us: int) -> str:
        return make_ulid(self.rng, us)

    def stamp(self, us: int) -> str:
        return self._stamp(us, "Z")


class Run:
    """One run's identity and its events in causal order (`steps`), drawn lazily."""

    def __init__(self, lines: Lines, start: int, tasks: int, workstreams: int) -> None:
        rng = lines.rng
        self.rng = rng
        self.tasks = tasks
        self.width = workstreams
        token = lines.ulid(start)
        self.run_id = "RUN-" + token
        self.job_id = "JOB-" + token
        # Task ids derive from the run's token, so a 150k-task run keeps no id list.
        self.task_prefix = "TASK-" + token + "-"
        self.worker_salt = rng.randrange(24)
        self.failing = rng.random() < FAIL_RUN_SHARE
        self.stall_at = rng.random() if rng.random() < STALL_SHARE else None
        self.ws_events = rng.random() < WORKSTREAM_EVENT_SHARE
        self.failed_tasks = 0
        self.succeeded_tasks = 0

    def workstream(self, task: int) -> str:
        return f"WS-{task % self.width + 1:02d}"

    def steps(self) -> Iterator[Step]:
        """The run's events; a stalled run stops part way and never finishes."""
        expected = self.tasks * 4 + 4
        for count, step in enumerate(self._all_steps()):
            if self.stall_at is not None and count >= 2 and count >= self.stall_at * expected:
                return
            yield step

    def _all_steps(self) -> Iterator[Step]:
        yield "run_created", -1, None, {"total_tasks": self.tasks}, "info", None, None
        yield "run_started", -1, None, {"workstreams": self.width}, "info", None, None
        streams = [self._workstream(index) for index in range(self.width)]
        random = self.rng.random
        while streams:
            # Workstreams run side by side: their events interleave at random.
            pick = int(random() * len(streams))
            step = next(streams[pick], None)
            if step is None:
                streams[pick] = streams[-1]
                streams.pop()
            else:
                yield step
        if not self.failed_tasks:
            yield "run_completed", -1, None, {"status": "succeeded"}, "info", None, None
        elif random() < 0.4:
            yield "run_failed", -1, None, {"reason": "tasks failed"}, "error", None, None
        else:
            status = "partial" if self.succeeded_tasks else "failed"
            yield "run_completed", -1, None, {"status": status}, "warning", None, None

    def _workstream(self, index: int) -> Iterator[Step]:
        ws = f"WS-{index + 1:02d}"
        if self.ws_events:
            yield "workstream_started", -1, ws, {}, "info", None, None
        failed = False
        for task in range(index, self.tasks, self.width):
            name = _TASK_NAMES[task % len(_TASK_NAMES)]
            yield "task_created", task, ws, {"name": name, "index": task}, "info", None, None
            failed |= yield from self._task(task, ws)
        if self.ws_events:
            kind = "workstream_failed" if failed else "workstream_completed"
            yield kind, -1, ws, {}, "error" if failed else "info", None, None

    def _task(self, task: int, ws: str) -> Generator[Step, None, bool]:
        """A task's events; returns whether it failed for good."""
        random = self.rng.random
        fails = self.failing and random() < 0.3
        attempts = 2 if (fails and random() < 0.3) or random() < 0.04 else 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            yield "task_started", task, ws, {"attempt": attempt}, "info", None, None
            for call in range(1, 1 + int(random() * 3)):
                if random() < 0.4:
                    pct = min(99, call * 30)
                    yield (
                        "task_progress",
                        task,
                        ws,
                        {"percent": pct, "step": call},
                        "info",
                        None,
                        None,
                    )
                    continue
                tool = TOOLS[int(random() * len(TOOLS))]
                file = FILES[int(random() * len(FILES))] if random() < 0.5 else None
                yield "tool_call_started", task, ws, {"call": call}, "info", tool, file
                ok = random() >= 0.05
                took = 200 + int(random() * 25_000)
                result = {"call": call, "exit_code": int(not ok), "duration_ms": took}
                yield (
                    "tool_call_completed",
                    task,
                    ws,
                    result,
                    "info" if ok else "warning",
                    tool,
                    file,
                )
            if fails or not last:
                error = _TASK_ERRORS[int(random() * len(_TASK_ERRORS))]
                payload = {"attempt": attempt, "error": error}
                yield "task_failed", task, ws, payload, "error", None, None
            else:
                payload = {"attempt": attempt, "exit_code": 0}
                yield "task_completed", task, ws, payload, "info", None, None
        if fails:
            self.failed_tasks += 1
        else:
            self.succeeded_tasks += 1
        return fails

    def line(self, lines: Lines, time: int, step: Step) -> bytes:
        kind, task, ws, payload, severity, tool, file = step
        in_task = task >= 0
        return _DUMPS(
            {
                "event_type": kind,
                "timestamp": lines.stamp(time),
                "severity": severity,
                "message": MESSAGES[kind],
                "run_id": self.run_id,
                "workstream_id": ws,
                "job_id": self.job_id if kind in _JOB_KINDS else None,
                "task_id": f"{self.task_prefix}{task:06d}" if in_task else None,
                "tool_id": tool,
                "worker_id": f"worker-{(task + self.worker_salt) % 24 + 1:02d}"
                if in_task
                else None,
                "file_id": file,
                "payload": payload,
            },
            option=_NL,
        )


def small_run(lines: Lines, start: int) -> Run:
    rng = lines.rng
    return Run(lines, start, rng.randint(*TASKS_PER_RUN), rng.choice((2, 2, 3)))


def mean_run_events(seed: int) -> float:
    """Events per small run, measured on a scratch generator (the shapes' sizing unit)."""
    lines = Lines(Random(seed ^ 0x5EED))
    return sum(sum(1 for _ in small_run(lines, 0).steps()) for _ in range(CALIBRATION_RUNS)) / (
        CALIBRATION_RUNS
    )


# --- shapes ---------------------------------------------------------------------------------


class Sink:
    """Numbered files, rolled every `roll_lines` lines, at most `max_files` of them."""

    def __init__(self, directory: Path, stem: str, roll_lines: int, max_files: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.stem = stem
        self.roll_lines = roll_lines
        self.max_files = max_files
        self.files = 0
        self.lines_in_file = 0
        self.events = 0
        self.bytes = 0
        self.handle: IO[bytes] | None = None

    def write(self, line: bytes) -> None:
        handle = self.handle
        if handle is None or (
            self.lines_in_file >= self.roll_lines and self.files < self.max_files
        ):
            handle = self._roll()
        handle.write(line)
        self.lines_in_file += 1
        self.events += 1

    def _roll(self) -> IO[bytes]:
        self.close()
        self.handle = (self.directory / f"{self.stem}-{self.files:03d}.jsonl").open(
            "wb", buffering=1 << 20
        )
        self.files += 1
        self.lines_in_file = 0
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            self.bytes += self.handle.tell()
            self.handle.close()
            self.handle = None


def write_single(out: Path, events: int, seed: int) -> CorpusInfo:
    lines = Lines(Random(seed))
    rng = lines.rng
    sink = Sink(out, "orchestrator", events + 1, 1)
    clock, runs, largest = START_US, 0, 0
    while sink.events < events:
        run = small_run(lines, clock)
        runs += 1
        largest = max(largest, run.tasks)
        for step in run.steps():
            clock += 200_000 + int(rng.random() * 2_800_000)
            sink.write(run.line(lines, clock, step))
        clock += int(rng.random() * 60 * _S)
    sink.close()
    return CorpusInfo("single", str(out), sink.events, runs, sink.files, sink.bytes, largest, seed)


def write_interleaved(out: Path, events: int, seed: int) -> CorpusInfo:
    lines = Lines(Random(seed))
    rng = lines.rng
    total_runs = max(1, round(events / mean_run_events(seed)))
    roll = max(1, math.ceil(events / INTERLEAVED_FILES))
    sink = Sink(out, "orchestrator", roll, INTERLEAVED_FILES)
    clock, started, largest = START_US, 0, 0
    active: list[tuple[Run, Iterator[Step]]] = []
    while active or started < total_runs:
        while len(active) < IN_FLIGHT and started < total_runs:
            run = small_run(lines, clock)
            largest = max(largest, run.tasks)
            active.append((run, run.steps()))
            started += 1
        pick = int(rng.random() * len(active))
        run, steps = active[pick]
        step = next(steps, None)
        if step is None:
            active[pick] = active[-1]
            active.pop()
            continue
        clock += 1_000 + int(rng.random() * 40_000)
        sink.write(run.line(lines, clock, step))
    sink.close()
    return CorpusInfo(
        "interleaved", str(out), sink.events, started, sink.files, sink.bytes, largest, seed
    )


def write_giant(out: Path, events: int, seed: int) -> CorpusInfo:
    lines = Lines(Random(seed))
    rng = lines.rng
    small_mean = mean_run_events(seed)
    # A small run's events per task (all but its 4 run-level lines) sizes the giant run too.
    per_task = (small_mean - 4) / (sum(TASKS_PER_RUN) / 2)
    giant_tasks = max(GIANT_WORKSTREAMS, round((events - GIANT_SMALL_RUNS * small_mean) / per_task))
    giant = Run(lines, START_US, giant_tasks, GIANT_WORKSTREAMS)
    giant.stall_at = None
    sink = Sink(out, "orchestrator", events * 2 + 1, 1)
    every = max(1, int(giant_tasks * per_task / (GIANT_SMALL_RUNS + 1)))
    clock, smalls = START_US, 0

    def write(run: Run, step: Step) -> None:
        nonlocal clock
        clock += 1_000 + int(rng.random() * 20_000)
        sink.write(run.line(lines, clock, step))

    def write_small_run() -> None:
        nonlocal smalls
        smalls += 1
        run = small_run(lines, clock)
        for step in run.steps():
            write(run, step)

    for written, step in enumerate(giant.steps(), start=1):
        write(giant, step)
        if written % every == 0 and smalls < GIANT_SMALL_RUNS:
            write_small_run()
    while smalls < GIANT_SMALL_RUNS:  # the giant run ended early: the rest follow it
        write_small_run()
    sink.close()
    return CorpusInfo(
        "giant", str(out), sink.events, 1 + smalls, sink.files, sink.bytes, giant_tasks, seed
    )


def write_simulator(out: Path, events: int, seed: int) -> CorpusInfo:
    runs = max(1, events // SIMULATOR_EVENTS_PER_RUN)
    summary = simulate(out, runs=runs, seed=seed)
    return CorpusInfo(
        "simulator",
        str(out),
        summary.lines,
        summary.runs,
        len(summary.files),
        summary.bytes_written,
        12,  # the simulator's most tasks a run: an upper bound, not counted
        seed,
    )


WRITERS: Final[dict[str, Callable[[Path, int, int], CorpusInfo]]] = {
    "single": write_single,
    "interleaved": write_interleaved,
    "giant": write_giant,
    "simulator": write_simulator,
}


# --- cache ----------------------------------------------------------------------------------


def generator_digest() -> str:
    """The sources that write a corpus: a cached one is rebuilt when any of them changes."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], hostile, plan, expected, writer):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:16]


def corpus_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.jsonl"))


def ensure(
    shape: str, events: int, seed: int, root: Path, hostile_share: float = 0.0
) -> tuple[CorpusInfo, bool]:
    """The corpus of `shape` under `root`, with a hostile line before about `hostile_share`
    of its lines, reused when its marker matches; (info, reused)."""
    mixed = f"-hostile{hostile_share:g}" if hostile_share else ""
    path = root / f"shape-{shape}-{events}-seed{seed}{mixed}"
    key = {
        "shape": shape,
        "events": events,
        "seed": seed,
        "hostile_share": hostile_share,
        "generator": generator_digest(),
    }
    try:
        record = json.loads((path / MARKER).read_text())
        files = corpus_files(path)
        if (
            record["key"] == key
            and record["info"]["files"] == len(files)
            and record["info"]["bytes"] == sum(f.stat().st_size for f in files)
        ):
            return CorpusInfo(**record["info"]), True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if path.exists():
        for old in corpus_files(path):
            old.unlink()
    path.mkdir(parents=True, exist_ok=True)
    info = WRITERS[shape](path, events, seed)
    if hostile_share:
        files = corpus_files(path)
        info.hostile = hostile.mix(files, hostile_share, seed)
        info.events += info.hostile
        info.bytes = sum(f.stat().st_size for f in files)
    (path / MARKER).write_text(json.dumps({"key": key, "info": asdict(info)}, indent=2) + "\n")
    return info, False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write one benchmark corpus.")
    parser.add_argument("shape", choices=SHAPES)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--hostile-percent", type=float, default=0.0, help="hostile lines mixed in (hostile.py)"
    )
    args = parser.parse_args(argv)
    share = args.hostile_percent / 100
    info, reused = ensure(args.shape, args.events, args.seed, args.out.resolve(), share)
    print(json.dumps(asdict(info) | {"reused": reused}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
