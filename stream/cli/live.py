"""`runwatch status --watch`: a live view of the projection that refreshes in place.

Read-only: each frame opens the database with `mode=ro` (a WAL reader never blocks the
service) and reads the service's status file `<database>.status`. Plain ANSI escapes rather
than curses: they need no terminfo entry on the far side of an ssh link, and the screen is
redrawn whole every frame anyway. When stdout is not a terminal (or TERM is dumb) one frame
is printed without escape codes and the exit code is 0.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import orjson

from runwatch.projections.slo import Slo, evaluate, horizon_s
from runwatch.sinks.store import reads
from runwatch.sinks.store.reads import Frame
from runwatch.sinks.terminal import human_duration, terminal_safe
from runwatch.stream.errors import EXIT_OK, UsageError
from runwatch.stream.services.health import process_alive, status_path
from runwatch.stream.settings.database import existing_file
from runwatch.stream.settings.service import Settings

ACTIVE: Final = ("pending", "running")
RECENT: Final = 5
STALE_AFTER: Final = 5.0
KEY_POLL: Final = 0.1
BOLD, DIM, RED, GREEN, YELLOW, STALLED = "1", "2", "31", "32", "33", "7;33"
WORST_FIRST: Final = ("failed", "pending", "delivered", "recorded", "skipped")

Line = tuple[str, str]
"""A line of text and its SGR style ("" for none)."""


class _Stopped(Exception):
    """SIGTERM or SIGHUP: leave like `q` does."""


def service_line(path: Path, now: float) -> Line:
    """The service's own word on its health; absent, unreadable or stale means not running."""
    try:
        info: dict[str, Any] = orjson.loads(path.read_bytes())
        age = now - float(info.get("updated_unix", 0))
        pid = int(info.get("pid", 0))
        if age > STALE_AFTER or pid <= 0 or not process_alive(pid):
            return f"service not running (status file stale, updated {_span(age)} ago)", YELLOW
        return (
            f"service up, pid {pid}: ingest lag {float(info.get('ingest_lag_seconds', 0)):.1f}"
            f" s ({int(info.get('ingest_lag_bytes', 0)):,} bytes), {info.get('files', '?')} "
            f"files, {info.get('open_runs', '?')} open runs, outbox "
            f"{info.get('outbox_pending', '?')} pending, "
            f"{int(info.get('events_accepted', 0)):,} events accepted"
        ), GREEN
    except FileNotFoundError:
        return "service not running (status file absent)", YELLOW
    except (OSError, ValueError, TypeError, AttributeError):
        return "service not running (status file unreadable)", YELLOW


