"""The fold loop every service shares: lines → decode → fold → one commit. Memory is
bounded by the groups in flight, not by history: a group (see groups.py) lives in an LRU
cache; an evicted one is written out and read back, with its event ids, if its events keep
coming, so a duplicate is recognised however late it arrives."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from runwatch.projections import (
    ORCHESTRATOR,
    RUN_TERMINAL,
    DerivedEvent,
    PatternRunState,
    RunState,
    detect_stalls,
)
from runwatch.projections.alerts import RuleSet, Trigger
from runwatch.sinks.store.api import (
    Changes,
    Checkpoint,
    DeadLetter,
    OutboxEntry,
    Store,
    UnstorableValue,
)
from runwatch.sinks.store.keys import ORPHANS, PATTERN, RUN, GroupKey, load_index
from runwatch.stream.core.blobs import dumps_exact
from runwatch.stream.core.collector import collect
from runwatch.stream.core.decisions import Decisions
from runwatch.stream.core.decode import (
    NO_LATEST,
    RAW_KEEP,
    Rejection,
    decode,
    internal_error,
    parse_time,
)
from runwatch.stream.core.groups import (
    Adopted,
    Group,
    HandOver,
    Observe,
    Refold,
    State,
    finished,
    from_adopted,
    holds_many_events,
    new_state,
    orphan_day,
    restore,
    settled,
    track_open,
    write_adopted,
    write_run,
)
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.retire import Retirement
from runwatch.stream.core.tally import Tally
from runwatch.stream.core.unstorable import drop_runs, rejections, set_aside


class Processor:
    """Folds decoded events into groups and commits them with the checkpoints they cover.
    Its state changes only through its methods; what callers may read are properties."""

    def __init__(
        self,
        store: Store | None,
        *,
        stall_after_s: float,
        max_line_bytes: int,
        forget_after_s: float | None = None,
        wall_clock: Callable[[], str],
        max_groups: int = 4096,
        max_groups_ceiling: int | None = None,
        known_groups: set[GroupKey] | None = None,
        rules: RuleSet | None = None,
        decisions: Decisions | None = None,
        observe: Observe | None = None,
        latest_time: Callable[[], int] | None = None,
        retirement: Retirement | None = None,
    ) -> None:
        """Without a store the processor only folds in memory (a replay worker's part).
        `known_groups`: every group key the store holds (spares a lookup per new group).
        `rules` make triggers of new events, `decisions` outbox entries of them at commit;
        `observe` sees every decoded event. `latest_time` (read once a batch): the latest
        event time accepted. A run silent past `forget_after_s` is abandoned. The cache holds
        `max_groups` groups, up to `max_groups_ceiling` while evicted ones come back.
        `retirement` takes a big run's finished tasks out of memory (default: none do)."""
        self._store, self._retirement = store, retirement or Retirement(None)
        self._rules, self._observe = rules, observe
        self._latest_time = latest_time
        self._sources: dict[int, str] = {}
        self._triggers: list[Trigger] = []
        self._decisions = decisions
        self._outboxed = 0
        self._known_groups = known_groups
        self._stall_after_us = int(stall_after_s * 1_000_000)
        self._forget_after_us = None if forget_after_s is None else int(forget_after_s * 1e6)
        self._max_line_bytes = max_line_bytes
        self._wall_clock = wall_clock
        self._max_groups = max_groups
        self._base_groups = max_groups
        self._max_groups_ceiling = max(max_groups, max_groups_ceiling or max_groups)
        self._evicted: OrderedDict[GroupKey, None] = OrderedDict()
        # Keyed by GroupKey; the hot loop looks up with equal plain tuples.
        self._cache: OrderedDict[tuple[str, str], Group] = OrderedDict()
        self._limbo: dict[tuple[str, str], Group] = {}
        self._adopted: dict[tuple[str, str], Adopted] = {}  # until the commit
        self._held: dict[tuple[str, str], int] = {}  # new events of each group kept by `hand_over`
        self._sent: set[tuple[str, str]] = set()  # handed over and folded on since
        self._changes = Changes()
        self._pending = Tally()
        self._total = Tally()
        self._derived: list[DerivedEvent] = []
        self._max_event_time = 0
        self._open_runs: dict[str, tuple[int, bool]] = (
            {}
            if store is None
            else {
                run_id: (parse_time(last), bool(stalled))
                for run_id, last, stalled in store.open_runs()
            }
        )

    def process(self, source: str, source_id: int, lines: Lines) -> int:
        """Decode and fold a run of lines, or lines picked from one (each with its own place,
        `Lines.offsets`); rejected lines become dead letters. Returns how many events were
        new."""
        offset = lines.offset
        number = lines.line
        oversize = lines.oversize
        picked = lines.offsets is not None
        offsets, numbers = lines.offsets or (), lines.numbers or ()
        tally = self._pending
        accepted_before = tally.accepted
        cache = self._cache
        rules = self._rules
        rule_types = {} if rules is None else rules.by_type
        observe = self._observe
        latest = NO_LATEST if self._latest_time is None else self._latest_time()
        self._sources[source_id] = source
        last_key: tuple[str, str] | None = None
        for index, line in enumerate(lines.items):
            if picked:
                offset, number = offsets[index], numbers[index]
            size = len(line)
            if oversize and index in oversize:
                size = oversize[index]
                why = f"line of {size} bytes exceeds max_line_bytes={self._max_line_bytes}"
                self.reject(source, offset, number, line, size, Rejection("line_too_long", why))
            elif not line or line.isspace():
                tally.blank += 1
            else:
                body = line[:-1] if line[-1] == 13 else line
                event = decode(body, latest)
                if isinstance(event, Rejection):
                    self.reject(source, offset, number, body, len(body), event)
                else:
                    if event.family == ORCHESTRATOR:
                        key = (
                            (ORPHANS, orphan_day(event.time))
                            if event.run_id is None
                            else (RUN, event.run_id)
                        )
                    else:
                        key = (PATTERN, event.task)  # type: ignore[assignment]  # never None here
                    # A group's lines come in runs: the last line's is the cache's newest.
                    if key != last_key:
                        cached = cache.get(key)
                        if cached is None:
                            group = self._load(GroupKey(*key))
                        else:
                            group = cached
                            cache.move_to_end(key)
                        last_key = key
                        held = None if group.retired is None else group.state.tasks  # type: ignore[union-attr]
                    try:
                        if held is not None and event.task not in held:  # left, or new
                            self._retirement.bring_back(group, event.task)
                        fresh = group.state.apply(event)
                        found = (
                            rules.match_event(event)
                            if fresh and rules is not None and rule_types.get(event.type, True)
                            else None
                        )
                        if observe is not None:
                            observe(event, source, fresh)
                    except Exception as exc:  # the last guard: one line never stops the service
                        self.reject(source, offset, number, body, len(body), internal_error(exc))
                    else:
                        if fresh:
                            group.new_index.add(event.id, source_id, offset, len(body))
                            group.dirty = True
                            tally.accepted += 1
                            if event.time > self._max_event_time:
                                self._max_event_time = event.time
                            if found:
                                self._triggers.extend(found)
                        else:
                            tally.duplicate += 1
            offset += size + 1
            number += 1
        return tally.accepted - accepted_before

    @property
    def latest_us(self) -> int:
        """The latest event time this processor accepts now (workers get the same bound)."""
        return NO_LATEST if self._latest_time is None else self._latest_time()

    @property
    def resident(self) -> list[GroupKey]:
        """The groups held in memory now: cached, or evicted and waiting for the commit."""
        return [GroupKey(*key) for key in (*self._cache, *self._limbo)]

    @property
    def seen(self) -> int:
        """Events accepted so far, committed or not."""
        return self._total.accepted + self._pending.accepted

    @property
    def pending(self) -> Tally:
        """What happened to the input lines since the last commit (read it, do not change it)."""
        return self._pending

    @property
    def total(self) -> Tally:
        """What happened to the input lines in the commits so far."""
        return self._total

    @property
    def max_event_time(self) -> int:
        """The greatest event time folded so far (replay's `now`)."""
        return self._max_event_time

    @property
    def open_runs(self) -> Mapping[str, tuple[int, bool]]:
        """Run id → (last event time, stalled) of every run that is not finished."""
        return self._open_runs

    @property
    def outboxed(self) -> int:
        """Outbox entries the last commit wrote or made due: something for the dispatcher."""
        return self._outboxed

    @property
    def dead_letters(self) -> Sequence[DeadLetter]:
        """Lines rejected since the last commit."""
        return self._changes.dead_letters

    @property
    def crowded(self) -> bool:
        """The groups held until the commit (evicted or adopted) reach `max_groups`."""
        return len(self._limbo) + len(self._adopted) >= self._base_groups

    @property
    def has_events(self) -> bool:
        """Derived events or alert triggers wait for the next commit."""
        return bool(self._derived or self._triggers)

    def has_work(self, now: int) -> bool:
        """The next commit would write something, or end a throttle window due by `now`."""
        return bool(
            self._derived
            or self._triggers
            or self._changes
            or any(group.dirty for group in self._cache.values())
            or (self._decisions is not None and self._decisions.has_due(now))
        )

    def note(self, *events: DerivedEvent) -> None:
        """Derived events made outside the fold (lifecycle, file notes), for the next commit."""
        self._derived.extend(events)

    def forget_files(self, files: list[tuple[int, int]]) -> None:
        """Drop the checkpoints of these (device, inode) files at the next commit."""
        self._changes.forget = files

    def advance_stream(self, stream: str, expected: int | None, position: int) -> None:
        """Move `stream` from `expected` to `position` at the next commit (compare-and-set:
        the commit fails with `OwnershipLost` if another process moved it meanwhile)."""
        self._changes.positions.append((stream, expected, position))

    def limit_open_runs(self, owned: Callable[[str], bool]) -> None:
        """Watch only the open runs whose id is `owned` for stalls (a partition's runs)."""
        self._open_runs = {run: seen for run, seen in self._open_runs.items() if owned(run)}

    def hand_over(self, keep: int = 0) -> HandOver:
        """A store-less fold's result (a worker's): groups settled or idle since the last call,
        and the least recently used beyond `keep`, leave, flushed (a run's header keeps its
        error ids, for a merge); the rest fold on (a giant run's flush is sent too)."""
        cache, held = self._cache, self._held

        def staying(group: Group) -> bool:
            return not settled(group.state) and held.get(group.key) != len(group.new_index)

        leaving = [group for group in cache.values() if not staying(group)]
        if (beyond := len(cache) - len(leaving) - keep) > 0:
            leaving.extend(itertools.islice(filter(staying, cache.values()), beyond))
        gone = {group.key for group in leaving}
        leaving.extend(g for g in cache.values() if g.key not in gone and holds_many_events(g))
        sequels = {g.key.text for g in leaving if g.key in self._sent}
        kept = {g.key for g in leaving if g.key not in gone}
        events, open_runs = {g.key.text: len(g.new_index) + g.blobbed for g in leaving}, {}
        for group in leaving:
            self._flush(group)
            if group.key.kind == RUN and group.key.name in self._open_runs:
                open_runs[group.key.name] = self._open_runs[group.key.name]
        for key in gone:
            del cache[key]
            if key.kind == RUN:
                self._open_runs.pop(key.name, None)
        self._held = {key: len(group.new_index) for key, group in cache.items()}
        self._set_aside_unstorable(self._changes)
        self._sent = {key for key in (self._sent | kept) - gone if key in cache}
        out = self._changes, self._derived, open_runs, events, self._pending, self._triggers
        self._changes, self._derived, self._pending, self._triggers = Changes(), [], Tally(), []
        collect()
        return HandOver(*out, sequels, {key.text for key in kept})

    def adopt(
        self,
        key: GroupKey,
        state: bytes,
        index: bytes,
        open_run: tuple[int, bool] | None,
        events: int,
        rows: bytes = b"",
        tasks: Sequence[tuple[str, bytes]] = (),
        *,
        again: bool = False,
    ) -> bool:
        """Take a group folded and flushed by a worker as it is: its `state`, task states,
        `index` and `rows` (orjson: runs, tasks, workstreams, pattern runs; empty if the
        worker wrote them) are written by the next commit. `open_run`: (last event time,
        stalled) of an open run. `again`: a later part of a group adopted here, folded on
        from there by the same worker: its changes are written over it. False, and nothing
        done, if the group is known here otherwise: then `merge` it."""
        if key in self._cache or key in self._limbo or (key in self._adopted and not again):
            return False
        if not again and self._known_groups is not None:
            if key in self._known_groups:
                return False
            self._known_groups.add(key)
        elif not again and self._store is not None and any(self._store.load_group(key.text)):
            return False
        write_adopted(self._changes, key, state, index, rows, tasks)
        earlier = self._adopted.get(key) if again else None
        if earlier is not None:  # what `_load` needs that is not in the store yet
            earlier.indexes.append(index)
            earlier.tasks.extend(tasks)
            self._adopted[key] = earlier._replace(state=state)
        else:  # an earlier part adopted `again` is in the store already
            self._adopted[key] = Adopted(state, [index], list(tasks), stored=again)
        self._pending.accepted += events
        if open_run is not None:
            self._open_runs[key.name] = open_run
        elif again:
            self._open_runs.pop(key.name, None)
        return True

    def merge(
        self, key: GroupKey, partial: State, index: bytes, refold: Refold | None = None
    ) -> set[str]:
        """Join a group state folded elsewhere (a replay worker) from the events whose
        serialised index entries are `index`; returns the ids it already had (repeats),
        which `refold` leaves out of the join: a repeat with other content changes nothing."""
        group = self._cache.get(key)
        if group is None:
            group = self._load(key)
        else:
            self._cache.move_to_end(key)
        if group.retired is not None:  # a refold's tasks are among the partial's
            self._retirement.before_merge(group, partial)  # type: ignore[arg-type]  # a run
        known, events = group.state.seen & partial.seen, len(partial.seen)
        if known:
            fresh = [entry for entry in load_index(index) if entry.event_id not in known]
            group.new_index.extend(fresh)
            partial = partial if refold is None else refold(fresh)
        else:
            group.index_blobs.append(index)
            group.blobbed += events
        group.state.merge(partial)  # type: ignore[arg-type]  # same kind: same key
        group.dirty = True
        self._pending.accepted += events - len(known)
        self._pending.duplicate += len(known)
        return known

    def absorb(
        self,
        dead_letters: Iterable[DeadLetter],
        tally: Tally,
        max_event_time: int,
        triggers: Iterable[Trigger],
    ) -> None:
        """Take over what a fold elsewhere (a replay worker) rejected, skipped as blank or
        duplicate, reached in event time and triggered (its new events: `adopt`, `merge`)."""
        self._changes.dead_letters.extend(dead_letters)
        self._pending.add(Tally(0, tally.duplicate, tally.blank, tally.rejected))
        self._max_event_time = max(self._max_event_time, max_event_time)
        self._triggers.extend(triggers)

    def reject(
        self, source: str, offset: int, number: int, line: bytes, size: int, why: Rejection
    ) -> None:
        """Dead-letter one line: its place, the reason, and its first RAW_KEEP bytes."""
        rejected = self._pending.rejected
        rejected[why.reason] = rejected.get(why.reason, 0) + 1
        letter = DeadLetter(source, offset, number, why.reason, why.detail, line[:RAW_KEEP], size)
        self._changes.dead_letters.append(letter)

    def _set_aside_unstorable(self, changes: Changes) -> set[str] | None:
        """Set aside the groups of `changes` holding a value no store holds (see `set_aside`):
        back to their last committed state. Returns the runs among them (None: no group)."""
        lost = set_aside(changes, self._sources, self._pending)
        if not lost:
            return None
        runs = {group.name for group in lost if group.kind == RUN}
        self._derived = [d for d in self._derived if d.run_id not in runs]
        for group in lost:
            self._cache.pop(group, None)
            self._limbo.pop(group, None)
        return runs

    def _load(self, key: GroupKey) -> Group:
        group = self._limbo.pop(key, None)
        adopted = self._adopted.pop(key, None)
        if adopted is not None:  # its state is in this commit, not in the store yet
            store = self._store if adopted.stored else None  # earlier parts are committed
            stored = None if store is None else store.load_group(key.text)
            group = Group(key, from_adopted(key, adopted, stored))
        elif group is None and (
            self._store is None
            or (self._known_groups is not None and key not in self._known_groups)
        ):
            group = Group(key, new_state(key))
        elif group is None:
            saved, seen = self._store.load_group(key.text)  # type: ignore[union-attr]
            group = Group(key, restore(key, saved, seen))
        self._cache[key] = group
        if key in self._evicted:  # evicted for room, and back already
            del self._evicted[key]
            step = 1 + self._max_groups // 16  # a little ahead of the runs in flight
            self._max_groups = min(self._max_groups_ceiling, self._max_groups + step)
        if len(self._cache) > self._max_groups:
            _, oldest = self._cache.popitem(last=False)
            self._flush(oldest)
            self._limbo[oldest.key] = oldest
            if self._max_groups < self._max_groups_ceiling:
                self._evicted[oldest.key] = None
                # One back among the last `ceiling` evicted would have stayed in so large a cache.
                if len(self._evicted) > self._max_groups_ceiling:
                    self._evicted.popitem(last=False)
        return group

    def _flush(self, group: Group) -> None:
        """Turn a dirty group into rows and state in `_changes` (written at the next commit)."""
        if not group.dirty:
            return
        group.dirty = False
        changes = self._changes
        state = group.state
        key = group.key.text
        if group.new_index:
            changes.index.append((key, group.take_index()))
        if group.index_blobs:
            changes.index.extend((key, blob) for blob in group.index_blobs)
            group.index_blobs = []
            group.blobbed = 0
        if self._known_groups is not None:
            self._known_groups.add(group.key)
        if isinstance(state, RunState):
            # Only what changed since the last flush: a commit costs the same for any run size.
            current = state.status()
            self._derived.extend(state.observe(current))
            self._derived.extend(track_open(self._open_runs, state, current[0] in RUN_TERMINAL))
            if self._store is not None:  # a store-less fold is handed over and merged
                state.keep_error_count_only()
            write_run(changes, key, state, current)
            self._retirement.after_flush(group)
        elif isinstance(state, PatternRunState):
            changes.pattern_runs.append(state.row())
            changes.states.append((key, dumps_exact(state.to_dict())))
        else:
            # Runless events have no rows; the empty state marks the group as stored, so
            # `load_group` brings its event ids back after an eviction or a restart.
            changes.states.append((key, b"{}"))

    def detect(self, now: int, *, bounded: bool = True) -> None:
        """Flag or clear stalls and abandon long-silent runs against `now` (event time in
        replay, wall clock when live). `bounded`: at most `max_groups` changes per call, so
        one commit never holds more runs than the cache; the rest are found again by the
        next call (a replay, which detects once at its end, takes them all)."""
        for group in self._cache.values():
            self._flush(group)
        found = detect_stalls(
            self._open_runs,
            now,
            self._stall_after_us,
            self._forget_after_us,
            limit=self._base_groups if bounded else None,
        )
        for change in found:
            key = GroupKey.run(change.run_id or "")
            group = self._cache.get(key) or self._load(key)
            assert isinstance(group.state, RunState)
            abandoned = change.type == "RUN_ABANDONED"
            group.state.stalled = change.type == "RUN_STALLED"
            group.state.abandoned = abandoned
            group.dirty = True
            self._flush(group)
            self._derived.append(change)
            if abandoned:  # out of memory; limbo until the commit has written it
                self._cache.pop(key, None)
                self._limbo[key] = group

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
        `everything=False` writes only what eviction already flushed and the groups holding
        `HELD_EVENTS` unwritten events: for a scratch build that is used only once complete.
        `now` (default: the greatest event time) ends throttle windows; `evaluated` are
        derived events recorded outside the fold that the rules see now; `release` decides
        what a holding replay kept back."""
        # Finished groups are rarely touched again: the cache is for the runs in flight.
        for group in [g for g in self._cache.values() if finished(g.state)]:
            self._flush(group)
            del self._cache[group.key]
        for group in self._cache.values():
            if everything or holds_many_events(group):
                self._flush(group)
            elif group.new_index:  # held until the group is written: keep it compact
                group.blobbed += len(group.new_index)
                group.index_blobs.append(group.take_index())
        changes = self._changes
        changes.checkpoints = checkpoints
        changes.counters = self._pending.counters()
        self._derived.extend(rejections(changes.dead_letters, self._max_event_time))
        changes.derived = [d.to_dict() for d in self._derived]
        moment = self._max_event_time if now is None else now
        if self._decisions is not None:
            self._decisions.decide(
                self._triggers, self._derived, moment, changes, recorded=evaluated or ()
            )
        assert self._store is not None, "an in-memory processor has nothing to commit to"
        self._outboxed = 0
        if release and self._decisions is not None:
            self._decisions.release(moment, changes, self._write_outbox)
        self._triggers = []
        try:
            self._store.commit(changes, self._wall_clock())
        except UnstorableValue:
            # A projection bug (decode refuses what it knows no store holds): commit again
            # without its groups, or every restart fails; of their runs only dead letters.
            before = len(changes.dead_letters)
            runs = self._set_aside_unstorable(changes)
            if runs is None:
                raise  # not a row value: the store's error stands
            rejected = rejections(changes.dead_letters[before:], self._max_event_time)
            self._derived.extend(rejected)
            changes.derived = [d.to_dict() for d in self._derived]
            changes.counters = self._pending.counters()
            drop_runs(changes, runs)
            if self._decisions is not None:
                self._decisions.decide([], rejected, moment, changes)
            self._store.commit(changes, self._wall_clock())
        self._outboxed += len(changes.outbox) + len(changes.hastened)
        self._total.add(self._pending)
        derived = self._derived
        self._changes, self._pending, self._derived = Changes(), Tally(), []
        self._limbo.clear()
        self._adopted.clear()
        collect()
        return derived

    def _write_outbox(self, entries: list[OutboxEntry]) -> None:
        """Commit a batch of released decisions ahead of the commit that released them."""
        assert self._store is not None
        self._store.commit(Changes(outbox=entries), self._wall_clock())
        self._outboxed += len(entries)
