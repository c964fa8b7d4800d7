"""`runwatch ship` against a private nats-server: real subprocesses, real files, kill -9.

Each test starts its own nats-server (tests/natsserver.py) with the partition mapping, runs
the shipper as a subprocess, and reads the stream back with nats-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import orjson
import pytest

from helpers import RunwatchProcess, checkpointed, wait_until
from natsserver import NatsServer
from runwatch.stream.sources.nats import line_id, message_id, subject_token

CONFIG = "rotate_wait: 1s\nrescan_interval: 1s\nbatch_max_bytes: 65536\n"
STREAM = "runwatch"


@dataclass(frozen=True)
class Stored:
    """One message as the stream holds it."""

    subject: str
    headers: dict[str, str]
    data: bytes


def stored(url: str) -> list[Stored]:
    """Every message of the stream, in stream order (through an ordered consumer)."""
    return asyncio.run(_stored(url))


async def _stored(url: str) -> list[Stored]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(STREAM)).state.messages
        sub = await js.subscribe("runwatch.part.>", ordered_consumer=True, stream=STREAM)
        out = []
        for _ in range(total):
            msg = await sub.next_msg(timeout=5)
            out.append(Stored(msg.subject, dict(msg.headers or {}), msg.data))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def stream_count(url: str) -> int:
    """Messages in the stream now (0 while it does not exist yet)."""

    async def count() -> int:
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            return (await nc.jetstream().stream_info(STREAM)).state.messages
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def checkpoint(db: Path, path: Path) -> int:
    """The shipper's committed offset in the file `path` names now (0 before a commit)."""
    if not db.exists():
        return 0
    info = path.stat()
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute(
            "SELECT offset FROM checkpoints WHERE device=? AND inode=?", (info.st_dev, info.st_ino)
        ).fetchone()
        return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


class Shipper(RunwatchProcess):
    """A real `runwatch ship` subprocess with its own checkpoint database."""

    def __init__(self, workdir: Path, url: str, *paths: Path) -> None:
        config = workdir / "runwatch.yaml"
        config.write_text(CONFIG)
        self.db = workdir / "ship.db"
        super().__init__(
            workdir, "ship", "ship", *paths, "--nats", url, "--db", self.db, "--config", config
        )


class Lines:
    """Distinct event lines, `runs` runs interleaved, each with its own event id."""

    def __init__(self, runs: int = 5, prefix: str = "R") -> None:
        self.runs = runs
        self.prefix = prefix
        self.count = 0

    def next(self) -> bytes:
        n = self.count
        self.count += 1
        return (
            orjson.dumps(
                {
                    "event_type": "task_started",
                    "event_id": f"{self.prefix}e{n}",
                    "timestamp": "2026-11-22T10:00:00Z",
                    "task_id": f"t{n}",
                    "run_id": f"{self.prefix}{n % self.runs}",
                    "pad": "x" * 60,
                }
            )
            + b"\n"
        )

    def block(self, count: int) -> bytes:
        return b"".join(self.next() for _ in range(count))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats", partitions=4) as running:
        yield running


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def shipped_all(shipper: Shipper, server: NatsServer, count: int, *files: Path) -> bool:
    """The stream holds `count` messages and every file's checkpoint is at its end."""
    assert shipper.running(), shipper.output()
    return stream_count(server.url) >= count and all(
        checkpoint(shipper.db, f) == f.stat().st_size for f in files
    )


def test_lines_arrive_with_subject_headers_and_id(tmp_path: Path, server: NatsServer) -> None:
    """Processors rely on the subject, the msg id and the source/offset headers of each line."""
    log = tmp_path / "events" / "a.jsonl"
    log.parent.mkdir()
    first = Lines().block(20)
    log.write_bytes(first)
    with Shipper(tmp_path, server.url, log.parent) as shipper:
        wait_until(lambda: shipped_all(shipper, server, 20, log), "first lines")
        append(log, b"\n  \n")  # blank lines are not shipped, only passed
        append(log, Lines(prefix="S").block(10))
        wait_until(lambda: shipped_all(shipper, server, 30, log), "appended lines")
        assert shipper.stop() == 0
    messages = stored(server.url)
    expected, offset = [], 0
    for number, line in enumerate(log.read_bytes().split(b"\n")[:-1], start=1):
        if line.strip():
            expected.append((line, offset, number))
        offset += len(line) + 1
    assert len(messages) == len(expected) == 30
    for message, (line, at, number) in zip(messages, expected, strict=True):
        event = orjson.loads(line)
        token = subject_token(event["run_id"])
        assert message.data == line
        assert message.subject == f"runwatch.part.{server.partition_of(token)}.{token}"
        assert message.headers["Nats-Msg-Id"] == f"{event['run_id']}/{event['event_id']}"
        assert message.headers["Runwatch-Source"] == str(log)
        assert (message.headers["Runwatch-Offset"], message.headers["Runwatch-Line"]) == (
            str(at),
            str(number),
        )
    assert "shipped" in shipper.output()


