"""The fold loop shared by replay and the live tailer: lines → decode → fold → one commit.

Memory is bounded by the groups being worked on, not by history: a group (a run, a pattern
run, or the runless events) lives in an LRU cache; an evicted one is written out with the
next commit and read back from the store if its events keep coming. A group's saved state
comes back with the ids of its events, so a duplicate is recognised however late it arrives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from runwatch.projections import (
    ORCHESTRATOR,
    RUN_TERMINAL,
    DerivedEvent,
    Event,
    OrphanEvents,
    PatternRunState,
    RunState,
    detect_stalls,
)
from runwatch.projections.alerts import RuleSet, Trigger
from runwatch.sinks.store import Store
from runwatch.sinks.store.api import Changes, Checkpoint, DeadLetter
from runwatch.stream.core.blobs import dumps_exact
from runwatch.stream.core.decisions import Decisions
from runwatch.stream.core.decode import RAW_KEEP, Rejection, decode, parse_time
from runwatch.stream.core.lines import Lines

State = RunState | PatternRunState | OrphanEvents
IndexEntry = tuple[str, int, int, int]
"""(event id, source id, byte offset, length): where an accepted event's bytes are."""
Observe = Callable[[Event, str, bool], None]
"""Called with each decoded event, its source and whether it was new to this fold."""


class Group:
    """A unit of folding: one run, one pattern run, or the events that belong to neither."""

    __slots__ = ("dirty", "index_blobs", "key", "new_index", "state")

    def __init__(self, key: str, state: State) -> None:
        self.key = key
        self.state = state
        self.new_index: list[IndexEntry] = []
        self.index_blobs: list[bytes] = []  # index entries already serialised by a worker
        self.dirty = False


def new_state(key: str, seen: set[str] | None = None) -> State:
    kind, _, name = key.partition(":")
    if kind == "r":
        return RunState(name, seen)
    if kind == "p":
        return PatternRunState(name, seen)
    return OrphanEvents(seen)


@dataclass(slots=True)
class Tally:
    """What happened to the input lines since the store was created."""

    accepted: int = 0
    duplicate: int = 0
    blank: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def add(self, other: Tally) -> None:
        self.accepted += other.accepted
        self.duplicate += other.duplicate
        self.blank += other.blank
        for reason, n in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n

    def counters(self) -> dict[str, int]:
        out = {
            "events_accepted": self.accepted,
            "events_duplicate": self.duplicate,
            "lines_blank": self.blank,
        }
        out.update({f"rejected.{reason}": n for reason, n in self.rejected.items()})
        return {k: v for k, v in out.items() if v}


