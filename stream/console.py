"""Terminal output: a progress bar for long work, plain aligned tables, and a service's
console lines."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from runwatch.sinks.terminal import human_duration, human_size, terminal_safe

__all__ = ["Progress", "ServiceConsole", "console_line", "table", "wall_clock"]


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal and at most 10 times/s."""

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def advance(self, amount: int, events: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(events, now)

    def _draw(self, events: int, now: float) -> None:
        share = min(self.done / self.total, 1.0)
        filled = int(share * 30)
        rate = events / max(now - self.started, 1e-9)
        self.stream.write(
            f"\r{self.label} {share:6.1%} |{'█' * filled}{' ' * (30 - filled)}| "
            f"{self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB "
            f"{rate / 1000:,.0f}k events/s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text columns; numbers right-aligned; None shown as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in rows) and rows
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return terminal_safe(str(value))


QUIET_TYPES = frozenset({"ALERT_SENT"})
"""Audit records not echoed on the console: the console channel already showed the alert."""


def wall_clock() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_NOT_SHOWN: Final = frozenset(
    {"seq", "wall_time", "type", "run_id", "db", "db_seq", "event_time", "prev", "hash"}
)


def console_line(record: dict[str, Any]) -> str:
    """One readable line per audit record: escaped, durations and sizes in human units."""
    parts = [str(record.get("wall_time", "")), str(record["type"])]
    if record.get("run_id"):
        parts.append(str(record["run_id"]))
    parts.extend(
        _field(name, value)
        for name, value in record.items()
        if name not in _NOT_SHOWN and value is not None
    )
    return terminal_safe(" ".join(parts))


def _field(name: str, value: Any) -> str:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and name.endswith("_s"):
        return f"{name[:-2]}={human_duration(value)}"
    if is_number and (name == "bytes" or name.endswith("_bytes")):
        return f"{name}={human_size(value)}"
    return f"{name}={_plain(value)}"


def _plain(value: Any, inner: bool = False) -> str:
    """A value as prose: lists joined by commas, a pair inside a list (a thing and why) as
    `a (b)`, no brackets or quotes."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v, True)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        if inner and len(value) == 2:
            return f"{_plain(value[0], True)} ({_plain(value[1], True)})"
        return ", ".join(_plain(v, True) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class ServiceConsole:
    """A service's console: whole lines even when several threads write (the loop, the
    delivery threads and the console channel share `lock`), and nothing when quiet."""

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False) -> None:
        self.out = out or sys.stdout
        self.quiet = quiet
        self.lock = threading.Lock()

    def write(self, *lines: str) -> None:
        if self.quiet or not lines:
            return
        with self.lock:
            self.out.write("".join(terminal_safe(line) + "\n" for line in lines))
            self.out.flush()

    def say(self, text: str) -> None:
        """A line about the service itself, stamped with the wall clock."""
        self.write(f"{wall_clock()} {text}")

    def records(self, records: list[dict[str, Any]]) -> None:
        """The audit records just appended, one readable line each."""
        self.write(*(console_line(r) for r in records if r["type"] not in QUIET_TYPES))
