"""A real OTLP/HTTP trace receiver on 127.0.0.1: the loopback webhook receiver, its requests
decoded as `ExportTraceServiceRequest` with opentelemetry-proto, as a Collector would.

    with OtlpReceiver() as collector:
        ...  # export to collector.url
        spans = collector.wait_for_spans(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from receivers import ReceivedRequest, WebhookReceiver
from runwatch.projections import format_time

KINDS = {ProtoSpan.SPAN_KIND_SERVER: "server", ProtoSpan.SPAN_KIND_INTERNAL: "internal"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived; ids in lower-case hex, times in Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    message: str
    events: list[tuple[str, int, dict[str, Any]]]
    links: list[tuple[str, str, dict[str, Any]]]
    resource: dict[str, Any]
    scope: str


def value(any_value: AnyValue) -> Any:
    field = any_value.WhichOneof("value")
    return None if field is None else getattr(any_value, field)


def attributes(items: Any) -> dict[str, Any]:
    pairs: list[KeyValue] = list(items)
    return {pair.key: value(pair.value) for pair in pairs}


def decode(request: ReceivedRequest) -> list[ReceivedSpan]:
    """Every span of one request (gzip and deflate bodies included)."""
    body = request.body
    encoding = request.headers.get("content-encoding", "")
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    spans = []
    for resource_spans in message.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        span.name,
                        KINDS.get(span.kind, str(span.kind)),
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        attributes(span.attributes),
                        {0: "unset", 1: "ok", 2: "error"}[span.status.code],
                        span.status.message,
                        [(e.name, e.time_unix_nano, attributes(e.attributes)) for e in span.events],
                        [
                            (link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))
                            for link in span.links
                        ],
                        resource,
                        scope_spans.scope.name,
                    )
                )
    return spans


class OtlpReceiver(WebhookReceiver):
    """Answers 200 (an empty ExportTraceServiceResponse) unless scripted otherwise."""

    def __init__(self) -> None:
        super().__init__("/v1/traces")

    def spans(self) -> list[ReceivedSpan]:
        return [span for request in self.requests for span in decode(request)]

    def wait_for_spans(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """The spans received once `done(spans)` holds; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout} s, {len(spans)} span(s) received")
            time.sleep(0.05)


def roots(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [span for span in spans if not span.parent_id]


# A small run, as `reads.run_detail` and `jobs.load_run` give it: task T1 fails, then succeeds.

BASE = 1_767_600_000_000_000  # 2026-01-05T08:00:00Z in µs


def at(seconds: float) -> str:
    return format_time(BASE + int(seconds * 1_000_000)) or ""


def us(seconds: float) -> int:
    return BASE + int(seconds * 1_000_000)


def ev(
    n: int,
    kind: str,
    seconds: float,
    task: str | None = None,
    ws: str | None = None,
    **payload: Any,
) -> dict[str, Any]:
    return {
        "id": f"e{n}",
        "type": kind,
        "time": at(seconds),
        "severity": "error" if kind.endswith("_failed") else "info",
        "task_id": task,
        "workstream_id": ws,
        "payload": payload,
    }


def run_row(status: str = "succeeded", **changes: Any) -> dict[str, Any]:
    row = {
        "run_id": "R1",
        "status": status,
        "created_at": at(0),
        "started_at": at(1),
        "ended_at": at(100),
        "last_event_at": at(100),
        "tasks_total": 1,
        "tasks_failed": 0,
        "events_total": 6,
    }
    return row | changes


def task_row(task: str = "T1", status: str = "succeeded", **changes: Any) -> dict[str, Any]:
    row = {
        "task_id": task,
        "workstream_id": "WS-A",
        "status": status,
        "attempts": 2,
        "started_at": at(10),
        "ended_at": at(90),
    }
    return row | changes


WORKSTREAM = {"workstream_id": "WS-A", "status": "succeeded", "tasks_total": 1, "tasks_failed": 0}

RETRIED = [
    ev(1, "run_created", 0, pipeline="nightly-build"),
    ev(2, "run_started", 1),
    ev(3, "task_created", 2, "T1", "WS-A", name="unit-tests"),
    ev(4, "task_started", 10, "T1", "WS-A"),
    ev(5, "task_failed", 40, "T1", "WS-A", error="pytest exited with 1"),
    ev(6, "task_started", 50, "T1", "WS-A"),
    ev(7, "tool_call_completed", 60, "T1", "WS-A"),
    ev(8, "task_completed", 90, "T1", "WS-A"),
    ev(9, "run_completed", 100, status="succeeded"),
]
