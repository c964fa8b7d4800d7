"""Rebuild the projection from finished JSONL files into a scratch database, then swap it in.

The target database is replaced only when the build is complete: an interrupted replay
leaves the old database untouched. Stalls are judged against the greatest event time in
the input, so the same files always give the same rows. Replay delivers nothing outward.

Large files are cut into line-aligned chunks that worker processes decode and fold into
partial group states; the parent merges them (the projections are semilattices, so merging
partial folds equals folding everything) and alone talks to the database.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Final, Protocol, Self

import orjson

from runwatch.projections import DerivedEvent, Event
from runwatch.projections.alerts import RuleSet, Trigger
from runwatch.sinks.store import Store, is_postgres, reads
from runwatch.sinks.store.api import Changes, Checkpoint, DeadLetter
from runwatch.sinks.store.keys import RUN, GroupKey, IndexEntry, load_index
from runwatch.sinks.store.scratch import Scratch, scratch_for
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import Progress, wall_clock
from runwatch.stream.core.decode import RAW_KEEP, decode
from runwatch.stream.core.groups import restore
from runwatch.stream.core.lines import Lines, LineSplitter
from runwatch.stream.core.processor import Processor, Tally
from runwatch.stream.services.runtime import Runtime, now_us
from runwatch.stream.settings.alerts import AlertSetup, default_alert_setup
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.discovery import checkpoint_for

CHUNK_BYTES: Final = 1 << 20
PARALLEL_CHUNK_BYTES: Final = 8 << 20
COMMIT_EVERY: Final = 200_000


class Observer(Protocol):
    """Sees every decoded event of a replay (offline analysis). Each worker fills an `empty()`
    copy that the parent `merge`s in input order; an event that two workers both saw as new
    is then `forget`-ten once, so what is observed as fresh counts every event id once."""

    def observe(self, event: Event, source: str, fresh: bool) -> None: ...

    def forget(self, event: Event) -> None: ...

    def empty(self) -> Self: ...

    def merge(self, later: Self) -> None: ...


@dataclass(slots=True)
class ReplaySummary:
    """What a replay read and built; `as_dict` is the `--json` output."""

    database: str
    files: int
    bytes: int
    lines: int
    seconds: float
    tally: Tally
    runs_by_status: dict[str, int] = field(default_factory=dict)
    stalled_runs: int = 0
    pattern_runs: int = 0
    derived_events: int = 0

    @property
    def events_per_s(self) -> float:
        seen = self.tally.accepted + self.tally.duplicate + self.tally.rejected_total
        return seen / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "files": self.files,
            "bytes": self.bytes,
            "lines": self.lines,
            "seconds": round(self.seconds, 3),
            "events_accepted": self.tally.accepted,
            "events_duplicate": self.tally.duplicate,
            "events_rejected": self.tally.rejected_total,
            "rejected_by_reason": dict(sorted(self.tally.rejected.items())),
            "blank_lines": self.tally.blank,
            "events_per_s": round(self.events_per_s),
            "runs_by_status": self.runs_by_status,
            "stalled_runs": self.stalled_runs,
            "pattern_runs": self.pattern_runs,
            "derived_events": self.derived_events,
        }


def default_workers() -> int:
    return min(os.cpu_count() or 1, 4)


def replay(
    files: list[Path],
    target: Path | str,
    settings: Settings,
    progress: bool | None = None,
    workers: int | None = None,
    chunk_bytes: int = PARALLEL_CHUNK_BYTES,
    alerts: AlertSetup | None = None,
    deliver: bool = False,
    observer: Observer | None = None,
) -> ReplaySummary:
    """Fold `files` (in order) into a new database and atomically replace `target` with it
    (a SQLite file, or the schema a PostgreSQL URL names). `workers` = 0 folds in this
    process; default: one worker per core (at most 4). Inputs over 2 × `chunk_bytes` are cut
    into regions of about `chunk_bytes` for the workers. Alert decisions and completion jobs
    are recorded (`alerts`: default the built-in rules); they are left to deliver only with
    `deliver`. `observer` is shown every decoded event."""
    alerts = alerts or default_alert_setup()
    started = time.perf_counter()
    scratch = scratch_for(target)
    store = scratch.open()
    try:
        summary = _build(
            files,
            scratch,
            store,
            settings,
            progress,
            started,
            default_workers() if workers is None else workers,
            chunk_bytes,
            alerts,
            deliver,
            observer,
        )
        store.set_meta(
            [("built_by", "replay"), ("built_at", wall_clock()), ("inputs", str(len(files)))]
        )
        store.finalize()
        built = reads.totals(store.db)
        summary.runs_by_status = built.runs_by_status
        summary.stalled_runs = built.stalled_runs
        summary.pattern_runs = built.pattern_runs
        store.close()
        scratch.publish()
    except BaseException:
        store.close()
        scratch.discard()
        raise
    summary.seconds = time.perf_counter() - started
    summary.database = str(store.path) if is_postgres(target) else str(target)
    return summary


def _build(
    files: list[Path],
    scratch: Scratch,
    store: Store,
    settings: Settings,
    progress: bool | None,
    started: float,
    workers: int,
    chunk_bytes: int,
    alerts: AlertSetup,
    deliver: bool,
    observer: Observer | None,
) -> ReplaySummary:
    processor = Runtime.replay(
        store,
        settings,
        alerts,
        deliver=deliver,
        observe=None if observer is None else observer.observe,
    ).processor
    sizes = {path: path.stat().st_size for path in files}
    total_bytes = sum(sizes.values())
    bar = Progress(total_bytes, "replay", enabled=progress)
    source_ids = {path: store.source_id(str(path)) for path in files}
    next_line = dict.fromkeys(files, 1)
    derived = 0
    checkpoints: list[Checkpoint] = []

    def count(region: Region, line_count: int, done: bool) -> None:
        next_line[region.path] += line_count
        if done and region.last:
            checkpoints.append(checkpoint_for(region.path, region.end, next_line[region.path]))

    pool = None
    if workers > 0 and total_bytes > 2 * chunk_bytes:
        pool = multiprocessing.get_context("fork").Pool(
            workers, initializer=_join_build, initargs=(scratch,)
        )
    try:
        regions = _regions(sizes, source_ids, chunk_bytes)
        if pool is None:
            for region, lines, done in _read_regions(regions, settings.max_line_bytes):
                processor.process(str(region.path), region.source_id, lines)
                count(region, len(lines.items), done)
                bar.advance(lines.end - lines.offset, processor.seen)
                if processor.pending.accepted >= COMMIT_EVERY or processor.crowded:
                    derived += len(processor.commit(checkpoints, everything=False))
                    checkpoints = []
        else:
            for folded in _fold_in_workers(
                pool,
                2 * workers,
                regions,
                chunk_bytes,
                settings.max_line_bytes,
                alerts.rules,
                observer,
                processor.latest_us,
            ):
                folded.merge_into(processor, next_line, observer)
                for region, lines_in_region in zip(folded.regions, folded.line_counts, strict=True):
                    count(region, lines_in_region, True)
                bar.advance(sum(r.end - r.start for r in folded.regions), processor.seen)
                if processor.pending.accepted >= COMMIT_EVERY or processor.crowded:
                    derived += len(processor.commit(checkpoints, everything=False))
                    checkpoints = []
    finally:
        if pool is not None:
            pool.terminate()
    processor.detect(processor.max_event_time, bounded=False)
    store.set_meta([("event_time_now", str(processor.max_event_time))])
    derived += len(processor.commit(checkpoints, release=True))
    bar.close()
    line_total = sum(next_line.values()) - len(next_line)
    return ReplaySummary(
        "",
        len(files),
        total_bytes,
        line_total,
        time.perf_counter() - started,
        processor.total,
        derived_events=derived,
    )


@dataclass(frozen=True, slots=True)
class Region:
    """[start, end) of one file, starting at a line start; `last` if it ends the file."""

    path: Path
    source_id: int
    start: int
    end: int
    last: bool


@dataclass(slots=True)
class Folded:
    """A worker's fold of some regions, its rows already written: per group its key, state
    and index entries as the store keeps them; the derived events and open runs of its runs;
    per-region bookkeeping. Bytes, not objects: the parent does nothing per event."""

    regions: list[Region]
    line_counts: list[int]
    dead_letters: list[list[DeadLetter]]  # per region; lines numbered from the region start
    set_aside: list[DeadLetter]  # unstorable values: numbered already
    groups: list[tuple[str, bytes, bytes]]
    derived: list[DerivedEvent]
    open_runs: dict[str, tuple[int, bool]]
    tally: Tally
    max_event_time: int
    triggers: list[Trigger]
    observer: Observer | None

    def merge_into(
        self, processor: Processor, next_line: dict[Path, int], observer: Observer | None = None
    ) -> None:
        """A group new to `processor` is adopted as the worker wrote it; one it has seen
        before (a run that straddles regions) is merged, and its rows are written again."""
        repeats: list[IndexEntry] = []
        merged_runs: set[str] = set()
        for text, state, index in self.groups:
            key = GroupKey.parse(text)
            if processor.adopt(key, state, index, self.open_runs.get(key.name)):
                continue
            if key.kind == RUN:
                merged_runs.add(key.name)
            entries = load_index(index)
            partial = restore(key, orjson.loads(state), {entry.event_id for entry in entries})
            known = processor.merge(key, partial, index)
            if known and observer is not None:
                repeats.extend(entry for entry in entries if entry.event_id in known)
        # A merged run is observed again when its merged state is flushed.
        processor.note(*(d for d in self.derived if d.run_id not in merged_runs))
        letters = [
            DeadLetter(
                d.source,
                d.offset,
                d.line + next_line[region.path] - 1,
                d.reason,
                d.detail,
                d.raw,
                d.raw_size,
            )
            for region, region_letters in zip(self.regions, self.dead_letters, strict=True)
            for d in region_letters
        ]
        letters.extend(self.set_aside)
        processor.absorb(letters, self.tally, self.max_event_time, self.triggers)
        if observer is not None and self.observer is not None:
            observer.merge(self.observer)
            _forget(observer, repeats, {r.source_id: r.path for r in self.regions})


def _forget(observer: Observer, repeats: list[IndexEntry], paths: dict[int, Path]) -> None:
    """Re-read the events a worker took as new that an earlier batch already had, and take
    back their observation. Such repeats are rare, so this costs little."""
    repeats.sort(key=attrgetter("source_id", "offset"))
    for source_id, entries in itertools.groupby(repeats, key=attrgetter("source_id")):
        with paths[source_id].open("rb") as handle:
            for entry in entries:
                handle.seek(entry.offset)
                event = decode(handle.read(entry.length))
                if isinstance(event, Event):
                    observer.forget(event)


def _regions(
    sizes: dict[Path, int], source_ids: dict[Path, int], chunk_bytes: int
) -> Iterator[Region]:
    for path, size in sizes.items():
        if size <= 2 * chunk_bytes:
            yield Region(path, source_ids[path], 0, size, True)
            continue
        for start, end in _line_aligned_ranges(path, size, chunk_bytes):
            yield Region(path, source_ids[path], start, end, end == size)


def _read_regions(
    regions: Iterator[Region], max_line_bytes: int
) -> Iterator[tuple[Region, Lines, bool]]:
    """Lines of each region in bounded pieces; the flag marks a region's last piece."""
    for region in regions:
        splitter = LineSplitter(region.start, 1, max_line_bytes=max_line_bytes, keep=RAW_KEEP)
        with region.path.open("rb") as handle:
            handle.seek(region.start)
            remaining = region.end - region.start
            while remaining > 0 and (data := handle.read(min(CHUNK_BYTES, remaining))):
                remaining -= len(data)
                yield region, splitter.feed(data), remaining <= 0 and not region.last
        if region.last:
            yield region, splitter.finish(), True


