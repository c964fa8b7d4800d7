"""Alert channels: console, webhook (Alertmanager v4 body, Standard Webhooks signature), Slack
and email, each with its pydantic config model.

Delivery contract: `send` makes exactly one attempt and never raises for a delivery problem; it
returns an `Outcome` and the dispatcher owns retries and backoff. Every attempt for one
notification carries the same id (`webhook-id`, `Message-ID`), so receivers can drop the repeats
that at-least-once delivery brings. No secret, URL or header value reaches an `Outcome`, a repr
or a validation error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import smtplib
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, parseaddr, parsedate_to_datetime
from typing import Annotated, Any, Final, Literal, Protocol, TextIO, assert_never
from urllib.parse import urlsplit

import orjson
import requests
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from runwatch.sinks.terminal import terminal_safe

Status = Literal["delivered", "retry", "failed"]
Timeout = Annotated[float, Field(gt=0, le=300)]

MAX_RETRY_AFTER: Final = 3600.0
NOT_ENDED: Final = "0001-01-01T00:00:00Z"
USER_AGENT: Final = "runwatch"
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
_COLORS: Final = {
    "critical": "\x1b[1;31m",
    "high": "\x1b[31m",
    "medium": "\x1b[33m",
    "low": "\x1b[36m",
    "info": "\x1b[2m",
}
_EMOJI: Final = {
    "critical": ":rotating_light:",
    "high": ":red_circle:",
    "medium": ":large_orange_circle:",
    "low": ":large_yellow_circle:",
    "info": ":information_source:",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result; `detail` is short and never holds a secret, URL or header value."""

    status: Status
    detail: str
    retry_after: float | None = None


class Channel(Protocol):
    """Where notifications go; `send` is called from one worker thread per channel."""

    name: str
    kind: str

    def send(self, notification: dict[str, Any]) -> Outcome:
        """Exactly one delivery attempt; problems come back as an Outcome, not an exception."""

    def close(self) -> None:
        """Release connections; best effort."""


