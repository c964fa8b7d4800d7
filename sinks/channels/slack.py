"""The Slack channel: Block Kit messages to an incoming webhook, paced."""

from __future__ import annotations

import re
import threading
import time
from typing import Annotated, Any, ClassVar, Final, TextIO
from urllib.parse import urlsplit

import orjson
from pydantic import AfterValidator, Field, SecretStr

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

_EMOJI: Final = {
    "critical": ":rotating_light:",
    "high": ":red_circle:",
    "warning": ":warning:",
    "medium": ":large_orange_circle:",
    "low": ":large_yellow_circle:",
    "info": ":information_source:",
}


def _check_http_url(value: SecretStr) -> SecretStr:
    parts = urlsplit(value.get_secret_value())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL (Slack incoming webhook)")
    return value


class SlackConfig(ChannelConfig):
    """A Slack incoming webhook; the URL is the credential, so it is a secret."""

    url: Annotated[SecretStr, AfterValidator(_check_http_url), CONCEAL]
    timeout: Timeout = 5.0
    min_interval: float = Field(default=1.0, ge=0, le=60)

    address_key: ClassVar[str | None] = "url"

    def build(
        self, name: str, *, stream: TextIO | None = None, lock: threading.Lock | None = None
    ) -> SlackChannel:
        return SlackChannel(name, self)

    def describe(self) -> str:
        return f"slack {origin(self.url.get_secret_value())}"


class SlackChannel(Posting[SlackConfig]):
    """Block Kit messages, at most one per `min_interval` (Slack allows about one a second)."""

    kind = "slack"

    def __init__(self, name: str, config: SlackConfig) -> None:
        super().__init__(name, config)
        self._last: float | None = None

    def send(self, notification: dict[str, Any]) -> Outcome:
        body = orjson.dumps(slack_payload(notification))
        self._pace()
        headers = {"User-Agent": USER_AGENT, "content-type": "application/json"}
        url = self.config.url.get_secret_value()
        return post(self.session, url, body, headers, self.config.timeout, explain=_error_code)

    def _pace(self) -> None:
        if self._last is not None:
            wait = self._last + self.config.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last = time.monotonic()


def _error_code(body: bytes) -> str:
    """Slack answers a refused message with a short code (`invalid_payload`); anything else
    in the body is not repeated."""
    error = body.decode("utf-8", "replace").strip()
    return error if re.fullmatch(r"[a-z_]{1,40}", error) else ""


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
        "text": clip(f"[{severity}] {_mrkdwn(rule)} {state}: {_mrkdwn(n['summary'])}", 3000),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "emoji": True,
                    "text": clip(f"{emoji} {severity} {rule} {state}", 150),
                },
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": clip(summary, 3000)},
                "fields": [
                    {"type": "mrkdwn", "text": clip(f"*{k}*\n{_mrkdwn(str(v))}", 2000)}
                    for k, v in fields.items()
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": clip(_mrkdwn(context), 2000)}],
            },
        ],
    }


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
