"""Following growing files: discovery, reading complete lines, rotation and truncation.

A followed file is its (device, inode), not its name. Its cursor keeps the file open, so a
file renamed or deleted by rotation is still read to its end; the name then gets a new
cursor from offset 0. A file left unchanged for `idle_close_s` is closed (as are the least
recently used ones beyond `max_open`), so thousands of quiet files do not hold thousands of
descriptors: it is watched by its name then, and reopened when it changes, after checking
that the name still holds the same (device, inode); renamed while closed, it is looked for
by that identity next to its name.

A file that shrinks, or whose bytes before the read position change, was truncated
(copytruncate, or truncate-then-regrow): its copy is looked for next to it and read from
where we stopped, and the file is read again from 0. Every event has an id, so
lines seen twice through a copy are applied once.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runwatch.projections import DerivedEvent
from runwatch.sinks.store.api import Checkpoint
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.core.decode import RAW_KEEP
from runwatch.stream.core.lines import Lines, LineSplitter
from runwatch.stream.sources.discovery import FINGERPRINT_BYTES, TAIL_HASH_BYTES, Scanner, digest

FileId = tuple[int, int]
MIN_READ: Final = 64 * 1024
"""A pass stops reading once less than this is left of its budget."""
IDLE_CLOSE_S: Final = 60.0
"""A file unchanged this long is closed until it changes."""
MAX_OPEN: Final = 512
"""At most this many files followed by name are open at once (rotated ones come on top,
each for about `rotate_wait`)."""


class Cursor:
    """One open file and how far into it lines have been handed out."""

    def __init__(
        self,
        path: Path,
        source: str,
        source_id: int,
        file_id: FileId,
        fd: int | None,
        splitter: LineSplitter,
    ) -> None:
        self.path = path
        self.source = source
        self.source_id = source_id
        self.file_id = file_id
        self.fd = fd
        self.splitter = splitter
        self.head = b""  # the file's first bytes, up to FINGERPRINT_BYTES, for the fingerprint
        self.tail = b""  # the bytes just before splitter.offset, to notice rewrites
        self.rotated_at: float | None = None
        self.advanced = True
        self.used_at = time.monotonic()  # when it last grew or was opened

    @property
    def position(self) -> int:
        """Where the next read starts: past the complete lines and any partial line held."""
        return self.splitter.offset + self.splitter.pending_bytes

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            self.file_id[0],
            self.file_id[1],
            self.source,
            digest(self.head),
            self.splitter.offset,
            self.splitter.line,
            digest(self.tail),
        )

    def checkpoint_at(self, offset: int, line: int) -> Checkpoint | None:
        """A checkpoint at an `offset` (line number `line`) at or before where reading got,
        for a commit in the middle of a read; None once the file is closed."""
        if self.fd is None:
            return None
        head = self.head
        if len(head) < FINGERPRINT_BYTES:
            head = os.pread(self.fd, min(FINGERPRINT_BYTES, max(offset, len(head))), 0)
        start = max(0, offset - TAIL_HASH_BYTES)
        tail = os.pread(self.fd, offset - start, start)
        device, inode = self.file_id
        return Checkpoint(device, inode, self.source, digest(head), offset, line, digest(tail))

    @property
    def handle(self) -> int:
        """The open file; only while it is open (the follower reopens it before reading)."""
        assert self.fd is not None, f"{self.path} is closed"
        return self.fd

    def refresh_edges(self) -> None:
        """Re-read the head (while short) and the tail bytes before the committed offset."""
        offset = self.splitter.offset
        if len(self.head) < FINGERPRINT_BYTES:
            wanted = min(FINGERPRINT_BYTES, max(offset, len(self.head)))
            self.head = os.pread(self.handle, wanted, 0)
        start = max(0, offset - TAIL_HASH_BYTES)
        self.tail = os.pread(self.handle, offset - start, start)

    def rewritten(self, size: int) -> bool:
        """True when the file no longer holds what was read: it shrank or its bytes changed."""
        if size < self.position:
            return True
        start = self.splitter.offset - len(self.tail)
        return bool(self.tail) and os.pread(self.handle, len(self.tail), start) != self.tail

    def stat(self) -> os.stat_result | None:
        """The file's status: from the open file, else by its name while that still names
        it (None when it does not)."""
        try:
            info = os.fstat(self.fd) if self.fd is not None else self.path.stat()
        except OSError:
            return None
        return info if (info.st_dev, info.st_ino) == self.file_id else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass(frozen=True, slots=True)
class Read:
    """Lines read from one cursor."""

    cursor: Cursor
    lines: Lines


class Follower:
    """All followed files of a set of path patterns, resumed from the store's checkpoints."""

    def __init__(
        self,
        patterns: list[str],
        store: SqliteStore,
        *,
        max_line_bytes: int,
        rotate_wait_s: float,
        notes: list[DerivedEvent],
        idle_close_s: float = IDLE_CLOSE_S,
        max_open: int = MAX_OPEN,
    ) -> None:
        self.scanner = Scanner(patterns)
        self.store = store
        self.max_line_bytes = max_line_bytes
        self.rotate_wait_s = rotate_wait_s
        self.notes = notes  # audit events about files (rotation, truncation), for the caller
        self.cursors: dict[FileId, Cursor] = {}
        self.idle_close_s = idle_close_s
        self.max_open = max_open
        self.open_by_name: OrderedDict[FileId, Cursor] = OrderedDict()
        """Open cursors followed by their name, least recently used first (rotated ones are
        never closed early: their name no longer leads to them)."""
        self.by_path: dict[str, FileId] = {}
        self.forgotten: list[FileId] = []
        self.unreadable: set[str] = set()
        self.behind = False
        self.saved = store.checkpoints()

    def discover(self) -> None:
        """Pick up files matching the patterns; resume each from its checkpoint if it is the
        same file, and finish files rotated away while the service was down."""
        for name in self.scanner.files():
            followed = self.by_path.get(name)
            if followed is not None:
                # Notice a replaced name now, not at the next read: a loop that is not reading
                # (a shipper retrying a batch) must still hold each new file before it goes too.
                self._check_name(self.cursors[followed])
                continue
            path = Path(name)
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            file_id = (info.st_dev, info.st_ino)
            cursor = self.cursors.get(file_id)
            if cursor is not None:
                if cursor.path != path:  # renamed to a name that matches too
                    if self.by_path.get(str(cursor.path)) == file_id:
                        del self.by_path[str(cursor.path)]
                    cursor.path = path
                cursor.rotated_at = None  # followed under this name from now on
                self.by_path[str(path)] = file_id
                self._track(cursor)
                continue
            self._open(path, file_id)
        for file_id, saved in list(self.saved.items()):
            if file_id not in self.cursors:
                self._recover(file_id, saved)
        self.saved = {}

    def _open(self, path: Path, file_id: FileId, *, rotated: bool = False) -> Cursor | None:
        self._make_room()
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            if str(path) not in self.unreadable:  # say it once, not at every re-scan
                self.unreadable.add(str(path))
                self._note("SOURCE_UNREADABLE", path, {"error": exc.strerror or str(exc)})
            return None
        self.unreadable.discard(str(path))
        if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != file_id:  # replaced meanwhile
            os.close(fd)
            return None
        saved = self.saved.pop(file_id, None)
        start, line, source = 0, 1, str(path)
        if saved is not None:
            if _holds(fd, saved):
                start, line, source = saved.offset, saved.line, saved.source
            else:
                self._changed_while_stopped(path, fd, saved)
        splitter = LineSplitter(start, line, max_line_bytes=self.max_line_bytes, keep=RAW_KEEP)
        cursor = Cursor(path, source, self.store.source_id(source), file_id, fd, splitter)
        cursor.refresh_edges()
        if rotated:
            cursor.rotated_at = time.monotonic()
        self.cursors[file_id] = cursor
        self._track(cursor)
        if not rotated:
            self.by_path[str(path)] = file_id
        return cursor

    def _changed_while_stopped(self, path: Path, fd: int, saved: Checkpoint) -> None:
        """The checkpointed file no longer holds what was read: finish the old content from a
        copy next to it (copytruncate while stopped), then the file is read from 0."""
        for sibling in _siblings(path):
            try:
                copy_fd = os.open(sibling, os.O_RDONLY)
            except OSError:
                continue
            try:
                info = os.fstat(copy_fd)
                matches = _holds(copy_fd, saved)
            finally:
                os.close(copy_fd)
            copy_id = (info.st_dev, info.st_ino)
            if matches and copy_id not in self.cursors:
                self._note(
                    "SOURCE_TRUNCATED",
                    path,
                    {"offset": saved.offset, "copy": str(sibling), "while": "stopped"},
                )
                self.saved[copy_id] = saved
                self._open(sibling, copy_id, rotated=True)
                return
        if _same_digest(fd, saved.fingerprint, 0):
            self._note(
                "SOURCE_TRUNCATED", path, {"offset": saved.offset, "copy": None, "while": "stopped"}
            )
        else:
            self._note("SOURCE_REPLACED", path, {"reason": "another file has its inode"})

    def _recover(self, file_id: FileId, saved: Checkpoint) -> None:
        """A checkpointed file no longer matches the patterns: find it renamed nearby."""
        for sibling in _siblings(Path(saved.source)):
            try:
                info = sibling.stat()
            except FileNotFoundError:
                continue
            if (info.st_dev, info.st_ino) == file_id:
                self.saved[file_id] = saved
                if self._open(sibling, file_id, rotated=True) is not None:
                    self._note("SOURCE_ROTATED", Path(saved.source), {"now": str(sibling)})
                    return
        self.forgotten.append(file_id)
        self._note("SOURCE_GONE", Path(saved.source), {"offset": saved.offset})

    def read(self, budget: int, paths: Iterable[str] | None = None) -> list[Read]:
        """Read what has been appended, at most about `budget` bytes in all. `paths` limits
        the reading to files known to have changed (rotated files are always read). Sets
        `behind` when bytes were left unread for lack of budget."""
        if paths is None:
            cursors = list(self.cursors.values())
        else:
            wanted = {self.by_path[p] for p in paths if p in self.by_path}
            cursors = [
                c for c in self.cursors.values() if c.file_id in wanted or c.rotated_at is not None
            ]
        reads = []
        self.behind = False
        full = budget
        for cursor in cursors:
            if budget <= 0 or budget < min(MIN_READ, full):
                self.behind = True
                break
            self._check_name(cursor)
            lines, used, left = self._read_one(cursor, budget)
            budget -= used
            self.behind = self.behind or left > 0
            if lines is not None:
                reads.append(Read(cursor, lines))
        return reads

    def _check_name(self, cursor: Cursor) -> None:
        """Notice that the path now names another file, or nothing (rename or delete)."""
        if cursor.rotated_at is not None:
            return
        try:
            info = cursor.path.stat()
            current = (info.st_dev, info.st_ino)
        except FileNotFoundError:
            current = None
        if current != cursor.file_id:
            cursor.rotated_at = time.monotonic()
            self.open_by_name.pop(cursor.file_id, None)
            if self.by_path.get(str(cursor.path)) == cursor.file_id:
                del self.by_path[str(cursor.path)]
            self._note("SOURCE_ROTATED", cursor.path, {"replaced": current is not None})
            if current is not None and current not in self.cursors:
                self._open(cursor.path, current)

    def _read_one(self, cursor: Cursor, budget: int) -> tuple[Lines | None, int, int]:
        """(lines, bytes read, bytes left unread) for one file."""
        if cursor.fd is None:
            info = cursor.stat()  # by name: an idle file is not opened to learn it is idle
            if info is not None and info.st_size == cursor.position:
                return None, 0, 0
            if not self._reopen(cursor):
                return None, 0, 0  # gone while closed: `retire` ends it
        size = os.fstat(cursor.handle).st_size
        position = cursor.position
        if size == position:
            return None, 0, 0  # unchanged (a rewrite to the very same size shows once it grows)
        if cursor.rewritten(size):
            self._truncated(cursor)
            size = os.fstat(cursor.handle).st_size
            position = cursor.position
        if size <= position:
            return None, 0, 0
        data = os.pread(cursor.handle, min(budget, size - position), position)
        left = size - position - len(data)
        if not data:
            return None, 0, left
        self._track(cursor)
        lines = cursor.splitter.feed(data)
        if lines.items:
            cursor.refresh_edges()
            cursor.advanced = True
        return lines, len(data), left

    def _reopen(self, cursor: Cursor) -> bool:
        """Open a closed file again: by its name while that names the same (device, inode),
        else (renamed while closed) a file next to its name with that identity."""
        for candidate in _name_then_siblings(cursor.path):
            try:
                fd = os.open(candidate, os.O_RDONLY)
            except OSError:
                continue
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) == cursor.file_id:
                self._make_room()
                cursor.fd = fd
                self._track(cursor)
                return True
            os.close(fd)
        return False

    def _track(self, cursor: Cursor) -> None:
        """The cursor was just opened or grew: the last to close for want of room."""
        cursor.used_at = time.monotonic()
        if cursor.rotated_at is None and cursor.fd is not None:
            self.open_by_name[cursor.file_id] = cursor
            self.open_by_name.move_to_end(cursor.file_id)
        else:
            self.open_by_name.pop(cursor.file_id, None)

    def _make_room(self) -> None:
        """Close the least recently used files followed by name, down to `max_open` - 1."""
        while self.open_by_name and len(self.open_by_name) >= self.max_open:
            _, oldest = self.open_by_name.popitem(last=False)
            oldest.close()

    def _truncated(self, cursor: Cursor) -> None:
        """Finish the old content from its copy, if one is next to it, then start over at 0."""
        copy = _find_copy(cursor)
        self._note(
            "SOURCE_TRUNCATED",
            cursor.path,
            {"offset": cursor.splitter.offset, "copy": str(copy) if copy else None},
        )
        if copy is not None:
            info = copy.stat()
            file_id = (info.st_dev, info.st_ino)
            if file_id not in self.cursors:
                self.saved[file_id] = cursor.checkpoint()
                self._open(copy, file_id, rotated=True)
        cursor.splitter = LineSplitter(0, 1, max_line_bytes=self.max_line_bytes, keep=RAW_KEEP)
        cursor.head = cursor.tail = b""
        cursor.advanced = True

    def retire(self, final: list[Read]) -> None:
        """Close rotated files that were read to the end and had `rotate_wait` to finish;
        a partial last line of such a file is taken as it is (its writer has moved on).
        Files unchanged for `idle_close_s` are closed until they change."""
        now = time.monotonic()
        for cursor in list(self.cursors.values()):
            if cursor.rotated_at is None:
                idle = cursor.fd is not None and now - cursor.used_at >= self.idle_close_s
                if idle and os.fstat(cursor.handle).st_size == cursor.position:
                    cursor.close()
                    self.open_by_name.pop(cursor.file_id, None)
                continue
            if now - cursor.rotated_at < self.rotate_wait_s:
                continue
            if cursor.fd is not None and os.fstat(cursor.fd).st_size > cursor.position:
                continue
            if cursor.splitter.pending_bytes:
                final.append(Read(cursor, cursor.splitter.finish()))
            cursor.close()
            del self.cursors[cursor.file_id]
            self.forgotten.append(cursor.file_id)

    def lag(self, now: float) -> tuple[int, float]:
        """Bytes appended to followed files but not read yet, and the age of the newest such
        byte (now − the file's mtime): how far the projection is behind its sources."""
        pending = 0
        age = 0.0
        for cursor in self.cursors.values():
            info = cursor.stat()
            if info is None:
                continue
            unread = info.st_size - cursor.position
            if unread > 0:
                pending += unread
                age = max(age, now - info.st_mtime)
        return pending, max(age, 0.0)

    def checkpoints(self) -> tuple[list[Checkpoint], list[FileId]]:
        """Checkpoints of files that advanced, and files to forget, since the last call."""
        advanced = []
        for cursor in self.cursors.values():
            if cursor.advanced:
                cursor.advanced = False
                advanced.append(cursor.checkpoint())
        forgotten, self.forgotten = self.forgotten, []
        return advanced, forgotten

    def close(self) -> None:
        for cursor in self.cursors.values():
            cursor.close()
        self.cursors.clear()
        self.open_by_name.clear()

    def _note(self, kind: str, path: Path, data: dict[str, object]) -> None:
        self.notes.append(DerivedEvent(kind, _now_us(), None, {"source": str(path), **data}))