def test_a_run_always_lands_in_one_partition(tmp_path: Path, server: NatsServer) -> None:
    """Per-run order in the processors needs every event of a run in one partition."""
    odd = "run with spaces/and.dots"
    logs = [tmp_path / f"{name}.jsonl" for name in ("x", "y")]
    for n, log in enumerate(logs):
        log.write_bytes(
            Lines(runs=3, prefix=f"P{n}").block(30)
            + b"".join(
                orjson.dumps(
                    {
                        "event_type": "run_started",
                        "timestamp": "2026-11-22T10:00:00Z",
                        "run_id": odd,
                        "seq": n * 10 + k,
                    }
                )
                + b"\n"
                for k in range(3)
            )
        )
    with Shipper(tmp_path, server.url, *logs) as shipper:
        wait_until(lambda: shipped_all(shipper, server, 66, *logs), "both files")
    partitions: dict[str, set[str]] = {}
    for message in stored(server.url):
        run_id = orjson.loads(message.data)["run_id"]
        partitions.setdefault(run_id, set()).add(message.subject)
    assert len(partitions) == 7
    assert all(len(subjects) == 1 for subjects in partitions.values()), partitions
    token = subject_token(odd)
    assert token.startswith("h") and len(token) == 21
    assert partitions[odd] == {f"runwatch.part.{server.partition_of(token)}.{token}"}


def test_rejected_line_is_shipped_with_a_stable_id(tmp_path: Path, server: NatsServer) -> None:
    """A bad line must reach the processor's dead letters once, even when shipped twice."""
    log = tmp_path / "bad.jsonl"
    bad = b'{"event_type": "run_started", "run_id": "R1"'  # no closing brace
    log.write_bytes(Lines().block(3) + bad + b"\n" + b"\xff\xfe not utf-8\n")
    with Shipper(tmp_path, server.url, log) as shipper:
        wait_until(lambda: shipped_all(shipper, server, 5, log), "first shipping")
        assert shipper.stop() == 0
        for suffix in ("", "-wal", "-shm"):  # checkpoints lost: everything is shipped again
            Path(f"{shipper.db}{suffix}").unlink(missing_ok=True)
        shipper.start()
        wait_until(lambda: checkpoint(shipper.db, log) == log.stat().st_size, "second shipping")
        assert shipper.stop() == 0
    messages = stored(server.url)
    assert len(messages) == 5
    rejected = [m for m in messages if m.headers["Nats-Msg-Id"].startswith("line:")]
    assert [m.data for m in rejected] == [bad, b"\xff\xfe not utf-8"]
    offset = int(rejected[0].headers["Runwatch-Offset"])
    assert rejected[0].headers["Nats-Msg-Id"] == line_id(str(log), offset, bad)
    assert all(m.subject == f"runwatch.part.{server.partition_of('_')}._" for m in rejected)
    assert "(5 already in the stream)" in shipper.output()


def test_a_line_too_big_for_nats_is_shipped_cut_and_flagged(tmp_path: Path) -> None:
    """A line over the server's max_payload must not block the file: its head goes, flagged."""
    log = tmp_path / "big-line.jsonl"
    huge = orjson.dumps(
        {
            "event_type": "run_started",
            "event_id": "big",
            "run_id": "R1",
            "timestamp": "2026-11-22T10:00:00Z",
            "pad": "y" * 6000,
        }
    )
    log.write_bytes(huge + b"\n" + Lines().block(2))
    with (
        NatsServer(tmp_path / "nats", extra="max_payload: 4096") as server,
        Shipper(tmp_path, server.url, log) as shipper,
    ):
        wait_until(lambda: shipped_all(shipper, server, 3, log), "the cut line and the rest")
        messages = stored(server.url)
    cut = messages[0]
    assert huge.startswith(cut.data) and 1000 < len(cut.data) < 4096
    assert cut.headers["Runwatch-Oversize"] == str(len(huge))
    assert cut.headers["Nats-Msg-Id"] == line_id(str(log), 0, cut.data)
    assert cut.subject.endswith("._")
    assert [m.headers["Nats-Msg-Id"] for m in messages[1:]] == ["R0/Re0", "R1/Re1"]


