"""Folding in worker processes, for replay and for `tail` on a backlog.

A worker decodes and folds a batch of lines (file regions it reads itself, or lines the
tailer read) in memory, flushes every group it touched into rows, state and index entries,
and hands back bytes, not objects. With a connection to the build (replay) it writes the
rows itself; otherwise (tail, whose rows must land in the same transaction as its
checkpoints) they travel with the result. The parent takes each result in input order: a
group new to it is adopted as it is (its state and index written with the next commit), a
group it has seen before (a run that straddles batches) is merged, the merged state
flushed and its rows written again, after the rows the worker wrote. The parent so does
nothing per event, and little per group.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self

import orjson

from runwatch.projections import DerivedEvent, Event, RunState
from runwatch.projections.alerts import RuleSet, Trigger
from runwatch.sinks.store.api import Changes, Checkpoint, DeadLetter, Store
from runwatch.sinks.store.keys import (
    PATTERN,
    RUN,
    GroupKey,
    IndexEntry,
    index_ids,
    load_index,
)
from runwatch.sinks.store.scratch import Scratch
from runwatch.sinks.store.spill import TasksOnDisk
from runwatch.stream.console import wall_clock
from runwatch.stream.core import collector
from runwatch.stream.core.decode import NO_LATEST, RAW_KEEP, Rejection, decode
from runwatch.stream.core.groups import Refold, State, from_parts, new_state
from runwatch.stream.core.lines import Lines, LineSplitter
from runwatch.stream.core.processor import Processor
from runwatch.stream.core.retire import Retirement
from runwatch.stream.core.tally import Tally
from runwatch.stream.errors import InputError

READ_BYTES = 1 << 20


class Observer(Protocol):
    """Sees every decoded event of a replay (offline analysis). Each worker fills an `empty()`
    copy that the parent `merge`s in input order; an event that two workers both saw as new
    is then `forget`-ten once, so what is observed as fresh counts every event id once."""

    def observe(self, event: Event, source: str, fresh: bool) -> None: ...

    def forget(self, event: Event) -> None: ...

    def empty(self) -> Self: ...

    def merge(self, later: Self) -> None: ...


@dataclass(frozen=True, slots=True)
class Region:
    """[start, end) of one file, starting at a line start; `last` if it ends the file."""

    path: Path
    source_id: int
    start: int
    end: int
    last: bool


@dataclass(frozen=True, slots=True)
class Piece:
    """Lines a tailer read from one source: the worker is given them, not a file."""

    source: str
    source_id: int
    lines: Lines


class FoldedGroup(NamedTuple):
    """One group of a worker's fold, as `Processor.hand_over` flushed it: its key, state and
    index entries as the store keeps them, its new events, its rows (see `Folded`) and task
    states; whether it goes on from the part that `worker` handed over before (`sequel`),
    and whether that worker folds on (`kept`)."""

    key: str
    state: bytes
    entries: bytes
    events: int
    rows: bytes
    tasks: list[tuple[str, bytes]]
    sequel: bool
    kept: bool
    worker: int


@dataclass(slots=True)
class Folded:
    """A worker's fold of a batch: per group its key, state and index entries as the store
    keeps them, its new events, and its rows (orjson: runs, tasks, workstreams, pattern
    runs) unless the worker wrote them; the derived events and open runs of its runs; and
    per-part bookkeeping."""

    line_counts: list[int]
    accepted: list[int]  # new events per part
    dead_letters: list[list[DeadLetter]]  # per part; numbered from the part's first line
    set_aside: list[DeadLetter]  # unstorable values: numbered already
    groups: list[FoldedGroup]
    derived: list[DerivedEvent]
    open_runs: dict[str, tuple[int, bool]]
    tally: Tally
    max_event_time: int
    triggers: list[Trigger]
    observer: Observer | None
    merged: int = 0  # of its groups, how many `merge_into` merged (the rest it adopted)

    def merge_into(
        self,
        processor: Processor,
        first_lines: list[int] | None = None,
        owners: dict[str, int] | None = None,
        paths: Mapping[int, Path] | None = None,
    ) -> list[IndexEntry]:
        """Adopt the groups new to `processor` and merge the others; returns the events it
        already had (repeats). `first_lines`: the line number each part starts at, when the
        worker numbered its dead letters from 1 (a file region). `owners` (kept from batch
        to batch): the worker still folding each group adopted whole, whose next part is
        adopted over it instead of merged. `paths` (source id → file) lets a part that
        repeats events the processor has be folded again without them (see `merge`)."""
        repeats: list[IndexEntry] = []
        merged_runs: set[str] = set()
        owners = {} if owners is None else owners
        latest_us = processor.latest_us
        for text, state, index, events, rows, tasks, sequel, kept, worker in self.groups:
            key = GroupKey.parse(text)
            open_run = self.open_runs.get(key.name)
            again = sequel and owners.get(text) == worker
            if processor.adopt(key, state, index, open_run, events, rows, tasks, again=again):
                if kept:
                    owners[text] = worker
                else:
                    owners.pop(text, None)
                continue
            owners.pop(text, None)
            self.merged += 1
            if key.kind == RUN:
                merged_runs.add(key.name)
            partial = from_parts(key, state, tasks, index_ids(index))
            refold = None if paths is None else refolder(key, partial, paths, latest_us)
            known = processor.merge(key, partial, index, refold)
            if known:
                repeats.extend(entry for entry in load_index(index) if entry.event_id in known)
        # A merged run is observed again when its merged state is flushed.
        processor.note(*(d for d in self.derived if d.run_id not in merged_runs))
        if first_lines is None:
            letters = [d for part in self.dead_letters for d in part]
        else:
            letters = [
                DeadLetter(
                    d.source, d.offset, d.line + first - 1, d.reason, d.detail, d.raw, d.raw_size
                )
                for first, part in zip(first_lines, self.dead_letters, strict=True)
                for d in part
            ]
        letters.extend(self.set_aside)
        processor.absorb(letters, self.tally, self.max_event_time, self.triggers)
        return repeats


def refolder(key: GroupKey, written: State, paths: Mapping[int, Path], latest_us: int) -> Refold:
    """Folds `key`'s state from the events of some index entries alone, read back from
    their files, in place of the part `written` (whose rows a worker may have written: they
    are written again). A merge needs it only for a part that repeats events: that is rare."""

    def refold(entries: list[IndexEntry]) -> State:
        state = new_state(key)
        if isinstance(state, RunState) and isinstance(written, RunState):
            state.mark_changed(written)
        for entry, event in read_back(entries, paths, latest_us):
            if not isinstance(event, Event) or event.id != entry.event_id:
                raise InputError(
                    f"{paths[entry.source_id]}: byte {entry.offset} no longer holds the line "
                    "read there before: the file was replaced during the replay"
                )
            state.apply(event)
        return state

    return refold


def forget(observer: Observer, repeats: list[IndexEntry], paths: Mapping[int, Path]) -> None:
    """Re-read the events a worker took as new that an earlier batch already had, and take
    back their observation. Such repeats are rare, so this costs little."""
    for _, event in read_back(repeats, paths, NO_LATEST):
        if isinstance(event, Event):
            observer.forget(event)


def read_back(
    entries: list[IndexEntry], paths: Mapping[int, Path], latest_us: int
) -> Iterator[tuple[IndexEntry, Event | Rejection]]:
    """Each entry with its line decoded again from its file, file by file in offset order."""
    entries = sorted(entries, key=attrgetter("source_id", "offset"))
    for source_id, some in itertools.groupby(entries, key=attrgetter("source_id")):
        with paths[source_id].open("rb") as handle:
            for entry in some:
                handle.seek(entry.offset)
                yield entry, decode(handle.read(entry.length), latest_us)


def read_regions(
    regions: Iterator[Region],
    max_line_bytes: int,
    first_line: Callable[[Region], int] | None = None,
) -> Iterator[tuple[Region, Lines, bool]]:
    """Lines of each region in bounded pieces; the flag marks a region's last piece. Lines
    are numbered from `first_line(region)`, asked when the region is reached (default 1)."""
    for region in regions:
        number = 1 if first_line is None else first_line(region)
        splitter = LineSplitter(region.start, number, max_line_bytes=max_line_bytes, keep=RAW_KEEP)
        with region.path.open("rb") as handle:
            handle.seek(region.start)
            remaining = region.end - region.start
            while remaining > 0 and (data := handle.read(min(READ_BYTES, remaining))):
                remaining -= len(data)
                yield region, splitter.feed(data), remaining <= 0 and not region.last
        if region.last:
            yield region, splitter.finish(), True


def fold_in_workers(
    pool: Any,
    window: int,
    batches: Iterable[list[Region] | list[Piece]],
    max_line_bytes: int,
    rules: RuleSet | None,
    observer: Observer | None,
    latest_us: int,
) -> Iterator[Folded]:
    """Each batch folded by the pool; results in input order, at most `window` in flight."""
    pending: deque[Any] = deque()
    for batch in itertools.chain(batches, [None]):
        if batch is not None:
            blank = None if observer is None else observer.empty()
            pending.append(
                pool.apply_async(fold_batch, (batch, max_line_bytes, rules, blank, latest_us))
            )
        while pending and (len(pending) >= window or batch is None):
            yield pending.popleft().get()


_rows_store: Store | None = None
"""A pool worker's own connection to the build, for the rows it folds (replay only)."""