class _Config(BaseModel):
    """Frozen and strict; errors never echo their input, which may be a secret."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """URLs shrink to their origin and header values are hidden: both can carry secrets."""
        for key, value in super().__repr_args__():
            if isinstance(value, AnyHttpUrl):
                yield key, origin(str(value))
            elif key == "headers":
                yield key, dict.fromkeys(value, "**********")
            else:
                yield key, value


class _Described:
    """A channel's repr is its config's, which is already free of secrets."""

    name: str
    config: _Config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.config!r})"


# ---------------------------------------------------------------- console


class ConsoleConfig(_Config):
    """`color: None` colours only when the stream is a terminal."""

    color: bool | None = None

    def build(
        self, name: str, *, stream: TextIO | None = None, lock: threading.Lock | None = None
    ) -> ConsoleChannel:
        return ConsoleChannel(name, stream, color=self.color, lock=lock)


class ConsoleChannel:
    """One line per notification; `lock` keeps lines whole when other threads share the stream."""

    kind = "console"

    def __init__(
        self,
        name: str = "console",
        stream: TextIO | None = None,
        *,
        color: bool | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.name = name
        self.stream = sys.stdout if stream is None else stream
        self.color = self.stream.isatty() if color is None else color
        self.lock = lock or threading.Lock()

    def send(self, notification: dict[str, Any]) -> Outcome:
        line = console_line(notification, self.color) + "\n"
        try:
            with self.lock:
                self.stream.write(line)
                self.stream.flush()
        except (OSError, ValueError):
            return Outcome("retry", "console write failed")
        return Outcome("delivered", "written")

    def close(self) -> None:
        """The stream belongs to the caller, so there is nothing to release."""


def console_line(n: dict[str, Any], color: bool = False) -> str:
    """`<event time> <SEVERITY> <rule> [<state>] <summary>`; log text cannot inject escapes."""
    severity = n["severity"].upper()
    if color:
        severity = f"{_COLORS.get(n['severity'], '')}{severity}\x1b[0m"
    extras = f" (suppressed {n['suppressed']})" if n.get("suppressed") else ""
    extras += " (test)" if n.get("test") else ""
    text = terminal_safe(f"{n['rule']} [{n['state']}] {n['summary']}{extras}")
    return f"{terminal_safe(str(n['event_time']))} {severity} {text}"


# ---------------------------------------------------------------- webhook


def _conceal(value: Any) -> Any:
    """Wraps a raw string before the checks run, so their errors show `SecretStr('**********')`
    as the input even inside a model that does not hide inputs."""
    return SecretStr(value) if isinstance(value, str) else value


_CONCEAL: Final = BeforeValidator(_conceal)


def _check_whsec(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    raw = value.get_secret_value()
    try:
        valid = raw.startswith("whsec_") and len(_secret_key(raw)) > 0
    except binascii.Error:
        valid = False
    if not valid:
        raise ValueError("must be a Standard Webhooks secret: 'whsec_' followed by base64")
    return value


def _check_token(value: SecretStr | None) -> SecretStr | None:
    if value is not None and not re.fullmatch(r"[\x21-\x7e]+", value.get_secret_value()):
        raise ValueError("must be non-empty, printable ASCII without spaces")
    return value


class WebhookConfig(_Config):
    """An Alertmanager-compatible receiver; `secret` signs, `token` adds a Bearer header."""

    url: AnyHttpUrl
    secret: Annotated[SecretStr | None, AfterValidator(_check_whsec), _CONCEAL] = None
    token: Annotated[SecretStr | None, AfterValidator(_check_token), _CONCEAL] = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Timeout = 5.0

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for key, value in headers.items():
            if not _TOKEN.fullmatch(key) or key.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{key!r} is not a header name runwatch lets you set")
            if _CONTROL.search(value) or value != value.strip():
                raise ValueError(f"the value of {key!r} has control characters or edge spaces")
        return headers

    def build(self, name: str) -> WebhookChannel:
        return WebhookChannel(name, self)


class WebhookChannel(_Described):
    """POSTs the Alertmanager v4 body, signed per attempt, and never follows redirects."""

    config: WebhookConfig
    kind = "webhook"

    def __init__(self, name: str, config: WebhookConfig) -> None:
        self.name = name
        self.config = config
        self._key = config.secret.get_secret_value() if config.secret else None
        self._headers = {
            "User-Agent": USER_AGENT,
            **config.headers,
            "content-type": "application/json",
        }
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"
        self._session = requests.Session()

    def send(self, notification: dict[str, Any]) -> Outcome:
        body = orjson.dumps(alertmanager_payload(self.name, notification))
        timestamp = int(time.time())
        headers = {
            **self._headers,
            "webhook-id": notification["id"],
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, notification["id"], timestamp, body)
        reply = _post(self._session, str(self.config.url), body, headers, self.config.timeout)
        return reply if isinstance(reply, Outcome) else _classify(reply)

    def close(self) -> None:
        self._session.close()


def alertmanager_payload(receiver: str, n: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager webhook v4, so its existing receivers work; `runwatch` carries the rest."""
    labels = {str(k): str(v) for k, v in (n.get("labels") or {}).items()}
    labels |= {"alertname": n["rule"], "severity": n["severity"]}
    if n.get("run_id") is not None:
        labels["run_id"] = str(n["run_id"])
    labels = dict(sorted(labels.items()))
    grouped = {part.partition("=")[0] for part in n["group_key"].split(",")} | {"alertname"}
    annotations = {"summary": n["summary"], "description": n.get("description") or ""}
    fingerprint = hashlib.sha256(orjson.dumps(labels)).hexdigest()[:16]
    return {
        "version": "4",
        "groupKey": n["group_key"],
        "truncatedAlerts": 0,
        "status": n["state"],
        "receiver": receiver,
        "groupLabels": {k: v for k, v in labels.items() if k in grouped},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [
            {
                "status": n["state"],
                "labels": labels,
                "annotations": annotations,
                "startsAt": n["starts_at"],
                "endsAt": n.get("ends_at") or NOT_ENDED,
                "generatorURL": "",
                "fingerprint": fingerprint,
            }
        ],
        "runwatch": n,
    }


def _secret_key(secret: str) -> bytes:
    """The HMAC key; like the reference libraries, the `whsec_` prefix is optional here."""
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `v1,` signature of exactly these body bytes."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, msg_id: str, timestamp: int, body: bytes, signature_header: str) -> bool:
    """True if any signature in the space-separated header matches, compared in constant time.
    Checking the timestamp's age (against replays) is left to the receiver."""
    expected = sign(secret, msg_id, timestamp, body).encode()
    return any(
        hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
        for candidate in signature_header.split()
    )


# ---------------------------------------------------------------- slack


def _check_http_url(value: SecretStr) -> SecretStr:
    parts = urlsplit(value.get_secret_value())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL (Slack incoming webhook)")
    return value


class SlackConfig(_Config):
    """A Slack incoming webhook; the URL is the credential, so it is a secret."""

    url: Annotated[SecretStr, AfterValidator(_check_http_url), _CONCEAL]
    timeout: Timeout = 5.0
    min_interval: float = Field(default=1.0, ge=0, le=60)

    def build(self, name: str) -> SlackChannel:
        return SlackChannel(name, self)


