"""Rotation, truncation and awkward writers against a real `runwatch tail` subprocess.

Every test writes real files (the test itself, or a writer subprocess where timing matters),
lets the service follow them, and ends by comparing the live projection with a clean replay
of every file left on disk (rotated copies included, plus any content the test had to save
aside because the scenario destroys it on disk).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

from helpers import TailProcess, checkpointed, converged, counters, replay_into

CONFIG = "rotate_wait: 1s\nrescan_interval: 1s\ntick_interval: 1s\n"
KINDS = ("task_created", "task_started", "task_completed")


class Events:
    """Distinct orchestrator events near now: each line carries its own counter."""

    def __init__(self, run_prefix: str = "R") -> None:
        self.run_prefix = run_prefix
        self.base = datetime.now(UTC) - timedelta(minutes=5)
        self.count = 0

    def line(self) -> bytes:
        n = self.count
        self.count += 1
        return (
            orjson.dumps(
                {
                    "event_type": KINDS[n % 3],
                    "timestamp": (self.base + timedelta(milliseconds=n)).isoformat(),
                    "run_id": f"{self.run_prefix}{n // 60}",
                    "workstream_id": f"ws{n // 15 % 2}",
                    "task_id": f"t{n // 3}",
                    "seq": n,
                }
            )
            + b"\n"
        )


def write(handle: IO[bytes], events: Events, count: int) -> None:
    """Append `count` new events, flushing each line as a real writer does."""
    for _ in range(count):
        handle.write(events.line())
        handle.flush()


def tail_for(tmp_path: Path, *patterns: Path | str) -> TailProcess:
    config = tmp_path / "runwatch.yaml"
    config.write_text(CONFIG)
    return TailProcess(tmp_path, tmp_path / "live.db", *patterns, args=("--config", str(config)))


def started(tail: TailProcess) -> None:
    """Wait for the current run of the service to announce itself."""
    tail.wait_until(lambda: tail.output().count("MONITOR_STARTED") >= tail.starts)


@contextmanager
def frozen(tail: TailProcess) -> Iterator[None]:
    """SIGSTOP the service: what happens meanwhile is seen all at once, deterministically."""
    assert tail.process is not None
    os.kill(tail.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(tail.process.pid, signal.SIGCONT)


def audit(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    path = tmp_path / "logs" / "monitor.jsonl"
    records = [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    return [r for r in records if r["type"] == kind]


def dead_letters(db: Path) -> int:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(connection.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
    finally:
        connection.close()


def followed(folder: Path) -> set[tuple[int, int]]:
    """The (device, inode) of every file under `folder` the tests' patterns match."""
    return {
        (p.stat().st_dev, p.stat().st_ino)
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in (".jsonl", ".log")
    }


def caught_up(tail: TailProcess) -> None:
    """Wait for the positive sign that the service has read every followed file as it is
    now and finished every file rotated away: a new empty file it must discover (discovery
    reads every followed file in the same pass, and commits with the new file's
    checkpoint), and checkpoints for exactly the files that match (a rotated file keeps
    its checkpoint until it is retired)."""
    events = tail.workdir / "events"
    marker = events / f"caught-up-{len(list(events.glob('caught-up-*')))}.jsonl"
    marker.write_bytes(b"")
    tail.wait_until(lambda: checkpointed(tail.db) == followed(events))


def stop_settled(tail: TailProcess) -> None:
    """Once the service has caught up (rotated files retired, a rescan done), SIGTERM."""
    caught_up(tail)
    assert tail.stop() == 0, tail.output()


def assert_replays_equal(tmp_path: Path, *extra: Path) -> None:
    replayed = tmp_path / "replay.db"
    replay_into(replayed, str(tmp_path / "events" / "**" / "*"), *extra)
    assert converged(tmp_path / "live.db") == converged(replayed)


def save_aside(tmp_path: Path, log: Path) -> Path:
    """Keep content the scenario is about to destroy, outside anything the service follows."""
    lost = tmp_path / "lost"
    lost.mkdir(exist_ok=True)
    copy = lost / f"{log.name}.{len(list(lost.iterdir()))}"
    shutil.copyfile(log, copy)
    return copy


def test_rename_rotation_create_style(tmp_path: Path, log: Path) -> None:
    """logrotate `create` loses nothing: the renamed file is finished, the new one read from 0."""
    rotated = log.with_name("run.jsonl.1")
    events = Events()
    with tail_for(tmp_path, log.parent) as tail:
        old = log.open("ab")
        write(old, events, 50)
        tail.wait_for_accepted(50)
        with frozen(tail):  # the rotation happens with lines still unread in the old file
            write(old, events, 10)
            log.rename(rotated)
            write(old, events, 3)  # the writer has not reopened yet
            new = log.open("ab")
            write(new, events, 5)
        time.sleep(0.3)  # well within rotate_wait
        write(old, events, 3)
        old.close()
        write(new, events, 20)
        new.close()
        tail.wait_for_accepted(91)
        stop_settled(tail)
    stats = counters(tail.db)
    assert (stats["events_accepted"], stats.get("events_duplicate", 0)) == (91, 0)
    assert audit(tmp_path, "SOURCE_ROTATED")
    assert_replays_equal(tmp_path)