def join_build(scratch: Scratch) -> None:
    """Pool initializer of a replay: each worker writes its rows into the build itself."""
    global _rows_store  # one connection per pool process, opened once
    _rows_store = scratch.join()


def fold_batch(
    batch: list[Region] | list[Piece],
    max_line_bytes: int,
    rules: RuleSet | None,
    observer: Observer | None,
    latest_us: int,
) -> Folded:
    """In a worker: decode and fold a batch, flush every group it touched, write their rows
    if this worker joined a build, and hand back the rest of what the parent needs."""
    folder = folder_for(max_line_bytes, rules, observer, latest_us)
    with collector.paused():
        return fold_parts(folder, parts_of(batch, max_line_bytes), 0, observer, _rows_store)


def folder_for(
    max_line_bytes: int,
    rules: RuleSet | None,
    observer: Observer | None,
    latest_us: int,
    *,
    retire: bool = False,
) -> Processor:
    """A store-less fold. `retire`: it folds on across batches, so a big run's finished
    tasks may go to disk; a fold of one piece hands everything over at once, and must not
    write what it would throw away."""
    return Processor(
        None,
        stall_after_s=1,
        max_line_bytes=max_line_bytes,
        wall_clock=wall_clock,
        max_groups=1 << 62,
        rules=rules,
        observe=None if observer is None else observer.observe,
        latest_time=lambda: latest_us,
        retirement=Retirement(TasksOnDisk if retire else None),
    )


