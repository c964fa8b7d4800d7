"""What the fold's groups are called and where their events are: the typed forms of the
`group_key` and `entries` columns. The stored forms (`r:<run id>`, `p:<task>`, `o:`; an
orjson list of `[event id, source id, offset, length]` lists) never change."""

from __future__ import annotations

from typing import Final, NamedTuple

import orjson

RUN: Final = "r"
PATTERN: Final = "p"
ORPHANS: Final = "o"


class GroupKey(NamedTuple):
    """A group of the fold: one run, one pattern run (by task), or the runless events.
    A plain `(kind, name)` tuple is equal to it and hashes alike, which the hot loop uses."""

    kind: str
    name: str

    @classmethod
    def run(cls, run_id: str) -> GroupKey:
        return cls(RUN, run_id)

    @classmethod
    def parse(cls, text: str) -> GroupKey:
        """The key stored as `text` (the inverse of `text`)."""
        kind, _, name = text.partition(":")
        return cls(kind, name)

    @property
    def text(self) -> str:
        """The key as the database stores it."""
        return f"{self.kind}:{self.name}"


class IndexEntry(NamedTuple):
    """Where an accepted event's bytes are: `length` bytes at `offset` of source `source_id`."""

    event_id: str
    source_id: int
    offset: int
    length: int


def dump_index(entries: list[tuple[str, int, int, int]]) -> bytes:
    """Index entries as stored: a JSON list of 4-element lists. The fold appends plain
    tuples (cheaper than building an `IndexEntry` for every event); both serialise alike.
    Copied to its exact size: orjson's result keeps a buffer of some KiB behind it, and a
    batch holds one of these per group until its commit."""
    return bytes(memoryview(orjson.dumps(entries, default=_plain)))


def load_index(blob: bytes) -> list[IndexEntry]:
    return [IndexEntry(*entry) for entry in orjson.loads(blob)]


def index_ids(blob: bytes) -> set[str]:
    """The event ids of stored index entries (what a merge needs of a giant run's part,
    without building an entry per event)."""
    return {entry[0] for entry in orjson.loads(blob)}


def _plain(value: object) -> list[object]:
    if isinstance(value, IndexEntry):
        return list(value)
    raise TypeError(f"not an index entry: {type(value).__name__}")
