"""simulate: deterministic, realistic event corpora whose expected projection is known."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import re
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runwatch.stream.cli.simulate import add_arguments, run
from runwatch.stream.devtools.writer import SimulationSummary, simulate

ULID = r"[0-9A-HJKMNP-TV-Z]{26}"
BUS_FIELDS = [
    "event_type", "timestamp", "severity", "message", "run_id", "workstream_id", "job_id",
    "task_id", "tool_id", "worker_id", "file_id", "payload",
]  # fmt: skip
LEGACY_FIELDS = ["event_id", "run_id", "ts", "kind", "step_attempt_id", "payload"]
PATTERN_FIELDS = {
    "event_id", "event_type", "timestamp", "job_id", "step_id", "pattern_run_id", "pattern_id",
    "status", "details",
}  # fmt: skip
LEGACY_KINDS = {
    "run_created", "run_started", "step_started", "step_completed", "tool_call_started",
    "tool_call_completed", "run_completed",
}  # fmt: skip
PATTERN_TYPES = {
    f"pattern.{phase}"
    for phase in (
        "selection.started", "selection.resolved", "selection.failed", "template.expanded",
        "validation.started", "validation.completed", "validation.failed", "execution.started",
        "execution.completed", "execution.failed",
    )
}  # fmt: skip
RUN_TERMINAL = {"run_completed", "run_succeeded", "run_failed", "run_quarantined",
                "run_canceled", "run_cancelled"}  # fmt: skip
TERMINAL = {"succeeded", "failed", "partial", "quarantined", "canceled"}


# --- reading a corpus back, independently of the generator ---------------------------------


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0), text
    return moment


def corpus_files(root: Path) -> list[Path]:
    """Every file written, except the job-scoped copies of pattern events."""
    return sorted(p for p in root.rglob("*.jsonl") if "jobs" not in p.parts)


def read_events(root: Path) -> list[tuple[Path, bytes, dict[str, Any]]]:
    return [
        (path, raw, orjson.loads(raw))
        for path in corpus_files(root)
        for raw in path.read_bytes().splitlines()
    ]


def event_run(event: dict[str, Any]) -> str:
    run_id = event.get("run_id") or event["details"]["run_id"]
    assert isinstance(run_id, str)
    return run_id


def event_time(event: dict[str, Any]) -> datetime:
    return parse_time(event.get("timestamp") or event["ts"])


TASK_STATES = {
    "task_created": (0, "pending"), "task_started": (1, "running"),
    "step_started": (1, "running"), "task_progress": (2, "running"),
    "task_completed": (3, "succeeded"), "task_failed": (3, "failed"),
    "task_cancelled": (3, "canceled"), "step_completed": (3, None),
}  # fmt: skip


def project_runs(root: Path) -> dict[str, str]:
    """Run statuses by the contract's §2 rules, read straight from the files."""
    tasks: dict[str, dict[str, tuple[datetime, int, str, str]]] = defaultdict(dict)
    explicit: dict[str, tuple[datetime, str, str | None]] = {}
    declared: dict[str, int] = defaultdict(int)
    started: set[str] = set()
    runs: set[str] = set()
    for _path, raw, event in read_events(root):
        run_id = event_run(event)
        runs.add(run_id)
        kind = event.get("event_type") or event["kind"]
        if kind.startswith("pattern."):
            continue
        when = event_time(event)
        event_id = event.get("event_id") or "h:" + hashlib.blake2b(raw, digest_size=16).hexdigest()
        payload = event["payload"]
        task = event.get("task_id") or event.get("step_attempt_id")
        if kind in {"run_started", "task_started", "step_started"}:
            started.add(run_id)
        if kind == "run_created":
            declared[run_id] = max(payload.get("total_tasks", 0), payload.get("total_steps", 0))
        if kind in TASK_STATES and task:
            rank, status = TASK_STATES[kind]
            if status is None:
                status = payload["status"]
            key = (when, rank, event_id, status)
            if task not in tasks[run_id] or key > tasks[run_id][task]:
                tasks[run_id][task] = key
        if kind in RUN_TERMINAL:
            status = {"run_failed": "failed", "run_cancelled": "canceled"}.get(kind)
            if kind == "run_completed" and payload.get("status") in TERMINAL:
                status = payload["status"]
            if run_id not in explicit or (when, event_id) > explicit[run_id][:2]:
                explicit[run_id] = (when, event_id, status)
    result = {}
    for run_id in runs:
        states = [key[3] for key in tasks[run_id].values()]
        failed, succeeded = states.count("failed"), states.count("succeeded")
        derived = "succeeded" if not failed else "partial" if succeeded else "failed"
        finished = sum(state in {"succeeded", "failed", "canceled", "skipped"} for state in states)
        if run_id in explicit:
            result[run_id] = explicit[run_id][2] or derived
        elif declared[run_id] >= 1 and finished >= declared[run_id]:
            result[run_id] = derived
        else:
            result[run_id] = "running" if run_id in started else "pending"
    return result


