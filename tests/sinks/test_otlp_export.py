"""Traces on the wire: the SDK's OTLP/HTTP exporter against a real receiver on 127.0.0.1, and
where the settings and the standard environment variables send them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otlp import RETRIED, WORKSTREAM, OtlpReceiver, ReceivedSpan, run_row, task_row
from receivers import free_port
from runwatch.projections.traces import Span, Trace, run_trace
from runwatch.sinks.otlp import MAX_SPANS_PER_REQUEST, TraceExporter
from runwatch.sinks.traces import OtlpTarget, TracesConfig
from runwatch.stream.cli.config import printable_settings
from runwatch.stream.settings.service import ConfigError, Settings
from runwatch.stream.settings.traces import otlp_target


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def sample() -> Trace:
    return run_trace(run_row("failed", tasks_failed=1), [task_row()], [WORKSTREAM], [], RETRIED)


def as_sent(trace: Trace, span: Span) -> dict[str, object]:
    """What a span must look like once decoded from the wire."""
    return {
        "trace_id": f"{trace.trace_id:032x}",
        "span_id": f"{span.span_id:016x}",
        "parent_id": "" if span.parent_id is None else f"{span.parent_id:016x}",
        "name": span.name,
        "kind": span.kind,
        "start_ns": span.start * 1000,
        "end_ns": span.end * 1000,
        "attributes": span.attributes,
        "status": span.status,
        "message": span.message or "",
        "events": [(e.name, e.time * 1000, e.attributes) for e in span.events],
        "links": [
            (f"{trace.trace_id:032x}", f"{link:016x}", {"runwatch.link": "previous_attempt"})
            for link in span.links
        ],
    }


def received(span: ReceivedSpan) -> dict[str, object]:
    keys = ("trace_id", "span_id", "parent_id", "name", "kind", "start_ns", "end_ns")
    found: dict[str, object] = {key: getattr(span, key) for key in keys}
    return found | {
        "attributes": span.attributes,
        "status": span.status,
        "message": span.message,
        "events": span.events,
        "links": span.links,
    }


def test_every_span_arrives_exactly_as_described(collector: OtlpReceiver) -> None:
    """Ids, parents, kinds, times, attributes, status, exception events and links survive
    the SDK's encoding byte for byte; the resource names the service."""
    trace = sample()
    target = OtlpTarget(collector.url, "test", service_name="ci-runs", headers={"x-key": "k1"})
    exporter = TraceExporter(target)
    sent = exporter.export([trace])
    exporter.close()
    assert (sent.status, sent.spans, sent.requests) == ("delivered", len(trace.spans), 1)
    [request] = collector.requests
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-key"] == "k1"
    spans = collector.spans()
    assert sorted(map(received, spans), key=str) == sorted(
        (as_sent(trace, span) for span in trace.spans), key=str
    )
    assert {span.resource["service.name"] for span in spans} == {"ci-runs"}
    assert {span.scope for span in spans} == {"runwatch"}


def test_gzip_and_a_giant_run_in_several_requests(collector: OtlpReceiver) -> None:
    """A run of thousands of tasks goes out in requests receivers accept, compressed."""
    tasks = [task_row(f"T{n}", workstream_id=None) for n in range(MAX_SPANS_PER_REQUEST * 2)]
    trace = run_trace(run_row(), tasks, [], [], [])
    exporter = TraceExporter(OtlpTarget(collector.url, "test", compression="gzip"))
    sent = exporter.export([trace])
    assert (sent.status, sent.requests) == ("delivered", 3)
    assert {r.headers["content-encoding"] for r in collector.requests} == {"gzip"}
    assert len({span.span_id for span in collector.spans()}) == len(trace.spans)


@pytest.mark.parametrize(
    ("code", "headers", "status", "detail"),
    [(503, {"Retry-After": "7"}, "retry", "HTTP 503"), (400, {}, "failed", "HTTP 400")],
)
def test_a_refused_export_says_how(
    collector: OtlpReceiver, code: int, headers: dict[str, str], status: str, detail: str
) -> None:
    """The outbox learns whether to retry, and the receiver's words never reach it."""
    collector.script(*[(code, headers, b"\x1b]0;secret reply")] * 10)
    exporter = TraceExporter(OtlpTarget(collector.url, "test", timeout_s=0.5))
    sent = exporter.export([sample()])
    assert (sent.status, sent.detail) == (status, detail)
    assert sent.retry_after == (7.0 if status == "retry" else None)


def test_an_unreachable_endpoint_is_retried_later() -> None:
    exporter = TraceExporter(
        OtlpTarget(f"http://127.0.0.1:{free_port()}/v1/traces", "test", timeout_s=0.5)
    )
    sent = exporter.export([sample()])
    assert (sent.status, sent.detail) == ("retry", "connection refused")


def target(env: dict[str, str], **traces: object) -> OtlpTarget | None:
    return otlp_target(Settings(traces=TracesConfig(**traces)), environ=env)  # type: ignore[arg-type]


def test_the_standard_variables_switch_traces_on() -> None:
    """Off by default; the OTLP variables (or the config) turn it on, as in every SDK."""
    assert target({}) is None
    base = target({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert base is not None
    assert (base.endpoint, base.source) == (
        "http://collector:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://tempo:4318/otlp/v1/traces",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-a=1",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Authorization=Basic%20c2VjcmV0,x-b=2",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
        "OTEL_SERVICE_NAME": "pipelines",
    }
    full = target(env)
    assert full == OtlpTarget(
        "https://tempo:4318/otlp/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "pipelines",
        {"authorization": "Basic c2VjcmV0", "x-b": "2"},
        2.5,
        "gzip",
    )
    configured = target(
        env, endpoint="http://127.0.0.1:4318/v1/traces", service_name="rw", headers={"X-Team": "ml"}
    )
    assert configured is not None
    assert (configured.endpoint, configured.source, configured.service_name) == (
        "http://127.0.0.1:4318/v1/traces",
        "traces.endpoint",
        "rw",
    )
    assert configured.headers["x-team"] == "ml"
    assert target({**env, "OTEL_SDK_DISABLED": "true"}) is None
    assert target({**env, "OTEL_TRACES_EXPORTER": "none"}) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key-s3cr3t"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "s3cr3t"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector-s3cr3t:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
    ],
)
def test_a_bad_variable_is_named_but_not_quoted(name: str, value: str) -> None:
    """A bad value stops the service before it starts, without printing a secret."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", name: value}
    with pytest.raises(ConfigError, match=name) as raised:
        target(env)
    assert "s3cr3t" not in str(raised.value)


def test_check_config_shows_no_header_value(tmp_path: Path) -> None:
    settings = Settings(
        traces=TracesConfig(
            endpoint="http://u:pw@127.0.0.1:4318/v1/traces?key=s3cr3t",
            headers={"x-api-key": "s3cr3t"},
        )
    )
    shown = printable_settings(settings)["traces"]
    assert "s3cr3t" not in str(shown) and "pw" not in str(shown)
    assert shown["headers"] == {"x-api-key": "**********"}
    assert shown["export"].startswith("http://127.0.0.1:4318 (from traces.endpoint")
    assert "s3cr3t" not in repr(settings)