def test_copytruncate_reads_unread_lines_from_the_copy(tmp_path: Path, log: Path) -> None:
    """Lines unread at copytruncate time exist only in the copy, so they must be read from it."""
    copy = log.with_name("run.jsonl.1")
    events = Events()
    with tail_for(tmp_path, log.parent) as tail:
        writer = log.open("ab")
        write(writer, events, 50)
        tail.wait_for_accepted(50)
        with frozen(tail):
            write(writer, events, 30)  # a burst the service has not read...
            shutil.copyfile(log, copy)  # ...then copytruncate at once
            os.truncate(log, 0)
            write(writer, events, 5)
            assert log.stat().st_size < copy.stat().st_size
        write(writer, events, 20)
        writer.close()
        tail.wait_for_accepted(105)
        stop_settled(tail)
    stats = counters(tail.db)
    assert (stats["events_accepted"], stats.get("events_duplicate", 0)) == (105, 0)
    truncated = audit(tmp_path, "SOURCE_TRUNCATED")
    assert [Path(r["copy"]) for r in truncated] == [copy], truncated
    assert_replays_equal(tmp_path)


def test_truncate_then_regrow_past_the_old_offset(tmp_path: Path, log: Path) -> None:
    """A file rewritten past the old offset is not mistaken for an append: it is read from 0."""
    events = Events()
    with tail_for(tmp_path, log.parent) as tail:
        writer = log.open("ab")
        write(writer, events, 40)
        tail.wait_for_accepted(40)
        lost = save_aside(tmp_path, log)
        with frozen(tail):
            os.truncate(log, 0)
            write(writer, events, 60)
            assert log.stat().st_size > lost.stat().st_size
        writer.close()
        tail.wait_for_accepted(100)
        stop_settled(tail)
    stats = counters(tail.db)
    assert (stats["events_accepted"], dead_letters(tail.db)) == (100, 0)
    truncated = audit(tmp_path, "SOURCE_TRUNCATED")
    assert [(r["offset"], r["copy"]) for r in truncated] == [(lost.stat().st_size, None)]
    assert_replays_equal(tmp_path, lost)


def test_delete_and_recreate_reads_the_new_file_from_zero(tmp_path: Path, log: Path) -> None:
    """A name deleted and created again is a new file; the old one is finished through its fd."""
    events = Events()
    with tail_for(tmp_path, log.parent) as tail:
        with log.open("ab") as writer:
            write(writer, events, 30)
            tail.wait_for_accepted(30)
            with frozen(tail):  # deleted with lines unread: the open file still has them
                write(writer, events, 10)
                lost = save_aside(tmp_path, log)
                log.unlink()
        with log.open("ab") as writer:
            write(writer, events, 30)
        tail.wait_for_accepted(70)
        stop_settled(tail)
    stats = counters(tail.db)
    assert (stats["events_accepted"], stats.get("events_duplicate", 0)) == (70, 0)
    assert_replays_equal(tmp_path, lost)


def test_files_appearing_after_start_are_followed(tmp_path: Path) -> None:
    """Runs start new files all the time: files that appear later are followed from their start."""
    tree = tmp_path / "events"
    tree.mkdir()
    globbed = tree / "flat"
    globbed.mkdir()
    events = Events()
    with tail_for(tmp_path, tree, globbed / "*.log") as tail:
        started(tail)
        late = tree / "late.jsonl"
        deep = tree / "a" / "b" / "deep.jsonl"
        deep.parent.mkdir(parents=True)
        matched = globbed / "later.log"
        handles = [late.open("ab"), deep.open("ab"), matched.open("ab")]
        for handle in handles:
            write(handle, events, 10)
        tail.wait_for_accepted(30)
        for handle in handles:
            write(handle, events, 5)
            handle.close()
        tail.wait_for_accepted(45)
        stop_settled(tail)
    assert counters(tail.db)["events_accepted"] == 45
    assert_replays_equal(tmp_path)


def test_partial_line_waits_for_its_newline_even_across_restart(tmp_path: Path, log: Path) -> None:
    """A line without its `\\n` is never parsed early, lost or applied twice, across restarts."""
    events = Events()
    tail = tail_for(tmp_path, log.parent)
    with tail:
        writer = log.open("ab")
        write(writer, events, 10)
        tail.wait_for_accepted(10)
        line = events.line()
        writer.write(line[:40])
        writer.flush()
        caught_up(tail)  # the partial line has been read
        assert (counters(tail.db)["events_accepted"], dead_letters(tail.db)) == (10, 0)
        writer.write(line[40:-1])  # a whole JSON object, still without its newline
        writer.flush()
        caught_up(tail)
        assert (counters(tail.db)["events_accepted"], dead_letters(tail.db)) == (10, 0)
        writer.write(b"\n")
        writer.flush()
        tail.wait_for_accepted(11)

        line = events.line()
        writer.write(line[:40])
        writer.flush()
        caught_up(tail)
        assert tail.stop() == 0
        assert (counters(tail.db)["events_accepted"], dead_letters(tail.db)) == (11, 0)
        writer.write(line[40:])
        writer.close()
        tail.start()
        tail.wait_for_accepted(12)
        stop_settled(tail)
    stats = counters(tail.db)
    assert (stats["events_accepted"], stats.get("events_duplicate", 0)) == (12, 0)
    assert dead_letters(tail.db) == 0
    assert_replays_equal(tmp_path)


