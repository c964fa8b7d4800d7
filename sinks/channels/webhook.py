"""The webhook channel: an Alertmanager v4 body, signed per attempt (Standard Webhooks)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
import time
from typing import Annotated, Any, ClassVar, Final, TextIO

import orjson
from pydantic import AfterValidator, AnyHttpUrl, Field, SecretStr, field_validator

from runwatch.sinks.channels.base import (
    CONCEAL,
    CONTROL,
    USER_AGENT,
    ChannelConfig,
    Outcome,
    Posting,
    Timeout,
    origin,
    post,
)

NOT_ENDED: Final = "0001-01-01T00:00:00Z"
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


class WebhookConfig(ChannelConfig):
    """An Alertmanager-compatible receiver; `secret` signs, `token` adds a Bearer header."""

    url: AnyHttpUrl
    secret: Annotated[SecretStr | None, AfterValidator(_check_whsec), CONCEAL] = None
    token: Annotated[SecretStr | None, AfterValidator(_check_token), CONCEAL] = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Timeout = 5.0

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for key, value in headers.items():
            if not _TOKEN.fullmatch(key) or key.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{key!r} is not a header name runwatch lets you set")
            if CONTROL.search(value) or value != value.strip():
                raise ValueError(f"the value of {key!r} has control characters or edge spaces")
        return headers

    address_key: ClassVar[str | None] = "url"

    def build(
        self, name: str, *, stream: TextIO | None = None, lock: threading.Lock | None = None
    ) -> WebhookChannel:
        return WebhookChannel(name, self)

    def describe(self) -> str:
        return f"webhook {origin(str(self.url))}" + (" (signed)" if self.secret else "")


class WebhookChannel(Posting[WebhookConfig]):
    """POSTs the Alertmanager v4 body, signed per attempt, and never follows redirects."""

    kind = "webhook"

    def __init__(self, name: str, config: WebhookConfig) -> None:
        super().__init__(name, config)
        self._key = config.secret.get_secret_value() if config.secret else None
        self._headers = {
            "User-Agent": USER_AGENT,
            **config.headers,
            "content-type": "application/json",
        }
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"

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
        return post(self.session, str(self.config.url), body, headers, self.config.timeout)


def alertmanager_payload(receiver: str, n: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager webhook v4, so its existing receivers work; `runwatch` carries the rest."""
    labels = {str(k): str(v) for k, v in (n.get("labels") or {}).items()}
    labels |= {"alertname": n["rule"], "severity": n["severity"]}
    if n.get("run_id") is not None:
        labels["run_id"] = str(n["run_id"])
    labels = dict(sorted(labels.items()))
    grouped = {part.partition("=")[0] for part in n["group_key"].split(",")} | {"alertname"}
    annotations = {"summary": n["summary"], "description": n.get("description") or ""}
    if n.get("runbook_url"):
        annotations["runbook_url"] = n["runbook_url"]
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