# --- shared corpora -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimulationSummary]:
    """A mixed corpus: failures, stalls, legacy runs, patterns, both orchestrator shapes."""
    root = tmp_path_factory.mktemp("corpus")
    return root, simulate(root, runs=150, seed=11, fail_rate=0.4, stall_rate=0.25)


# --- determinism ----------------------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    """Demos, golden tests and benchmarks rely on re-generating exactly the same corpus."""
    first = simulate(tmp_path / "a", runs=25, seed=5)
    second = simulate(tmp_path / "b", runs=25, seed=5)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert first.expected_status == second.expected_status
    assert first.events == second.events and first.bytes_written == second.bytes_written


def test_different_seed_gives_different_corpus(tmp_path: Path) -> None:
    """The seed really drives the generator (no constant output, no hidden fixed state)."""
    simulate(tmp_path / "a", runs=10, seed=1)
    simulate(tmp_path / "b", runs=10, seed=2)
    first = (tmp_path / "a" / "orchestrator" / "events-000.jsonl").read_bytes()
    second = (tmp_path / "b" / "orchestrator" / "events-000.jsonl").read_bytes()
    assert first != second


# --- shapes ---------------------------------------------------------------------------------


def test_every_line_is_valid_json_of_its_shape(corpus: tuple[Path, SimulationSummary]) -> None:
    """Each family must match its upstream shape, or the decoder tests prove nothing."""
    root, summary = corpus
    suffixes = set()
    seen: dict[str, int] = defaultdict(int)
    for path, _raw, event in read_events(root):
        family = path.relative_to(root).parts[0]
        seen[family] += 1
        assert event_run(event) in summary.expected_status
        if family == "orchestrator":
            assert list(event) == BUS_FIELDS
            assert event["severity"] in {"info", "warning", "error"}
            assert isinstance(event["payload"], dict) and event["message"]
            parse_time(event["timestamp"])
            suffixes.add("Z" if event["timestamp"].endswith("Z") else event["timestamp"][-6:])
        elif family == "legacy":
            assert list(event) == LEGACY_FIELDS
            assert re.fullmatch(ULID, event["event_id"]) and re.fullmatch(ULID, event["run_id"])
            assert event["step_attempt_id"] is None or re.fullmatch(ULID, event["step_attempt_id"])
            assert event["kind"] in LEGACY_KINDS and isinstance(event["payload"], dict)
            parse_time(event["ts"])
        else:
            assert family == "patterns" and set(event) == PATTERN_FIELDS
            assert re.fullmatch("EVT-" + ULID, event["event_id"])
            assert re.fullmatch("JOB-" + ULID, event["job_id"])
            assert re.fullmatch("PRUN-" + ULID, event["pattern_run_id"])
            assert re.fullmatch(r"PAT-[A-Z0-9-]+", event["pattern_id"])
            assert event["step_id"] is None or re.fullmatch("STEP-" + ULID, event["step_id"])
            assert event["event_type"] in PATTERN_TYPES
            assert event["status"] in {"in_progress", "success", "failed", "warning", "skipped"}
            assert event["timestamp"].endswith("+00:00")
    assert suffixes == {"Z", "+00:00"}
    assert set(seen) == {"orchestrator", "legacy", "patterns"}
    assert sum(seen.values()) == summary.events


def test_summary_lists_the_files_and_bytes_written(corpus: tuple[Path, SimulationSummary]) -> None:
    """Callers (CLI, benchmark) report these numbers, so they must match the disk."""
    root, summary = corpus
    on_disk = sorted(str(p) for p in root.rglob("*.jsonl"))
    assert summary.files == on_disk
    assert summary.bytes_written == sum(Path(f).stat().st_size for f in summary.files)
    assert summary.lines == sum(len(Path(f).read_bytes().splitlines()) for f in summary.files)
    assert summary.runs == len(summary.expected_status) == 150


def test_timestamps_never_decrease_within_a_file(corpus: tuple[Path, SimulationSummary]) -> None:
    """Files are written in time order (what a tailer sees live), runs interleaved."""
    root, summary = corpus
    latest = None
    for path in sorted(root.rglob("*.jsonl")):
        times = [event_time(orjson.loads(raw)) for raw in path.read_bytes().splitlines()]
        assert times == sorted(times), path
        latest = max(latest or times[-1], times[-1])
    assert latest is not None
    assert latest == parse_time(summary.last_event_time)