def test_crlf_lines(tmp_path: Path, log: Path) -> None:
    """Windows writers end lines with `\\r\\n`; the `\\r` must not change or reject an event."""
    events = Events()
    with tail_for(tmp_path, log.parent) as tail:
        with log.open("ab") as writer:
            for _ in range(20):
                writer.write(events.line()[:-1] + b"\r\n")
                writer.flush()
            writer.write(b"\r\n")
            writer.write(events.line()[:-1] + b"\r")
            writer.flush()
            caught_up(tail)  # the line has been read up to its \r; the \n comes later
            writer.write(b"\n")
        tail.wait_for_accepted(21)
        stop_settled(tail)
    assert (counters(tail.db)["events_accepted"], dead_letters(tail.db)) == (21, 0)
    assert_replays_equal(tmp_path)


WRITER = """
import sys
from datetime import UTC, datetime, timedelta
path, count = sys.argv[1], int(sys.argv[2])
base = datetime.now(UTC) - timedelta(minutes=10)
kinds = ("task_created", "task_started", "task_completed")
with open(path, "ab") as out:
    for n in range(count):
        stamp = (base + timedelta(microseconds=5 * n)).isoformat()
        out.write((f'{{"event_type":"{kinds[n % 3]}","timestamp":"{stamp}",'
                   f'"run_id":"B{n // 1000}","task_id":"t{n // 3}","seq":{n}}}\\n').encode())
"""


def test_burst_of_100k_lines(tmp_path: Path, log: Path) -> None:
    """A writer dumping 100,000 lines at full speed loses none of them and matches a replay."""
    with tail_for(tmp_path, log.parent) as tail:
        started(tail)
        subprocess.run([sys.executable, "-c", WRITER, str(log), "100000"], check=True, timeout=60)
        tail.wait_for_accepted(100_000, timeout=60)
        assert tail.stop() == 0
    stats = counters(tail.db)
    assert (stats["events_accepted"], dead_letters(tail.db)) == (100_000, 0)
    assert_replays_equal(tmp_path)


def test_inode_reuse_while_stopped_reads_the_new_file_from_zero(tmp_path: Path, log: Path) -> None:
    """A file replaced while stopped (inode maybe reused) is read from 0, not the old offset."""
    events = Events()
    tail = tail_for(tmp_path, log.parent)
    with tail:
        with log.open("ab") as writer:
            write(writer, events, 30)
        tail.wait_for_accepted(30)
        assert tail.stop() == 0
        lost = save_aside(tmp_path, log)
        old_inode = log.stat().st_ino
        log.unlink()
        with log.open("ab") as writer:
            write(writer, events, 40)
        reused = log.stat().st_ino == old_inode
        assert log.stat().st_size > lost.stat().st_size
        tail.start()
        tail.wait_for_accepted(70)
        stop_settled(tail)
    assert counters(tail.db)["events_accepted"] == 70
    assert bool(audit(tmp_path, "SOURCE_REPLACED")) == reused
    assert_replays_equal(tmp_path, lost)


def test_rename_rotation_while_stopped_finishes_the_rotated_file(tmp_path: Path, log: Path) -> None:
    """Rotation often happens while the service is down: the renamed file is still finished."""
    events = Events()
    tail = tail_for(tmp_path, log.parent)
    with tail:
        old = log.open("ab")
        write(old, events, 40)
        tail.wait_for_accepted(40)
        assert tail.stop() == 0
        write(old, events, 20)  # never read before the rotation
        log.rename(log.with_name("run.jsonl.1"))
        with log.open("ab") as new:
            write(new, events, 10)
        tail.start()
        write(old, events, 3)  # the writer has not reopened yet
        old.close()
        tail.wait_for_accepted(73, timeout=10)
        stop_settled(tail)
    stats = counters(tail.db)
    assert (stats["events_accepted"], stats.get("events_duplicate", 0)) == (73, 0)
    assert_replays_equal(tmp_path)


def test_copytruncate_while_stopped_reads_unread_lines_from_the_copy(
    tmp_path: Path, log: Path
) -> None:
    """copytruncate while the service is down must not lose the lines that are only in the copy."""
    copy = log.with_name("run.jsonl.1")
    events = Events()
    tail = tail_for(tmp_path, log.parent)
    with tail:
        writer = log.open("ab")
        write(writer, events, 40)
        tail.wait_for_accepted(40)
        assert tail.stop() == 0
        write(writer, events, 20)  # never read before the rotation
        shutil.copyfile(log, copy)
        os.truncate(log, 0)
        write(writer, events, 10)
        writer.close()
        tail.start()
        tail.wait_for_accepted(70, timeout=10)
        stop_settled(tail)
    assert counters(tail.db)["events_accepted"] == 70
    assert_replays_equal(tmp_path)