class Part(NamedTuple):
    """Lines of one source to fold: `first` if they begin a part of the batch (a region or
    a piece), `read` the lines they stand for (more than `lines.items` when they are one
    worker's share, see `partitions.pick`)."""

    source: str
    source_id: int
    lines: Lines
    first: bool
    read: int


def fold_parts(
    folder: Processor,
    parts: Iterable[Part],
    keep: int,
    observer: Observer | None,
    rows_store: Store | None,
    worker: int = 0,
) -> Folded:
    """Fold `parts` and hand over the groups leaving `folder` (all but `keep` unfinished
    ones), their rows written into `rows_store` if given (a worker of a build), else handed
    back."""
    line_counts: list[int] = []
    accepted: list[int] = []
    letters: list[list[DeadLetter]] = []
    for source, source_id, lines, first, read in parts:
        if first:
            line_counts.append(0)
            accepted.append(0)
            letters.append([])
        before = len(folder.dead_letters)
        accepted[-1] += folder.process(source, source_id, lines)
        line_counts[-1] += read
        letters[-1].extend(folder.dead_letters[before:])
    numbered = len(folder.dead_letters)
    handed = folder.hand_over(keep)
    changes = handed.changes
    if rows_store is not None:
        rows_store.commit(_sorted_rows(changes), wall_clock())
        rows = {}
    else:
        rows = _rows_by_group(changes)
    index = dict(changes.index)
    tasks: dict[str, list[tuple[str, bytes]]] = {}
    for key, task_id, blob in changes.task_states:
        tasks.setdefault(key, []).append((task_id, blob))
    return Folded(
        line_counts,
        accepted,
        letters,
        changes.dead_letters[numbered:],
        [
            FoldedGroup(
                key,
                state,
                index[key],
                handed.events[key],
                rows.get(key, b""),
                tasks.get(key, []),
                key in handed.sequels,
                key in handed.kept,
                worker,
            )
            for key, state in changes.states
        ],
        handed.derived,
        handed.open_runs,
        handed.tally,
        folder.max_event_time,
        handed.triggers,
        observer,
    )


