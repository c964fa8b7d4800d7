"""Untrusted text reaches terminals as visible escapes, and console lines read as prose."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from helpers import TailProcess, run_cli
from runwatch.projections.alerts import render
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.sinks.terminal import terminal_safe
from runwatch.stream.console import console_line, table, wall_clock
from runwatch.stream.core.decode import parse_time
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor

EVIL = "R-\x1b]0;pwned\x07\x1b[2J-\u202eevil"
SHOWN = "R-\\x1b]0;pwned\\x07\\x1b[2J-\\u202eevil"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (EVIL, SHOWN),
        ("tab\tnew\nline\r", "tab\\tnew\\nline\\r"),
        ("del\x7f c1\x9b nul\x00", "del\\x7f c1\\x9b nul\\x00"),
        ("\u2066iso\u2069 \u200f", "\\u2066iso\\u2069 \\u200f"),
        ("plain ünïcödé → ✓ 日本", "plain ünïcödé → ✓ 日本"),
    ],
)
def test_terminal_safe_escapes_controls_and_bidi(text: str, shown: str) -> None:
    """A log line must not retitle the window, clear the screen or reorder what follows."""
    assert terminal_safe(text) == shown


def test_console_line_is_escaped_and_readable() -> None:
    """People read console lines: no Python reprs, durations and sizes in human units."""
    record = {
        "wall_time": "2026-01-01T00:00:00Z",
        "type": "ARCHIVED",
        "run_id": EVIL,
        "duration_s": 1770.2,
        "bytes": 1_234_567,
        "skipped": [["artifacts/", "not_found"]],
        "seq": 4,
    }
    line = console_line(record)
    assert line == (
        f"2026-01-01T00:00:00Z ARCHIVED {SHOWN} duration=29m 30s bytes=1.2 MB "
        "skipped=artifacts/ (not_found)"
    )


def test_table_cells_are_escaped() -> None:
    """status and alerts list print stored text that came from the logs."""
    assert SHOWN in table(["run"], [[EVIL]])
    assert "\x1b" not in table(["run"], [[EVIL]])


def evil_run(path: Path) -> None:
    lines = [
        {"event_type": "run_created", "timestamp": "2026-11-22T05:00:00Z", "run_id": EVIL},
        {"event_type": "run_started", "timestamp": "2026-11-22T05:00:01Z", "run_id": EVIL},
        {
            "event_type": "run_failed",
            "timestamp": "2026-11-22T05:00:02Z",
            "run_id": EVIL,
            "message": "boom \x1b[31m",
        },
    ]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def assert_escaped(output: str) -> None:
    assert "\x1b" not in output
    assert "\x07" not in output
    assert "\u202e" not in output
    assert SHOWN in output


def test_tail_status_and_alerts_list_print_escapes(tmp_path: Path) -> None:
    """A run id holding an OSC title and a clear-screen sequence must print as text in the
    three places an operator looks: tail's console, status, alerts list."""
    events = tmp_path / "events"
    events.mkdir()
    evil_run(events / "run.jsonl")
    db = tmp_path / "live.db"
    with TailProcess(tmp_path, db, events) as tail:
        tail.wait_for_accepted(3)
        tail.wait_until(lambda: "RUN_COMPLETED" in tail.output() or "failed" in tail.output())
        assert tail.stop() == 0
    assert_escaped(tail.output())
    status = run_cli("status", "--db", db, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert_escaped(status.stdout)
    listing = run_cli("alerts", "list", "--db", db, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert_escaped(listing.stdout)


def test_resolved_stall_names_the_last_event_time(tmp_path: Path) -> None:
    """The stall rule's summary reads `no event since {last_event_at}`; the recovery a run's
    completion makes must carry that field, or the resolution prints `no event since ?`."""
    db = tmp_path / "state.db"
    store = SqliteStore(db)
    try:
        processor = Processor(
            store, stall_after_s=60, max_line_bytes=1 << 20, wall_clock=wall_clock
        )
        first = b'{"event_type": "run_started", "timestamp": "2026-01-01T00:00:00Z", "run_id": "R"}'
        last = (
            b'{"event_type": "run_completed", "timestamp": "2026-01-01T01:00:00Z", "run_id": "R"}'
        )
        processor.process("log", 1, Lines(0, 1, [first], len(first) + 1))
        processor.detect(parse_time("2026-01-01T00:30:00Z"))
        processor.process("log", 1, Lines(len(first) + 1, 2, [last], 0))
        derived = processor.commit([])
    finally:
        store.close()
    recovered = [d for d in derived if d.type == "RUN_RECOVERED"]
    assert len(recovered) == 1
    summary = render(
        "run {run_id} stalled: no event since {last_event_at}",
        {"run_id": "R", **recovered[0].data},
    )
    assert summary == "run R stalled: no event since 2026-01-01T01:00:00.000000Z"