class Processor:
    """Folds decoded events into groups and commits them with the checkpoints they cover."""

    def __init__(
        self,
        store: Store | None,
        *,
        stall_after_s: float,
        max_line_bytes: int,
        forget_after_s: float | None = None,
        wall_clock: Callable[[], str],
        max_groups: int = 4096,
        known_groups: set[str] | None = None,
        rules: RuleSet | None = None,
        decisions: Decisions | None = None,
        observe: Observe | None = None,
    ) -> None:
        """Without a store the processor only folds in memory (a replay worker's chunk).
        `known_groups`, when given, is every group key the store holds (a fresh store: empty),
        which spares a lookup for each new group. With `rules`, new input events that match
        an alert rule become `triggers`; `decisions` turns them into outbox entries at commit.
        `observe`, when given, sees every decoded event (offline analysis); else it costs
        nothing. An open run silent longer than `forget_after_s` is abandoned: it leaves
        `open_runs` and the cache until an event of it arrives again."""
        self.store = store
        self.rules = rules
        self.observe = observe
        self.triggers: list[Trigger] = []
        self.decisions = decisions
        self.outboxed = 0
        self.known_groups = known_groups
        self.stall_after_us = int(stall_after_s * 1_000_000)
        self.forget_after_us = None if forget_after_s is None else int(forget_after_s * 1e6)
        self.max_line_bytes = max_line_bytes
        self.wall_clock = wall_clock
        self.max_groups = max_groups
        self.cache: OrderedDict[str, Group] = OrderedDict()
        self.limbo: dict[str, Group] = {}
        self.changes = Changes()
        self.pending = Tally()
        self.total = Tally()
        self.derived: list[DerivedEvent] = []
        self.max_event_time = 0
        self.open_runs: dict[str, tuple[int, bool]] = (
            {}
            if store is None
            else {
                run_id: (parse_time(last), bool(stalled))
                for run_id, last, stalled in store.open_runs()
            }
        )

    def process(self, source: str, source_id: int, lines: Lines) -> None:
        """Decode and fold a run of lines; rejected lines become dead letters."""
        offset = lines.offset
        number = lines.line
        oversize = lines.oversize
        tally = self.pending
        cache = self.cache
        rules = self.rules
        rule_types = {} if rules is None else rules.by_type
        observe = self.observe
        for index, line in enumerate(lines.items):
            size = len(line)
            if oversize and index in oversize:
                size = oversize[index]
                self.reject(
                    source,
                    offset,
                    number,
                    line,
                    size,
                    Rejection(
                        "line_too_long",
                        f"line of {size} bytes exceeds max_line_bytes={self.max_line_bytes}",
                    ),
                )
            elif not line or line.isspace():
                tally.blank += 1
            else:
                body = line[:-1] if line[-1] == 13 else line
                event = decode(body)
                if isinstance(event, Rejection):
                    self.reject(source, offset, number, body, len(body), event)
                else:
                    if event.family == ORCHESTRATOR:
                        key = (
                            orphan_key(event.time) if event.run_id is None else "r:" + event.run_id
                        )
                    else:
                        key = "p:" + event.task  # type: ignore[operator]  # never None here
                    group = cache.get(key)
                    if group is None:
                        group = self._load(key)
                    else:
                        cache.move_to_end(key)
                    fresh = group.state.apply(event)
                    if fresh:
                        group.new_index.append((event.id, source_id, offset, len(body)))
                        group.dirty = True
                        tally.accepted += 1
                        if event.time > self.max_event_time:
                            self.max_event_time = event.time
                        if (
                            rules is not None
                            and rule_types.get(event.type, True)
                            and (found := rules.match_event(event))
                        ):
                            self.triggers.extend(found)
                    else:
                        tally.duplicate += 1
                    if observe is not None:
                        observe(event, source, fresh)
            offset += size + 1
            number += 1

    @property
    def seen(self) -> int:
        """Events accepted so far, committed or not."""
        return self.total.accepted + self.pending.accepted

    @property
    def crowded(self) -> bool:
        """Evicted groups waiting for a commit are as many as the cache: commit soon."""
        return len(self.limbo) >= self.max_groups

    def merge(self, key: str, partial: State, index: bytes) -> set[str]:
        """Join a group state folded elsewhere (a replay worker) from the events whose
        serialised index entries are `index`; returns the ids it already had (repeats)."""
        group = self.cache.get(key)
        if group is None:
            group = self._load(key)
        else:
            self.cache.move_to_end(key)
        known = group.state.seen & partial.seen
        if known:
            group.new_index.extend(
                tuple(entry) for entry in orjson.loads(index) if entry[0] not in known
            )
        else:
            group.index_blobs.append(index)
        group.state.merge(partial)  # type: ignore[arg-type]  # same kind: same key
        group.dirty = True
        self.pending.accepted += len(partial.seen) - len(known)
        self.pending.duplicate += len(known)
        return known

    def reject(
        self, source: str, offset: int, number: int, line: bytes, size: int, why: Rejection
    ) -> None:
        """Dead-letter one line: its place, the reason, and its first RAW_KEEP bytes."""
        rejected = self.pending.rejected
        rejected[why.reason] = rejected.get(why.reason, 0) + 1
        letter = DeadLetter(source, offset, number, why.reason, why.detail, line[:RAW_KEEP], size)
        self.changes.dead_letters.append(letter)

    def _load(self, key: str) -> Group:
        group = self.limbo.pop(key, None)
        if group is None and (
            self.store is None or (self.known_groups is not None and key not in self.known_groups)
        ):
            group = Group(key, new_state(key))
        elif group is None:
            saved, seen = self.store.load_group(key)  # type: ignore[union-attr]
            group = Group(key, _restore(key, saved, seen))
        self.cache[key] = group
        if len(self.cache) > self.max_groups:
            _, oldest = self.cache.popitem(last=False)
            self._flush(oldest)
            self.limbo[oldest.key] = oldest
        return group

    def _flush(self, group: Group) -> None:
        """Turn a dirty group into rows and state in `changes` (written at the next commit)."""
        if not group.dirty:
            return
        group.dirty = False
        changes = self.changes
        state = group.state
        if group.new_index:
            changes.index.append((group.key, dumps_exact(group.new_index)))
            group.new_index = []
        if group.index_blobs:
            changes.index.extend((group.key, blob) for blob in group.index_blobs)
            group.index_blobs = []
        if self.known_groups is not None:
            self.known_groups.add(group.key)
        if isinstance(state, RunState):
            current = state.status()  # one pass over the tasks serves all three below
            self.derived.extend(state.observe(current))
            self._track_open(state, current[0] in RUN_TERMINAL)
            changes.runs.append(state.row(current))
            changes.tasks.extend(state.task_rows(state.dirty_tasks))
            state.dirty_tasks.clear()
            changes.workstreams.extend(state.workstream_rows())
            changes.states.append((group.key, dumps_exact(state.to_dict())))
        elif isinstance(state, PatternRunState):
            changes.pattern_runs.append(state.row())
            changes.states.append((group.key, dumps_exact(state.to_dict())))
        else:
            # Runless events have no rows; the empty state marks the group as stored, so
            # `load_group` brings its event ids back after an eviction or a restart.
            changes.states.append((group.key, b"{}"))

    def _track_open(self, state: RunState, terminal: bool) -> None:
        if terminal:
            self.open_runs.pop(state.run_id, None)
            if state.stalled:
                state.stalled = False
                self.derived.append(
                    DerivedEvent(
                        "RUN_RECOVERED",
                        state.last_event_at or 0,
                        state.run_id,
                        {"reason": "completed"},
                    )
                )
        elif state.abandoned:
            self.open_runs.pop(state.run_id, None)
        else:
            assert state.last_event_at is not None
            self.open_runs[state.run_id] = (state.last_event_at, state.stalled)

    def detect(self, now: int, *, bounded: bool = True) -> None:
        """Flag or clear stalls and abandon long-silent runs against `now` (event time in
        replay, wall clock when live). `bounded`: at most `max_groups` changes per call, so
        one commit never holds more runs than the cache; the rest are found again by the
        next call (a replay, which detects once at its end, takes them all)."""
        for group in self.cache.values():
            self._flush(group)
        found = detect_stalls(self.open_runs, now, self.stall_after_us, self.forget_after_us)
        for change in found[: self.max_groups] if bounded else found:
            key = "r:" + (change.run_id or "")
            group = self.cache.get(key) or self._load(key)
            assert isinstance(group.state, RunState)
            abandoned = change.type == "RUN_ABANDONED"
            group.state.stalled = change.type == "RUN_STALLED"
            group.state.abandoned = abandoned
            group.dirty = True
            self._flush(group)
            self.derived.append(change)
            if abandoned:  # out of memory; limbo until the commit has written it
                self.cache.pop(key, None)
                self.limbo[key] = group

    def commit(
        self,
        checkpoints: list[Checkpoint],
        *,
        everything: bool = True,
        now: int | None = None,
        evaluated: list[tuple[int, dict[str, Any]]] | None = None,
        release: bool = False,
    ) -> list[DerivedEvent]:
        """Write every dirty group, the dead letters, counters, checkpoints and the alert
        decisions they cause atomically. Returns the derived events this commit made durable.
        `everything=False` writes only what eviction already flushed: for a scratch build that
        is used only once complete. `now` (default: the greatest event time) ends throttle
        windows; `evaluated` are derived events recorded outside the fold that the rules
        see now; `release` decides what a holding replay kept back."""
        if len(self.cache) > self.max_groups // 2:
            # Finished groups are rarely touched again: make room for the runs in flight.
            for group in [g for g in self.cache.values() if _finished(g.state)]:
                self._flush(group)
                del self.cache[group.key]
        if everything:
            for group in self.cache.values():
                self._flush(group)
        changes = self.changes
        changes.checkpoints = checkpoints
        changes.counters = self.pending.counters()
        self.derived.extend(
            DerivedEvent(
                "EVENT_REJECTED",
                self.max_event_time,
                None,
                {
                    "source": d.source,
                    "offset": d.offset,
                    "line": d.line,
                    "reason": d.reason,
                    "detail": d.detail,
                },
            )
            for d in changes.dead_letters
        )
        changes.derived = [d.to_dict() for d in self.derived]
        if self.decisions is not None:
            moment = self.max_event_time if now is None else now
            self.decisions.decide(
                self.triggers, self.derived, moment, changes, recorded=evaluated or ()
            )
            if release:
                self.decisions.release(moment, changes)
        self.triggers = []
        self.outboxed = len(changes.outbox)
        assert self.store is not None, "an in-memory processor has nothing to commit to"
        self.store.commit(changes, self.wall_clock())
        self.total.add(self.pending)
        derived = self.derived
        self.changes, self.pending, self.derived = Changes(), Tally(), []
        self.limbo.clear()
        return derived


def orphan_key(time: int) -> str:
    """Runless events are grouped by the UTC day of their time, so each group stays small
    and leaves the cache once its day is over. Ids identify content (time included), so a
    repeat always lands in the group of its first copy."""
    return f"o:{time // 86_400_000_000}"


def _finished(state: State) -> bool:
    if isinstance(state, RunState):
        return state.is_terminal()
    if isinstance(state, PatternRunState):
        return state.raw_status != "in_progress"
    return False


def _restore(key: str, saved: dict[str, Any] | None, seen: set[str]) -> State:
    kind, _, name = key.partition(":")
    if saved is not None and kind == "r":
        return RunState.from_dict(name, saved, seen)
    if saved is not None and kind == "p":
        return PatternRunState.from_dict(name, saved, seen)
    return new_state(key, seen)
