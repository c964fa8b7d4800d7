"""The fold's unit of work: one run, one pattern run, or one day of runless events, with
the state it folds into and the index entries it has yet to write."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson

from runwatch.projections import DerivedEvent, Event, OrphanEvents, PatternRunState, RunState
from runwatch.projections.alerts import Trigger
from runwatch.projections.events import format_time
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.keys import PATTERN, RUN, GroupKey, IndexEntry, dump_index, index_ids
from runwatch.stream.core.blobs import dumps_exact
from runwatch.stream.core.tally import Tally

if TYPE_CHECKING:
    from runwatch.stream.core.retire import Retired

State = RunState | PatternRunState | OrphanEvents
Observe = Callable[[Event, str, bool], None]
"""Called with each decoded event, its source and whether it was new to this fold."""
Refold = Callable[[list[IndexEntry]], State]
"""Folds a group's state anew from some of its events, read back from their files."""


class HandOver(NamedTuple):
    """What a store-less fold hands over: the groups leaving it as rows, states and index
    entries, their derived events, open runs (last event time, stalled) and new events per
    group key, and what happened to the lines and which alert rules they triggered. Of the
    groups, the `sequels` go on from their part handed over before (the fold kept them in
    between), and the fold keeps folding those `kept`."""

    changes: Changes
    derived: list[DerivedEvent]
    open_runs: dict[str, tuple[int, bool]]
    events: dict[str, int]
    tally: Tally
    triggers: list[Trigger]
    sequels: set[str]
    kept: set[str]


class PendingIndex:
    """A group's index entries not yet written: the event ids, and each event's source id,
    offset and length side by side in one array of integers. A tuple per event took 144
    bytes (the tuple and two integers), for every event of every run in flight; this takes
    32, and gives the cycle collector nothing to walk."""

    __slots__ = ("ids", "places")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.places = array("q")

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, event_id: str, source_id: int, offset: int, length: int) -> None:
        self.ids.append(event_id)
        self.places.extend((source_id, offset, length))

    def extend(self, entries: Iterable[IndexEntry]) -> None:
        for entry in entries:
            self.add(*entry)

    def dump(self) -> bytes:
        """The entries as the store keeps them (`dump_index`)."""
        places = self.places
        return dump_index(
            list(zip(self.ids, places[0::3], places[1::3], places[2::3], strict=True))
        )


class Group:
    """A unit of folding: one run, one pattern run, or the events that belong to neither."""

    __slots__ = ("blobbed", "dirty", "index_blobs", "key", "new_index", "retired", "state")

    def __init__(self, key: GroupKey, state: State) -> None:
        self.key = key
        self.state = state
        self.new_index = PendingIndex()
        self.index_blobs: list[bytes] = []  # index entries already serialised
        self.blobbed = 0  # how many entries `index_blobs` hold
        self.dirty = False
        self.retired: Retired | None = None  # a big run's finished tasks out of memory

    def take_index(self) -> bytes:
        """The index entries not yet written, serialised; the group holds none after."""
        blob = self.new_index.dump()
        self.new_index = PendingIndex()
        return blob


def new_state(key: GroupKey, seen: set[str] | None = None) -> State:
    if key.kind == RUN:
        return RunState(key.name, seen)
    if key.kind == PATTERN:
        return PatternRunState(key.name, seen)
    return OrphanEvents(seen)


def write_run(changes: Changes, key: str, state: RunState, current: tuple[str, int | None]) -> None:
    """Put a run's row, the rows and states of its changed tasks and workstreams, and its
    header into `changes`; nothing is left marked changed."""
    changes.runs.append(state.row(current))
    dirty = state.dirty_tasks
    changes.tasks.extend(state.task_rows(dirty))
    changes.task_states.extend(
        (key, task_id, dumps_exact(state.saved_task(task_id))) for task_id in dirty
    )
    dirty.clear()
    changes.workstreams.extend(state.workstream_rows(state.dirty_workstreams))
    state.dirty_workstreams.clear()
    changes.states.append((key, dumps_exact(state.header())))