def test_concurrent_runs_interleave(corpus: tuple[Path, SimulationSummary]) -> None:
    """Runs overlap in time, so a processor must keep many runs open at once."""
    root, _summary = corpus
    first_file = root / "orchestrator" / "events-000.jsonl"
    runs = [orjson.loads(raw)["run_id"] for raw in first_file.read_bytes().splitlines()]
    switches = sum(a != b for a, b in itertools.pairwise(runs))
    assert switches > len(set(runs)) * 5


def test_orchestrator_files_roll_over(tmp_path: Path) -> None:
    """Big corpora spread over numbered files; a run may span two of them."""
    simulate(tmp_path, runs=20, seed=3, roll_lines=400)
    files = sorted((tmp_path / "orchestrator").glob("events-*.jsonl"))
    assert [p.name for p in files] == [f"events-{i:03d}.jsonl" for i in range(len(files))]
    assert len(files) >= 3
    lines = [p.read_bytes().splitlines() for p in files]
    assert all(len(chunk) == 400 for chunk in lines[:-1]) and 0 < len(lines[-1]) <= 400
    runs = [{orjson.loads(raw)["run_id"] for raw in chunk} for chunk in lines]
    assert any(a & b for a, b in itertools.pairwise(runs))


# --- pattern events -------------------------------------------------------------------------


def test_job_files_repeat_the_global_pattern_lines(corpus: tuple[Path, SimulationSummary]) -> None:
    """As upstream: each job file holds the same lines (same event_id) as the global file."""
    root, _summary = corpus
    by_job: dict[str, list[bytes]] = defaultdict(list)
    for raw in (root / "patterns" / "pattern_events.jsonl").read_bytes().splitlines():
        by_job[orjson.loads(raw)["job_id"]].append(raw)
    job_dirs = sorted((root / "patterns" / "jobs").iterdir())
    assert {d.name for d in job_dirs} == set(by_job)
    for job_dir in job_dirs:
        assert (job_dir / "pattern_events.jsonl").read_bytes().splitlines() == by_job[job_dir.name]


def test_pattern_runs_look_like_upstream(corpus: tuple[Path, SimulationSummary]) -> None:
    """Shared timestamps, durations, error messages and null steps all occur, as in the samples."""
    root, _summary = corpus
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for raw in (root / "patterns" / "pattern_events.jsonl").read_bytes().splitlines():
        event = orjson.loads(raw)
        runs[event["pattern_run_id"]].append(event)
    outcomes = set()
    for events in runs.values():
        first = events[0]
        assert first["event_type"] == "pattern.selection.started"
        assert len({e["job_id"] for e in events}) == len({e["step_id"] for e in events}) == 1
        for event in events:
            if event["event_type"] in {"pattern.execution.completed", "pattern.execution.failed"}:
                assert isinstance(event["details"]["duration_seconds"], float)
            if event["status"] == "failed":
                assert event["details"]["error_message"]
            outcomes.add(event["event_type"].rsplit(".", 1)[1])
    assert any(len({e["timestamp"] for e in events}) < len(events) for events in runs.values())
    assert any(events[0]["step_id"] is None for events in runs.values())
    assert {"completed", "failed"} <= outcomes


# --- expected statuses ----------------------------------------------------------------------


def test_expected_status_matches_the_contract(corpus: tuple[Path, SimulationSummary]) -> None:
    """expected_status is the oracle for projection tests, so it must follow §2 exactly."""
    root, summary = corpus
    assert project_runs(root) == summary.expected_status
    assert {"succeeded", "failed", "partial", "running", "pending"} <= set(
        summary.expected_status.values()
    )


def test_corpus_covers_the_tricky_endings(corpus: tuple[Path, SimulationSummary]) -> None:
    """Implicit completions, retries and run_completed without status must all be exercised."""
    root, summary = corpus
    ended_explicitly = set()
    starts: dict[tuple[str, str], int] = defaultdict(int)
    bare_completion = False
    for _path, _raw, event in read_events(root):
        kind = event.get("event_type") or event.get("kind")
        if kind in RUN_TERMINAL:
            ended_explicitly.add(event["run_id"])
            bare_completion |= kind == "run_completed" and "status" not in event["payload"]
        if kind == "task_started":
            starts[(event["run_id"], event["task_id"])] += 1
    finished = {run for run, status in summary.expected_status.items() if status in TERMINAL}
    assert finished - ended_explicitly, "no run completed implicitly"
    assert max(starts.values()) >= 2, "no task was retried"
    assert bare_completion


