"""The live feed behind `/api/events`: one poller per app reads the store's change numbers
(`run_changes.seq`, given in commit order) and fans every changed run out to the connected
clients, so 200 clients cost one query per turn, not 200.

Event ids are change numbers. A client that reconnects with `Last-Event-ID: N` first gets,
from the store, every run changed after N (each once, as it is now), then the live changes;
so nothing committed is missed across a reconnect, whatever happened meanwhile. An id newer
than the store's (the database was rebuilt by a replay) gets a `reset` event: reload.
A client 200 turns behind is disconnected; its browser reconnects and catches up the same
way. Inside the service the commit wakes the poller at once (`nudge`); over a database
another process writes (`runwatch serve`) it polls every `poll_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from starlette.concurrency import run_in_threadpool

from runwatch.sinks.store import web_reads
from runwatch.stream.web.readers import Readers

BATCH: Final = 500
QUEUE_MAX: Final = 200
"""Turns a client may fall behind (each a batch of changes) before it is disconnected."""
STATS_EVERY_S: Final = 2.0
TURN_MIN_S: Final = 0.05
"""Commits closer together than this share one read and one write to each client: with
hundreds of clients, a write per client per commit would cost the service's loop more than
the commits themselves."""
_END: Final = None

Message = tuple[int, bytes]
"""A run event's change number and its encoded SSE text (encoded once for every client)."""


class ChangeFeed:
    """Reads changes after the last number seen and hands them to every subscriber."""

    def __init__(self, readers: Readers, *, poll_s: float) -> None:
        self.readers = readers
        self.poll_s = poll_s
        self.seq = 0
        self.subscribers: set[asyncio.Queue[Any]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wake: asyncio.Event | None = None
        self.stats: dict[str, Any] = {"events_per_s": None}
        self.closed = False

    async def run(self) -> None:
        """Poll until the app stops; a store that cannot be read now is tried again."""
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.seq = await self._read(web_reads.change_seq) or 0
        sampled: tuple[float, int] | None = None
        due_stats = 0.0
        while not self.closed:
            turn = time.monotonic()
            changes = await self._read(web_reads.changes_after, self.seq, BATCH) or []
            if changes:
                self.seq = changes[-1][0]
                self._publish([(seq, run_message(seq, row)) for seq, row in changes])
            if turn >= due_stats:
                sampled = await self._sample(sampled, turn)
                due_stats = turn + STATS_EVERY_S
            if len(changes) == BATCH:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_s)
            self.wake.clear()
            await asyncio.sleep(max(0.0, turn + TURN_MIN_S - time.monotonic()))

    async def _sample(self, before: tuple[float, int] | None, now: float) -> tuple[float, int]:
        accepted = await self._read(web_reads.events_accepted)
        if accepted is None:
            return before or (now, 0)
        if before is not None and now > before[0]:
            rate = max(accepted - before[1], 0) / (now - before[0])
            self.stats = {"events_per_s": round(rate, 1)}
            self._publish(event_message("stats", self.stats))
        return now, accepted

    async def _read(self, query: Any, *args: Any) -> Any:
        try:
            return await run_in_threadpool(self.readers.read, query, *args)
        except Exception:  # an unreadable moment (a replay swapping files): try again
            return None

    def _publish(self, item: list[Message] | bytes) -> None:
        for queue in list(self.subscribers):
            if queue.full():  # too slow: it reconnects and catches up from the store
                self.subscribers.discard(queue)
                _end_now(queue)
            else:
                queue.put_nowait(item)

    def nudge(self) -> None:
        """From any thread: something was committed, look now."""
        loop, wake = self.loop, self.wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self.closed = True
        for queue in list(self.subscribers):
            _end_now(queue)
        if self.wake is not None:
            self.wake.set()

    def subscribe(self) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_MAX + 1)
        self.subscribers.add(queue)
        return queue

    async def stream(self, after: int | None) -> AsyncIterator[bytes]:
        """One client's events: the catch-up from the store after `after`, then live; each
        turn's events in one write."""
        queue = self.subscribe()
        try:
            sent = self.seq if after is None else after
            if after is not None:
                head = await self._read(web_reads.change_seq)
                if head is not None and after > head:
                    yield event_message("reset", {"seq": head})
                    sent = head
                while True:
                    batch = await self._read(web_reads.changes_after, sent, BATCH) or []
                    if batch:
                        yield b"".join(run_message(seq, row) for seq, row in batch)
                        sent = batch[-1][0]
                    if len(batch) < BATCH:
                        break
            yield event_message("stats", self.stats)
            while not self.closed:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, bytes):
                    yield item
                    continue
                fresh = [text for seq, text in item if seq > sent]
                if fresh:
                    sent = item[-1][0]
                    yield b"".join(fresh)
        finally:
            self.subscribers.discard(queue)


def run_message(seq: int, row: dict[str, Any]) -> bytes:
    return b"id: %d\r\nevent: run\r\ndata: %s\r\n\r\n" % (seq, orjson.dumps(row))


def event_message(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\r\ndata: %s\r\n\r\n" % (name.encode(), orjson.dumps(data))


def _end_now(queue: asyncio.Queue[Any]) -> None:
    """Make `queue.get()` return the end marker next, whatever it holds."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(_END)
