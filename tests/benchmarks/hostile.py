"""Bad input mixed into a benchmark corpus, so throughput and memory are measured with it
present: real upstream lines mutated the way tests/stream/test_fuzz.py mutates them (a bit
flipped, cut short, a key repeated, two spliced), values nested thousands deep, integers
beyond 64 bits, invalid UTF-8, NUL bytes, and lines longer than the service's
max_line_bytes. Deterministic from a seed; every hostile line is exactly one line."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from random import Random
from typing import Final

from runwatch.stream.settings.service import Settings

UPSTREAM: Final = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
# One hostile line in this many is longer than max_line_bytes (the first one always is):
# at 1 % of a 1M-line corpus that is one 8 MiB line, not gigabytes of them.
OVERLONG_EVERY: Final = 10_000
_EVENT: Final = b'{"event_type": "%s", "timestamp": "2026-01-05T09:00:00Z", "run_id": "%s", '


def upstream_lines() -> list[bytes]:
    return [
        line
        for path in sorted(UPSTREAM.rglob("*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]


class Hostile:
    """Draws hostile lines from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = Random(seed ^ 0x4057_11E)
        self.upstream = upstream_lines()
        self.drawn = 0
        self.kinds: Sequence[Callable[[], bytes]] = (
            self.flipped,
            self.truncated,
            self.duplicate_key,
            self.spliced,
            self.deep,
            self.huge_int,
            self.invalid_utf8,
            self.nul_bytes,
        )

    def line(self) -> bytes:
        """One hostile line with its newline."""
        overlong = self.drawn % OVERLONG_EVERY == 0
        self.drawn += 1
        body = self.overlong() if overlong else self.rng.choice(self.kinds)()
        # A mutation may make a newline or nothing: either would change the line count.
        return (body.replace(b"\n", b" ") or b"{") + b"\n"

    def _real(self) -> bytes:
        return self.rng.choice(self.upstream)

    def flipped(self) -> bytes:
        line = self._real()
        at = self.rng.randrange(len(line))
        return line[:at] + bytes([line[at] ^ (1 << self.rng.randrange(8))]) + line[at + 1 :]

    def truncated(self) -> bytes:
        line = self._real()
        return line[: self.rng.randrange(1, len(line))]

    def duplicate_key(self) -> bytes:
        kind = self.rng.choice((b"null", b"17", b'"run_failed"', b'""', b"[]"))
        return b'{"event_type": ' + kind + b", " + self._real()[1:]

    def spliced(self) -> bytes:
        one, two = self._real(), self._real()
        return one[: self.rng.randrange(len(one))] + two[self.rng.randrange(len(two)) :]

    def deep(self) -> bytes:
        depth = self.rng.randint(500, 5_000)
        value = b"[" * depth + b"1" + b"]" * depth
        return _EVENT % (b"task_progress", b"RUN-DEEP") + b'"payload": {"v": ' + value + b"}}"

    def huge_int(self) -> bytes:
        digits = b"9" * self.rng.choice((20, 400, 5_000))
        field = self.rng.choice((b'"payload": {"total_tasks": %s}}', b'"attempt": %s}'))
        return _EVENT % (b"run_created", b"RUN-HUGE") + field % digits

    def invalid_utf8(self) -> bytes:
        line = self._real()
        at = self.rng.randrange(len(line))
        return line[:at] + self.rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80")) + line[at:]

    def nul_bytes(self) -> bytes:
        line = self._real()
        at = self.rng.randrange(len(line))
        return line[:at] + b"\x00" * self.rng.randint(1, 64) + line[at:]

    def overlong(self) -> bytes:
        filler = b"x" * (Settings().max_line_bytes + 4096)
        return _EVENT % (b"task_progress", b"RUN-LONG") + b'"message": "' + filler + b'"}'


def mix(files: Sequence[Path], share: float, seed: int) -> int:
    """Insert a hostile line before about `share` of the lines of `files`, in place; returns
    how many were inserted."""
    hostile = Hostile(seed)
    draw = hostile.rng.random
    for path in files:
        scratch = path.with_name(path.name + ".mixing")
        with path.open("rb") as source, scratch.open("wb", buffering=1 << 20) as target:
            for line in source:
                if draw() < share:
                    target.write(hostile.line())
                target.write(line)
        os.replace(scratch, path)
    return hostile.drawn