def track_open(
    open_runs: dict[str, tuple[int, bool]], state: RunState, terminal: bool
) -> list[DerivedEvent]:
    """Keep `open_runs` (last event time, stalled) in step with a run just written; a stalled
    run that has ended is no longer stalled, and says so (RUN_RECOVERED)."""
    if terminal:
        open_runs.pop(state.run_id, None)
        if state.stalled:
            state.stalled = False
            at = state.last_event_at
            data = {"reason": "completed", "last_event_at": format_time(at)}
            return [DerivedEvent("RUN_RECOVERED", at or 0, state.run_id, data)]
    elif state.abandoned:
        open_runs.pop(state.run_id, None)
    else:
        assert state.last_event_at is not None
        open_runs[state.run_id] = (state.last_event_at, state.stalled)
    return []


def orphan_day(time: int) -> str:
    """Runless events are grouped by the UTC day of their time, so each group stays small
    and leaves the cache once its day is over. Ids identify content (time included), so a
    repeat always lands in the group of its first copy."""
    return str(time // 86_400_000_000)


def finished(state: State) -> bool:
    if isinstance(state, RunState):
        return state.is_terminal()
    if isinstance(state, PatternRunState):
        return state.raw_status != "in_progress"
    return False


def settled(state: State) -> bool:
    """Finished for good: a run that is terminal only implicitly (its tasks are) may still
    get its explicit end, which would change what is observed of it."""
    if isinstance(state, RunState):
        return state.explicit_key is not None and state.is_terminal()
    return finished(state)


def restore(key: GroupKey, saved: dict[str, Any] | None, seen: set[str]) -> State:
    if saved is not None and key.kind == RUN:
        return RunState.from_dict(key.name, saved, seen)
    if saved is not None and key.kind == PATTERN:
        return PatternRunState.from_dict(key.name, saved, seen)
    return new_state(key, seen)


HELD_EVENTS: Final = 20_000
"""Unwritten index entries past which a group is written even by a commit that writes only
what eviction flushed: a giant run lets go of them, and its flush costs only what changed."""


def holds_many_events(group: Group) -> bool:
    return len(group.new_index) + group.blobbed >= HELD_EVENTS


def from_parts(
    key: GroupKey, header: bytes, tasks: Sequence[tuple[str, bytes]], seen: set[str]
) -> State:
    """A state handed over as its saved parts: the header (or a pattern run's whole state)
    and, for a run, one blob per task."""
    saved = orjson.loads(header)
    if tasks:
        saved["tasks"] = {task_id: orjson.loads(blob) for task_id, blob in tasks}
    return restore(key, saved, seen)


class Adopted(NamedTuple):
    """What `Processor.adopt` took of a group since the last commit, until the commit writes
    it: its latest state, the index entries and task states of every part (a later task
    state wins), and whether earlier parts are in the store already."""

    state: bytes
    indexes: list[bytes]
    tasks: list[tuple[str, bytes]]
    stored: bool


def write_adopted(
    changes: Changes,
    key: GroupKey,
    state: bytes,
    index: bytes,
    rows: bytes,
    tasks: Sequence[tuple[str, bytes]],
) -> None:
    """Put a group a worker folded and flushed into `changes` as it is: its state, task
    states, index entries and rows (orjson: runs, tasks, workstreams, pattern runs; empty
    if the worker wrote them)."""
    if key.kind == RUN:  # only a merge needs the error ids: the store keeps the count
        header = orjson.loads(state)
        header.pop("error_ids", None)
        changes.states.append((key.text, dumps_exact(header)))
        changes.task_states.extend((key.text, task_id, blob) for task_id, blob in tasks)
    else:
        changes.states.append((key.text, state))
    changes.index.append((key.text, index))
    for table, table_rows in zip(
        (changes.runs, changes.tasks, changes.workstreams, changes.pattern_runs),
        orjson.loads(rows) if rows else ([], [], [], []),
        strict=True,
    ):
        table.extend(table_rows)


def from_adopted(
    key: GroupKey, adopted: Adopted, stored: tuple[dict[str, Any] | None, set[str]] | None
) -> State:
    """The state of a group adopted since the last commit, over what the store holds of it
    (`stored`, as `load_group` gives it) when earlier parts were committed."""
    seen = set().union(*map(index_ids, adopted.indexes))
    saved = orjson.loads(adopted.state)
    tasks = {} if stored is None or stored[0] is None else stored[0].get("tasks", {})
    tasks.update((task_id, orjson.loads(blob)) for task_id, blob in adopted.tasks)
    if tasks:
        saved["tasks"] = tasks
    return restore(key, saved, seen if stored is None else seen | stored[1])
