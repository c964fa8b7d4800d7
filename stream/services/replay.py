"""Rebuild the projection from finished JSONL files into a scratch database, then swap it in.

The target database is replaced only when the build is complete: an interrupted replay
leaves the old database untouched. Stalls are judged against the greatest event time in
the input, so the same files always give the same rows. Replay delivers nothing outward.

Large files are cut into line-aligned regions that worker processes decode and fold; each
worker writes the rows of the groups it folded and hands back their state and index entries
as bytes. The parent adopts a group it has not seen, and merges one that straddles regions
(the projections are semilattices, so merging partial folds equals folding everything);
see `parallel`.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from runwatch.projections import DerivedEvent
from runwatch.projections.slo import transitions
from runwatch.sinks.store import Store, reads
from runwatch.sinks.store.api import Checkpoint
from runwatch.sinks.store.scratch import Scratch, scratch_for
from runwatch.sinks.store.slo_reads import finished_runs
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import Progress, wall_clock
from runwatch.stream.core import collector
from runwatch.stream.core.tally import Tally
from runwatch.stream.services.parallel import (
    Observer,
    Region,
    fold_in_workers,
    forget,
    join_build,
    read_regions,
)
from runwatch.stream.services.partitions import FoldSettings, PartitionedFold
from runwatch.stream.services.runtime import Runtime, now_us
from runwatch.stream.settings.alerts import AlertSetup, default_alert_setup
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.discovery import checkpoint_for

PARALLEL_CHUNK_BYTES: Final = 8 << 20
COMMIT_EVERY: Final = 50_000
"""New events between a build's commits. What a commit writes (adopted runs' states and
event index, one process's runs) is held until it: at 200,000 events a one-process replay
of interleaved files peaked at 279 MB, at 50,000 at 189 MB, in the same time."""


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
        with collector.paused():
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
    summary.database = scratch.target_name
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
    paths = {source_id: path for path, source_id in source_ids.items()}
    next_line = dict.fromkeys(files, 1)
    derived = 0
    checkpoints: list[Checkpoint] = []
    owners: dict[str, int] = {}  # see `Folded.merge_into`

    def count(region: Region, line_count: int, done: bool) -> None:
        next_line[region.path] += line_count
        if done and region.last:
            checkpoints.append(checkpoint_for(region.path, region.end, next_line[region.path]))

    def commit_when_due() -> None:
        nonlocal derived, checkpoints
        if processor.pending.accepted >= COMMIT_EVERY or processor.crowded:
            derived += len(processor.commit(checkpoints, everything=False))
            checkpoints = []

    pool = partitioned = None
    regions = list(_regions(sizes, source_ids, chunk_bytes))
    batches = list(_batches(regions, chunk_bytes))
    if workers > 0 and total_bytes > 2 * chunk_bytes:
        if observer is None:
            keep = max(settings.cache_groups, settings.cache_groups_max // workers)
            partitioned = PartitionedFold(
                scratch,
                batches,
                workers,
                FoldSettings(settings.max_line_bytes, alerts.rules, processor.latest_us, keep),
            )
        else:  # an observer sees the events of each batch in input order
            pool = multiprocessing.get_context("fork").Pool(
                workers, initializer=join_build, initargs=(scratch,)
            )
    try:
        if partitioned is None and pool is None:
            for region, lines, done in read_regions(
                iter(regions),
                settings.max_line_bytes,
                lambda region: next_line[region.path],  # a file's later regions go on counting
            ):
                processor.process(str(region.path), region.source_id, lines)
                count(region, len(lines.items), done)
                bar.advance(lines.end - lines.offset, processor.seen)
                commit_when_due()
        else:
            results = (
                partitioned.results()
                if partitioned is not None
                else fold_in_workers(
                    pool,
                    2 * workers,
                    batches,
                    settings.max_line_bytes,
                    alerts.rules,
                    observer,
                    processor.latest_us,
                )
            )
            for batch, folded in zip(batches, results, strict=True):
                repeats = folded.merge_into(
                    processor, [next_line[r.path] for r in batch], owners, paths
                )
                if observer is not None and folded.observer is not None:
                    observer.merge(folded.observer)
                    forget(observer, repeats, paths)
                for region, lines_in_region in zip(batch, folded.line_counts, strict=True):
                    count(region, lines_in_region, True)
                bar.advance(sum(r.end - r.start for r in batch), processor.seen)
                commit_when_due()
    finally:
        if pool is not None:
            pool.terminate()
        if partitioned is not None:
            partitioned.close()
    processor.detect(processor.max_event_time, bounded=False)
    store.set_meta([("event_time_now", str(processor.max_event_time))])
    if settings.objectives:  # judged over the runs as written: commit them first
        derived += len(processor.commit(checkpoints))
        checkpoints = []
        processor.note(*slo_history(store, settings, processor.max_event_time))
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


def slo_history(store: Store, settings: Settings, until: int) -> list[DerivedEvent]:
    """The SLO_BURN and SLO_RECOVERED of the whole history, in event time, up to `until`."""
    events, _ = transitions(settings.objectives, finished_runs(store.db), until)
    return events


def _batches(regions: Iterable[Region], chunk_bytes: int) -> Iterator[list[Region]]:
    """Regions batched to about `chunk_bytes` per worker task (small files share one)."""
    batch: list[Region] = []
    batch_bytes = 0
    for region in regions:
        batch.append(region)
        batch_bytes += region.end - region.start
        if batch_bytes >= chunk_bytes:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def _regions(
    sizes: dict[Path, int], source_ids: dict[Path, int], chunk_bytes: int
) -> Iterator[Region]:
    for path, size in sizes.items():
        if size <= 2 * chunk_bytes:
            yield Region(path, source_ids[path], 0, size, True)
            continue
        for start, end in _line_aligned_ranges(path, size, chunk_bytes):
            yield Region(path, source_ids[path], start, end, end == size)


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
                dispatcher.wait_drained()
            finally:
                dispatcher.stop()
            rows = store.unevaluated()
            if not rows:
                break
            runtime.processor.commit([], now=now_us(), evaluated=rows)
        audit.drain()
    finally:
        store.close()
