"""Replay's workers, one per partition of the runs. Every worker reads every batch of the
input (from the page cache) and folds only the lines of its runs, by a hash of the run id
as written in the line; each line's partition is found once, by whichever worker reaches
its batch first (`_Owners`). So a run is folded whole by one worker, which writes its rows,
and the parent adopts it as it is. A run that reaches the parent in parts anyway is merged
(see `parallel`)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import traceback
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import Any, Final, NamedTuple

from runwatch.projections.alerts import RuleSet
from runwatch.sinks.store.scratch import Scratch
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.tally import Tally
from runwatch.stream.errors import InputError
from runwatch.stream.services.parallel import (
    Folded,
    Part,
    Region,
    fold_parts,
    folder_for,
    parts_of,
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


def owners_of(lines: Lines, parts: int) -> array[int]:
    """The partition of each of `lines`."""
    return array("H", [partition_of(line, parts) for line in lines.items])


def pick(lines: Lines, owners: Sequence[int], part: int) -> Lines:
    """The lines of partition `part` (`owners` says each line's), each with its own offset
    and number (`Lines.offsets`, `Lines.numbers`)."""
    items = lines.items
    if len(owners) != len(items):
        raise InputError(
            f"{len(items)} lines where {len(owners)} were read before: a file changed "
            "during the replay"
        )
    sizes = list(map(len, items))
    for index, size in lines.oversize.items():
        sizes[index] = size
    offsets = itertools.accumulate(map((1).__add__, sizes), initial=lines.offset)
    numbers = range(lines.line, lines.line + len(items))
    mine = list(map(part.__eq__, owners))
    oversize = {}
    if lines.oversize:
        position = {old: new for new, old in enumerate(itertools.compress(numbers, mine))}
        oversize = {
            position[lines.line + index]: size
            for index, size in lines.oversize.items()
            if mine[index]
        }
    return Lines(
        lines.offset,
        lines.line,
        list(itertools.compress(items, mine)),
        lines.end,
        oversize,
        lines.unterminated and bool(mine) and mine[-1],
        array("q", itertools.compress(offsets, mine)),
        array("q", itertools.compress(numbers, mine)),
    )


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
    settings: FoldSettings,
    dealing: Dealing,
    results: Any,
) -> None:
    """A worker process of a partitioned replay: reads every batch, folds the lines of its
    partition in order (`Dealing` says which), keeping the runs in flight between batches
    (at most `settings.keep`, the rest handed over and merged later), and puts one `Folded`
    per batch on `results`."""
    max_line_bytes, rules, latest_us, keep = settings
    try:
        rows = scratch.join()
        folder = folder_for(max_line_bytes, rules, None, latest_us, retire=True)
        owners = _Owners(dealing, batches, part, max_line_bytes)
        for number, batch in enumerate(batches):
            share: Iterable[Part] = parts_of(batch, max_line_bytes)
            if dealing.workers > 1:
                share = (
                    p._replace(lines=pick(p.lines, mine, part))
                    for p, mine in zip(share, owners.of(number), strict=True)
                )
            left = 0 if number == len(batches) - 1 else keep
            results.put(fold_parts(folder, share, left, None, rows, part))
        rows.close()
    except BaseException:
        results.put(WorkerFailed(traceback.format_exc()))
        raise


class Dealing(NamedTuple):
    """What the workers share to find each line's partition once: the next batch nobody
    has taken to deal yet, and each worker's inbox for the lists the others find."""

    claimed: Any  # multiprocessing.Value("i")
    inboxes: list[Any]

    @property
    def workers(self) -> int:
        return len(self.inboxes)


class _Owners:
    """The partition of each line of each batch, for one worker. Whichever worker reaches
    a batch first finds them and mails the list (two bytes a line) to the others, one batch
    ahead of its own folding: so a worker busy with a big run leaves that work to the others
    and never waits for it. The dealer reads that batch again when it folds it: keeping its
    lines from one batch to the next cost each worker ~25 MB, the second read (page cache)
    about 0.2 µs a line."""

    def __init__(
        self, dealing: Dealing, batches: list[list[Region]], part: int, max_line_bytes: int
    ) -> None:
        self.dealing = dealing
        self.batches = batches
        self.part = part
        self.max_line_bytes = max_line_bytes
        self.parent = os.getppid()
        self.arrived: dict[int, list[array[int]]] = {}

    def of(self, number: int) -> list[array[int]]:
        """The owners of batch `number`'s lines, after dealing every batch nobody took up
        to the next one."""
        workers = self.dealing.workers
        while (taken := self._take(number + 1)) is not None:
            owners = [
                owners_of(p.lines, workers)
                for p in parts_of(self.batches[taken], self.max_line_bytes)
            ]
            for peer, inbox in enumerate(self.dealing.inboxes):
                if peer == self.part:
                    self.arrived[taken] = owners
                else:
                    inbox.put((taken, owners))
        while number not in self.arrived:
            taken, owners = _receive(self.dealing.inboxes[self.part], self.parent)
            self.arrived[taken] = owners
        return self.arrived.pop(number)

    def _take(self, last: int) -> int | None:
        """The next batch nobody deals yet, if it is `last` or before."""
        claimed = self.dealing.claimed
        with claimed.get_lock():
            taken: int = claimed.value
            if taken > last or taken >= len(self.batches):
                return None
            claimed.value = taken + 1
        return taken


def _receive(inbox: Any, parent: int) -> tuple[int, list[array[int]]]:
    """The next list another worker mailed; gives up if the replay is gone."""
    while True:
        try:
            item: tuple[int, list[array[int]]] = inbox.get(timeout=1)
            return item
        except queue.Empty:
            if os.getppid() != parent:
                raise SystemExit("the replay that started this worker is gone") from None


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
        dealing = Dealing(context.Value("i", 0), [context.Queue() for _ in range(workers)])
        self.processes = [
            context.Process(
                target=fold_partition,
                args=(scratch, batches, part, settings, dealing, self.queues[part]),
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
