"""A tailer's backlog goes to worker processes only while that pays: runs interleaved across
its pieces reach the parent in parts to merge, which costs more than folding them there."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from runwatch.stream.console import wall_clock
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor
from runwatch.stream.services.parallel import Backlog, Reached
from runwatch.stream.settings.alerts import default_alert_setup


def _lines(order: Iterator[tuple[int, int]]) -> Lines:
    items = [
        orjson.dumps(
            {
                "event_type": "task_progress",
                "timestamp": 1767225600 + step,
                "run_id": f"run-{run}",
                "task_id": f"t{step}",
            }
        )
        for run, step in order
    ]
    return Lines(0, 1, items, sum(len(item) + 1 for item in items))


def _land(backlog: Backlog, lines: Lines) -> Processor:
    processor = Processor(
        None, stall_after_s=60, max_line_bytes=1 << 20, wall_clock=wall_clock, max_groups=1 << 20
    )
    flight = backlog.submit([("file", "file.jsonl", 1, lines)], 1 << 62, ([], []))

    def between(reached: list[Reached]) -> None:
        assert reached

    fresh = backlog.land(flight, processor, between)
    assert fresh == {"file.jsonl": len(lines.items)}
    return processor


def test_interleaved_runs_are_left_to_the_parent_for_a_while_then_tried_again() -> None:
    backlog = Backlog(2, 8192, 1 << 20, default_alert_setup().rules)
    try:
        one_after_another = _lines((run, step) for run in range(50) for step in range(40))
        _land(backlog, one_after_another)
        assert backlog.resting == 0
        assert backlog.wanted(1 << 20)

        all_at_once = _lines((run, step) for step in range(40) for run in range(50))
        _land(backlog, all_at_once)
        assert backlog.resting == Backlog.REST_READS
        answers = [backlog.wanted(1 << 20) for _ in range(Backlog.REST_READS + 1)]
        assert answers == [False] * Backlog.REST_READS + [True]
        assert not backlog.wanted(100)  # too small a read is never worth them
    finally:
        backlog.close()
