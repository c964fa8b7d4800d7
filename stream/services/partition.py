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
from typing import Any, TextIO

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from runwatch.sinks.audit import AuditLog
from runwatch.sinks.store import OwnershipLost, connect, open_store
from runwatch.sinks.store.locks import try_partition_lock
from runwatch.stream.console import ServiceConsole
from runwatch.stream.core.decode import Rejection
from runwatch.stream.core.processor import Processor
from runwatch.stream.delivery.dispatcher import Dispatcher
from runwatch.stream.services.runtime import Runtime, lifecycle, now_us
from runwatch.stream.settings.alerts import AlertSetup
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.nats import (
    STREAM,
    BadHeaders,
    Partitions,
    received_line,
    stream_lines,
    subject_token,
)


async def _fetch(subscription: Any, batch: int) -> list[Any]:
    try:
        messages: list[Any] = await subscription.fetch(batch, timeout=0.05)
    except (TimeoutError, nats.errors.TimeoutError):
        return []
    return messages


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
            missing = [k for k in missing if not try_partition_lock(lock, k)]
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
        runtime = Runtime.live(store, self.settings, self.alerts, target=self.target)
        processor = runtime.processor
        processor.limit_open_runs(lambda run: parts.owns(subject_token(run)))
        runtime.recorded.set()  # what jobs recorded while no processor ran is evaluated first
        label = "-".join(map(str, parts.indices))
        audit = runtime.audit(f"monitor-part-{label}.jsonl", head_key=f"audit_head:part-{label}")
        dispatcher = runtime.dispatcher(
            out=self.console.out, lock=self.console.lock, fetch=stream_lines(self.nats_url)
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
            processor.note(
                lifecycle("MONITOR_STARTED", {"pid": os.getpid(), "partitions": str(parts)})
            )
            await self._loop(runtime, subscriptions, audit, dispatcher)
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
        runtime: Runtime,
        subscriptions: dict[int, Any],
        audit: AuditLog,
        dispatcher: Dispatcher,
    ) -> None:
        parts = self.partitions
        processor, store = runtime.processor, runtime.store
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
                processor.detect(now_us())
                due_tick = now + self.settings.tick_interval
            for k, seq in moved.items():
                processor.advance_stream(parts.key(k), positions[k], seq)
            evaluated = runtime.take_recorded(self._owned)
            if moved or processor.has_events or ticked or evaluated:
                processor.commit([], now=now_us(), evaluated=evaluated)
                positions.update(moved)
                for k in moved:
                    await batches[k][-1].ack()  # AckPolicy.ALL: acknowledges the whole batch
                if processor.outboxed:
                    dispatcher.poke()
                self.console.records(audit.drain())
        processor.note(lifecycle("MONITOR_STOPPED", {"partitions": str(parts)}))
        processor.commit([], now=now_us())
        self.console.records(audit.drain())

    def _owned(self, recorded: dict[str, Any]) -> bool:
        """Whether what a delivery or job recorded is about this processor's runs (a job may
        run on any processor; the alert rules of a run are decided by its partition's owner)."""
        return self.partitions.owns(subject_token(recorded.get("run_id")))

    @staticmethod
    def _fold(processor: Processor, store: Any, source_ids: dict[str, int], message: Any) -> None:
        """One shipped line, folded as `tail` folds a line read at that file offset."""
        try:
            source, lines = received_line(message.headers, message.data)
        except BadHeaders as exc:  # kept where the stream has it, so a redelivery is one letter
            where = message.metadata.sequence.stream
            why = Rejection("bad_headers", str(exc))
            processor.reject(f"nats:{STREAM}", where, 0, message.data, len(message.data), why)
            return
        source_id = source_ids.get(source)
        if source_id is None:
            source_id = source_ids[source] = store.source_id(source)
        processor.process(source, source_id, lines)
