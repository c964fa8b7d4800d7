"""Alert storms: at most `limit` notifications per rule in each minute of event time; the
rest of that minute become one grouped notification (the count and the first few runs),
sent once the minute is over. Alertmanager's grouping is the model.

Pure and in event time like the alert book: the minute is the notification's event time,
and a digest's id is a hash of the rule, the minute and the first notification it holds, so
a replay of the same logs groups the same notifications under the same ids. Every channel of
a rule gets the same notifications, so the limit holds per rule and channel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .alerts import Notification
from .events import format_time

WINDOW_US: Final = 60_000_000
SAMPLE: Final = 5
"""How many runs a grouped notification names."""
KEEP_US: Final = 10 * WINDOW_US
"""How long a minute's count is kept after it ends: a late notification of that minute is
still grouped, not sent on its own."""


@dataclass(slots=True)
class StormWindow:
    """One rule's notifications in one minute: how many went out, and what was grouped."""

    sent: int = 0
    grouped: int = 0
    first: dict[str, Any] | None = None
    """What the digest needs of the first grouped notification: id, state, severity, channels."""
    runs: list[str] = field(default_factory=list)
    last_time: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "grouped": self.grouped,
            "first": self.first,
            "runs": self.runs,
            "last_time": self.last_time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StormWindow:
        return cls(data["sent"], data["grouped"], data["first"], data["runs"], data["last_time"])


WindowKey = tuple[str, int]
"""(rule, the minute's start in event time)."""


class StormGate:
    """Lets through at most `limit` notifications per rule and minute; `due` gives the
    grouped notifications of the minutes that are over."""

    def __init__(self, limit: int, windows: dict[WindowKey, StormWindow] | None = None) -> None:
        self.limit = limit
        self.windows: dict[WindowKey, StormWindow] = {} if windows is None else windows
        self.dirty: set[WindowKey] = set()
        self.dropped: list[WindowKey] = []

    def admit(self, notification: Notification) -> bool:
        """True: send it. False: it is counted into its minute's grouped notification."""
        time = notification.event_time
        key = (notification.rule, time - time % WINDOW_US)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = StormWindow()
        self.dirty.add(key)
        if window.sent < self.limit:
            window.sent += 1
            return True
        window.grouped += 1
        window.last_time = max(window.last_time, time)
        if window.first is None:
            window.first = {
                "id": notification.id,
                "state": notification.state,
                "severity": notification.severity,
                "channels": list(notification.channels),
            }
        run = notification.labels.get("run_id") or notification.group_key
        if len(window.runs) < SAMPLE:
            window.runs.append(run)
        return False

    def due(self, now: int) -> list[Notification]:
        """The grouped notifications of minutes over by `now`, oldest first; minutes older
        than `KEEP_US` are forgotten."""
        out = []
        for key in sorted(self.windows):
            rule, start = key
            end = start + WINDOW_US
            if end > now:
                continue
            window = self.windows[key]
            if window.grouped:
                out.append(_digest(rule, start, window))
                window.grouped, window.first, window.runs, window.last_time = 0, None, [], 0
                self.dirty.add(key)
            if end + KEEP_US <= now:
                del self.windows[key]
                self.dirty.discard(key)
                self.dropped.append(key)
        return out

    def has_due(self, now: int) -> bool:
        return any(w.grouped and start + WINDOW_US <= now for (_, start), w in self.windows.items())

    def take_changes(self) -> tuple[list[tuple[WindowKey, StormWindow]], list[WindowKey]]:
        """(changed windows, forgotten windows) since the last call, for storing."""
        changed = [(key, self.windows[key]) for key in sorted(self.dirty)]
        dropped = [key for key in self.dropped if key not in self.windows]
        self.dirty, self.dropped = set(), []
        return changed, dropped


def _digest(rule: str, start: int, window: StormWindow) -> Notification:
    first = window.first
    assert first is not None, "a window with grouped notifications knows the first"
    count = window.grouped
    runs = ", ".join(window.runs) + (
        f" and {count - len(window.runs)} more" if count > SAMPLE else ""
    )
    text = f"{rule}\x1fstorm\x1f{start}\x1f{first['id']}"
    state: Literal["firing", "resolved"] = "resolved" if first["state"] == "resolved" else "firing"
    begin, end = format_time(start), format_time(start + WINDOW_US)
    return Notification(
        id=hashlib.blake2b(text.encode(), digest_size=16).hexdigest(),
        rule=rule,
        group_key=f"storm:{begin}",
        state=state,
        severity=first["severity"],
        channels=tuple(first["channels"]),
        event_id=first["id"],
        event_time=window.last_time,
        starts_at=start,
        ends_at=None,
        suppressed=count,
        labels={"alertname": rule, "severity": first["severity"]},
        summary=f"{count} more {rule} notifications between {begin} and {end}, grouped: {runs}",
        event={
            "type": "ALERTS_GROUPED",
            "grouped": count,
            "runs": window.runs,
            "window_start": begin,
            "window_end": end,
        },
    )
