"""`runwatch status --watch` in a real terminal (a private tmux server) and through a pipe."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import RUNWATCH, TailProcess, replay_into

WATCH = [*RUNWATCH, "status", "--watch"]
"""The command under test."""

NO_SUCH_PID = 4 * 1024 * 1024 + 1
"""Above Linux's largest possible pid: the process of a service that died."""


def watch_command(db: Path, *extra: str) -> list[str]:
    return [*WATCH, "--db", str(db), *extra]


class Tmux:
    """One 120x40 interactive `sh` pane on a tmux server of its own (socket in `home`)."""

    def __init__(self, home: Path, cwd: Path) -> None:
        self.socket = home / "tmux"
        self.run("new-session", "-d", "-x", "120", "-y", "40", "-c", str(cwd), "sh")

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def type(self, line: str) -> None:
        self.run("send-keys", "-l", line)
        self.run("send-keys", "Enter")

    def screen(self, attributes: bool = False) -> str:
        """The visible text; with `attributes`, with tmux's SGR codes for colour and reverse."""
        return self.run("capture-pane", "-p", *(["-e"] if attributes else []))

    def flag(self, name: str) -> str:
        """A pane flag such as alternate_on (1 while a full-screen view has it) or cursor_flag."""
        return self.run("display-message", "-p", f"#{{{name}}}").strip()

    def wait_for(self, check: Callable[[str], object], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(screen := self.screen()):
                return screen
            time.sleep(0.02)
        raise AssertionError(f"not on screen after {timeout} s:\n{self.screen()}")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Tmux]:
    home = Path(tempfile.mkdtemp(prefix="rw-tmux-"))  # a socket path must stay short
    pane = Tmux(home, tmp_path)
    try:
        yield pane
    finally:
        subprocess.run(
            ["tmux", "-S", str(pane.socket), "kill-server"],
            capture_output=True,
            check=False,
            timeout=10,
        )
        shutil.rmtree(home)


def event(kind: str, run_id: str, n: int, at: datetime | None = None, **extra: Any) -> bytes:
    moment = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (
        orjson.dumps(
            {
                "event_id": f"{run_id}-{n}",
                "event_type": kind,
                "run_id": run_id,
                "timestamp": moment,
                **extra,
            }
        )
        + b"\n"
    )


def task_done(run_id: str, task: str, n: int) -> bytes:
    return event("task_started", run_id, n, task_id=task) + event(
        "task_completed", run_id, n + 1, task_id=task
    )


def first_events() -> bytes:
    """RUN-STUCK has not been heard of for two hours; RUN-ALPHA has one task of three done."""
    old = datetime.now(UTC) - timedelta(hours=2)
    return b"".join(
        [
            event("run_created", "RUN-STUCK", 0, old, payload={"total_tasks": 2}),
            event("run_started", "RUN-STUCK", 1, old),
            event("task_started", "RUN-STUCK", 2, old, task_id="a"),
            event("run_created", "RUN-ALPHA", 0, payload={"total_tasks": 3}),
            event("run_started", "RUN-ALPHA", 1),
            task_done("RUN-ALPHA", "t1", 2),
        ]
    )


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def line_with(screen: str, text: str, below: str = "ACTIVE RUNS") -> str:
    """The first line containing `text` in the section headed `below`."""
    section = screen.split(below, 1)[-1].split("\n\n", 1)[0]
    return next((line for line in section.splitlines() if text in line), "")


def exit_status(screen: str) -> str:
    """What the shell's `echo EXIT=$?` printed (the command line itself has no digits)."""
    found = re.search(r"EXIT=\d+", screen)
    return found.group() if found else ""


