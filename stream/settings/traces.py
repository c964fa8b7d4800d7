"""Whether and where run traces are exported: `traces:` in the config over the standard
OpenTelemetry environment variables, resolved and checked once, before a service starts.

Endpoint, first set wins: `--endpoint`, `traces.endpoint`, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
(used as is), OTEL_EXPORTER_OTLP_ENDPOINT (`/v1/traces` appended). None of them: traces are
off. OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none switch them off too. Headers, timeout
(milliseconds, as the specification says) and compression come from the `*_TRACES_*`
variable, else the general one; the TLS variables (OTEL_EXPORTER_OTLP_*CERTIFICATE,
*CLIENT_KEY) are read by the SDK itself. Errors name the variable, never its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import get_args
from urllib.parse import unquote

from runwatch.sinks.traces import DEFAULT_SERVICE_NAME, Compression, OtlpTarget, check_endpoint
from runwatch.stream.settings.service import ConfigError, Settings

_PREFIX = "OTEL_EXPORTER_OTLP_"


def otlp_target(
    settings: Settings, *, endpoint: str | None = None, environ: Mapping[str, str] | None = None
) -> OtlpTarget | None:
    """The target traces go to, or None when they are off. ConfigError for a bad value."""
    env = os.environ if environ is None else environ
    if _value(env, "OTEL_SDK_DISABLED").lower() == "true":
        return None
    exporter = _value(env, "OTEL_TRACES_EXPORTER").lower()
    if exporter == "none":
        return None
    if exporter not in ("", "otlp"):
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: runwatch exports traces over OTLP only; "
            f"set it to otlp or none (got {exporter!r})"
        )
    found = _endpoint(settings, endpoint, env)
    if found is None:
        return None
    url, source = found
    protocol, where = _either(env, "PROTOCOL")
    if protocol not in ("", "http/protobuf"):
        raise ConfigError(f"{where}: runwatch sends OTLP as http/protobuf; set it to that")
    compression, where = _either(env, "COMPRESSION")
    if compression.lower() not in ("", *get_args(Compression)):
        raise ConfigError(f"{where}: expected none, gzip or deflate")
    return OtlpTarget(
        url,
        source,
        settings.traces.service_name or _value(env, "OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
        {**_headers(env), **{k.lower(): v for k, v in settings.traces.headers.items()}},
        _timeout(env),
        compression.lower() or "none",  # type: ignore[arg-type]  # checked just above
    )


def _endpoint(
    settings: Settings, given: str | None, env: Mapping[str, str]
) -> tuple[str, str] | None:
    candidates = [
        ("--endpoint", given),
        ("traces.endpoint", settings.traces.endpoint),
        (_PREFIX + "TRACES_ENDPOINT", _value(env, _PREFIX + "TRACES_ENDPOINT")),
    ]
    for source, value in candidates:
        if value:
            return _checked(value, source), source
    base = _value(env, _PREFIX + "ENDPOINT")
    if base:
        return _checked(base, _PREFIX + "ENDPOINT").rstrip("/") + "/v1/traces", _PREFIX + "ENDPOINT"
    return None


def _checked(value: str, source: str) -> str:
    try:
        return check_endpoint(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _value(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _either(env: Mapping[str, str], suffix: str) -> tuple[str, str]:
    """The `*_TRACES_<suffix>` variable when set, else the general one; with its name."""
    specific = _PREFIX + "TRACES_" + suffix
    if _value(env, specific):
        return _value(env, specific), specific
    return _value(env, _PREFIX + suffix), _PREFIX + suffix


def _headers(env: Mapping[str, str]) -> dict[str, str]:
    """`key1=value1,key2=value2`, percent-encoded values, as the specification writes them."""
    text, where = _either(env, "HEADERS")
    headers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"{where}: expected key=value pairs separated by commas")
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def _timeout(env: Mapping[str, str]) -> float:
    text, where = _either(env, "TIMEOUT")
    if not text:
        return 10.0
    try:
        milliseconds = float(text)
    except ValueError:
        milliseconds = -1.0
    if not 0 < milliseconds <= 600_000:
        raise ConfigError(f"{where}: expected milliseconds between 1 and 600000 (e.g. 10000)")
    return milliseconds / 1000