def _fold_in_workers(
    pool: Any,
    window: int,
    regions: Iterator[Region],
    chunk_bytes: int,
    max_line_bytes: int,
    rules: RuleSet | None,
    observer: Observer | None,
    latest_us: int,
) -> Iterator[Folded]:
    """Regions batched to about `chunk_bytes` per task (many small files share one),
    folded by the pool; results in input order with at most `window` tasks in flight."""
    pending: deque[Any] = deque()
    batch: list[Region] = []
    batch_bytes = 0
    for region in itertools.chain(regions, [None]):
        if region is not None:
            batch.append(region)
            batch_bytes += region.end - region.start
        if batch and (region is None or batch_bytes >= chunk_bytes):
            blank = None if observer is None else observer.empty()
            pending.append(
                pool.apply_async(_fold_regions, (batch, max_line_bytes, rules, blank, latest_us))
            )
            batch, batch_bytes = [], 0
        while pending and (len(pending) >= window or region is None):
            yield pending.popleft().get()


_rows_store: Store | None = None
"""A pool worker's own connection to the build, for the rows it folds."""


def _join_build(scratch: Scratch) -> None:
    global _rows_store  # one connection per pool process, opened once
    _rows_store = scratch.join()


def _fold_regions(
    regions: list[Region],
    max_line_bytes: int,
    rules: RuleSet | None,
    observer: Observer | None,
    latest_us: int,
) -> Folded:
    """In a worker: decode and fold some regions, write the rows of every group they touch,
    and hand back the rest of what the parent needs."""
    folder = Processor(
        None,
        stall_after_s=1,
        max_line_bytes=max_line_bytes,
        wall_clock=wall_clock,
        max_groups=1 << 62,
        rules=rules,
        observe=None if observer is None else observer.observe,
        latest_time=lambda: latest_us,
    )
    line_counts: list[int] = []
    letters: list[list[DeadLetter]] = []
    fresh = True
    for region, lines, done in _read_regions(iter(regions), max_line_bytes):
        if fresh:
            line_counts.append(0)
            letters.append([])
        before = len(folder.dead_letters)
        folder.process(str(region.path), region.source_id, lines)
        line_counts[-1] += len(lines.items)
        letters[-1].extend(folder.dead_letters[before:])
        fresh = done
    numbered = len(folder.dead_letters)
    changes, derived, open_runs = folder.hand_over()
    assert _rows_store is not None, "a pool worker joins the build first"
    _rows_store.commit(
        Changes(
            runs=sorted(changes.runs, key=itemgetter("run_id")),
            tasks=sorted(changes.tasks, key=itemgetter("run_id", "task_id")),
            workstreams=sorted(changes.workstreams, key=itemgetter("run_id", "workstream_id")),
            pattern_runs=sorted(changes.pattern_runs, key=itemgetter("pattern_run_id")),
        ),
        wall_clock(),
    )
    index = dict(changes.index)
    return Folded(
        regions,
        line_counts,
        letters,
        changes.dead_letters[numbered:],
        [(key, state, index[key]) for key, state in changes.states],
        derived,
        open_runs,
        folder.pending,
        folder.max_event_time,
        list(folder.triggers),
        observer,
    )


