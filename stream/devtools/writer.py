"""Turning the plan into JSONL files: the runs' lines merged in event-time order, the
orchestrator log rolled every `roll_lines` lines, and, when live, paced and flushed."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import IO, Final

from runwatch.stream.devtools.plan import LEGACY, ORCHESTRATOR, Planner, TimedLine

DEFAULT_START: Final = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
ROLL_LINES: Final = 50_000

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SimulationSummary:
    """What `simulate` wrote and what a correct projection of it must conclude."""

    runs: int
    events: int
    files: list[str]
    bytes_written: int
    expected_status: dict[str, str]
    stalled_runs: list[str]
    last_event_time: str
    lines: int


def simulate(
    out_dir: Path,
    runs: int = 10,
    seed: int = 0,
    fail_rate: float = 0.2,
    stall_rate: float = 0.1,
    tasks_per_run: tuple[int, int] = (4, 12),
    start: datetime | None = None,
    pace: float | None = None,
    roll_lines: int = ROLL_LINES,
) -> SimulationSummary:
    """Write a deterministic corpus of `runs` runs under `out_dir` and summarise it.

    With `pace`, lines are written in event-time order at about that many per second and
    flushed as they go, so a running `runwatch tail` sees runs unfold live.

    `events` counts distinct events; `lines` also counts the job-scoped pattern files, which
    repeat lines of `patterns/pattern_events.jsonl`. Existing files with the same names are
    overwritten, others are left alone. The orchestrator log rolls over to a new numbered
    file every `roll_lines` lines.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    for name, rate in (("fail_rate", fail_rate), ("stall_rate", stall_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {rate}")
    low, high = tasks_per_run
    if not 1 <= low <= high:
        raise ValueError(f"tasks_per_run must satisfy 1 <= MIN <= MAX, got {tasks_per_run}")
    origin = start if start is not None else DEFAULT_START
    if origin.tzinfo is None:
        origin = origin.replace(tzinfo=UTC)
    planner = Planner(runs, seed, fail_rate, stall_rate, (low, high), _micros(origin))
    return _Writer(Path(out_dir), planner, pace, roll_lines).write()


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _format_utc(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Writer:
    def __init__(
        self, out_dir: Path, planner: Planner, pace: float | None, roll_lines: int
    ) -> None:
        self.out_dir = out_dir
        self.planner = planner
        self.pace = pace
        self.roll_lines = roll_lines
        self.files: list[str] = []
        self.bytes_written = 0
        self.lines = 0
        self.events = 0
        self.paced_from = 0.0

    def write(self) -> SimulationSummary:
        """Build each run when the merge reaches its start, so memory holds only the runs
        in flight, and write every line in (time, run, position) order."""
        planner = self.planner
        plans = planner.schedule()
        expected: dict[str, str] = {}
        stalled_runs: list[str] = []
        heap: list[tuple[int, int, int, list[TimedLine]]] = []
        orch: IO[bytes] | None = None
        orch_lines = 0
        orch_index = 0
        legacy: IO[bytes] | None = None
        patterns: IO[bytes] | None = None
        last = planner.origin
        next_plan = 0
        total = len(plans)
        try:
            while next_plan < total or heap:
                if next_plan < total and (not heap or plans[next_plan][0] <= heap[0][0]):
                    start, _index, stalled, is_legacy = plans[next_plan]
                    run = planner.build_run(start, stalled, is_legacy)
                    if run.job_lines:
                        self.write_job_file(run.job_id, run.job_lines)
                    expected[run.run_id] = run.status
                    if run.stalled:
                        stalled_runs.append(run.run_id)
                    if run.lines:
                        heapq.heappush(heap, (run.lines[0][0], next_plan, 0, run.lines))
                    next_plan += 1
                    continue
                time, order, pos, outs = heap[0]
                _t, sink, line = outs[pos]
                if sink == ORCHESTRATOR:
                    if orch is None or orch_lines >= self.roll_lines:
                        if orch is not None:
                            self.bytes_written += orch.tell()
                            orch.close()
                        orch = self.open(f"orchestrator/events-{orch_index:03d}.jsonl")
                        orch_index += 1
                        orch_lines = 0
                    orch.write(line)
                    orch_lines += 1
                elif sink == LEGACY:
                    if legacy is None:
                        legacy = self.open("legacy/run_events.jsonl")
                    legacy.write(line)
                else:
                    if patterns is None:
                        patterns = self.open("patterns/pattern_events.jsonl")
                    patterns.write(line)
                self.events += 1
                last = time
                if self.pace:
                    self.keep_pace((orch, legacy, patterns))
                pos += 1
                if pos < len(outs):
                    heapq.heapreplace(heap, (outs[pos][0], order, pos, outs))
                else:
                    heapq.heappop(heap)
        finally:
            for handle in (orch, legacy, patterns):
                if handle is not None:
                    self.bytes_written += handle.tell()
                    handle.close()
        self.lines += self.events
        return SimulationSummary(
            runs=total,
            events=self.events,
            files=sorted(self.files),
            bytes_written=self.bytes_written,
            expected_status=expected,
            stalled_runs=stalled_runs,
            last_event_time=_format_utc(last),
            lines=self.lines,
        )

    def keep_pace(self, handles: tuple[IO[bytes] | None, ...]) -> None:
        """Flush about 50 times a second and sleep to hold `pace` lines per second."""
        assert self.pace is not None
        if self.events == 1:
            self.paced_from = monotonic()
        if self.events % max(1, int(self.pace // 50)):
            return
        for handle in handles:
            if handle is not None:
                handle.flush()
        ahead = self.paced_from + self.events / self.pace - monotonic()
        if ahead > 0:
            sleep(ahead)

    def open(self, relative: str) -> IO[bytes]:
        path = self.out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(str(path))
        return path.open("wb", buffering=1 << 20)

    def write_job_file(self, job_id: str, lines: list[bytes]) -> None:
        # A job belongs to one run, so its file is the run's pattern lines in the same
        # (time, sequence) order the global merge writes them.
        data = b"".join(lines)
        path = self.out_dir / "patterns" / "jobs" / job_id / "pattern_events.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files.append(str(path))
        self.bytes_written += len(data)
        self.lines += len(lines)
