"""Event lines as NATS JetStream messages: the subjects, ids and headers a shipper gives a
line, the partitions processors consume, and reading a run's lines back from the stream.

Subjects. A line goes to `runwatch.events.<token>`: the run id when it is a safe NATS token
(`[A-Za-z0-9_-]`, at most 64 characters), else `h` + 20 hex digits of its SHA-256, and `_`
without a run id (also rejected lines). The token is a function of the run id alone, so a
run always lands in one partition. The server partitions with a subject mapping, e.g. for 4:

    mappings = { "runwatch.events.*": "runwatch.part.{{partition(4,1)}}.{{wildcard(1)}}" }

and processor K consumes `runwatch.part.K.>`. The stream captures only `runwatch.part.>`: on
a server without the mapping a publish finds no stream and is retried with the checkpoint
held, rather than landing unpartitioned where no processor reads.

Headers: `Nats-Msg-Id` (the event's id within its run: `<run id>/<event id>`, or `x:` +
SHA-256 of the two when they are not both plain; `line:` + SHA-256 of source, offset and
bytes for a line without one), `Runwatch-Source` (the file, percent-encoded),
`Runwatch-Offset` (byte offset of the line), `Runwatch-Line` (its number), and
`Runwatch-Oversize` (its real size) when the line exceeded `max_line_bytes` or the server's
max_payload and only its first bytes were sent. A processor dead-letters a message whose
headers are not these (`bad_headers`). Blank lines are not sent; they only move the checkpoint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Final, NamedTuple
from urllib.parse import quote, unquote

from runwatch.stream.core.decode import RAW_KEEP, Rejection, decode
from runwatch.stream.core.lines import Lines

STREAM: Final = "runwatch"
"""The processors' stream, and the first token of its subjects."""
EVENTS_PREFIX: Final = "runwatch.events."
PARTITIONED: Final = "runwatch.part.>"
MSG_ID: Final = "Nats-Msg-Id"
SOURCE: Final = "Runwatch-Source"
OFFSET: Final = "Runwatch-Offset"
LINE: Final = "Runwatch-Line"
OVERSIZE: Final = "Runwatch-Oversize"
TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A name NATS takes verbatim as one subject token."""
_HEADER_SAFE: Final = re.compile(r"[!-~](?:[ -~]{0,254}[!-~])?")
_HEADER_SLACK: Final = 512
"""Bytes of max_payload kept for the header block's first line and `Nats-Msg-Id`."""


class Outgoing(NamedTuple):
    """One message to publish."""

    subject: str
    data: bytes
    headers: dict[str, str]


def subject_token(run_id: str | None) -> str:
    """The run's subject token: deterministic, so a run always lands in one partition."""
    if run_id is None:
        return "_"
    if TOKEN.fullmatch(run_id):
        return run_id
    return "h" + sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def message_id(run_id: str | None, event_id: str) -> str:
    """The event's id for JetStream's duplicate check. Event ids are unique within a run
    only, so the run is part of it: `<run id>/<event id>` when the run id is a subject token
    (it has no `/`, so the split is unambiguous) and the event id a header carries verbatim,
    else a hash of both."""
    if run_id is not None and TOKEN.fullmatch(run_id) and _HEADER_SAFE.fullmatch(event_id):
        return f"{run_id}/{event_id}"
    scoped = "\0".join(
        "-" if part is None else f"{len(part)}:{part}" for part in (run_id, event_id)
    )
    return "x:" + sha256(scoped.encode("utf-8", "surrogatepass")).hexdigest()


def line_id(source: str, offset: int, data: bytes) -> str:
    """The id of a line without an event id: the same bytes at the same place of the same
    file get the same id, so a re-shipped copy is dropped as a duplicate."""
    place = os.fsencode(source) + b"\0" + str(offset).encode() + b"\0"
    return "line:" + sha256(place + data).hexdigest()


def messages(source: str, lines: Lines, max_payload: int) -> Iterator[Outgoing]:
    """One message per non-blank line, in file order."""
    quoted = quote(os.fsencode(source), safe="/")
    offset, number = lines.offset, lines.line
    for index, line in enumerate(lines.items):
        size = lines.oversize.get(index, len(line))
        if line and not line.isspace():
            headers = {SOURCE: quoted, OFFSET: str(offset), LINE: str(number)}
            yield _message(source, offset, line, size, headers, max_payload)
        offset += size + 1
        number += 1