def _line_aligned_ranges(path: Path, size: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of about `chunk` bytes, each starting at a line start."""
    bounds = [0]
    with path.open("rb") as handle:
        position = chunk
        while position < size:
            handle.seek(position - 1)
            boundary = size
            while block := handle.read(1 << 16):
                newline = block.find(b"\n")
                if newline >= 0:
                    boundary = handle.tell() - len(block) + newline + 1
                    break
            if boundary >= size:
                break
            bounds.append(boundary)
            position = boundary + chunk
    bounds.append(size)
    return list(itertools.pairwise(bounds))


def deliver_outbox(
    settings: Settings, alerts: AlertSetup, *, quiet: bool = False, rounds: int = 5
) -> None:
    """After `replay --deliver`: deliver every pending entry; what the jobs record (e.g.
    ARCHIVAL_FAILED) is evaluated by the rules, whose new alerts are delivered in turn."""
    store = SqliteStore(settings.database)
    try:
        runtime = Runtime.outbox(store, settings, alerts)
        audit = runtime.audit()
        for _ in range(rounds):
            dispatcher = runtime.dispatcher(out=sys.stderr if quiet else sys.stdout)
            dispatcher.start()
            try:
                while not dispatcher.idle(store.db, horizon=float("inf")):
                    time.sleep(0.05)
            finally:
                dispatcher.stop()
            rows = store.unevaluated()
            if not rows:
                break
            runtime.processor.commit([], now=now_us(), evaluated=rows)
        audit.drain()
    finally:
        store.close()
