"""The projection is a function of the *set* of events (contract §2): arrival order, the way
events are spread over files, duplicates and cache evictions must not change a single row.

The bulk of the examples fold in memory (`apply` and `merge` of the pure states, thousands
of cases in seconds); a few go through a real replay into SQLite, so the rows the store
writes are held to the same promise."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import replay_into, snapshot
from runwatch.projections import ORCHESTRATOR, Event, OrphanEvents, PatternRunState, RunState
from runwatch.projections.runs import TASK_STATUSES, TASK_TERMINAL
from runwatch.stream.core.decode import decode

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
RUNLESS_TYPES = frozenset({"note", "tool_call_started"})
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


def orchestrator_event(rng: random.Random) -> dict[str, Any]:
    etype = rng.choice(ORCHESTRATOR_TYPES)
    event: dict[str, Any] = {
        "event_type": etype,
        # few distinct seconds, so equal timestamps (and rank/id tie-breaks) are common
        "timestamp": f"2026-01-05T08:00:{rng.randrange(10):02d}Z",
        "run_id": rng.choice(["R1", "R2", "R3"]),
        "severity": rng.choice(["info", "error"]),
        "payload": {},
    }
    if etype in RUNLESS_TYPES and rng.random() < 0.5:
        del event["run_id"]  # belongs to no run: the orphan events
    if rng.random() < 0.5:
        event["task_id"] = rng.choice(["a", "b", "c"])
    if rng.random() < 0.5:
        event["workstream_id"] = rng.choice(["W1", "W2"])
    if etype == "run_created":
        event["payload"]["total_tasks"] = rng.randint(1, 3)
    if etype in ("run_completed", "step_completed"):
        event["payload"]["status"] = rng.choice(["succeeded", "failed", "bogus"])
    return event


def pattern_event(rng: random.Random) -> dict[str, Any]:
    return {
        "event_type": rng.choice(PATTERN_TYPES),
        "timestamp": f"2026-01-05T08:00:{rng.randrange(10):02d}Z",
        "pattern_run_id": rng.choice(["P1", "P2"]),
        "pattern_id": rng.choice(["PAT-A", "PAT-B"]),
        "job_id": "J1",
        "status": rng.choice(["in_progress", "success", "failed"]),
        "details": {"duration_seconds": rng.randint(1, 9), "error": "boom"},
    }


def generate(seed: int, size: int) -> list[bytes]:
    """`size` distinct event lines, a mix of both families, from a seed. Hypothesis draws
    only the seed and the size (and shrinks both): drawing every field through it costs
    thirty times more, which would allow hundreds of examples instead of thousands."""
    rng = random.Random(seed)
    lines = []
    for number in range(size):
        event = orchestrator_event(rng) if rng.random() < 0.7 else pattern_event(rng)
        if rng.random() < 0.5:
            event["event_id"] = f"E{number:04d}"  # else the id is derived from the bytes
        event["n"] = number  # keeps lines distinct, as real events are
        lines.append(orjson.dumps(event))
    return lines


def corpus() -> st.SearchStrategy[list[bytes]]:
    return st.builds(generate, st.integers(0, 2**32), st.integers(8, 60))


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
    max_examples=12,
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
    """Same set of events, any arrangement, through a real replay: identical rows in every
    table (a few examples; the in-memory properties below take the thousands)."""
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


# --- in memory: the states' apply and merge ------------------------------------------------

State = RunState | PatternRunState | OrphanEvents


def group_key(event: Event) -> str:
    """The group an event folds into, as the processor keys it."""
    if event.family == ORCHESTRATOR:
        return "o:" if event.run_id is None else "r:" + event.run_id
    return "p:" + str(event.task)


def new_state(key: str) -> State:
    kind, _, name = key.partition(":")
    if kind == "r":
        return RunState(name)
    if kind == "p":
        return PatternRunState(name)
    return OrphanEvents()


def fold(events: list[Event]) -> dict[str, State]:
    states: dict[str, State] = {}
    for event in events:
        key = group_key(event)
        state = states.get(key)
        if state is None:
            state = states[key] = new_state(key)
        state.apply(event)
    return states


def merge_into(target: dict[str, State], partial: dict[str, State]) -> None:
    for key, state in partial.items():
        mine = target.get(key)
        if mine is None:
            target[key] = state
        else:
            mine.merge(state)  # type: ignore[arg-type]  # same key: same kind of state


def rows(states: dict[str, State]) -> dict[str, Any]:
    """Every row the states give, and the event ids they hold, keyed by group."""
    out: dict[str, Any] = {}
    for key, state in sorted(states.items()):
        if isinstance(state, RunState):
            out[key] = (state.row(), state.task_rows(), state.workstream_rows(), state.seen)
        elif isinstance(state, PatternRunState):
            out[key] = (state.row(), state.seen)
        else:
            out[key] = state.seen
    return out


def decode_all(lines: list[bytes]) -> list[Event]:
    events = [decode(line) for line in lines]
    assert all(isinstance(event, Event) for event in events), events
    return events  # type: ignore[return-value]  # checked just above


def decoded() -> st.SearchStrategy[list[Event]]:
    return corpus().map(decode_all)


def arrange(
    events: list[Event], rng: random.Random, parts: int, duplicates: int
) -> list[list[Event]]:
    """The events shuffled, some repeated (in the same chunk or another), in `parts` chunks."""
    arranged = events + [rng.choice(events) for _ in range(duplicates)]
    rng.shuffle(arranged)
    chunks: list[list[Event]] = [[] for _ in range(parts)]
    for event in arranged:
        chunks[rng.randrange(parts)].append(event)
    return chunks


PROPERTY = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32)
REPEATS = st.integers(0, 30)
"""How many events arrive a second time."""


@PROPERTY
@given(events=decoded(), seed=SEEDS, duplicates=REPEATS)
def test_any_order_with_duplicates_folds_to_the_same_rows(
    events: list[Event], seed: int, duplicates: int
) -> None:
    """`apply` is commutative and idempotent: a permutation with repeats changes nothing."""
    [arranged] = arrange(events, random.Random(seed), 1, duplicates)
    assert rows(fold(arranged)) == rows(fold(events))


@PROPERTY
@given(
    events=decoded(),
    seed=SEEDS,
    parts=st.integers(2, 6),
    duplicates=REPEATS,
)
def test_chunks_merged_in_any_order_give_the_sequential_fold(
    events: list[Event], seed: int, parts: int, duplicates: int
) -> None:
    """`merge` is the join of the lattice: chunks folded apart (as replay workers do) and
    merged pairwise in a random tree give exactly the rows of one sequential fold."""
    rng = random.Random(seed)
    partials = [fold(chunk) for chunk in arrange(events, rng, parts, duplicates)]
    while len(partials) > 1:
        left = partials.pop(rng.randrange(len(partials)))
        right = partials.pop(rng.randrange(len(partials)))
        merge_into(left, right)
        partials.append(left)
    assert rows(partials[0]) == rows(fold(events))


@PROPERTY
@given(events=decoded(), seed=SEEDS)
def test_merging_a_state_into_itself_or_a_copy_changes_nothing(
    events: list[Event], seed: int
) -> None:
    """Idempotence of `merge`: the same partial state twice is the state once."""
    rng = random.Random(seed)
    shuffled = events[:]
    rng.shuffle(shuffled)
    merged = fold(events)
    merge_into(merged, fold(shuffled))
    merge_into(merged, fold(events[: rng.randrange(len(events) + 1)]))
    assert rows(merged) == rows(fold(events))


def test_a_runless_event_seen_again_after_eviction_is_a_duplicate(tmp_path: Path) -> None:
    """The runless events' group keeps no fold state, only event ids: reloaded after an
    eviction it must still know them (found by the properties above, once they made
    runless events)."""
    note = orjson.dumps({"event_id": "N1", "event_type": "note", "timestamp": "2026-01-05T08:00Z"})
    runs = [
        orjson.dumps({"event_type": "run_started", "timestamp": "2026-01-05T08:00Z", "run_id": r})
        for r in ("R1", "R2", "R3")
    ]
    folder = write_files(tmp_path / "in", [[note, *runs], [note]])
    summary = replay_into(tmp_path / "rw.db", folder, cache_groups=1)
    assert (summary.tally.accepted, summary.tally.duplicate) == (4, 1)


# --- the counts a run keeps in step --------------------------------------------------------


def scanned(state: RunState) -> dict[str, Any]:
    """What the counts stand for, found the slow way: by a scan of every task."""
    tasks = state.tasks.values()
    counts = {s: sum(t.status == s for t in tasks) for s in TASK_STATUSES}
    workstreams = {
        ws: {s: sum(t.workstream == ws and t.status == s for t in tasks) for s in TASK_STATUSES}
        for ws in state.workstreams
    }
    ended = [t.key[0] for t in tasks if t.key and t.status in TASK_TERMINAL]
    status: tuple[str, int | None] = ("running" if state.started_at else "pending", None)
    if state.explicit_key is not None:
        status = (state.explicit_status or derived(counts), state.explicit_key[0])
    elif 1 <= state.declared_total <= len(ended):
        status = (derived(counts), max(ended))
    return {"counts": counts, "workstreams": workstreams, "status": status}


def kept(state: RunState) -> dict[str, Any]:
    zero = dict.fromkeys(TASK_STATUSES, 0)
    return {
        "counts": state.counts,
        "workstreams": {ws: state.workstream_counts.get(ws, zero) for ws in state.workstreams},
        "status": state.status(),
    }


def derived(counts: dict[str, int]) -> str:
    if not counts["failed"]:
        return "succeeded"
    return "partial" if counts["succeeded"] else "failed"


def stored(state: RunState) -> RunState:
    """The state as the processor saves it (header and tasks apart) and reads it back."""
    state.keep_error_count_only()
    header = orjson.loads(orjson.dumps(state.header()))
    header["tasks"] = {k: orjson.loads(orjson.dumps(t.to_list())) for k, t in state.tasks.items()}
    return RunState.from_dict(state.run_id, header, set(state.seen))


@PROPERTY
@given(
    events=decoded(),
    seed=SEEDS,
    parts=st.integers(1, 6),
    duplicates=REPEATS,
)
def test_counts_stay_in_step_through_apply_merge_and_restore(
    events: list[Event], seed: int, parts: int, duplicates: int
) -> None:
    """The counts the rows come from equal a scan of the tasks after any mix of `apply`,
    `merge` and a save and restore in between (as an evicted run is), and the error count
    is the number of distinct error events: no row needs a pass over every task."""
    rng = random.Random(seed)
    chunks = arrange(events, rng, parts, duplicates)
    runs: dict[str, RunState] = {}
    for chunk in chunks:
        partial = fold(chunk)
        for key, state in partial.items():
            if not isinstance(state, RunState):
                continue
            mine = runs.get(key)
            if mine is None or rng.random() < 0.3:  # applied one by one into the stored run
                mine = runs[key] = stored(mine) if mine is not None else RunState(state.run_id)
                for event in chunk:
                    if group_key(event) == key:
                        mine.apply(event)
            else:
                mine.merge(state)
            if rng.random() < 0.5:
                runs[key] = stored(mine)
            assert kept(runs[key]) == scanned(runs[key])
    expected = fold(events)
    for key, state in runs.items():
        errors = {e.id for e in events if group_key(e) == key and is_error(e)}
        assert state.errors == len(errors)
        assert rows({key: state}) == rows({key: expected[key]})


def is_error(event: Event) -> bool:
    return event.type.endswith("_failed") or event.severity in ("error", "critical")
