"""`runwatch ship`: follow local event files and publish every line to NATS JetStream.

The shipper follows files exactly as `tail` does (the same `Follower`: discovery, rotation,
truncation, checkpoints, in its own database), but instead of folding a line it publishes it,
raw, and commits the checkpoints that cover a batch only once JetStream has acked every line
of it. Nothing more is read until then, so memory is one batch (`batch_max_bytes`) however
long NATS is away: the batch is retried with backoff and the files are the buffer.

Delivery: at least once into the stream, and exactly once within its `duplicate_window`
(2 min), because every message carries `Nats-Msg-Id` and JetStream drops a repeated id. A
repeat can only come from a crash between the ack and the commit; if the restart comes later
than the window, the copy reaches the processors, whose fold applies an event id once (and
keeps one dead letter per source and offset).

Subjects, message ids and headers: see `runwatch.stream.sources.nats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, TextIO, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig, StreamInfo
from nats.js.errors import NoStreamResponseError, NotFoundError, TooManyStalledMsgsError

from runwatch.projections import DerivedEvent
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.console import ServiceConsole, wall_clock
from runwatch.stream.errors import EXIT_OK
from runwatch.stream.services.lock import DatabaseLock
from runwatch.stream.services.runtime import follow
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.follow import Read
from runwatch.stream.sources.nats import (
    EVENTS_PREFIX,
    PARTITIONED,
    Outgoing,
    messages,
)
from runwatch.stream.sources.watch import FileChanges, Passes, watch_files

T = TypeVar("T")

DUPLICATE_WINDOW_S: Final = 120.0
ACK_TIMEOUT_S: Final = 5.0
"""Acks missing this long after a batch was sent (plus 1 s per MB of it) fail the batch."""
BACKOFF_S: Final = (0.25, 5.0)
STOP_GRACE_S: Final = 2.0
"""After SIGTERM, the batch in flight has this long to be acked; else it is not committed."""
REPORT_EVERY_S: Final = 10.0
_RETRYABLE: Final = (NatsError, TimeoutError, OSError)


async def publish_all(js: JetStreamContext, batch: list[Outgoing]) -> list[PubAck]:
    """Publish a batch pipelined and wait for every ack. Any failure fails the whole batch;
    its retry repeats the lines already stored, which the stream drops as duplicates."""
    futures: list[asyncio.Future[PubAck]] = []
    timeout = ACK_TIMEOUT_S + sum(len(m.data) for m in batch) / 1e6
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            for m in batch:  # no wait_stall: its per-message timer task costs more than the send
                futures.append(await js.publish_async(m.subject, m.data, headers=m.headers))
            return list(await asyncio.gather(*futures))
    except (TimeoutError, TooManyStalledMsgsError):  # how nats-py reports a cancelled wait
        missing = len(batch) - sum(1 for f in futures if f.done() and not f.cancelled())
        raise TimeoutError(
            f"{missing} of {len(batch)} acks missing after {time.monotonic() - started:.1f} s"
        ) from None
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: a failed batch is reported once, not per line


class ShipService:
    """Follow `patterns` and publish every line to JetStream, until `stop()` or SIGTERM/SIGINT.
    A checkpoint never passes a line whose publish JetStream has not acked."""

    def __init__(
        self,
        patterns: list[str],
        settings: Settings,
        *,
        url: str,
        database: Path,
        stream: str,
        poll: bool = False,
        out: TextIO | None = None,
    ) -> None:
        self.patterns = patterns
        self.settings = settings
        self.url = url
        self.database = database
        self.stream = stream
        self.poll = poll
        self.console = ServiceConsole(out)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wake = asyncio.Event()
        self.halt = asyncio.Event()
        self.stopping = False
        self.shipped = self.duplicates = self.committed = 0  # since the last report
        self.reported_at = 0.0
        self.trouble = ""

    def stop(self) -> None:
        """Finish the batch in hand, commit it if it was acked, and return; any thread."""
        self.stopping = True
        self._poke(halt=True)

    def run(self) -> int:
        with contextlib.ExitStack() as cleanup:
            lock = DatabaseLock(self.database)
            lock.acquire()
            cleanup.callback(lock.release)
            store = SqliteStore(self.database)
            cleanup.callback(store.close)
            asyncio.run(self._serve(store))
        return EXIT_OK

    async def _serve(self, store: SqliteStore) -> None:
        self.loop = asyncio.get_running_loop()
        if self.stopping:
            self.halt.set()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(signum, self.stop)
        notes: list[DerivedEvent] = []
        follower = follow(self.patterns, store, self.settings, notes)
        changes = FileChanges(self._poke)
        passes = Passes(follower, changes, self.settings.rescan_interval)
        observer = watch_files(self.patterns, changes, poll=self.poll)
        observer.start()
        self.console.say(
            f"ship started (pid {os.getpid()}): {' '.join(self.patterns)} -> "
            f"{_redact(self.url)} stream {self.stream}, "
            f"checkpoints in {self.database}"
        )
        try:
            nc = await self._connect()
            if nc is not None:
                try:
                    await self._ship_until_stopped(nc, passes, notes)
                finally:
                    with contextlib.suppress(*_RETRYABLE):  # everything acked is committed
                        await nc.close()
        finally:
            observer.stop()
            observer.join(0.2)
            follower.close()
        self._report(force=True)
        self.console.say("ship stopped")

    async def _connect(self) -> NATS | None:
        """A connection that reconnects for ever; None if stopped before one was made."""
        connecting = asyncio.ensure_future(
            nats.connect(
                self.url.split(","),
                name="runwatch ship",
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=2,
                error_cb=self._nats_error,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
            )
        )
        halted = asyncio.ensure_future(self.halt.wait())
        await asyncio.wait({connecting, halted}, return_when=asyncio.FIRST_COMPLETED)
        halted.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_RETRYABLE):
                await connecting
            return None
        nc = connecting.result()
        self.trouble = ""
        where = nc.connected_url.geturl() if nc.connected_url else self.url
        self.console.say(f"connected to {_redact(where)} (max_payload {nc.max_payload} bytes)")
        return nc

    async def _ship_until_stopped(
        self, nc: NATS, passes: Passes, notes: list[DerivedEvent]
    ) -> None:
        js = nc.jetstream()
        info = await self._retry("stream setup", lambda: self._ensure_stream(js))
        if info is None:
            return
        self.console.say(
            f"stream {self.stream}: subjects {', '.join(info.config.subjects or [])}, "
            f"{info.state.messages} messages"
        )
        behind = True  # unread bytes may be in any file (at the start: everything is unread)
        while not self.halt.is_set():
            if not behind and self.settings.linger > 0:
                await asyncio.sleep(self.settings.linger)  # let a trickle share one batch
            self.wake.clear()
            reads = passes.read(self.settings.batch_max_bytes, everything=behind)
            self._show(notes)
            if not await self._ship(js, nc.max_payload, passes, reads):
                return  # stopped before the batch was acked: its checkpoints stay behind it
            self._report()
            behind = passes.follower.behind
            if not behind:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), passes.due_rescan - time.monotonic())

    async def _ensure_stream(self, js: JetStreamContext) -> StreamInfo:
        """The stream, created if missing; an existing one is used as it is."""
        try:
            return await js.stream_info(self.stream)
        except NotFoundError:
            return await js.add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=[PARTITIONED],
                    storage=StorageType.FILE,
                    duplicate_window=DUPLICATE_WINDOW_S,
                )
            )

    async def _ship(
        self, js: JetStreamContext, max_payload: int, passes: Passes, reads: list[Read]
    ) -> bool:
        """Publish the lines read, then commit the checkpoints covering them; False when
        stopped before every line was acked (nothing is committed then). While a batch is
        retried, files are still discovered (and so held open), so that a file created and
        rotated away during an outage is not missed: the files are the buffer."""
        follower = passes.follower
        batch = [m for read in reads for m in messages(read.cursor.source, read.lines, max_payload)]
        if batch:
            acks = await self._retry(
                f"publishing {len(batch)} lines",
                lambda: self._publish(js, batch),
                between_tries=passes.discover,
            )
            if acks is None:
                return False
            self.shipped += len(acks)
            self.duplicates += sum(1 for ack in acks if ack.duplicate)
        checkpoints, forget = follower.checkpoints()
        if checkpoints or forget:
            follower.store.commit(Changes(checkpoints=checkpoints, forget=forget), wall_clock())
            self.committed += len(checkpoints)
        return True

    async def _publish(self, js: JetStreamContext, batch: list[Outgoing]) -> list[PubAck]:
        """`publish_all`, re-creating a stream the server lost and naming a missing mapping."""
        try:
            return await publish_all(js, batch)
        except NoStreamResponseError:
            await self._ensure_stream(js)
            raise NatsError(
                f"no stream takes {EVENTS_PREFIX}*: does the server map them to "
                f"{PARTITIONED} (see `runwatch ship --help`)?"
            ) from None

    async def _retry(
        self,
        what: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        between_tries: Callable[[], None] = lambda: None,
    ) -> T | None:
        """`attempt()` until it succeeds, waiting longer between tries (and calling
        `between_tries` after each wait); None when a stop comes while it is failing."""
        delay = BACKOFF_S[0]
        while True:
            try:
                result = await self._attempt(attempt)
            except _RETRYABLE as exc:
                if self.halt.is_set():
                    self.console.say(f"{what} failed ({_describe(exc)}); stopping, not committed")
                    return None
                self._complain(f"{what} failed ({_describe(exc)}); retrying, checkpoints held")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.halt.wait(), delay)
                between_tries()
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            if self.trouble:
                self.trouble = ""
                self.console.say(f"{what}: ok")
            return result

    async def _attempt(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, given at most STOP_GRACE_S more once a stop is asked for."""
        task = asyncio.ensure_future(attempt())
        halted = asyncio.ensure_future(self.halt.wait())
        await asyncio.wait({task, halted}, return_when=asyncio.FIRST_COMPLETED)
        halted.cancel()
        if task.done():
            return task.result()
        return await asyncio.wait_for(task, STOP_GRACE_S)

    def _poke(self, *, halt: bool = False) -> None:
        """Wake the loop (and tell it to stop) from any thread; after it ended, nothing."""

        def wake() -> None:
            if halt:
                self.halt.set()
            self.wake.set()

        loop = self.loop
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(wake)

    def _report(self, *, force: bool = False) -> None:
        """A line about what was shipped, at most every REPORT_EVERY_S."""
        now = time.monotonic()
        if self.shipped and (force or now - self.reported_at >= REPORT_EVERY_S):
            self.console.say(
                f"shipped {self.shipped} lines ({self.duplicates} already in the "
                f"stream), {self.committed} checkpoints committed"
            )
            self.shipped = self.duplicates = self.committed = 0
            self.reported_at = now

    def _show(self, notes: list[DerivedEvent]) -> None:
        for note in notes:
            self.console.say(f"{note.type} " + " ".join(f"{k}={v}" for k, v in note.data.items()))
        notes.clear()

    def _complain(self, text: str) -> None:
        """Say a problem once, not at every retry."""
        if text != self.trouble:
            self.trouble = text
            self.console.say(text)

    async def _nats_error(self, exc: Exception) -> None:
        self._complain(_describe(exc))

    async def _disconnected(self) -> None:
        if not self.halt.is_set():  # closing the connection at the end is no news
            self.console.say("disconnected from NATS; reconnecting")

    async def _reconnected(self) -> None:
        self.trouble = ""
        self.console.say("reconnected to NATS")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _redact(url: str) -> str:
    """A server URL without its user and password, for the console."""
    return ",".join(re.sub(r"//[^/@]*@", "//", part) for part in url.split(","))