def test_shipper_started_before_nats_waits_for_it(tmp_path: Path) -> None:
    """Boot order must not matter: a shipper up before NATS ships once NATS is there."""
    log = tmp_path / "early.jsonl"
    log.write_bytes(Lines().block(10))
    server = NatsServer(tmp_path / "nats")
    try:
        with Shipper(tmp_path, server.url, log) as shipper:
            wait_until(lambda: "Connect call failed" in shipper.output(), "a failed connect")
            assert checkpoint(shipper.db, log) == 0
            server.start()
            wait_until(lambda: shipped_all(shipper, server, 10, log), "lines after NATS came")
            assert shipper.stop() == 0
        ids = [m.headers["Nats-Msg-Id"] for m in stored(server.url)]
    finally:
        server.kill()
    assert ids == [f"R{n % 5}/Re{n}" for n in range(10)]


def test_without_the_partition_mapping_nothing_is_checkpointed(tmp_path: Path) -> None:
    """Lines must never land unpartitioned where no processor reads: no mapping, no commit."""
    log = tmp_path / "unmapped.jsonl"
    log.write_bytes(Lines().block(3))
    with (
        NatsServer(tmp_path / "nats", partitions=0) as server,
        Shipper(tmp_path, server.url, log) as shipper,
    ):
        wait_until(lambda: "no stream takes runwatch.events.*" in shipper.output(), "a hint")
        assert shipper.running()
        assert checkpoint(shipper.db, log) == 0
        assert stream_count(server.url) == 0
        assert shipper.stop() == 0


def test_kill_9_then_restart_ships_every_line_once(tmp_path: Path, server: NatsServer) -> None:
    """A crash between an ack and its checkpoint re-ships a batch; the stream keeps one copy."""
    log = tmp_path / "big.jsonl"
    lines = Lines(runs=50)
    log.write_bytes(lines.block(40_000))
    with Shipper(tmp_path, server.url, log) as shipper:
        wait_until(lambda: stream_count(server.url) >= 4_000, "a first part")
        shipper.kill()
        assert stream_count(server.url) < 40_000, "killed too late to test anything"
        append(log, lines.block(2_000))
        shipper.start()
        wait_until(lambda: shipped_all(shipper, server, 42_000, log), "everything", 30)
        assert shipper.stop() == 0
    messages = stored(server.url)
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(messages) == len(set(ids)) == 42_000
    assert set(ids) == {f"R{n % 50}/Re{n}" for n in range(42_000)}


def test_nats_down_holds_the_checkpoint(tmp_path: Path, server: NatsServer) -> None:
    """While NATS is away nothing may be checkpointed as shipped, and nothing may be lost."""
    log = tmp_path / "live.jsonl"
    lines = Lines()
    log.write_bytes(lines.block(100))
    with Shipper(tmp_path, server.url, log) as shipper:
        wait_until(lambda: shipped_all(shipper, server, 100, log), "before the outage")
        held = checkpoint(shipper.db, log)
        server.kill()
        append(log, lines.block(200))
        wait_until(lambda: "retrying, checkpoints held" in shipper.output(), "a failed batch")
        assert shipper.running(), shipper.output()
        assert checkpoint(shipper.db, log) == held
        server.start()
        append(log, lines.block(50))
        wait_until(lambda: shipped_all(shipper, server, 350, log), "after the outage")
        assert shipper.stop() == 0
    ids = [m.headers["Nats-Msg-Id"] for m in stored(server.url)]
    assert ids == [f"R{n % 5}/Re{n}" for n in range(350)]


def test_rotations_during_an_outage_lose_nothing(tmp_path: Path, server: NatsServer) -> None:
    """The files are the buffer while NATS is away: a file created and rotated away during
    the outage is still found, held open and shipped once NATS is back."""
    log = tmp_path / "live.jsonl"
    lines = Lines()
    log.write_bytes(lines.block(20))
    with Shipper(tmp_path, server.url, log) as shipper:
        wait_until(lambda: shipped_all(shipper, server, 20, log), "before the outage")
        server.kill()
        append(log, lines.block(30))
        wait_until(lambda: "retrying, checkpoints held" in shipper.output(), "a failed batch")
        for turn in (1, 2):
            log.rename(tmp_path / f"live.jsonl.{turn}")
            log.write_bytes(lines.block(40))
            held_open(shipper, log.stat().st_ino, f"file {turn}")
        server.start()
        wait_until(lambda: len(stored(server.url)) == 130, "every line after the outage", 60)
        assert shipper.stop() == 0
    ids = [m.headers["Nats-Msg-Id"] for m in stored(server.url)]
    assert sorted(ids) == sorted(f"R{n % 5}/Re{n}" for n in range(130))


