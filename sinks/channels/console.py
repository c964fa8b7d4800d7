"""The console channel: one line per notification on a stream (stdout by default)."""

from __future__ import annotations

import sys
import threading
from typing import Any, Final, TextIO

from runwatch.sinks.channels.base import ChannelConfig, Outcome
from runwatch.sinks.terminal import terminal_safe

_COLORS: Final = {
    "critical": "\x1b[1;31m",
    "high": "\x1b[31m",
    "warning": "\x1b[33m",
    "medium": "\x1b[33m",
    "low": "\x1b[36m",
    "info": "\x1b[2m",
}


class ConsoleConfig(ChannelConfig):
    """`color: None` colours only when the stream is a terminal."""

    color: bool | None = None

    def build(
        self, name: str, *, stream: TextIO | None = None, lock: threading.Lock | None = None
    ) -> ConsoleChannel:
        return ConsoleChannel(name, stream, color=self.color, lock=lock)

    def describe(self) -> str:
        return "console"


class ConsoleChannel:
    """One line per notification; `lock` keeps lines whole when other threads share the stream."""

    kind = "console"

    def __init__(
        self,
        name: str = "console",
        stream: TextIO | None = None,
        *,
        color: bool | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.name = name
        self.stream = sys.stdout if stream is None else stream
        self.color = self.stream.isatty() if color is None else color
        self.lock = lock or threading.Lock()

    def send(self, notification: dict[str, Any]) -> Outcome:
        line = console_line(notification, self.color) + "\n"
        try:
            with self.lock:
                self.stream.write(line)
                self.stream.flush()
        except (OSError, ValueError):
            return Outcome("retry", "console write failed")
        return Outcome("delivered", "written")

    def close(self) -> None:
        """The stream belongs to the caller, so there is nothing to release."""


def console_line(n: dict[str, Any], color: bool = False) -> str:
    """`<event time> <SEVERITY> <rule> [<state>] <summary>`; log text cannot inject escapes."""
    severity = n["severity"].upper()
    if color:
        severity = f"{_COLORS.get(n['severity'], '')}{severity}\x1b[0m"
    extras = f" (suppressed {n['suppressed']})" if n.get("suppressed") else ""
    extras += " (test)" if n.get("test") else ""
    text = terminal_safe(f"{n['rule']} [{n['state']}] {n['summary']}{extras}")
    return f"{terminal_safe(str(n['event_time']))} {severity} {text}"
