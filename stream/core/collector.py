"""Python's cycle collector, run at the fold's commits instead of whenever allocations pile
up. The fold makes no reference cycles, yet the collector's automatic full passes walk
every object of every run in flight: 13 of them took 1.9 s of a 20 s replay of 3,000
interleaved runs, and their sweeps through memory slow the fold around them too. So a
service folds with automatic collection paused (`paused`), and each commit collects what
was made since the one before (`collect`), with a full pass every FULL_EVERY commits."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

FULL_EVERY: Final = 1_000
"""A cycle that reaches back into objects a young pass no longer walks is freed by then
(a live service commits up to a few times a second; a replay, every 50,000 events)."""


class _Passes:
    young = 0


@contextmanager
def paused() -> Iterator[None]:
    """Automatic collection off while the block runs (as it was after): its commits collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def collect() -> None:
    """At a commit, while collection is `paused`: free the cycles among the objects made
    since the last commit, or among all of them every FULL_EVERY commits. Otherwise
    nothing: the automatic collector is on."""
    if gc.isenabled():
        return
    _Passes.young += 1
    if _Passes.young >= FULL_EVERY:
        _Passes.young = 0
        gc.collect()
    else:
        gc.collect(1)
