"""Run traces over OTLP/HTTP (protobuf), through the official OpenTelemetry SDK exporter.

Why `ReadableSpan`s with explicit contexts rather than a `Tracer`: these spans are records
of the past whose ids, parents and times are all known. A tracer exists to measure the
present: it picks ids itself (a custom `IdGenerator` could only be fed the next id through a
side channel, one span ahead) and its processors batch in the background, drop on overflow
and never say whether a batch arrived. Handing finished spans straight to the exporter
keeps the ids exact and gives the outbox the outcome of every request.

Delivery contract: `export` sends each trace's spans in requests of at most
MAX_SPANS_PER_REQUEST and reports how the first failing request ended (retry or failed, as
the alert channels classify replies); the SDK's own retries stay within the timeout. A
retried export sends the same ids again, so a backend sees a repeat, never a different
trace. No URL, header or reply text reaches an outcome: receivers' words stay off the
console, and header values are secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Final

import requests
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from runwatch.projections.traces import Span, Trace
from runwatch.sinks.channels.base import Outcome, classify, network_outcome
from runwatch.sinks.channels.base import Status as Delivery
from runwatch.sinks.traces import OtlpTarget

MAX_SPANS_PER_REQUEST: Final = 1000
"""Spans per request: a giant run goes out in several, each well under receivers' limits
(an OpenTelemetry Collector takes 20 MiB a request by default)."""
MAX_EVENTS_PER_SPAN: Final = 128
"""The SDK's own default limit; the oldest go first (a failure's exception is the last)."""
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_KINDS: Final = {"server": SpanKind.SERVER, "internal": SpanKind.INTERNAL}
_COMPRESSION: Final = {
    "none": Compression.NoCompression,
    "gzip": Compression.Gzip,
    "deflate": Compression.Deflate,
}
_PREVIOUS: Final = {"runwatch.link": "previous_attempt"}


@dataclass(frozen=True, slots=True)
class Sent:
    """How an export went: `detail` names the failing request's reply, never its text."""

    status: Delivery
    detail: str
    spans: int
    requests: int
    retry_after: float | None = None


class _WatchedSession(requests.Session):
    """Remembers how its last request ended: the exporter itself only reports success or
    failure (and logs the rest)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.last: Outcome | None = None

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            response = super().request(*args, **kwargs)
        except requests.RequestException as exc:
            self.last = network_outcome(exc, self.timeout_s)
            raise
        self.last = classify(response.status_code, response.headers)
        return response


def _quiet_sdk_logs() -> None:
    """The exporter logs each failure with the receiver's reply and the URL; the outcome
    says what happened instead, so those lines must not reach the console."""
    logger = logging.getLogger("opentelemetry.exporter")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


class TraceExporter:
    """One OTLP/HTTP exporter with a kept-alive session, for any number of traces."""

    def __init__(self, target: OtlpTarget) -> None:
        _quiet_sdk_logs()
        self.target = target
        self.session = _WatchedSession(target.timeout_s)
        self.exporter = OTLPSpanExporter(
            endpoint=target.endpoint,
            headers=target.headers,
            timeout=target.timeout_s,
            compression=_COMPRESSION[target.compression],
            session=self.session,
        )
        self.resource = Resource.create({"service.name": target.service_name})
        self.scope = InstrumentationScope("runwatch", version("runwatch"))

    def export(self, traces: Sequence[Trace]) -> Sent:
        """Send the traces' spans, MAX_SPANS_PER_REQUEST at a time; stop at the first
        request that fails."""
        spans = [self._readable(trace.trace_id, span) for trace in traces for span in trace.spans]
        requests_made = 0
        for batch in _batches(spans, MAX_SPANS_PER_REQUEST):
            self.session.last = None
            requests_made += 1
            if self.exporter.export(batch) is not SpanExportResult.SUCCESS:
                last = self.session.last or Outcome("failed", "the request was not sent")
                status: Delivery = "failed" if last.status == "delivered" else last.status
                return Sent(status, last.detail, len(spans), requests_made, last.retry_after)
        return Sent("delivered", f"{len(spans)} span(s)", len(spans), requests_made)

    def close(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it bare

    def _readable(self, trace_id: int, span: Span) -> ReadableSpan:
        events: BoundedList[Event] = BoundedList(MAX_EVENTS_PER_SPAN)
        events.extend([Event(e.name, e.attributes, e.time * 1000) for e in span.events])
        status = (
            Status(StatusCode.ERROR, span.message)
            if span.status == "error"
            else Status(StatusCode.UNSET)
        )
        return ReadableSpan(
            span.name,
            context=_context(trace_id, span.span_id),
            parent=None if span.parent_id is None else _context(trace_id, span.parent_id),
            resource=self.resource,
            attributes=span.attributes,
            events=events,
            links=[Link(_context(trace_id, link), _PREVIOUS) for link in span.links],
            kind=_KINDS[span.kind],
            status=status,
            start_time=span.start * 1000,
            end_time=span.end * 1000,
            instrumentation_scope=self.scope,
        )


def _context(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)


def _batches(spans: list[ReadableSpan], size: int) -> Iterator[list[ReadableSpan]]:
    for start in range(0, len(spans), size):
        yield spans[start : start + size]
