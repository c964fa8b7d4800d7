"""The cycle collector runs at the fold's commits while a service folds, not whenever
allocations pile up: a cycle made while it is paused is freed by the next commit, and the
automatic collector comes back when the service is done."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from runwatch.projections import Event
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import wall_clock
from runwatch.stream.core import collector
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.services.replay import replay
from runwatch.stream.settings.service import Settings


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    """A reference cycle nothing else holds; the weak reference tells when it is freed."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


@pytest.fixture
def automatic() -> Iterator[None]:
    """The automatic collector on around the test, as in any process, whatever it does."""
    enabled = gc.isenabled()
    gc.enable()
    yield
    if not enabled:
        gc.disable()


def test_paused_turns_the_automatic_collector_off_and_back_on(automatic: None) -> None:
    with collector.paused():
        assert not gc.isenabled()
        with collector.paused():  # nested: the outer block still holds it off
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector.paused():
        raise RuntimeError("the fold failed")
    assert gc.isenabled()


def test_a_commit_frees_the_cycles_made_while_collection_is_paused(
    tmp_path: Path, automatic: None
) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    processor = Processor(store, stall_after_s=60, max_line_bytes=1 << 20, wall_clock=wall_clock)
    line = b'{"event_type":"run_started","timestamp":"2026-01-05T08:00:00Z","run_id":"r1"}'
    with collector.paused():
        gc.collect()
        cycle = _cycle()
        processor.process("a.jsonl", 1, Lines(0, 1, [line], len(line) + 1))
        assert cycle() is not None  # nothing collects while paused...
        processor.commit([])
        assert cycle() is None  # ...until the commit
    store.close()


def test_a_full_pass_comes_every_so_often(monkeypatch: pytest.MonkeyPatch, automatic: None) -> None:
    """A cycle that grew old while held is out of a young pass's reach; a full pass, every
    FULL_EVERY commits, frees it."""
    with collector.paused():
        gc.collect()
        old = _cycle()
        holder = old()
        gc.collect(1)
        gc.collect(1)  # promoted to the oldest generation
        del holder
        monkeypatch.setattr(collector._Passes, "young", 0)
        collector.collect()  # a young pass
        assert old() is not None
        monkeypatch.setattr(collector._Passes, "young", collector.FULL_EVERY - 1)
        collector.collect()
        assert old() is None
        assert collector._Passes.young == 0


class EnabledWhileObserved:
    """An analysis observer that notes whether the automatic collector is on at each event."""

    def __init__(self) -> None:
        self.states: set[bool] = set()

    def observe(self, event: Event, source: str, fresh: bool) -> None:
        self.states.add(gc.isenabled())

    def forget(self, event: Event) -> None:
        pass

    def empty(self) -> EnabledWhileObserved:
        return EnabledWhileObserved()

    def merge(self, later: EnabledWhileObserved) -> None:
        self.states |= later.states


def test_a_replay_folds_with_collection_paused_and_restores_it(
    tmp_path: Path, automatic: None
) -> None:
    simulate(tmp_path / "logs", runs=6, seed=5)
    files = sorted((tmp_path / "logs").rglob("*.jsonl"))
    watch = EnabledWhileObserved()
    summary = replay(
        files, tmp_path / "built.db", Settings(), progress=False, workers=0, observer=watch
    )
    assert summary.tally.accepted > 0
    assert watch.states == {False}
    assert gc.isenabled()
