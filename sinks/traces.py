"""Where run traces go: the `traces:` config and the resolved OTLP/HTTP target.

The exporter itself (the OpenTelemetry SDK, slow to import) lives in `otlp`; this module is
what the settings and the commands need without it. No header value or URL path reaches a
repr, a description or a validation error: both can hold an API key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runwatch.sinks.channels.base import origin

Compression = Literal["none", "gzip", "deflate"]
DEFAULT_SERVICE_NAME: Final = "runwatch"
DEFAULT_TIMEOUT_S: Final = 10.0


def check_endpoint(value: str) -> str:
    """An http(s) URL with a host; the message never repeats the value."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return value.strip()


class TracesConfig(BaseModel):
    """`traces:` in the config. Traces are exported when `endpoint` is set here or by the
    standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    endpoint: str | None = None
    """The full URL of the traces endpoint, e.g. http://127.0.0.1:4318/v1/traces."""
    service_name: str | None = Field(default=None, min_length=1)
    """`service.name` of the resource; default OTEL_SERVICE_NAME, else `runwatch`."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every request, over the OTEL_EXPORTER_OTLP_*HEADERS ones (use `${VAR}`)."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else check_endpoint(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for key, value in super().__repr_args__():
            if key == "headers":
                yield key, dict.fromkeys(value, "**********")
            elif key == "endpoint" and value is not None:
                yield key, origin(value)
            else:
                yield key, value

    def printable(self) -> dict[str, Any]:
        """For `check-config`: the endpoint's origin, header names only."""
        return {
            "endpoint": None if self.endpoint is None else origin(self.endpoint),
            "service_name": self.service_name,
            "headers": dict.fromkeys(self.headers, "**********"),
        }


@dataclass(frozen=True)
class OtlpTarget:
    """Where and how traces are sent, resolved from the config and the environment."""

    endpoint: str
    source: str
    """What set the endpoint: `traces.endpoint`, `--endpoint` or the variable's name."""
    service_name: str = DEFAULT_SERVICE_NAME
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    compression: Compression = "none"

    def describe(self) -> str:
        """One secret-free line: the endpoint's origin and what set it."""
        names = f", headers {', '.join(sorted(self.headers))}" if self.headers else ""
        return (
            f"{origin(self.endpoint)} (from {self.source}; service.name {self.service_name}"
            f"{names}; timeout {self.timeout_s:g} s; compression {self.compression})"
        )