def _message(
    source: str, offset: int, line: bytes, size: int, headers: dict[str, str], max_payload: int
) -> Outgoing:
    """A line as a message: its subject from the decoded run id, its id from the event id."""
    room = max_payload - sum(len(k) + len(v) + 4 for k, v in headers.items()) - _HEADER_SLACK
    if size > len(line) or size > room:  # cut by max_line_bytes, or too big for the server
        data = line[: min(RAW_KEEP, room)]
        return Outgoing(
            EVENTS_PREFIX + "_",
            data,
            {MSG_ID: line_id(source, offset, data), **headers, OVERSIZE: str(size)},
        )
    event = decode(line[:-1] if line.endswith(b"\r") else line)
    if isinstance(event, Rejection):
        return Outgoing(
            EVENTS_PREFIX + "_", line, {MSG_ID: line_id(source, offset, line), **headers}
        )
    return Outgoing(
        EVENTS_PREFIX + subject_token(event.run_id),
        line,
        {MSG_ID: message_id(event.run_id, event.id), **headers},
    )


class BadHeaders(ValueError):
    """A message's `Runwatch-*` headers are not what a shipper writes."""


_COUNT: Final = re.compile(r"[0-9]{1,18}")
"""A byte offset, line number or size: decimal digits, well inside a signed 64-bit column."""


def received_line(headers: Mapping[str, str] | None, data: bytes) -> tuple[str, Lines]:
    """A shipped line back as its source and the one-line `Lines` it was at that offset
    (the inverse of `messages`). BadHeaders when a header could not have come from it."""
    headers = headers or {}
    source = unquote(headers.get(SOURCE, "nats"))
    if "\0" in source:
        raise BadHeaders(f"{SOURCE} holds a NUL byte")
    offset = _count(headers, OFFSET, 0)
    number = _count(headers, LINE, 0)
    oversize = OVERSIZE in headers
    size = _count(headers, OVERSIZE, len(data))
    if size < len(data):
        raise BadHeaders(f"{OVERSIZE} {size} is less than the {len(data)} bytes sent")
    return source, Lines(offset, number, [data], offset + size + 1, {0: size} if oversize else {})


def _count(headers: Mapping[str, str], name: str, default: int) -> int:
    value = headers.get(name)
    if value is None:
        return default
    if not _COUNT.fullmatch(value):
        raise BadHeaders(f"{name} {value[:40]!r} is not a count of bytes or lines")
    return int(value)


@dataclass(frozen=True)
class Partitions:
    """Partitions `indices` of `count`, as `K/N` or `K,K,…/N` on the command line."""

    indices: tuple[int, ...]
    count: int

    @classmethod
    def parse(cls, text: str) -> Partitions:
        wanted, _, count = text.partition("/")
        parts = wanted.split(",")
        if not count.isdigit() or not all(p.isdigit() and int(p) < int(count) for p in parts):
            raise ValueError(
                f"--partition {text!r}: expected K/N or K,K/N with 0 <= K < N, e.g. 0/4 or 0,2/4"
            )
        return cls(tuple(sorted({int(p) for p in parts})), int(count))

    def __str__(self) -> str:
        return f"{','.join(map(str, self.indices))}/{self.count}"

    @staticmethod
    def subject(index: int) -> str:
        return f"{STREAM}.part.{index}.>"

    def key(self, index: int) -> str:
        """A partition's name in `stream_positions`."""
        return f"nats:{STREAM}:{index}/{self.count}"

    def owns(self, token: str) -> bool:
        """The server's `partition(N, 1)` mapping: FNV-1a (32 bit) of the token, mod N."""
        return fnv1a_32(token.encode()) % self.count in self.indices


def fnv1a_32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def stream_lines(nats_url: str) -> Callable[[str], list[bytes]]:
    """A job's event source: every line of a run, read back from the stream by its subject
    (the shippers' files are on other hosts)."""

    def fetch(run_id: str) -> list[bytes]:
        import asyncio

        return asyncio.run(_read_subject(nats_url, f"{STREAM}.part.*.{subject_token(run_id)}"))

    return fetch


async def _read_subject(nats_url: str, subject: str) -> list[bytes]:
    import nats  # loaded by the commands that speak to NATS, not by every command
    from nats.js.api import DeliverPolicy

    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        subscription = await js.subscribe(
            subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        lines: list[bytes] = []
        while True:
            try:
                message = await subscription.next_msg(timeout=2.0)
            except (TimeoutError, nats.errors.TimeoutError):
                break  # no (more) messages on the subject
            lines.append(message.data)
            if message.metadata.num_pending == 0:
                break
        await subscription.unsubscribe()
        return lines
    finally:
        await client.close()