def test_stalled_runs_go_quiet_two_hours_before_the_end(
    corpus: tuple[Path, SimulationSummary],
) -> None:
    """Stall detection needs runs that stop without a terminal event, long before the end."""
    root, summary = corpus
    assert summary.stalled_runs
    end = parse_time(summary.last_event_time)
    last_seen: dict[str, datetime] = {}
    kinds: dict[str, set[str]] = defaultdict(set)
    for _path, _raw, event in read_events(root):
        run_id, when = event_run(event), event_time(event)
        if run_id not in last_seen or when > last_seen[run_id]:
            last_seen[run_id] = when
        kinds[run_id].add(event.get("event_type") or event["kind"])
    for run_id in summary.stalled_runs:
        assert not kinds[run_id] & RUN_TERMINAL
        assert summary.expected_status[run_id] in {"running", "pending"}
        assert end - last_seen[run_id] >= timedelta(hours=2)
    unfinished = {r for r, s in summary.expected_status.items() if s not in TERMINAL}
    assert unfinished == set(summary.stalled_runs)


def test_no_failures_when_fail_rate_is_zero(tmp_path: Path) -> None:
    """fail_rate=0 must give a clean corpus (retried tasks still end up succeeded)."""
    summary = simulate(tmp_path, runs=60, seed=4, fail_rate=0.0)
    statuses = set(summary.expected_status.values())
    assert not statuses & {"failed", "partial"}
    assert "succeeded" in statuses


def test_every_finished_run_fails_when_fail_rate_is_one(tmp_path: Path) -> None:
    """fail_rate=1 puts a failing task in every run, so none may end succeeded or canceled."""
    summary = simulate(tmp_path, runs=60, seed=4, fail_rate=1.0)
    for run_id, status in summary.expected_status.items():
        if run_id not in summary.stalled_runs:
            assert status in {"failed", "partial"}, run_id
    assert project_runs(tmp_path) == summary.expected_status


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    fail_rate=st.floats(0, 1),
    stall_rate=st.floats(0, 1),
    low=st.integers(1, 5),
    spread=st.integers(0, 4),
)
def test_expected_status_holds_for_any_parameters(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    fail_rate: float,
    stall_rate: float,
    low: int,
    spread: int,
) -> None:
    """The oracle and the stall guarantee hold at the extremes too (1 task, all stalled, ...)."""
    root = tmp_path_factory.mktemp("any")
    summary = simulate(root, runs=6, seed=seed, fail_rate=fail_rate, stall_rate=stall_rate,
                       tasks_per_run=(low, low + spread))  # fmt: skip
    assert project_runs(root) == summary.expected_status
    end = parse_time(summary.last_event_time)
    for _path, _raw, event in read_events(root):
        if event_run(event) in summary.stalled_runs:
            assert end - event_time(event) >= timedelta(hours=2)


def test_simulate_rejects_impossible_arguments(tmp_path: Path) -> None:
    """Library callers get a clear error instead of a silently odd corpus."""
    with pytest.raises(ValueError, match="runs"):
        simulate(tmp_path, runs=0)
    with pytest.raises(ValueError, match="fail_rate"):
        simulate(tmp_path, fail_rate=1.5)
    with pytest.raises(ValueError, match="tasks_per_run"):
        simulate(tmp_path, tasks_per_run=(5, 2))
    assert not any(tmp_path.iterdir())


# --- command line ---------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="runwatch simulate")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_writes_a_corpus_and_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runwatch simulate` succeeds with exit 0 and a one-line summary."""
    assert run(parse("--out", str(tmp_path), "--runs", "4", "--seed", "2", "--tasks", "2-3")) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "4 runs" in out and "MB" in out
    assert (tmp_path / "orchestrator" / "events-000.jsonl").is_file()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (("--fail-rate", "1.5"), "--fail-rate"),
        (("--stall-rate", "-0.1"), "--stall-rate"),
        (("--tasks", "9-3"), "--tasks"),
        (("--tasks", "many"), "--tasks"),
        (("--runs", "0"), "--runs"),
    ],
)
def test_run_rejects_bad_options_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, str], option: str
) -> None:
    """Bad usage exits 2 with a message naming the option, and writes nothing."""
    assert run(parse("--out", str(tmp_path / "out"), *argv)) == 2
    captured = capsys.readouterr()
    assert option in captured.err and not captured.out
    assert not (tmp_path / "out").exists()