class SlackChannel(_Described):
    """Block Kit messages, at most one per `min_interval` (Slack allows about one a second)."""

    config: SlackConfig
    kind = "slack"

    def __init__(self, name: str, config: SlackConfig) -> None:
        self.name = name
        self.config = config
        self._session = requests.Session()
        self._last: float | None = None

    def send(self, notification: dict[str, Any]) -> Outcome:
        body = orjson.dumps(slack_payload(notification))
        self._pace()
        headers = {"User-Agent": USER_AGENT, "content-type": "application/json"}
        reply = _post(
            self._session, self.config.url.get_secret_value(), body, headers, self.config.timeout
        )
        if isinstance(reply, Outcome):
            return reply
        error = reply.text.strip()
        return _classify(reply, error if re.fullmatch(r"[a-z_]{1,40}", error) else "")

    def _pace(self) -> None:
        if self._last is not None:
            wait = self._last + self.config.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last = time.monotonic()

    def close(self) -> None:
        self._session.close()


def slack_payload(n: dict[str, Any]) -> dict[str, Any]:
    """`text` for phone notifications and old clients, `blocks` for the channel itself."""
    severity = n["severity"].upper()
    rule, state = n["rule"], n["state"]
    summary = _mrkdwn(n["summary"])
    if n.get("description"):
        summary += "\n" + _mrkdwn(n["description"])
    fields = {
        "Severity": severity,
        "Rule": rule,
        "Run": n.get("run_id") or "-",
        "State": state,
        "Event time": n["event_time"],
    }
    context = f"runwatch · alert {n['alert_id']} · {n['group_key']}"
    context += f" · {n['suppressed']} repeats suppressed" if n.get("suppressed") else ""
    context += " · test" if n.get("test") else ""
    emoji = ":white_check_mark:" if state == "resolved" else _EMOJI.get(n["severity"], "")
    return {
        "text": _clip(f"[{severity}] {_mrkdwn(rule)} {state}: {_mrkdwn(n['summary'])}", 3000),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "emoji": True,
                    "text": _clip(f"{emoji} {severity} {rule} {state}", 150),
                },
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _clip(summary, 3000)},
                "fields": [
                    {"type": "mrkdwn", "text": _clip(f"*{k}*\n{_mrkdwn(str(v))}", 2000)}
                    for k, v in fields.items()
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _clip(_mrkdwn(context), 2000)}],
            },
        ],
    }


# ---------------------------------------------------------------- email


def _check_address(value: str) -> str:
    if _CONTROL.search(value) or "@" not in parseaddr(value)[1]:
        raise ValueError("must be an email address")
    return value


Address = Annotated[str, AfterValidator(_check_address)]


class EmailConfig(_Config):
    """An SMTP relay; `port` defaults by `security` (587 starttls, 465 ssl, 25 none)."""

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: Address
    recipients: list[Address] = Field(min_length=1)
    timeout: Timeout = 10.0

    @model_validator(mode="after")
    def _credentials_pair(self) -> EmailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        return self

    @property
    def smtp_port(self) -> int:
        return self.port or {"starttls": 587, "ssl": 465, "none": 25}[self.security]

    def build(self, name: str) -> EmailChannel:
        return EmailChannel(name, self)


