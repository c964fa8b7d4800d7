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
import sqlite3
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from runwatch.sinks.sqlite_store import Checkpoint, DeadLetter, SqliteStore, fsync_path

from .console import Progress
from .decode import RAW_KEEP
from .files import checkpoint_for
from .lines import Lines, LineSplitter
from .processor import Processor, State, Tally
from .settings import Settings

CHUNK_BYTES: Final = 1 << 20
PARALLEL_CHUNK_BYTES: Final = 8 << 20
COMMIT_EVERY: Final = 200_000


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


def wall_clock() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_workers() -> int:
    return min(os.cpu_count() or 1, 4)


def replay(files: list[Path], target: Path, settings: Settings,
           progress: bool | None = None, workers: int | None = None) -> ReplaySummary:
    """Fold `files` (in order) into a new database and atomically replace `target` with it.
    `workers` = 0 folds in this process; default: one worker per core (at most 4)."""
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.replay-{os.getpid()}")
    _remove_database(scratch)
    store = SqliteStore(scratch, fast_unsafe=True)
    try:
        summary = _build(files, store, settings, progress, started,
                         default_workers() if workers is None else workers)
        store.set_meta([("built_by", "replay"), ("built_at", wall_clock()),
                        ("inputs", str(len(files)))])
        store.finalize()
        summary.runs_by_status = dict(store.db.execute(
            "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status").fetchall())
        summary.stalled_runs = store.db.execute(
            "SELECT count(*) FROM runs WHERE stalled=1").fetchone()[0]
        summary.pattern_runs = store.db.execute("SELECT count(*) FROM pattern_runs").fetchone()[0]
        store.close()
        fsync_path(scratch)
        _retire(target)
        os.replace(scratch, target)
        fsync_path(target.parent)
    except BaseException:
        store.close()
        _remove_database(scratch)
        raise
    summary.seconds = time.perf_counter() - started
    summary.database = str(target)
    return summary


def _build(files: list[Path], store: SqliteStore, settings: Settings, progress: bool | None,
           started: float, workers: int) -> ReplaySummary:
    processor = Processor(store, stall_after_s=settings.stall_after,
                          max_line_bytes=settings.max_line_bytes, wall_clock=wall_clock,
                          max_groups=settings.cache_groups, known_groups=set())
    sizes = {path: path.stat().st_size for path in files}
    total_bytes = sum(sizes.values())
    bar = Progress(total_bytes, "replay", enabled=progress)
    derived = lines = 0
    checkpoints: list[Checkpoint] = []
    pool = None
    if workers > 0 and total_bytes > 2 * PARALLEL_CHUNK_BYTES:
        pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        source_ids = {path: store.source_id(str(path)) for path in files}
        if pool is None:
            chunks = _sequential_chunks(sizes, settings)
        else:
            chunks = _parallel_chunks(pool, 2 * workers, sizes, source_ids, settings)
        next_line = 1
        for path, chunk in chunks:
            next_line = chunk.merge_into(processor, str(path), source_ids[path], next_line)
            bar.advance(chunk.size, processor.total.accepted + processor.pending.accepted)
            if chunk.file_end:
                lines += next_line - 1
                checkpoints.append(checkpoint_for(path, sizes[path], next_line))
                next_line = 1
            if processor.pending.accepted >= COMMIT_EVERY:
                derived += len(processor.commit(checkpoints, everything=False))
                checkpoints = []
    finally:
        if pool is not None:
            pool.terminate()
    processor.detect(processor.max_event_time)
    store.set_meta([("event_time_now", str(processor.max_event_time))])
    derived += len(processor.commit(checkpoints))
    bar.close()
    return ReplaySummary("", len(files), total_bytes, lines, time.perf_counter() - started,
                         processor.total, derived_events=derived)


@dataclass(slots=True)
class Chunk:
    """Lines of one file region: either raw lines to fold here, or a worker's folded result."""

    size: int
    file_end: bool
    lines: Lines | None = None
    groups: dict[str, tuple[State, bytes]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    line_count: int = 0
    max_event_time: int = 0

    def merge_into(self, processor: Processor, source: str, source_id: int,
                   first_line: int) -> int:
        """Fold or merge this chunk; returns the line number that follows it."""
        if self.lines is not None:
            processor.process(source, source_id, self.lines)
            return first_line + len(self.lines.items)
        for key, (state, index) in self.groups.items():
            processor.merge(key, state, index)
        for letter in self.dead_letters:  # worker line numbers count from its chunk start
            processor.changes.dead_letters.append(DeadLetter(
                letter.source, letter.offset, letter.line + first_line - 1, letter.reason,
                letter.detail, letter.raw, letter.raw_size))
        processor.pending.blank += self.tally.blank
        for reason, count in self.tally.rejected.items():
            processor.pending.rejected[reason] = processor.pending.rejected.get(reason, 0) + count
        processor.max_event_time = max(processor.max_event_time, self.max_event_time)
        return first_line + self.line_count


def _sequential_chunks(sizes: dict[Path, int], settings: Settings
                       ) -> Iterator[tuple[Path, Chunk]]:
    for path, size in sizes.items():
        splitter = LineSplitter(max_line_bytes=settings.max_line_bytes, keep=RAW_KEEP)
        with path.open("rb") as handle:
            remaining = size
            while remaining > 0 and (data := handle.read(min(CHUNK_BYTES, remaining))):
                remaining -= len(data)
                yield path, Chunk(len(data), False, splitter.feed(data))
        yield path, Chunk(0, True, splitter.finish())


def _parallel_chunks(pool: Any, window: int, sizes: dict[Path, int],
                     source_ids: dict[Path, int], settings: Settings
                     ) -> Iterator[tuple[Path, Chunk]]:
    """Worker results in file order, with at most `window` regions in flight."""
    pending: deque[tuple[Path, Any]] = deque()
    for path, size in sizes.items():
        for start, end in _line_aligned_ranges(path, size, PARALLEL_CHUNK_BYTES):
            task = (str(path), source_ids[path], start, end, end == size,
                    settings.max_line_bytes)
            pending.append((path, pool.apply_async(_fold_region, (task,))))
            if len(pending) >= window:
                done, result = pending.popleft()
                yield done, result.get()
    while pending:
        done, result = pending.popleft()
        yield done, result.get()


def _fold_region(task: tuple[str, int, int, int, bool, int]) -> Chunk:
    """In a worker: decode and fold the lines of one file region into partial group states."""
    source, source_id, start, end, last, max_line_bytes = task
    with open(source, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    folder = Processor(None, stall_after_s=1, max_line_bytes=max_line_bytes,
                       wall_clock=wall_clock, max_groups=1 << 62)
    splitter = LineSplitter(start, 1, max_line_bytes=max_line_bytes, keep=RAW_KEEP)
    folder.process(source, source_id, splitter.feed(data))
    if last:
        folder.process(source, source_id, splitter.finish())
    groups = {key: (group.state, orjson.dumps(group.new_index))
              for key, group in folder.cache.items()}
    return Chunk(len(data), last, None, groups, folder.changes.dead_letters, folder.pending,
                 splitter.line - 1, folder.max_event_time)


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


def _retire(target: Path) -> None:
    """Fold the old database's WAL into it and drop the WAL, so it cannot be replayed onto
    the new file that takes its name."""
    if target.exists():
        try:
            old = sqlite3.connect(target)
            old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            old.close()
        except sqlite3.DatabaseError:
            pass  # not a database we can open: it is being replaced anyway
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