def held_open(process: Shipper, inode: int, what: str) -> None:
    wait_until(lambda: inode in open_inodes(process), f"{what} held open", 30)


def open_inodes(process: Shipper) -> set[int]:
    """The inodes of the regular files a process holds open."""
    assert process.process is not None
    found = set()
    for fd in Path(f"/proc/{process.process.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            info = fd.stat()
            if stat.S_ISREG(info.st_mode):
                found.add(info.st_ino)
    return found


WRITER = r'''
"""Append TOTAL numbered lines to LOG at a steady pace; every ROTATE lines rename it and
create it anew, writing the next 3 lines to the renamed file (the writer reopens late)."""
import json, os, sys, time
log, total, rotate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
handle, late = open(log, "ab", buffering=0), None
for n in range(total):
    if n and n % rotate == 0:
        os.rename(log, f"{log}.{n}")
        late = handle
    elif late is not None and n % rotate == 3:
        late.close()
        late, handle = None, open(log, "ab", buffering=0)
    handle.write(json.dumps({"event_type": "task_started", "event_id": f"w{n}",
        "timestamp": "2026-11-22T10:00:00Z", "run_id": f"R{n % 7}",
        "task_id": f"t{n}"}).encode() + b"\n")
    time.sleep(0.0005)
handle.close()
'''


def test_rotation_while_shipping_loses_nothing(
    tmp_path: Path, log: Path, server: NatsServer
) -> None:
    """Log rotation under a live writer must not drop or repeat a line."""
    events = log.parent
    with Shipper(tmp_path, server.url, log) as shipper:
        # the first rotation comes within half a second: the writer starts once the shipper
        # follows the log (a file renamed away before it first looked is none of its files)
        first = (log.stat().st_dev, log.stat().st_ino)
        wait_until(lambda: checkpointed(shipper.db) == {first}, "the shipper following the log")
        subprocess.run(
            [sys.executable, "-c", WRITER, str(log), "3000", "700"], check=True, timeout=30
        )
        assert len(list(events.iterdir())) == 5
        wait_until(
            lambda: shipped_all(shipper, server, 3000, log), "every rotated line", show=[shipper]
        )
        current = (log.stat().st_dev, log.stat().st_ino)
        # retiring a renamed file drops its checkpoint: then none can be read again
        wait_until(lambda: checkpointed(shipper.db) == {current}, "the renamed files retired")
        assert shipper.stop() == 0
    messages = stored(server.url)
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert sorted(ids) == sorted(f"R{n % 7}/w{n}" for n in range(3000))
    assert {m.headers["Runwatch-Source"] for m in messages} == {str(log)}
    assert shipper.output().count("SOURCE_ROTATED") == 4, "each rename was noticed"


def test_a_second_shipper_on_one_checkpoint_db_refuses(tmp_path: Path, server: NatsServer) -> None:
    """Two shippers on one checkpoint db would each advance the other's offsets."""
    log = tmp_path / "one.jsonl"
    log.write_bytes(Lines().block(5))
    with Shipper(tmp_path, server.url, log) as shipper:
        wait_until(lambda: shipped_all(shipper, server, 5, log), "the first shipper")
        second = subprocess.run(
            shipper.command, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
        )
        assert second.returncode == 1
        assert "already in use" in second.stderr
        assert shipper.stop() == 0


def test_runs_sharing_an_event_id_both_arrive(tmp_path: Path, server: NatsServer) -> None:
    """Event ids are unique within a run only: two runs' event "1", shipped within the
    duplicate window, are two messages, not one dropped as a repeat of the other."""
    log = tmp_path / "runs.jsonl"
    log.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "event_type": "run_started",
                    "event_id": "1",
                    "timestamp": "2026-11-22T10:00:00Z",
                    "run_id": run_id,
                }
            )
            + b"\n"
            for run_id in ("A", "B", "run with spaces")
        )
    )
    with Shipper(tmp_path, server.url, log) as shipper:
        wait_until(lambda: checkpoint(shipper.db, log) == log.stat().st_size, "the lines acked")
        assert shipper.stop() == 0
    messages = stored(server.url)
    assert sorted(orjson.loads(m.data)["run_id"] for m in messages) == [
        "A",
        "B",
        "run with spaces",
    ]
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(set(ids)) == 3
    assert ids[:2] == ["A/1", "B/1"]
    assert ids[2] == message_id("run with spaces", "1") != message_id("run with space", "s1")
    assert "(0 already in the stream)" in shipper.output()