class EmailChannel(_Described):
    """One plain-text mail per notification; SMTP 4xx and network trouble are worth a retry."""

    config: EmailConfig
    kind = "email"

    def __init__(self, name: str, config: EmailConfig) -> None:
        self.name = name
        self.config = config

    def send(self, notification: dict[str, Any]) -> Outcome:
        message = email_message(self.config, notification)
        try:
            refused = self._deliver(message)
        except smtplib.SMTPRecipientsRefused as e:
            code = min(code for code, _ in e.recipients.values())
            return Outcome(_smtp_status(code), f"SMTP {code}: recipients refused")
        except smtplib.SMTPAuthenticationError as e:
            return Outcome(_smtp_status(e.smtp_code), f"SMTP {e.smtp_code}: authentication failed")
        except smtplib.SMTPResponseException as e:
            return Outcome(_smtp_status(e.smtp_code), f"SMTP {e.smtp_code}")
        except smtplib.SMTPServerDisconnected as e:
            return _network_outcome(e, self.config.timeout)
        except smtplib.SMTPException as e:
            return Outcome("failed", f"SMTP error ({type(e).__name__})")
        except OSError as e:
            return _network_outcome(e, self.config.timeout)
        total = len(self.config.recipients)
        return Outcome("delivered", f"accepted for {total - len(refused)} of {total} recipients")

    def _deliver(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        config = self.config
        context = ssl.create_default_context()
        smtp = (
            smtplib.SMTP_SSL(config.host, config.smtp_port, timeout=config.timeout, context=context)
            if config.security == "ssl"
            else smtplib.SMTP(config.host, config.smtp_port, timeout=config.timeout)
        )
        with smtp:
            if config.security == "starttls":
                smtp.starttls(context=context)
            if config.username is not None and config.password is not None:
                smtp.login(config.username, config.password.get_secret_value())
            return smtp.send_message(
                message,
                from_addr=parseaddr(config.sender)[1],
                to_addrs=[parseaddr(r)[1] for r in config.recipients],
            )

    def close(self) -> None:
        """Each send opens and closes its own SMTP session."""


def _smtp_status(code: int) -> Status:
    """SMTP 4xx is transient by definition; anything else unexpected will not heal by itself."""
    return "retry" if 400 <= code < 500 else "failed"


def email_message(config: EmailConfig, n: dict[str, Any]) -> EmailMessage:
    """The mail for one notification; its Message-ID is the delivery id, so repeats dedupe."""
    subject = f"[{n['severity'].upper()}] {n['rule']}"
    subject += " resolved" if n["state"] == "resolved" else ""
    subject = ("[TEST] " if n.get("test") else "") + f"{subject}: {n['summary']}"
    message = EmailMessage()
    message["Subject"] = _clip(_printable(subject), 200)
    message["From"] = config.sender
    message["To"] = ", ".join(config.recipients)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{re.sub(r'[^A-Za-z0-9._-]', '_', n['id'])}@runwatch>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(email_body(n))
    return message


def email_body(n: dict[str, Any]) -> str:
    """Summary first, then what and when, then every label and event field."""
    facts = {
        "Rule": n["rule"],
        "State": n["state"],
        "Severity": n["severity"],
        "Run": n.get("run_id") or "-",
        "Event time": n["event_time"],
        "Started": n["starts_at"],
        "Ended": n.get("ends_at") or "-",
        "Suppressed": n.get("suppressed", 0),
    }
    lines = [n["summary"], ""]
    if n.get("description"):
        lines += [n["description"], ""]
    lines += [f"{key + ':':<12}{value}" for key, value in facts.items()]
    lines += ["", "Labels:", *(f"  {k} = {v}" for k, v in (n.get("labels") or {}).items())]
    lines += ["", "Event:", *(f"  {k}: {_text(v)}" for k, v in (n.get("event") or {}).items())]
    lines += ["", f"-- runwatch alert {n['alert_id']}, delivery {n['id']}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- shared


def describe(config: ChannelConfig) -> str:
    """A one-line, secret-free description for logs and config checks."""
    match config:
        case ConsoleConfig():
            return "console"
        case WebhookConfig():
            return f"webhook {origin(str(config.url))}" + (" (signed)" if config.secret else "")
        case SlackConfig():
            return f"slack {origin(config.url.get_secret_value())}"
        case EmailConfig():
            return (
                f"email via {config.host}:{config.smtp_port} ({config.security}) "
                f"to {len(config.recipients)} recipient(s)"
            )
        case _:
            assert_never(config)


def origin(url: str) -> str:
    """`scheme://host[:port]`: what can be shown of a URL whose path or query may be a secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _post(
    session: requests.Session, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> requests.Response | Outcome:
    try:
        return session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except (requests.ConnectionError, requests.Timeout) as e:
        return _network_outcome(e, timeout)
    except requests.RequestException as e:
        return Outcome("failed", f"request error ({type(e).__name__})")


def _classify(response: requests.Response, note: str = "") -> Outcome:
    """2xx delivered; 408, 429 and 5xx retried (honouring Retry-After); the rest failed."""
    code = response.status_code
    detail = f"HTTP {code} {note}".rstrip()
    if 200 <= code < 300:
        return Outcome("delivered", detail)
    if code in (408, 429) or code >= 500:
        return Outcome("retry", detail, parse_retry_after(response.headers.get("Retry-After")))
    return Outcome("failed", detail)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), clamped to [0, 3600]."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


_NETWORK: Final[
    tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Status, str], ...]
] = (
    (ConnectionRefusedError, "retry", "connection refused"),
    (ssl.SSLCertVerificationError, "failed", "TLS certificate not trusted"),
    (ssl.SSLError, "retry", "TLS error"),
    (socket.gaierror, "retry", "host not found"),
    (ConnectionResetError, "retry", "connection reset"),
    ((TimeoutError, requests.Timeout), "retry", "timeout after {} s"),
)


def _network_outcome(error: BaseException, timeout: float) -> Outcome:
    """Named from the exception types alone: library messages carry URLs."""
    chain = list(_causes(error))
    for kinds, status, detail in _NETWORK:
        if any(isinstance(e, kinds) for e in chain):
            return Outcome(status, detail.format(timeout))
    return Outcome("retry", "connection failed")


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if id(e) not in seen:
            seen.add(id(e))
            yield e
            linked = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
            todo += [x for x in linked if isinstance(x, BaseException)]


def _printable(text: str) -> str:
    return _CONTROL.sub(" ", text)


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


ChannelConfig = ConsoleConfig | WebhookConfig | SlackConfig | EmailConfig
