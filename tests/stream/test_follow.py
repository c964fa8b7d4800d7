"""`Follower` in-process, stepped by hand over real files and a real SQLite checkpoint store.

Like a deterministic testing source: each `step` is one pass of the service loop (optional
discovery, one read, retirement), each `commit` stores the checkpoints that pass produced, and
a follower can be closed and a new one resumed from the same store. The subprocess tests in
tests/process/test_rotation.py cover the same cases against a running `runwatch tail`; here
every interleaving is exact, so each assertion names the very pass that must see a line.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Self

import orjson
import pytest
from watchdog.events import FileCreatedEvent, FileModifiedEvent, FileMovedEvent

from helpers import wait_until
from runwatch.projections import DerivedEvent
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.sources.follow import Follower, Read
from runwatch.stream.sources.watch import FileChanges, Passes

BUDGET = 1 << 20


class Source:
    """A Follower of `patterns` on the checkpoint database `db`, stepped by hand."""

    def __init__(self, db: Path, *patterns: Path, rotate_wait_s: float = 0.0) -> None:
        self.store = SqliteStore(db)
        self.notes: list[DerivedEvent] = []
        self.follower = Follower(
            [str(p) for p in patterns],
            self.store,
            max_line_bytes=4096,
            rotate_wait_s=rotate_wait_s,
            notes=self.notes,
        )
        self.follower.discover()

    def step(self, *, discover: bool = False) -> list[bytes]:
        """One pass of the service loop: the complete lines it hands out."""
        if discover:
            self.follower.discover()
        reads = self.follower.read(BUDGET)
        self.follower.retire(reads)
        return [line for read in reads for line in read.lines.items]

    def drain(self) -> list[bytes]:
        """Passes (with discovery) until one hands out nothing and opens no file (a pass
        that notices a rename opens the new file; the next pass reads it)."""
        out: list[bytes] = []
        while True:
            followed = set(self.follower.cursors)
            lines = self.step(discover=True)
            if not lines and set(self.follower.cursors) <= followed:
                return out
            out.extend(lines)

    def commit(self) -> None:
        checkpoints, forgotten = self.follower.checkpoints()
        self.store.commit(Changes(checkpoints=checkpoints, forget=forgotten), "test")

    def note_types(self) -> list[str]:
        return [note.type for note in self.notes]

    def checkpointed(self) -> set[tuple[int, int]]:
        return set(self.store.checkpoints())

    def close(self) -> None:
        self.follower.close()
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Writer:
    """Distinct event lines appended to files, remembered in the order they were written."""

    def __init__(self) -> None:
        self.count = 0

    def lines(self, count: int, *, crlf: bool = False) -> list[bytes]:
        out = []
        for _ in range(count):
            event = {
                "event_type": "task_started",
                "timestamp": "2026-01-05T08:00:00Z",
                "run_id": "R1",
                "task_id": f"t{self.count}",
            }
            self.count += 1
            out.append(orjson.dumps(event) + (b"\r" if crlf else b""))
        return out

    def append(self, path: Path, count: int, **options: bool) -> list[bytes]:
        lines = self.lines(count, **options)
        with path.open("ab") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))
        return lines


def read_and_stop(db: Path, log: Path, writer: Writer, count: int) -> None:
    """A service that reads `count` new lines of `log`, checkpoints them and stops."""
    with Source(db, log.parent) as source:
        written = writer.append(log, count)
        assert source.step() == written
        source.commit()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "checkpoints.db"


def file_id(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def test_appended_lines_are_handed_out_once_in_order(log: Path, db: Path) -> None:
    writer = Writer()
    with Source(db, log.parent) as source:
        first = writer.append(log, 3)
        assert source.step() == first
        assert source.step() == []
        second = writer.append(log, 2)
        assert source.step() == second
        source.commit()
        [saved] = source.store.checkpoints().values()
        assert (saved.offset, saved.line) == (log.stat().st_size, 6)


def test_partial_line_waits_for_its_newline(log: Path, db: Path) -> None:
    """Not even a whole JSON object is handed out before its `\\n`."""
    [line] = Writer().lines(1)
    with Source(db, log.parent) as source:
        with log.open("ab") as handle:
            handle.write(line[:10])
            handle.flush()
            assert source.step() == []
            handle.write(line[10:])
            handle.flush()
            assert source.step() == []
            source.commit()
            assert source.store.checkpoints()[file_id(log)].offset == 0
            handle.write(b"\n")
        assert source.step() == [line]


def test_crlf_line_keeps_its_carriage_return_until_the_newline_arrives(log: Path, db: Path) -> None:
    """The `\\r` stays on the line (the fold strips it), even when `\\n` comes later."""
    writer = Writer()
    with Source(db, log.parent) as source:
        whole = writer.append(log, 2, crlf=True)
        assert source.step() == whole
        [split] = writer.lines(1, crlf=True)
        with log.open("ab") as handle:
            handle.write(split)
            handle.flush()
            assert source.step() == []
            handle.write(b"\n")
        assert source.step() == [split]
    assert all(line.endswith(b"\r") for line in [*whole, split])


def test_a_pass_reads_the_files_named_unless_a_rescan_is_due_or_it_is_behind(
    log: Path, db: Path
) -> None:
    """`Passes`, as `tail` and `ship` run them: the notifications say which files to read."""
    other, writer = log.with_name("other.jsonl"), Writer()
    with Source(db, log.parent / "*.jsonl") as source:
        first = writer.append(log, 1) + writer.append(other, 1)
        changes = FileChanges(lambda: None)
        passes = Passes(source.follower, changes, rescan_s=3600)
        passes.discover()

        def read(*, everything: bool = False) -> list[bytes]:
            reads: list[Read] = passes.read(BUDGET, everything=everything)
            return sorted(line for read in reads for line in read.lines.items)

        assert read() == [], "no file was named"
        assert read(everything=True) == sorted(first), "behind: every file"
        named = writer.append(log, 1)
        unnamed = writer.append(other, 1)
        changes.on_any_event(FileModifiedEvent(str(log)))
        assert read() == named
        new = log.with_name("new.jsonl")
        created = writer.append(new, 1)
        changes.on_any_event(FileCreatedEvent(str(new)))
        assert read() == sorted(unnamed + created), "a file came: re-scan, every file"


def test_rename_rotation_finishes_the_old_file_and_reads_the_new_one_from_zero(
    log: Path, db: Path
) -> None:
    """logrotate `create`: lines written to the renamed file, before and after the rename,
    are read through the open descriptor; the new file under the name is read from 0."""
    writer = Writer()
    rotated = log.with_name("run.jsonl.1")  # not *.jsonl: no longer matched
    with Source(db, log.parent) as source:
        before = writer.append(log, 3)
        assert source.step() == before
        old_id = file_id(log)
        unread = writer.append(log, 2)
        log.rename(rotated)
        late = writer.append(rotated, 1)  # the writer has not reopened yet
        new = writer.append(log, 4)
        assert source.step() == unread + late  # the pass that notices the rename
        assert source.note_types() == ["SOURCE_ROTATED"]
        assert source.step() == new
        source.commit()
        assert source.checkpointed() == {file_id(log)}, "the finished file is forgotten"
        assert old_id not in source.follower.cursors


def test_rotated_file_stays_open_for_rotate_wait(log: Path, db: Path) -> None:
    """A writer may still append to the renamed file for `rotate_wait`; it is read."""
    writer = Writer()
    with Source(db, log.parent, rotate_wait_s=3600) as source:
        writer.append(log, 1)
        source.step()
        log.rename(log.with_name("run.jsonl.1"))
        new = writer.append(log, 1)
        assert source.drain() == new
        late = writer.append(log.with_name("run.jsonl.1"), 2)
        assert source.step() == late
        assert len(source.follower.cursors) == 2


@pytest.mark.parametrize("every", [1, 3, 7, 64, 699])
@pytest.mark.parametrize("by_folder", [False, True])
def test_repeated_rename_rotation_under_a_live_writer_loses_nothing(
    log: Path, db: Path, every: int, by_folder: bool
) -> None:
    """The writer of tests/process/test_ship.py, step by step: every 700 lines the log is
    renamed, 3 more lines go to the renamed file, then the name is created anew. A pass of
    the loop (as `ship` and `tail` run it: notifications say what to read and when to
    re-scan) comes after every `every` lines, so some pass falls between each two steps of
    the writer; each line is handed out exactly once."""
    writer, written, handed_out = Writer(), [], []
    with Source(db, log.parent if by_folder else log, rotate_wait_s=3600) as source:
        changes = FileChanges(lambda: None)
        passes = Passes(source.follower, changes, rescan_s=3600)
        passes.discover()

        def step() -> None:
            behind = False
            while True:
                reads = passes.read(4096, everything=behind)
                handed_out.extend(line for read in reads for line in read.lines.items)
                source.commit()
                behind = source.follower.behind
                if not behind:
                    return

        target = log
        for n in range(3000):
            if n and n % 700 == 0:
                target = log.with_name(f"{log.name}.{n}")
                log.rename(target)
                changes.on_any_event(FileMovedEvent(str(log), str(target)))
            elif n % 700 == 3 and target != log:
                target = log
                log.touch()
                changes.on_any_event(FileCreatedEvent(str(log)))
            written.extend(writer.append(target, 1))
            changes.on_any_event(FileModifiedEvent(str(target)))
            if n % every == 0:
                step()
        step()
        source.follower.rotate_wait_s = 0.0  # the writer is done: rotated files may retire
        step()
        assert Counter(handed_out) == Counter(written) and len(handed_out) == 3000
        assert source.note_types() == ["SOURCE_ROTATED"] * 4
        assert source.checkpointed() == {file_id(log)}, "the renamed files are retired"


def test_a_file_created_within_the_folders_timestamp_tick_is_discovered(
    log: Path, db: Path
) -> None:
    """Where folder timestamps are coarse (a kernel tick, or a second on some filesystems), a
    rename and the name's re-creation can leave the folder's mtime as it was when a re-scan
    listed it in between. That listing must not be reused: the new file would be found only
    after its own rotation, when it no longer matches, and every line of it would be lost."""
    writer = Writer()
    with Source(db, log.parent) as source:
        writer.append(log, 1)
        source.step()
        log.rename(log.with_name("run.jsonl.1"))
        assert source.step(discover=True) == []  # the re-scan between rename and re-creation
        listed = log.parent.stat()
        new = writer.append(log, 2)
        os.utime(log.parent, ns=(listed.st_atime_ns, listed.st_mtime_ns))  # the same tick
        assert source.drain() == new


def test_copytruncate_reads_the_unread_lines_from_the_copy(log: Path, db: Path) -> None:
    writer = Writer()
    copy = log.with_name("run.jsonl.1")
    with Source(db, log.parent) as source:
        read = writer.append(log, 5)
        assert source.step() == read
        unread = writer.append(log, 3)
        shutil.copyfile(log, copy)
        os.truncate(log, 0)
        fresh = writer.append(log, 2)
        assert log.stat().st_size < copy.stat().st_size
        assert source.step() == fresh  # the truncation is noticed; the file restarts at 0
        assert source.step() == unread  # the copy, from where reading had stopped
        [truncated] = source.notes
        assert truncated.type == "SOURCE_TRUNCATED"
        assert truncated.data["copy"] == str(copy)
        source.commit()
        assert source.checkpointed() == {file_id(log)}


def test_truncate_then_regrow_past_the_old_offset_is_read_from_zero(log: Path, db: Path) -> None:
    """A rewrite that ends up longer than what was read is not mistaken for an append."""
    writer = Writer()
    with Source(db, log.parent) as source:
        old = writer.append(log, 4)
        assert source.step() == old
        offset = log.stat().st_size
        os.truncate(log, 0)
        regrown = writer.append(log, 8)
        assert log.stat().st_size > offset
        assert source.step() == regrown
        [truncated] = source.notes
        assert (truncated.type, truncated.data["offset"], truncated.data["copy"]) == (
            "SOURCE_TRUNCATED",
            offset,
            None,
        )


def test_delete_and_recreate_finishes_the_deleted_file(log: Path, db: Path) -> None:
    writer = Writer()
    with Source(db, log.parent) as source:
        read = writer.append(log, 3)
        assert source.step() == read
        unread = writer.append(log, 2)
        log.unlink()
        recreated = writer.append(log, 4)
        assert Counter(source.drain()) == Counter(unread + recreated)
        assert source.notes[0].type == "SOURCE_ROTATED"
        assert source.notes[0].data["replaced"] is True
        source.commit()
        assert source.checkpointed() == {file_id(log)}


def test_checkpoint_round_trip_resumes_without_loss_or_repeat(log: Path, db: Path) -> None:
    """Stop after a commit, write meanwhile (a partial line included), resume: exactly the
    lines not handed out before, each once."""
    writer = Writer()
    with Source(db, log.parent) as source:
        assert source.step() == []
        first = writer.append(log, 5)
        assert source.step() == first
        source.commit()
        [pending] = writer.lines(1)
        with log.open("ab") as handle:
            handle.write(pending[:7])
        assert source.step() == []
        source.commit()
    with log.open("ab") as handle:
        handle.write(pending[7:] + b"\n")
    later = writer.append(log, 3)
    with Source(db, log.parent) as resumed:
        assert resumed.drain() == [pending, *later]
        assert resumed.notes == []
        resumed.commit()
    with Source(db, log.parent) as again:
        assert again.drain() == []


def test_lines_read_but_not_committed_are_read_again(log: Path, db: Path) -> None:
    """A crash between reading and committing loses nothing: the checkpoint is behind."""
    writer = Writer()
    with Source(db, log.parent) as source:
        committed = writer.append(log, 2)
        assert source.step() == committed
        source.commit()
        uncommitted = writer.append(log, 3)
        assert source.step() == uncommitted
    with Source(db, log.parent) as resumed:
        assert resumed.drain() == uncommitted


def test_rename_while_stopped_finishes_the_rotated_file(log: Path, db: Path) -> None:
    writer = Writer()
    rotated = log.with_name("run.jsonl.1")
    with Source(db, log.parent) as source:
        source.step()
        assert source.step() == []
        writer.append(log, 4)
        source.step()
        source.commit()
    unread = writer.append(log, 2)
    log.rename(rotated)
    new = writer.append(log, 3)
    with Source(db, log.parent) as resumed:
        assert Counter(resumed.drain()) == Counter(unread + new)
        assert "SOURCE_ROTATED" in resumed.note_types()


def test_copytruncate_while_stopped_reads_the_copy_from_the_checkpoint(log: Path, db: Path) -> None:
    writer = Writer()
    copy = log.with_name("run.jsonl.1")
    read_and_stop(db, log, writer, 4)
    unread = writer.append(log, 3)
    shutil.copyfile(log, copy)
    os.truncate(log, 0)
    fresh = writer.append(log, 2)
    with Source(db, log.parent) as resumed:
        assert Counter(resumed.drain()) == Counter(unread + fresh)
        truncated = [n for n in resumed.notes if n.type == "SOURCE_TRUNCATED"]
        assert [(n.data["copy"], n.data["while"]) for n in truncated] == [(str(copy), "stopped")]


def test_same_inode_with_other_bytes_is_a_new_file(log: Path, db: Path) -> None:
    """What inode reuse looks like to a checkpoint: the same (device, inode) holding other
    bytes. It is read from 0, not from the old offset."""
    writer = Writer()
    read_and_stop(db, log, writer, 3)
    before = file_id(log)
    with log.open("r+b") as handle:  # same inode, other first bytes, longer than before
        handle.truncate(0)
        handle.write(b'{"other":"writer"}\n')
    replaced = writer.append(log, 4)
    assert file_id(log) == before
    with Source(db, log.parent) as resumed:
        assert resumed.drain() == [b'{"other":"writer"}', *replaced]
        assert resumed.note_types() == ["SOURCE_REPLACED"]


def test_delete_and_recreate_while_stopped_reads_the_new_file_from_zero(
    log: Path, db: Path
) -> None:
    """The new file may or may not get the old inode; either way it is read whole."""
    writer = Writer()
    read_and_stop(db, log, writer, 3)
    old = file_id(log)
    log.unlink()
    recreated = writer.append(log, 5)
    reused = file_id(log) == old
    with Source(db, log.parent) as resumed:
        assert resumed.drain() == recreated
        assert ("SOURCE_REPLACED" in resumed.note_types()) == reused
        assert ("SOURCE_GONE" in resumed.note_types()) == (not reused)
        resumed.commit()
        assert resumed.checkpointed() == {file_id(log)}


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_thousands_of_quiet_files_do_not_hold_a_descriptor_each(tmp_path: Path, db: Path) -> None:
    """A file is open while it is busy (at most `max_open` followed by name at once) and
    closed once quiet; it is reopened, by name and identity, when it changes, and found by
    its identity when it was renamed meanwhile."""
    folder = tmp_path / "many"
    folder.mkdir()
    writer = Writer()
    files = [folder / f"f{n:04}.jsonl" for n in range(2000)]
    written = [line for path in files for line in writer.append(path, 1)]
    store = SqliteStore(db)
    baseline = open_descriptors()
    follower = Follower(
        [str(folder)],
        store,
        max_line_bytes=4096,
        rotate_wait_s=0.0,
        notes=[],
        idle_close_s=0.3,
        max_open=64,
    )
    most = 0

    def step() -> list[bytes]:
        nonlocal most
        follower.discover()
        reads = follower.read(BUDGET)
        follower.retire(reads)
        most = max(most, open_descriptors() - baseline)
        return [line for read in reads for line in read.lines.items]

    try:
        assert sorted(step()) == sorted(written)
        assert len(follower.cursors) == 2000 and most <= 64
        wait_until(lambda: not step() and open_descriptors() <= baseline, "quiet files closed")

        busy = writer.append(files[7], 2) + writer.append(files[1500], 1)
        assert sorted(step()) == sorted(busy), "a closed file that grew is read again"
        renamed = writer.append(files[0], 1)
        files[0].rename(folder / "f0000.jsonl.1")  # rotated while closed: found by identity
        fresh = writer.append(files[0], 1)
        assert step() + step() == renamed + fresh
        assert len(follower.cursors) == 2000
        wait_until(lambda: not step() and open_descriptors() <= baseline, "closed again")
        assert most <= 64
    finally:
        follower.close()
        store.close()