def _holds(fd: int, saved: Checkpoint) -> bool:
    """Whether an open file still has the checkpoint's first bytes and the bytes before its
    offset: then it is the same file, grown or not."""
    return _same_digest(fd, saved.fingerprint, 0) and _same_digest(
        fd, saved.tail_hash, saved.offset
    )


def _same_digest(fd: int, expected: str, end: int) -> bool:
    """Whether the bytes that `expected` covers (its length of them, from 0 when `end` is 0,
    else just before `end`) still hash the same."""
    length = int(expected.split(":", 1)[0])
    start = 0 if end == 0 else end - length
    return start >= 0 and digest(os.pread(fd, length, start)) == expected


def _siblings(path: Path) -> list[Path]:
    """Files next to `path` whose name starts with its name (events.jsonl.1, …)."""
    try:
        return sorted(
            p
            for p in path.parent.iterdir()
            if p.name.startswith(path.name) and p != path and p.is_file()
        )
    except OSError:
        return []


def _name_then_siblings(path: Path) -> Iterator[Path]:
    """`path`, then (listing the folder only if asked for more) its siblings."""
    yield path
    yield from _siblings(path)


def _find_copy(cursor: Cursor) -> Path | None:
    """A sibling holding the same first bytes and the same bytes before our offset."""
    offset = cursor.splitter.offset
    for sibling in _siblings(cursor.path):
        try:
            with sibling.open("rb") as handle:
                head = handle.read(len(cursor.head))
                handle.seek(max(0, offset - len(cursor.tail)))
                tail = handle.read(len(cursor.tail))
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
        except OSError:
            continue
        if size >= offset and head == cursor.head and tail == cursor.tail:
            return sibling
    return None


def _now_us() -> int:
    return time.time_ns() // 1000