def parts_of(batch: list[Region] | list[Piece], max_line_bytes: int) -> Iterator[Part]:
    """The parts of a batch, in order."""
    fresh = True
    for item in batch:
        if isinstance(item, Piece):
            yield Part(item.source, item.source_id, item.lines, True, len(item.lines.items))
            continue
        for region, lines, done in read_regions(iter([item]), max_line_bytes):
            yield Part(str(region.path), region.source_id, lines, fresh, len(lines.items))
            fresh = done
        fresh = True


def _sorted_rows(changes: Changes) -> Changes:
    """The converged rows, each table in key order: writers of one build take row locks in
    the same order (PostgreSQL), so two of them never wait for each other in a cycle."""
    return Changes(
        runs=sorted(changes.runs, key=itemgetter("run_id")),
        tasks=sorted(changes.tasks, key=itemgetter("run_id", "task_id")),
        workstreams=sorted(changes.workstreams, key=itemgetter("run_id", "workstream_id")),
        pattern_runs=sorted(changes.pattern_runs, key=itemgetter("pattern_run_id")),
    )


def _rows_by_group(changes: Changes) -> dict[str, bytes]:
    """Each group's rows as one orjson list: [runs, tasks, workstreams, pattern runs]."""
    grouped: dict[str, list[list[dict[str, Any]]]] = {}
    parts = [
        (changes.runs, "run_id", RUN),
        (changes.tasks, "run_id", RUN),
        (changes.workstreams, "run_id", RUN),
        (changes.pattern_runs, "pattern_run_id", PATTERN),
    ]
    for position, (rows, name, kind) in enumerate(parts):
        for row in rows:
            key = GroupKey(kind, row[name]).text
            grouped.setdefault(key, [[], [], [], []])[position].append(row)
    return {key: orjson.dumps(lists) for key, lists in grouped.items()}


@dataclass(frozen=True, slots=True)
class Reached:
    """Where the lines of one owner (a file being read) are folded up to: the offset just
    past them and the number of the next line."""

    owner: Any
    offset: int
    line: int


@dataclass(slots=True)
class Flight:
    """One read of a tailer, being folded by the workers, and the checkpoints it reaches."""

    pieces: list[Piece]
    owners: list[Any]  # what each piece was read from (the tailer's cursor); never pickled
    results: list[Any]
    checkpoints: tuple[list[Checkpoint], list[tuple[int, int]]]


