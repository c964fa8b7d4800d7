"""A giant run's finished tasks leave memory, so a fold's memory follows the tasks in flight,
not the size of the run.

When a run holding `RETIRE_FROM` tasks or more is flushed, its finished tasks (but the
`JUST_FINISHED` that ended last) leave memory with the ids of their events
(`RunState.retire`) for a private file on disk. A Bloom filter of their ids stays: an event
of a task not in memory is looked up on disk only when the filter says the task may have
left, and the task comes back before the event is folded. So a repeat of a retired task's
event is still applied once, and a late one still moves the task. Only a repeat carrying
another task's id than its first copy (one id, two contents) is not recognised once the
first copy's task has left (see the README).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable
from typing import Final

import orjson

from runwatch.projections import RunState
from runwatch.projections.tasks import TASK_TERMINAL
from runwatch.sinks.store.api import TaskSpill
from runwatch.stream.core.groups import Group

RETIRE_FROM: Final = 5_000
"""Tasks in memory from which a run's finished ones leave it at a flush. Runs of the usual
size never reach it, and pay nothing."""
JUST_FINISHED: Final = 1_000
"""Finished tasks that stay, those that ended last: a task that has just finished often
gets another event soon (a retry, a tool call's end), which would bring it back."""

_BITS_PER_TASK: Final = 16  # with 3 probes: about 1 in 200 new tasks looked up for nothing
_FIRST_BITS: Final = 1 << 20
_U64: Final = (1 << 64) - 1


class Bloom:
    """A set of strings that may answer "maybe" for one it does not hold, never "no" for one
    it does; 16 bits a member. Python's string hash is per process: it is never saved."""

    __slots__ = ("bits", "capacity", "count", "mask")

    def __init__(self, bits: int = _FIRST_BITS) -> None:
        self.bits = bytearray(bits // 8)
        self.mask = bits - 1
        self.capacity = bits // _BITS_PER_TASK
        self.count = 0

    def update(self, keys: Iterable[str]) -> None:
        bits, mask, added = self.bits, self.mask, 0
        for key in keys:
            h = hash(key) & _U64
            step = (h >> 32) | 1
            spot = h & mask
            bits[spot >> 3] |= 1 << (spot & 7)
            spot = (h + step) & mask
            bits[spot >> 3] |= 1 << (spot & 7)
            spot = (h + 2 * step) & mask
            bits[spot >> 3] |= 1 << (spot & 7)
            added += 1
        self.count += added

    def __contains__(self, key: str) -> bool:
        h, bits, mask = hash(key) & _U64, self.bits, self.mask
        step = (h >> 32) | 1
        spot = h & mask
        if not bits[spot >> 3] >> (spot & 7) & 1:
            return False
        spot = (h + step) & mask
        if not bits[spot >> 3] >> (spot & 7) & 1:
            return False
        spot = (h + 2 * step) & mask
        return bool(bits[spot >> 3] >> (spot & 7) & 1)


class Retired:
    """What stays in memory of a run's retired tasks: its part on disk and the filter."""

    __slots__ = ("__weakref__", "filter", "part")

    def __init__(self, part: int) -> None:
        self.part = part
        self.filter = Bloom()


class Retirement:
    """Retires the finished tasks of a fold's big runs and brings them back on demand.
    `open_disk` (None: nothing is retired) is called at the first retirement; the tasks of
    a state dropped from memory leave the disk at a later call."""

    def __init__(
        self,
        open_disk: Callable[[], TaskSpill] | None,
        start_from: int | None = None,
        just_finished: int = JUST_FINISHED,
    ) -> None:
        self._open_disk = open_disk
        self._start_from = RETIRE_FROM if start_from is None else start_from
        self._just_finished = just_finished
        self._disk: TaskSpill | None = None
        self._parts = itertools.count(1)
        self._dropped: list[int] = []  # parts of states gone from memory, to delete

    def after_flush(self, group: Group) -> None:
        """Retire the finished tasks of `group`'s run, which its flush has just written, but
        the `just_finished` that ended last."""
        state = group.state
        if (
            self._open_disk is None
            or not isinstance(state, RunState)
            or len(state.tasks) < self._start_from
        ):
            return
        ended = sorted(
            (task.key[0], task_id)  # type: ignore[index]  # a finished task has a key
            for task_id, task in state.tasks.items()
            if task.status in TASK_TERMINAL
        )
        done = [task_id for _, task_id in ended[: len(ended) - self._just_finished]]
        if not done:
            return
        disk = self._open()
        retired = group.retired
        if retired is None:
            retired = group.retired = Retired(next(self._parts))
            weakref.finalize(retired, self._dropped.append, retired.part)
        done.sort()  # see `put`; and each row is made as it is written: orjson's result
        leaving = state.retire(done)  # holds a buffer of some KiB while it lives
        disk.put(retired.part, ((t, end, orjson.dumps(saved)) for t, end, saved in leaving))
        bloom = retired.filter
        if bloom.count + len(leaving) > bloom.capacity:
            retired.filter = bloom = _grown(bloom.count + len(leaving), disk, retired.part)
        else:
            bloom.update(done)

    def bring_back(self, group: Group, task_id: str | None) -> None:
        """Before an event of `task_id` is folded into `group` (which has retired tasks):
        take the task back if it left."""
        state, retired = group.state, group.retired
        assert isinstance(state, RunState) and retired is not None
        if task_id is None or task_id in state.tasks or task_id not in retired.filter:
            return
        disk = self._open()
        taken = disk.take(retired.part, task_id)
        if taken is None:  # new to the run: the filter's false "maybe"
            return
        blob, end = taken
        latest = state.retired_end
        if end == latest:  # it had the latest end among the retired
            latest = disk.latest_end(retired.part)
        state.page_in(task_id, orjson.loads(blob), latest)

    def before_merge(self, group: Group, partial: RunState) -> None:
        """Take back every task `partial` holds or marks changed, before it is merged."""
        for task_id in partial.tasks.keys() | partial.dirty_tasks:
            self.bring_back(group, task_id)

    def _open(self) -> TaskSpill:
        if self._disk is None:
            assert self._open_disk is not None  # a group retires only with a disk
            self._disk = self._open_disk()
        if self._dropped:
            self._disk.drop(self._dropped)
            self._dropped.clear()
        return self._disk


def _grown(members: int, disk: TaskSpill, part: int) -> Bloom:
    """A filter four times as large, or more, filled from the tasks on disk."""
    bits = _FIRST_BITS
    while bits // _BITS_PER_TASK < members * 2:
        bits *= 4
    bloom = Bloom(bits)
    bloom.update(disk.task_ids(part))
    return bloom
