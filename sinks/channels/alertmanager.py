"""The Alertmanager channel: runwatch's alerts posted to `/api/v2/alerts`, as Prometheus does,
so an Alertmanager you already run groups, silences, inhibits and routes them.

Delivery contract (besides the one of `base`): a firing alert is re-posted every
`resend_interval` while it is active here, so Alertmanager's `resolve_timeout` never closes
it early; its resolution is posted with `endsAt`. When an alert's labels change while it
fires (an SLO burn raised from ticket to page changes `severity`), the old label set is
ended in the same post. Alertmanager identifies an alert by its labels, so a repeated post is
harmless: at-least-once delivery needs no id here.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, TextIO

import orjson
from pydantic import AfterValidator, AnyHttpUrl, Field, SecretStr

from runwatch.sinks.channels.base import (
    CONCEAL,
    USER_AGENT,
    ChannelConfig,
    Outcome,
    Posting,
    Timeout,
    clip,
    origin,
    post,
)

_LABEL_NAME: Final = re.compile(r"[^a-zA-Z0-9_]")
MAX_ANNOTATION: Final = 4096


def _check_token(value: SecretStr | None) -> SecretStr | None:
    if value is not None and not re.fullmatch(r"[\x21-\x7e]+", value.get_secret_value()):
        raise ValueError("must be non-empty, printable ASCII without spaces")
    return value


class AlertmanagerConfig(ChannelConfig):
    """An Alertmanager's base URL (`http://alertmanager:9093`, or a path prefix behind a
    proxy); `token` adds a Bearer header; `generator_url` is where an alert links back to
    (`{run_id}` and `{rule}` are filled in)."""

    url: AnyHttpUrl
    token: Annotated[SecretStr | None, AfterValidator(_check_token), CONCEAL] = None
    timeout: Timeout = 5.0
    resend_interval: float = Field(default=60.0, ge=1, le=3600)
    generator_url: str = ""

    address_key: ClassVar[str | None] = "url"

    def build(
        self, name: str, *, stream: TextIO | None = None, lock: threading.Lock | None = None
    ) -> AlertmanagerChannel:
        return AlertmanagerChannel(name, self)

    def describe(self) -> str:
        return f"alertmanager {origin(str(self.url))} (re-sent every {self.resend_interval:g} s)"


class AlertmanagerChannel(Posting[AlertmanagerConfig]):
    """Posts alerts to Alertmanager's v2 API and keeps the firing ones alive."""

    kind = "alertmanager"

    def __init__(self, name: str, config: AlertmanagerConfig) -> None:
        super().__init__(name, config)
        self.endpoint = str(config.url).rstrip("/") + "/api/v2/alerts"
        self.headers = {"User-Agent": USER_AGENT, "content-type": "application/json"}
        if config.token:
            self.headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"
        self.active: dict[tuple[str, str], dict[str, Any]] = {}
        """(rule, group) → the alert as last posted, for every alert firing here."""
        self.resent_at = time.monotonic()
        self.lock = threading.Lock()

    def send(self, notification: dict[str, Any]) -> Outcome:
        alert = to_alert(notification, self.config.generator_url)
        key = (str(notification["rule"]), str(notification["group_key"]))
        with self.lock:
            before = self.active.get(key)
            batch = [alert]
            if before is not None and before["labels"] != alert["labels"]:
                batch.append({**before, "endsAt": _now()})
            resending = self._resend_due()
            if resending:  # a busy channel is never idle: keep the others alive here too
                batch += [a for k, a in self.active.items() if k != key]
            outcome = self._post(batch)
            if resending and outcome.status == "delivered":
                self.resent_at = time.monotonic()
            if outcome.status == "delivered":
                if notification["state"] == "firing":
                    self.active[key] = alert
                else:
                    self.active.pop(key, None)
        return outcome

    def when_idle(self) -> None:
        """Re-post the firing alerts once `resend_interval` has passed since the last time."""
        with self.lock:
            if not self._resend_due():
                return
            self.resent_at = time.monotonic()
            self._post(list(self.active.values()))  # a failure waits for the next interval

    def seed(self, notifications: list[dict[str, Any]]) -> None:
        """Alerts still firing from before a restart, re-posted from the next interval on."""
        with self.lock:
            for notification in notifications:
                key = (str(notification["rule"]), str(notification["group_key"]))
                self.active[key] = to_alert(notification, self.config.generator_url)
            self.resent_at = time.monotonic() - self.config.resend_interval

    def _resend_due(self) -> bool:
        return bool(self.active) and (
            time.monotonic() - self.resent_at >= self.config.resend_interval
        )

    def _post(self, alerts: list[dict[str, Any]]) -> Outcome:
        body = orjson.dumps(alerts)
        return post(
            self.session, self.endpoint, body, self.headers, self.config.timeout, explain=_reason
        )


def _reason(reply: bytes) -> str:
    """Alertmanager's own words for a refused post (e.g. a bad label), clipped."""
    try:
        text = orjson.loads(reply)
    except orjson.JSONDecodeError:
        text = reply.decode("utf-8", "replace")
    if isinstance(text, dict):
        text = text.get("message") or text.get("error") or ""
    return clip(" ".join(str(text).split()), 200)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_alert(n: dict[str, Any], generator_url: str = "") -> dict[str, Any]:
    """One notification as a postable Alertmanager alert: labels (alertname = the rule,
    severity, run_id and the group's fields), annotations (summary, description,
    runbook_url), startsAt, endsAt once resolved, generatorURL."""
    labels = {_label_name(k): str(v) for k, v in (n.get("labels") or {}).items()}
    labels |= {"alertname": str(n["rule"]), "severity": str(n["severity"])}
    if n.get("run_id") is not None:
        labels["run_id"] = str(n["run_id"])
    annotations = {
        "summary": clip(str(n.get("summary") or ""), MAX_ANNOTATION),
        "description": clip(_description(n), MAX_ANNOTATION),
    }
    if n.get("runbook_url"):
        annotations["runbook_url"] = str(n["runbook_url"])
    alert: dict[str, Any] = {
        "labels": dict(sorted(labels.items())),
        "annotations": annotations,
        "startsAt": n["starts_at"],
    }
    if n["state"] == "resolved":
        alert["endsAt"] = n.get("ends_at") or _now()
    if generator_url:
        fields = {"run_id": n.get("run_id") or "", "rule": n["rule"]}
        alert["generatorURL"] = generator_url.format_map(fields)
    return alert


def _label_name(name: str) -> str:
    cleaned = _LABEL_NAME.sub("_", str(name)) or "_"
    return "_" + cleaned if cleaned[0].isdigit() else cleaned


def _description(n: dict[str, Any]) -> str:
    event = n.get("event") or {}
    parts = [f"{event.get('type', 'event')} at {n.get('event_time')}"]
    if n.get("suppressed"):
        parts.append(f"{n['suppressed']} more held back by the throttle")
    parts.append(f"alert id {n.get('alert_id')}")
    return "; ".join(parts)