def render(
    snap: Frame,
    service: Line,
    database: Path,
    now: datetime,
    height: int | None,
    slos: list[dict[str, Any]] | None = None,
) -> list[Line]:
    """On a short terminal the active runs keep at least half the room below the head;
    alerts give way first, then completions. `slos`: each SLO's figures, when configured."""
    active_total = sum(snap.counts.get(status, 0) for status in ACTIVE)
    levels = [("", ""), ("SERVICE LEVELS", BOLD), *map(_slo_line, slos)] if slos else []
    head = [
        (f"runwatch  {database}  {now:%Y-%m-%d %H:%M:%S}Z   (q quits)", BOLD),
        service,
        (_summary(snap), ""),
        *([(f"database: {snap.problem}", RED)] if snap.problem else []),
        *levels,
        ("", ""),
        (f"ACTIVE RUNS ({active_total})", BOLD),
    ]
    tail = [
        ("", ""),
        ("RECENT COMPLETIONS", BOLD),
        *([_completed_line(r, now) for r in snap.completed] or [("  none", DIM)]),
        ("", ""),
        ("RECENT ALERTS", BOLD),
        *([_alert_line(r, now) for r in snap.alerts] or [("  none", DIM)]),
    ]
    room = (
        None if height is None else max(height - len(head) - len(tail), (height - len(head)) // 2)
    )
    lines = [*head, *_cut([_active_line(r, now) for r in snap.active], room, active_total), *tail]
    return lines if height is None else lines[:height]


def _cut(lines: list[Line], room: int | None, total: int) -> list[Line]:
    """The lines that fit, and a count of the ones that do not."""
    if not lines:
        return [("  none", DIM)]
    shown = lines if room is None or total <= room else lines[: max(room - 1, 0)]
    hidden = total - len(shown)
    return [*shown, (f"  ... and {hidden} more", DIM)] if hidden > 0 else shown


def _summary(snap: Frame) -> str:
    """Active statuses first, then the finished ones, alphabetically."""
    order = sorted(snap.counts.items(), key=lambda kv: (kv[0] not in ACTIVE, kv[0]))
    parts = ", ".join(f"{n:,} {status}" for status, n in order) or "none"
    return f"runs: {parts}; {snap.stalled} stalled"


def _slo_line(slo: dict[str, Any]) -> Line:
    """Budget, ratio and the burn rates alerts look at; page in red, ticket in yellow."""

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    rates = slo["burn_rates"]
    burns = " ".join(f"{w} {'-' if rates[w] is None else f'{rates[w]:.1f}x'}" for w in rates)
    alert = slo["alert"]
    text = (
        f"  {slo['name']:<24} {(alert or 'ok').upper():<6} objective {percent(slo['objective'])}"
        f"  good {percent(slo['ratio'])} of {slo['total']}  budget left "
        f"{percent(slo['budget_remaining'])}  burn {burns}"
    )
    return text, RED if alert == "page" else YELLOW if alert == "ticket" else GREEN


def _active_line(run: dict[str, Any], now: datetime) -> Line:
    """Stalled runs are marked in words too, so the mark survives NO_COLOR and pipes."""
    done, total, failed = run["done"], run["tasks_total"], run["tasks_failed"]
    mark = "STALLED" if run["stalled"] else ""
    text = (
        f"  {mark:<7} {run['run_id']:<26} {run['status']:<8} {_bar(done, total)} "
        f"{done}/{total}"
        + (f", {failed} failed" if failed else "")
        + f"   last event {_ago(run['last_event_at'], now)} ago"
    )
    return text, STALLED if run["stalled"] else RED if failed else ""


def _completed_line(run: dict[str, Any], now: datetime) -> Line:
    """A finished run: how it ended, how far it got, how long it took."""
    text = (
        f"  {run['run_id']:<26} {run['status']:<11} {run['done']}/{run['tasks_total']}"
        f"   took {_span(run['duration_s'])}, ended {_ago(run['ended_at'], now)} ago"
    )
    return text, GREEN if run["status"] == "succeeded" else RED


def _alert_line(row: dict[str, Any], now: datetime) -> Line:
    """One line per alert, whatever its channels; delivery shows the worst channel's state."""
    try:
        payload = dict(orjson.loads(row["payload"]))
    except (orjson.JSONDecodeError, TypeError, ValueError):
        payload = {}
    states = set(str(row["states"]).split(","))
    delivery = next((s for s in WORST_FIRST if s in states), ",".join(sorted(states)))
    severity, state = str(payload.get("severity", "?")), str(payload.get("state", "?"))
    text = (
        f"  {_ago(row['decided_at'], now):>4} ago  {severity:<8} {state:<8} "
        f"{row['rule']!s:<18} {payload.get('summary', '')}  [{delivery}]"
    )
    firing_style = RED if severity in ("critical", "high") else YELLOW
    return text, GREEN if state == "resolved" else firing_style


def _bar(done: int, total: int, width: int = 20) -> str:
    """Plain characters, so it reads the same in any font and over any link."""
    filled = min(width, done * width // total) if total > 0 else 0
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def _ago(stamp: str | None, now: datetime) -> str:
    """Wall-clock age of a stored UTC time; a time in the future reads as 0s."""
    if not stamp:
        return "-"
    try:
        return _span(max((now - datetime.fromisoformat(stamp)).total_seconds(), 0.0))
    except (ValueError, TypeError):
        return "?"


def _span(seconds: float | None) -> str:
    """Whole seconds in the console's units (`3m 12s`), so a frame does not flicker tenths."""
    return "-" if seconds is None else human_duration(int(seconds))


def paint(lines: list[Line], width: int | None, color: bool) -> list[str]:
    """Control characters from the logs are neutralised and each line is cut to the width
    before it is coloured, so neither a run id nor the cut can break the escape codes."""
    out = []
    for text, style in lines:
        clean = terminal_safe(text)[: None if width is None else max(width - 1, 0)]
        out.append(f"\x1b[{style}m{clean}\x1b[0m" if color and style else clean)
    return out


def frame(database: Path, size: os.terminal_size | None, slos: list[Slo]) -> list[Line]:
    """One frame from the current database and status file, with the SLOs judged now."""
    now_us = time.time_ns() // 1000
    since = now_us - round(horizon_s(slos) * 1_000_000) if slos else None
    snap = reads.frame(database, active=size.lines if size else 200, recent=RECENT, slo_since=since)
    service = service_line(status_path(database), time.time())
    figures = evaluate(slos, snap.finished, now_us) if slos else None
    now = datetime.now(UTC)
    return render(snap, service, database, now, size.lines if size else None, figures)


class Screen:
    """Owns the terminal while the view runs; every way out gives it back as it was."""

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self.out = stdout
        self.fd = stdin.fileno() if stdin.isatty() else None
        self.saved = termios.tcgetattr(self.fd) if self.fd is not None else None
        self.color = not os.environ.get("NO_COLOR")
        self.dirty = True

    def enter(self) -> None:
        """Alternate screen, hidden cursor, keys without Enter and without echo."""
        if self.fd is not None:
            tty.setcbreak(self.fd, termios.TCSANOW)
        self.out.write("\x1b[?1049h\x1b[?25l")
        self.out.flush()
        self.dirty = True

    def leave(self) -> None:
        """Best effort: after an ssh link drops there may be no terminal left to restore."""
        try:
            self.out.write("\x1b[0m\x1b[?25h\x1b[?1049l")
            self.out.flush()
            if self.fd is not None and self.saved is not None:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        except OSError:
            pass

    def size(self) -> os.terminal_size:
        """Re-read every poll, so a resize (SIGWINCH) shows within KEY_POLL seconds."""
        try:
            return os.get_terminal_size(self.out.fileno())
        except OSError:
            return shutil.get_terminal_size()

    def draw(self, lines: list[Line], width: int) -> None:
        """Home, each line then erase-to-end, erase below: no flicker and no scrolling."""
        body = "\x1b[K\r\n".join(paint(lines, width, self.color))
        self.out.write(f"\x1b[H{body}\x1b[K\x1b[J")
        self.out.flush()
        self.dirty = False

    def quit_pressed(self, timeout: float) -> bool:
        """Waits up to `timeout` for a key; True on q or Q, or when the terminal is gone."""
        if self.fd is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        data = os.read(self.fd, 64)
        return not data or b"q" in data.lower()


@contextmanager
def _signals(screen: Screen) -> Iterator[None]:
    """SIGTERM/SIGHUP end the view like q; Ctrl-Z hands the terminal back while stopped."""

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise _Stopped

    def suspend(_signum: int, _frame: FrameType | None) -> None:
        screen.leave()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, suspend)
        screen.enter()

    handlers = {signal.SIGTERM: stop, signal.SIGHUP: stop, signal.SIGTSTP: suspend}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _loop(database: Path, interval: float, screen: Screen, slos: list[Slo]) -> int:
    """Redraw every `interval`, on a resize and after a resume; q returns at once."""
    due, drawn_for = 0.0, None
    while True:
        size = screen.size()
        if screen.dirty or size != drawn_for or time.monotonic() >= due:
            screen.draw(frame(database, size, slos), size.columns)
            due, drawn_for = time.monotonic() + interval, size
        if screen.quit_pressed(min(KEY_POLL, max(due - time.monotonic(), 0.0))):
            return EXIT_OK


def watch(
    settings: Settings,
    *,
    interval: float = 1.0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """The live view; q, Ctrl-C, SIGTERM and SIGHUP all exit 0 with the terminal restored."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if settings.database_url is not None:
        raise UsageError("status --watch: reads a SQLite database only, not PostgreSQL")
    database = existing_file(settings)
    slos = settings.objectives
    if interval <= 0:
        raise UsageError("status: --interval must be more than 0 seconds")
    if not stdout.isatty() or os.environ.get("TERM") == "dumb":
        stdout.write("\n".join(paint(frame(database, None, slos), None, False)) + "\n")
        return EXIT_OK
    screen = Screen(stdin, stdout)
    try:
        screen.enter()
        with _signals(screen):
            return _loop(database, interval, screen, slos)
    except (KeyboardInterrupt, _Stopped):
        return EXIT_OK
    finally:
        screen.leave()
