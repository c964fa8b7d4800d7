"""Bytes → complete lines with their positions, holding at most one bounded partial line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

BOM: Final = b"\xef\xbb\xbf"


@dataclass(slots=True)
class Lines:
    """Consecutive lines starting at byte `offset`, which is line number `line` (1-based).

    Each line is stored without its `\\n`; `oversize` maps the index of a line that was cut
    to RAW_KEEP bytes to its real length. `end` is the offset just past the last line.
    """

    offset: int
    line: int
    items: list[bytes]
    end: int
    oversize: dict[int, int] = field(default_factory=dict)
    unterminated: bool = False
    offsets: Sequence[int] | None = None
    """Set when `items` are some of the lines from `offset` to `end` (those one replay worker
    folds): each item's own offset, and in `numbers` its line number."""
    numbers: Sequence[int] | None = None


class LineSplitter:
    """Never yields a line before its `\\n` arrives (except on `finish`), and never buffers
    more than `max_line_bytes` of one line: a longer one is cut to `keep` bytes and flagged."""

    def __init__(self, offset: int = 0, line: int = 1, *, max_line_bytes: int, keep: int) -> None:
        self.offset = offset
        """Start of the first byte not yet yielded: where a checkpoint may point."""
        self.line = line
        self.max_line_bytes = max_line_bytes
        self.keep = keep
        self._carry = b""
        self._skipped = 0  # bytes of an oversized line dropped after its kept head

    @property
    def pending_bytes(self) -> int:
        return len(self._carry) + self._skipped

    def feed(self, data: bytes) -> Lines:
        start, first = self.offset, self.line
        buffer = self._carry + data if self._carry else data
        items = buffer.split(b"\n")
        tail = items.pop()
        if not items:
            self._hold(buffer, self._skipped)
            return Lines(start, first, [], start)
        consumed = len(buffer) - len(tail) + self._skipped
        begin = _strip_bom(start, items)
        oversize: dict[int, int] = {}
        if self._skipped:
            oversize[0] = self._skipped + len(items[0]) - (begin - start)
        for index, item in enumerate(items):
            if len(item) > self.max_line_bytes and index not in oversize:
                oversize[index] = len(item)
        for index in oversize:
            items[index] = items[index][: self.keep]
        self._hold(tail, 0)
        self.offset = start + consumed
        self.line = first + len(items)
        return Lines(begin, first, items, self.offset, oversize)

    def finish(self) -> Lines:
        """The last line of a finished file, which may lack its `\n` (replay only)."""
        start, first = self.offset, self.line
        if not self._carry and not self._skipped:
            return Lines(start, first, [], start)
        items = [self._carry]
        begin = _strip_bom(start, items)
        size = self._skipped + len(self._carry) - (begin - start)
        self.offset = start + self._skipped + len(self._carry)
        oversize = {0: size} if size > self.max_line_bytes else {}
        self._carry, self._skipped = b"", 0
        self.line = first + 1
        return Lines(begin, first, items, self.offset, oversize, unterminated=True)

    def _hold(self, pending: bytes, skipped: int) -> None:
        size = skipped + len(pending)
        if size > self.max_line_bytes:
            self._carry = pending[: self.keep]
            self._skipped = size - len(self._carry)
        else:
            self._carry, self._skipped = pending, 0


def _strip_bom(start: int, items: list[bytes]) -> int:
    """A BOM opening the file is not part of the first line, which then starts after it."""
    if start == 0 and items[0].startswith(BOM):
        items[0] = items[0][len(BOM) :]
        return len(BOM)
    return start
