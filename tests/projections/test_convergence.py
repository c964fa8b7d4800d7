"""The projection is a function of the *set* of events (contract §2): arrival order, the way
events are spread over files, duplicates and cache evictions must not change a single row."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import replay_into, snapshot

ORCHESTRATOR_TYPES = [
    "run_created",
    "run_started",
    "run_completed",
    "run_failed",
    "run_succeeded",
    "run_cancelled",
    "task_created",
    "task_started",
    "task_progress",
    "task_completed",
    "task_failed",
    "task_skipped",
    "step_started",
    "step_completed",
    "step_failed",
    "workstream_started",
    "workstream_completed",
    "job_paused",
    "tool_call_started",
    "note",
]
PATTERN_TYPES = [
    "pattern.selection.started",
    "pattern.selection.resolved",
    "pattern.template.expanded",
    "pattern.validation.started",
    "pattern.validation.failed",
    "pattern.execution.started",
    "pattern.execution.completed",
    "pattern.execution.failed",
]


@st.composite
def orchestrator_event(draw: st.DrawFn) -> dict[str, Any]:
    etype = draw(st.sampled_from(ORCHESTRATOR_TYPES))
    event: dict[str, Any] = {
        "event_type": etype,
        # few distinct seconds, so equal timestamps (and rank/id tie-breaks) are common
        "timestamp": f"2026-01-05T08:00:{draw(st.integers(0, 9)):02d}Z",
        "run_id": draw(st.sampled_from(["R1", "R2", "R3"])),
        "severity": draw(st.sampled_from(["info", "error"])),
        "payload": {},
    }
    if draw(st.booleans()):
        event["task_id"] = draw(st.sampled_from(["a", "b", "c"]))
    if draw(st.booleans()):
        event["workstream_id"] = draw(st.sampled_from(["W1", "W2"]))
    if etype == "run_created":
        event["payload"]["total_tasks"] = draw(st.integers(1, 3))
    if etype in ("run_completed", "step_completed"):
        event["payload"]["status"] = draw(st.sampled_from(["succeeded", "failed", "bogus"]))
    return event


@st.composite
def pattern_event(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "event_type": draw(st.sampled_from(PATTERN_TYPES)),
        "timestamp": f"2026-01-05T08:00:{draw(st.integers(0, 9)):02d}Z",
        "pattern_run_id": draw(st.sampled_from(["P1", "P2"])),
        "pattern_id": draw(st.sampled_from(["PAT-A", "PAT-B"])),
        "job_id": "J1",
        "status": draw(st.sampled_from(["in_progress", "success", "failed"])),
        "details": {"duration_seconds": draw(st.integers(1, 9)), "error": "boom"},
    }


@st.composite
def corpus(draw: st.DrawFn) -> list[bytes]:
    events = draw(
        st.lists(st.one_of(orchestrator_event(), pattern_event()), min_size=8, max_size=60)
    )
    lines = []
    for number, event in enumerate(events):
        if draw(st.booleans()):
            event["event_id"] = f"E{number:04d}"  # else the id is derived from the bytes
        event["n"] = number  # keeps lines distinct, as real events are
        lines.append(orjson.dumps(event))
    return lines


def write_files(folder: Path, groups: list[list[bytes]]) -> Path:
    folder.mkdir(parents=True)
    for index, lines in enumerate(groups):
        (folder / f"part-{index}.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    return folder


def converged(db: Path) -> dict[str, Any]:
    rows = snapshot(db)
    rows.pop("dead_letters")
    return rows


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lines=corpus(),
    seed=st.integers(0, 2**32),
    parts=st.integers(1, 4),
    duplicates=st.integers(0, 20),
    cache=st.integers(1, 4),
)
def test_shuffle_split_duplicate_converge(
    tmp_path_factory: Any, lines: list[bytes], seed: int, parts: int, duplicates: int, cache: int
) -> None:
    """Same set of events, any arrangement: identical rows in every table."""
    base = tmp_path_factory.mktemp("conv")
    reference = base / "ref.db"
    replay_into(reference, write_files(base / "in-order", [lines]))

    rng = random.Random(seed)
    shuffled = lines[:]
    rng.shuffle(shuffled)
    groups: list[list[bytes]] = [[] for _ in range(parts)]
    for line in shuffled:
        groups[rng.randrange(parts)].append(line)
    for _ in range(duplicates):
        groups[rng.randrange(parts)].append(rng.choice(lines))
    for group in groups:
        rng.shuffle(group)
    other = base / "other.db"
    summary = replay_into(other, write_files(base / "arranged", groups), cache_groups=cache)

    assert converged(other) == converged(reference)
    assert summary.tally.accepted == len(lines)
    assert summary.tally.duplicate == duplicates


def test_replay_twice_and_reversed_give_identical_tables(tmp_path: Path) -> None:
    """Replaying the same files again, or in reverse order, reproduces every row."""
    rng = random.Random(7)
    lines = [
        orjson.dumps(
            {
                "event_type": rng.choice(ORCHESTRATOR_TYPES),
                "n": i,
                "timestamp": f"2026-01-05T08:{rng.randrange(60):02d}:00Z",
                "run_id": f"R{rng.randrange(20)}",
                "task_id": rng.choice("abcd"),
                "payload": {"total_tasks": 3, "status": "failed"},
            }
        )
        for i in range(2000)
    ]
    folder = write_files(tmp_path / "in", [lines[:700], lines[700:1500], lines[1500:]])
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    replay_into(first, folder)
    replay_into(first, folder)
    reverse = [str(p) for p in sorted(folder.iterdir(), reverse=True)]
    replay_into(second, *reverse, cache_groups=3)
    assert snapshot(first)["runs"]
    assert converged(first) == converged(second)
