"""`runwatch tail --nats URL --partition K/N --db postgresql://…`: one processor of a
partitioned deployment (hosts → shippers → JetStream → processors → PostgreSQL → sinks).

Delivery contract: the processor owns partition K while it holds a PostgreSQL advisory lock
for it (a standby for the same partition waits on the lock and takes over when the owner's
session ends). It reads the partition's subjects from a durable pull consumer, folds the
lines exactly as `tail` folds file lines, and commits the rows together with the partition's
JetStream sequence (a compare-and-set on `stream_positions`) in one transaction; only then
does it acknowledge the messages. `kill -9` at any instant: the restart resumes after the
committed sequence, so nothing is lost and nothing is applied twice (the fold also drops
repeated event ids). A compare-and-set that matches nothing means another process wrote the
partition: this one stops instead of corrupting the projection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO
from urllib.parse import unquote

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from runwatch.projections import DerivedEvent
from runwatch.sinks.audit import AuditLog
from runwatch.sinks.store import OwnershipLost, connect, open_store
from runwatch.stream.console import ServiceConsole, wall_clock
from runwatch.stream.core.decisions import Decisions
from runwatch.stream.core.lines import Lines
from runwatch.stream.core.processor import Processor
from runwatch.stream.delivery.dispatcher import Dispatcher
from runwatch.stream.delivery.handlers import build_handlers
from runwatch.stream.services.ship import subject_token
from runwatch.stream.settings.alerts import AlertSetup
from runwatch.stream.settings.service import Settings

STREAM: Final = "runwatch"
LOCK_CLASS: Final = 0x72770001
"""The first key of the partition advisory locks (the second is the partition number)."""


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


async def _fetch(subscription: Any, batch: int) -> list[Any]:
    try:
        messages: list[Any] = await subscription.fetch(batch, timeout=0.05)
    except (TimeoutError, nats.errors.TimeoutError):
        return []
    return messages


def stream_lines(nats_url: str) -> Callable[[str], list[bytes]]:
    """A job's event source: every line of a run, read back from the stream by its subject
    (the shippers' files are on other hosts)."""

    def fetch(run_id: str) -> list[bytes]:
        return asyncio.run(_read_subject(nats_url, f"{STREAM}.part.*.{subject_token(run_id)}"))

    return fetch


async def _read_subject(nats_url: str, subject: str) -> list[bytes]:
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


def fnv1a_32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


class PartitionService:
    """Own partition K: fold its messages into the shared database, deliver its outbox."""

    def __init__(
        self,
        nats_url: str,
        partitions: Partitions,
        settings: Settings,
        alerts: AlertSetup,
        *,
        out: TextIO | None = None,
        quiet: bool = False,
        batch: int = 1000,
    ) -> None:
        self.nats_url = nats_url
        self.partitions = partitions
        self.settings = settings
        assert settings.database_url is not None, "processors share a PostgreSQL database"
        self.target = settings.database_url
        self.alerts = alerts
        self.console = ServiceConsole(out, quiet=quiet)
        self.batch = batch
        self.stopping = threading.Event()
        self.recorded = threading.Event()

    def stop(self, *_: Any) -> None:
        self.stopping.set()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        lock = connect(self.target)
        try:
            if not self._own(lock):
                return 0
            return asyncio.run(self._serve())
        finally:
            lock.close()

    def _own(self, lock: Any) -> bool:
        """Take every partition's advisory lock (held by this session until it ends), waiting
        as a standby while another processor holds one."""
        missing = list(self.partitions.indices)
        waiting = False
        while missing and not self.stopping.is_set():
            missing = [
                k
                for k in missing
                if not lock.execute(
                    "SELECT pg_try_advisory_lock(?, ?)", (LOCK_CLASS, k)
                ).fetchone()[0]
            ]
            if missing and not waiting:
                self.console.say(
                    f"standby: partition(s) {missing} of {self.partitions.count} are "
                    "owned by another processor; waiting to take over"
                )
                waiting = True
            if missing:
                self.stopping.wait(0.5)
        if not missing:
            self.console.say(f"owner of partition(s) {self.partitions}")
        return not missing

    async def _serve(self) -> int:
        store = open_store(self.target)
        try:
            return await self._consume(store)
        except OwnershipLost as exc:
            self.console.say(f"stopping: {exc}")
            return 1
        finally:
            store.close()

    async def _consume(self, store: Any) -> int:
        parts = self.partitions
        since = store.meta().get("alerts_since")
        if since is None:
            since = str(time.time_ns() // 1000 - int(self.alerts.lookback_s * 1e6))
            store.set_meta([("alerts_since", since)])
        policy = self.alerts.policy(deliver=True, since_us=int(since))
        decisions = Decisions(self.alerts.rules, store, policy)
        processor = Processor(
            store,
            stall_after_s=self.settings.stall_after,
            forget_after_s=self.settings.forget_after,
            max_line_bytes=self.settings.max_line_bytes,
            wall_clock=wall_clock,
            max_groups=self.settings.cache_groups,
            rules=self.alerts.rules,
            decisions=decisions,
        )
        processor.open_runs = {
            run: seen for run, seen in processor.open_runs.items() if parts.owns(subject_token(run))
        }
        self.recorded.set()  # what jobs recorded while no processor ran is evaluated first
        label = "-".join(map(str, parts.indices))
        audit = AuditLog(
            self.settings.logs_dir / f"monitor-part-{label}.jsonl",
            store,
            head_key=f"audit_head:part-{label}",
        )
        dispatcher = Dispatcher(
            self.target,
            build_handlers(
                self.alerts,
                self.settings,
                out=self.console.out,
                lock=self.console.lock,
                fetch=stream_lines(self.nats_url),
            ),
            self.alerts.delivery,
            on_record=self.recorded.set,
        )
        client = await nats.connect(
            self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5
        )
        try:
            subscriptions = {
                k: await self._subscribe(client, k, store.position(parts.key(k)))
                for k in parts.indices
            }
            dispatcher.start()
            processor.derived.append(
                DerivedEvent(
                    "MONITOR_STARTED",
                    time.time_ns() // 1000,
                    None,
                    {"pid": os.getpid(), "partitions": str(parts)},
                )
            )
            await self._loop(processor, subscriptions, store, audit, dispatcher)
            return 0
        finally:
            dispatcher.stop()
            await client.close()

    async def _subscribe(self, client: Any, index: int, position: int | None) -> Any:
        """A durable pull consumer starting right after the committed sequence: recreated
        at each start, which is safe because the advisory lock makes this the only reader."""
        js = client.jetstream()
        name = f"runwatch-part-{index}"
        await self._wait_for_stream(js)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(STREAM, name)
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=name,
                filter_subject=Partitions.subject(index),
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=(position or 0) + 1,
                ack_policy=AckPolicy.ALL,
                max_ack_pending=-1,
                ack_wait=60,
            ),
        )
        return await js.pull_subscribe_bind(durable=name, stream=STREAM)

    async def _wait_for_stream(self, js: Any) -> None:
        """The shippers create the stream; a processor that starts first waits for it."""
        said = False
        while not self.stopping.is_set():
            try:
                await js.stream_info(STREAM)
                return
            except NotFoundError:
                if not said:
                    self.console.say(
                        f"waiting for the JetStream stream {STREAM!r} (a shipper creates it)"
                    )
                    said = True
                await asyncio.sleep(0.5)

    async def _loop(
        self,
        processor: Processor,
        subscriptions: dict[int, Any],
        store: Any,
        audit: AuditLog,
        dispatcher: Dispatcher,
    ) -> None:
        parts = self.partitions
        positions = {k: store.position(parts.key(k)) for k in parts.indices}
        source_ids: dict[str, int] = {}
        due_tick = time.monotonic() + self.settings.tick_interval
        while not self.stopping.is_set():
            fetched = await asyncio.gather(
                *(_fetch(sub, self.batch) for sub in subscriptions.values())
            )
            batches = dict(zip(subscriptions, fetched, strict=True))  # waits once, not per part
            moved = {}
            for k, messages in batches.items():
                for message in messages:
                    self._fold(processor, store, source_ids, message)
                if messages:
                    moved[k] = messages[-1].metadata.sequence.stream
            now = time.monotonic()
            ticked = now >= due_tick
            if ticked:
                processor.detect(time.time_ns() // 1000)
                due_tick = now + self.settings.tick_interval
            processor.changes.positions = [
                (parts.key(k), positions[k], seq) for k, seq in moved.items()
            ]
            evaluated = self._unevaluated(store) if self.recorded.is_set() else []
            if moved or processor.derived or processor.triggers or ticked or evaluated:
                processor.commit([], now=time.time_ns() // 1000, evaluated=evaluated)
                positions.update(moved)
                for k in moved:
                    await batches[k][-1].ack()  # AckPolicy.ALL: acknowledges the whole batch
                if processor.outboxed:
                    dispatcher.poke()
                self.console.records(audit.drain())
        processor.derived.append(
            DerivedEvent(
                "MONITOR_STOPPED", time.time_ns() // 1000, None, {"partitions": str(parts)}
            )
        )
        processor.commit([], now=time.time_ns() // 1000)
        self.console.records(audit.drain())

    def _unevaluated(self, store: Any) -> list[tuple[int, dict[str, Any]]]:
        """What deliveries and jobs recorded about this processor's runs (a job may run on
        any processor; the alert rules of a run are decided by its partition's owner)."""
        self.recorded.clear()
        return [
            (seq, data)
            for seq, data in store.unevaluated()
            if self.partitions.owns(subject_token(data.get("run_id")))
        ]

    @staticmethod
    def _fold(processor: Processor, store: Any, source_ids: dict[str, int], message: Any) -> None:
        """One shipped line, folded as `tail` folds a line read at that file offset."""
        headers = message.headers or {}
        source = unquote(headers.get("Runwatch-Source", "nats"))
        source_id = source_ids.get(source)
        if source_id is None:
            source_id = source_ids[source] = store.source_id(source)
        offset = int(headers.get("Runwatch-Offset", 0))
        oversize = headers.get("Runwatch-Oversize")
        size = int(oversize) if oversize else len(message.data)
        processor.process(
            source,
            source_id,
            Lines(
                offset,
                int(headers.get("Runwatch-Line", 0)),
                [message.data],
                offset + size + 1,
                {0: size} if oversize else {},
            ),
        )