def stty_restored(tmp_path: Path) -> bool:
    """The terminal modes after the view are the ones before it (cbreak and no-echo undone)."""
    after = tmp_path / "after.stty"
    deadline = time.monotonic() + 5
    while not (after.exists() and after.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return (tmp_path / "before.stty").read_text() == after.read_text()


REVERSE = re.compile(r"\x1b\[(?:\d+;)*7(?:;\d+)*m")
"""An SGR sequence that turns on reverse video (parameter 7)."""


def view_pid(terminal: Tmux) -> int:
    """The view's process: the pane shell's child."""
    children = subprocess.run(
        ["pgrep", "-P", terminal.flag("pane_pid")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(children) == 1, children
    return int(children[0])


def piped(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        watch_command(db), capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture
def replayed(tmp_path: Path) -> Path:
    """A database built by replay, with no service behind it."""
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "run.jsonl").write_bytes(first_events())
    replay_into(tmp_path / "rw.db", tmp_path / "events")
    return tmp_path / "rw.db"


def test_live_view_follows_the_service_and_quits_on_q(tmp_path: Path, terminal: Tmux) -> None:
    """The view users leave open: progress moves, stalls and alerts show, q gives the shell back."""
    events, db = tmp_path / "events", tmp_path / "rw.db"
    events.mkdir()
    log = events / "run.jsonl"
    log.write_bytes(first_events())
    with TailProcess(tmp_path, db, events) as tail:
        tail.wait_for_accepted(7)
        terminal.type("stty -g > before.stty")
        terminal.type(
            f"{shlex.join(watch_command(db, '--interval', '0.2'))}; "
            "echo EXIT=$?; stty -g > after.stty"
        )
        terminal.wait_for(
            lambda s: "1/3" in line_with(s, "RUN-ALPHA") and "STALLED" in line_with(s, "RUN-STUCK")
        )
        assert terminal.flag("alternate_on") == "1" and terminal.flag("cursor_flag") == "0"

        append(log, task_done("RUN-ALPHA", "t2", 10))
        terminal.wait_for(lambda s: "[#############.......] 2/3" in line_with(s, "RUN-ALPHA"))

        assert tail.process is not None
        pid = tail.process.pid
        (tmp_path / "rw.db.status").write_bytes(
            orjson.dumps({"pid": pid, "updated_unix": time.time(), "ingest_lag_seconds": 0.0})
        )
        terminal.wait_for(lambda s: f"service up, pid {pid}" in s)

        append(
            log,
            task_done("RUN-ALPHA", "t3", 20)
            + event("run_started", "RUN-BROKEN", 0)
            + event("run_failed", "RUN-BROKEN", 1),
        )
        screen = terminal.wait_for(
            lambda s: (
                "succeeded   3/3" in line_with(s, "RUN-ALPHA", "RECENT COMPLETIONS")
                and "run_failure" in line_with(s, "RUN-BROKEN", "RECENT ALERTS")
            )
        )
        assert line_with(screen, "RUN-ALPHA") == ""

        terminal.run("send-keys", "q")
        after = terminal.wait_for(exit_status, timeout=1.0)
        assert exit_status(after) == "EXIT=0"
        assert tail.stop() == 0
    assert "ACTIVE RUNS" not in after
    assert terminal.flag("alternate_on") == "0" and terminal.flag("cursor_flag") == "1"
    assert stty_restored(tmp_path)


def test_ctrl_c_exits_0_and_restores_the_terminal(
    tmp_path: Path, terminal: Tmux, replayed: Path
) -> None:
    """Ctrl-C is the other way out people use; it is a normal exit (0), not an error."""
    terminal.type("stty -g > before.stty")
    terminal.type(f"{shlex.join(watch_command(replayed))}; echo EXIT=$?; stty -g > after.stty")
    terminal.wait_for(lambda s: "1/3" in line_with(s, "RUN-ALPHA"))
    terminal.run("send-keys", "C-c")
    after = terminal.wait_for(exit_status, timeout=1.0)
    assert exit_status(after) == "EXIT=0" and "Traceback" not in after
    assert terminal.flag("alternate_on") == "0" and terminal.flag("cursor_flag") == "1"
    assert stty_restored(tmp_path)


def test_ctrl_z_hands_the_terminal_back_until_fg(terminal: Tmux, replayed: Path) -> None:
    """Over ssh people suspend with Ctrl-Z: the shell must work, and fg brings the view back."""
    terminal.type(shlex.join(watch_command(replayed)))
    terminal.wait_for(lambda s: "1/3" in line_with(s, "RUN-ALPHA"))
    terminal.run("send-keys", "C-z")
    terminal.wait_for(lambda s: "Stopped" in s)
    assert terminal.flag("alternate_on") == "0" and terminal.flag("cursor_flag") == "1"
    terminal.type("fg")
    terminal.wait_for(lambda s: "1/3" in line_with(s, "RUN-ALPHA"))
    assert terminal.flag("alternate_on") == "1"
    terminal.run("send-keys", "q")
    terminal.wait_for(lambda _: terminal.flag("alternate_on") == "0", timeout=1.0)
    terminal.type("echo EXIT=$?")
    assert exit_status(terminal.wait_for(exit_status)) == "EXIT=0"


def test_sigterm_exits_0_and_restores_the_terminal(
    tmp_path: Path, terminal: Tmux, replayed: Path
) -> None:
    """`kill` from another shell must not leave the user's terminal in the alternate screen."""
    terminal.type("stty -g > before.stty")
    terminal.type(f"{shlex.join(watch_command(replayed))}; echo EXIT=$?; stty -g > after.stty")
    terminal.wait_for(lambda s: "1/3" in line_with(s, "RUN-ALPHA"))
    os.kill(view_pid(terminal), signal.SIGTERM)
    assert exit_status(terminal.wait_for(exit_status, timeout=1.0)) == "EXIT=0"
    assert terminal.flag("alternate_on") == "0" and terminal.flag("cursor_flag") == "1"
    assert stty_restored(tmp_path)


def test_a_dropped_connection_ends_the_view(terminal: Tmux, replayed: Path) -> None:
    """When an ssh link drops the terminal hangs up; the view must exit, not linger or spin."""
    terminal.type(shlex.join(watch_command(replayed)))
    terminal.wait_for(lambda s: "1/3" in line_with(s, "RUN-ALPHA"))
    pid = view_pid(terminal)
    terminal.run("kill-server")
    deadline = time.monotonic() + 2
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not running(pid)


def running(pid: int) -> bool:
    """The process exists and has not exited. Its shell died with the terminal, so once it
    exits it waits as a zombie until PID 1 reaps it, which may take a while here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_stalled_runs_are_coloured_unless_no_color(terminal: Tmux, replayed: Path) -> None:
    """Colour draws the eye to a stall on a terminal; NO_COLOR users and screen readers opt out."""
    terminal.type(shlex.join(watch_command(replayed)))
    terminal.wait_for(lambda s: "STALLED" in line_with(s, "RUN-STUCK"))
    assert REVERSE.search(line_with(terminal.screen(attributes=True), "RUN-STUCK"))
    terminal.run("send-keys", "q")
    terminal.wait_for(lambda _: terminal.flag("alternate_on") == "0", timeout=1.0)
    terminal.type(f"NO_COLOR=1 {shlex.join(watch_command(replayed))}")
    terminal.wait_for(lambda s: "STALLED" in line_with(s, "RUN-STUCK"))
    assert "\x1b[" not in terminal.screen(attributes=True)


def test_piped_output_is_one_plain_frame(replayed: Path) -> None:
    """`status --watch | mail` or a cron job gets one readable frame, not escape codes."""
    result = piped(replayed)
    assert result.returncode == 0, result.stderr
    assert "1/3" in line_with(result.stdout, "RUN-ALPHA")
    assert "STALLED" in line_with(result.stdout, "RUN-STUCK")
    assert "service not running (status file absent)" in result.stdout
    assert "\x1b" not in result.stdout


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ({"pid": os.getpid(), "updated_unix": time.time() - 60}, "status file stale"),
        ({"pid": NO_SUCH_PID, "updated_unix": time.time() + 3600}, "status file stale"),
        (["not", "an", "object"], "status file unreadable"),
        ({"pid": "x", "updated_unix": "soon"}, "status file unreadable"),
    ],
)
def test_a_stale_or_broken_status_file_means_not_running(
    replayed: Path, status: object, shown: str
) -> None:
    """A dead service must never look alive, and a bad status file must never crash the view."""
    Path(f"{replayed}.status").write_bytes(orjson.dumps(status))
    result = piped(replayed)
    assert result.returncode == 0 and f"service not running ({shown}" in result.stdout


def test_a_live_status_file_shows_the_ingest_lag(replayed: Path) -> None:
    """Lag is how users see the service falling behind the logs."""
    Path(f"{replayed}.status").write_bytes(
        orjson.dumps(
            {
                "pid": os.getpid(),
                "updated_unix": time.time(),
                "ingest_lag_seconds": 2.5,
                "ingest_lag_bytes": 4096,
                "files": 3,
                "open_runs": 2,
                "outbox_pending": 0,
                "events_accepted": 12345,
            }
        )
    )
    result = piped(replayed)
    assert (
        f"service up, pid {os.getpid()}: ingest lag 2.5 s (4,096 bytes), 3 files, 2 open "
        "runs, outbox 0 pending, 12,345 events accepted"
    ) in result.stdout


def test_control_characters_from_the_logs_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """Run ids come from logs anyone can write; an escape sequence in one must print inert."""
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "run.jsonl").write_bytes(event("run_started", "EVIL\x1b[2J\x07", 0))
    replay_into(tmp_path / "rw.db", tmp_path / "events")
    result = piped(tmp_path / "rw.db")
    assert "EVIL\\x1b[2J\\x07" in result.stdout and "\x1b" not in result.stdout


def test_a_database_without_tables_shows_the_problem(tmp_path: Path) -> None:
    """The view may start before the service has created its tables; it says so and waits."""
    sqlite3.connect(tmp_path / "empty.db").close()
    result = piped(tmp_path / "empty.db")
    assert result.returncode == 0 and "database: no such table: runs" in result.stdout


def test_a_locked_database_shows_the_problem(replayed: Path) -> None:
    """A writer holding an exclusive lock must cost a frame's data, never the view."""
    holder = sqlite3.connect(replayed, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = piped(replayed)
    finally:
        holder.close()
    assert result.returncode == 0 and "database: database is locked" in result.stdout


def test_a_missing_database_is_a_usage_error(tmp_path: Path) -> None:
    """A typo in --db must say which file is missing, as one line, with exit code 2."""
    result = piped(tmp_path / "nope.db")
    assert result.returncode == 2
    assert "nope.db: no such database" in result.stderr and "Traceback" not in result.stderr