class Backlog:
    """A tailer far behind folds its reads in worker processes: a read of `workers` × 2
    pieces of `piece_bytes` at a time, folded while the parent merges and commits the read
    before (so the parent never waits for the workers, nor they for it). The pool is
    started on the first backlog, by spawning (the service runs threads).

    Each piece is folded apart, so a run with lines in many pieces (logs of many runs at
    once) reaches the parent in parts to merge, which costs it more than folding the lines
    itself: when most groups of a read were merged, the next `REST_READS` reads are left
    to the parent, and then the workers are tried again."""

    REST_READS = 16

    def __init__(self, workers: int, piece_bytes: int, max_line_bytes: int, rules: RuleSet):
        self.workers = workers
        self.piece_bytes = piece_bytes
        self.max_line_bytes = max_line_bytes
        self.rules = rules
        self.pool: Any = None
        self.resting = 0  # reads still to leave to the parent

    @property
    def budget(self) -> int:
        """What to read at once when behind."""
        return max(1, self.workers) * 2 * self.piece_bytes

    def wanted(self, read_bytes: int) -> bool:
        """Is a read of this size worth the workers?"""
        if self.workers == 0 or read_bytes < 2 * self.piece_bytes:
            return False
        if self.resting:
            self.resting -= 1
            return False
        return True

    def submit(
        self,
        reads: Iterable[tuple[Any, str, int, Lines]],
        latest_us: int,
        checkpoints: tuple[list[Checkpoint], list[tuple[int, int]]],
    ) -> Flight:
        """Fold (owner, source, source id, lines) reads in the workers; `owner` comes back
        with each piece's end in `land`."""
        if self.pool is None:
            self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
        owned = [
            (owner, Piece(source, source_id, part))
            for owner, source, source_id, lines in reads
            for part in split_lines(lines, self.piece_bytes)
        ]
        pieces = [piece for _, piece in owned]
        results = [
            self.pool.apply_async(
                fold_batch, ([piece], self.max_line_bytes, self.rules, None, latest_us)
            )
            for piece in pieces
        ]
        return Flight(pieces, [owner for owner, _ in owned], results, checkpoints)

    def land(
        self, flight: Flight, processor: Processor, between: Callable[[list[Reached]], None]
    ) -> dict[str, int]:
        """Merge a flight's folds into `processor`, in input order, calling `between` after
        each piece with how far each owner's lines are merged (a chance to commit); returns
        the new events per source. A piece's fold is dropped once merged."""
        fresh: dict[str, int] = {}
        sources = {piece.source_id: piece.source for piece in flight.pieces}
        reached: dict[int, Reached] = {}
        groups = merged = 0
        for position, piece in enumerate(flight.pieces):
            folded: Folded = flight.results[position].get()
            flight.results[position] = None
            repeats = folded.merge_into(processor)  # files may be rotated: no re-reading
            groups, merged = groups + len(folded.groups), merged + folded.merged
            fresh[piece.source] = fresh.get(piece.source, 0) + sum(folded.accepted)
            for entry in repeats:
                source = sources.get(entry.source_id, piece.source)
                fresh[source] = fresh.get(source, 0) - 1
            del folded
            owner, lines = flight.owners[position], piece.lines
            reached[id(owner)] = Reached(owner, lines.end, lines.line + len(lines.items))
            between(list(reached.values()))
        if merged * 2 > groups:
            self.resting = self.REST_READS
        return fresh

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def split_lines(lines: Lines, max_bytes: int) -> Iterator[Lines]:
    """`lines` cut into runs of about `max_bytes`, each with its own offset and number."""
    items, oversize = lines.items, lines.oversize
    start, offset, size = 0, lines.offset, 0
    for index, line in enumerate(items):
        size += oversize.get(index, len(line)) + 1
        if size >= max_bytes and index + 1 < len(items):
            yield slice_lines(lines, start, index + 1, offset, offset + size)
            start, offset, size = index + 1, offset + size, 0
    yield slice_lines(lines, start, len(items), offset, lines.end)


def slice_lines(lines: Lines, start: int, stop: int, offset: int, end: int) -> Lines:
    last = stop == len(lines.items)
    return Lines(
        offset,
        lines.line + start,
        lines.items[start:stop],
        end,
        {i - start: n for i, n in lines.oversize.items() if start <= i < stop},
        lines.unterminated and last,
    )
