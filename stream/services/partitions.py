"""Replay's workers, one per partition of the runs: every worker reads every batch of the
input and folds only the lines of its runs (a hash of the run id as written in the line), so
a run is folded whole by one worker, which writes its rows; the parent adopts it as it is.
A run that reaches the parent in parts anyway is merged (see `parallel`)."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import queue
import traceback
import zlib
from collections.abc import Iterator
from operator import attrgetter
from typing import Any, Final, NamedTuple

from runwatch.projections.alerts import RuleSet
from runwatch.sinks.store.scratch import Scratch
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.tally import Tally
from runwatch.stream.services.parallel import (
    Folded,
    Region,
    fold_parts,
    folder_for,
    parts_of,
    slice_lines,
)

_PATTERN_RUN_ID: Final = b'"pattern_run_id":'
_RUN_ID: Final = b'"run_id":'
_QUOTE: Final = 34


def partition_of(line: bytes, parts: int) -> int:
    """Which of `parts` workers folds this line: by a hash of its pattern run id or else its
    run id (the key of the group it folds into) as written, found without decoding. A line
    without either, or with one written otherwise, goes to the first; if that splits a
    group, the parent merges its parts."""
    marker = _PATTERN_RUN_ID
    at = line.find(marker)
    if at < 0:
        marker = _RUN_ID
        at = line.find(marker)
        if at < 0:
            return 0
    at += len(marker)
    if line[at : at + 1] == b" ":
        at += 1
    if at >= len(line) or line[at] != _QUOTE:
        return 0
    end = line.find(b'"', at + 1)
    return zlib.crc32(line[at + 1 : end]) % parts if end > 0 else 0


def stretches(lines: Lines, part: int, parts: int) -> Iterator[Lines]:
    """The runs of consecutive lines of `lines` that partition `part` folds."""
    if parts == 1:
        yield lines
        return
    items, oversize = lines.items, lines.oversize
    offset, start, start_offset = lines.offset, -1, 0
    for index, line in enumerate(items):
        if partition_of(line, parts) == part:
            if start < 0:
                start, start_offset = index, offset
        elif start >= 0:
            yield slice_lines(lines, start, index, start_offset, offset)
            start = -1
        offset += (oversize.get(index, len(line)) if oversize else len(line)) + 1
    if start >= 0:
        yield slice_lines(lines, start, len(items), start_offset, lines.end)


class FoldSettings(NamedTuple):
    """What every partition worker folds with: the longest line, the alert rules, the latest
    event time accepted, and how many runs in flight it keeps between batches."""

    max_line_bytes: int
    rules: RuleSet | None
    latest_us: int
    keep: int


class WorkerFailed(NamedTuple):
    """What a partition worker sends instead of a fold when it fails."""

    text: str


def fold_partition(
    scratch: Scratch,
    batches: list[list[Region]],
    part: int,
    parts: int,
    settings: FoldSettings,
    results: Any,
) -> None:
    """A worker process of a partitioned replay: folds the lines of its partition of every
    batch, in order, keeping the runs in flight between batches (at most `settings.keep`,
    the rest handed over and merged later), and puts one `Folded` per batch on `results`."""
    max_line_bytes, rules, latest_us, keep = settings
    try:
        rows = scratch.join()
        folder = folder_for(max_line_bytes, rules, None, latest_us, retire=True)
        select = functools.partial(stretches, part=part, parts=parts)
        for number, batch in enumerate(batches):
            left = 0 if number == len(batches) - 1 else keep
            results.put(
                fold_parts(folder, parts_of(batch, max_line_bytes), left, None, select, rows, part)
            )
        rows.close()
    except BaseException:
        results.put(WorkerFailed(traceback.format_exc()))
        raise


class PartitionedFold:
    """The worker processes of one replay (see the module's docstring), started at once;
    at most `window` results per worker wait in its queue."""

    def __init__(
        self,
        scratch: Scratch,
        batches: list[list[Region]],
        workers: int,
        settings: FoldSettings,
        window: int = 2,
    ) -> None:
        context = multiprocessing.get_context("fork")
        self.batches = batches
        self.queues = [context.Queue(window) for _ in range(workers)]
        self.processes = [
            context.Process(
                target=fold_partition,
                args=(scratch, batches, part, workers, settings, self.queues[part]),
                daemon=True,
            )
            for part in range(workers)
        ]
        for process in self.processes:
            process.start()

    def results(self) -> Iterator[Folded]:
        """Each batch's folds, all partitions as one, in input order."""
        for _ in self.batches:
            yield combine([self._next(part) for part in range(len(self.processes))])

    def _next(self, part: int) -> Folded:
        while True:
            try:
                item = self.queues[part].get(timeout=1)
            except queue.Empty:
                process = self.processes[part]
                if not process.is_alive():
                    raise RuntimeError(
                        f"replay worker {part} ended without its results (exit code "
                        f"{process.exitcode})"
                    ) from None
                continue
            if isinstance(item, WorkerFailed):
                raise RuntimeError(f"replay worker {part} failed:\n{item.text}")
            folded: Folded = item
            return folded

    def close(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join()


def combine(folds: list[Folded]) -> Folded:
    """The folds of one batch by several partitions as one: counts added, dead letters of
    each part in file order."""
    tally = Tally()
    for folded in folds:
        tally.add(folded.tally)
    first = folds[0]
    return Folded(
        first.line_counts,
        [sum(counts) for counts in zip(*(f.accepted for f in folds), strict=True)],
        [
            sorted(itertools.chain(*letters), key=attrgetter("offset"))
            for letters in zip(*(f.dead_letters for f in folds), strict=True)
        ],
        [d for f in folds for d in f.set_aside],
        [group for f in folds for group in f.groups],
        [d for f in folds for d in f.derived],
        {run: seen for f in folds for run, seen in f.open_runs.items()},
        tally,
        max(f.max_event_time for f in folds),
        [t for f in folds for t in f.triggers],
        None,
    )
