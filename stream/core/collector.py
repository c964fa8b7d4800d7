"""Python's cycle collector, run at the fold's commits instead of whenever allocations pile
up. The fold makes no reference cycles, yet the collector's automatic full passes walk
every object of every run in flight: 13 of them took 1.9 s of a 20 s replay of 3,000
interleaved runs, and their sweeps through memory slow the fold around them too. So a
service folds with automatic collection paused (`paused`), and each commit collects what
was made since the one before (`collect`), with a full pass at most every FULL_EVERY_S."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

FULL_EVERY_S: Final = 300.0
"""A cycle that reaches back into objects a young pass no longer walks is freed by then."""


class _Passes:
    last_full = time.monotonic()


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
    since the last commit, or among all of them every FULL_EVERY_S. Otherwise nothing: the
    automatic collector is on."""
    if gc.isenabled():
        return
    now = time.monotonic()
    if now - _Passes.last_full >= FULL_EVERY_S:
        _Passes.last_full = now
        gc.collect()
    else:
        gc.collect(1)
