"""Alert channels, one module each behind the `Channel` interface (see `base` for the delivery
contract), and the registry of channel types: the `type:` a config names → its config model
and channel class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from runwatch.sinks.channels.alertmanager import AlertmanagerChannel, AlertmanagerConfig, to_alert
from runwatch.sinks.channels.base import Channel, ChannelConfig, Outcome, Status, origin
from runwatch.sinks.channels.console import ConsoleChannel, ConsoleConfig, console_line
from runwatch.sinks.channels.email import EmailChannel, EmailConfig, email_body, email_message
from runwatch.sinks.channels.slack import SlackChannel, SlackConfig, slack_payload
from runwatch.sinks.channels.webhook import (
    NOT_ENDED,
    WebhookChannel,
    WebhookConfig,
    alertmanager_payload,
    sign,
    verify,
)

__all__ = [
    "CHANNELS",
    "NOT_ENDED",
    "AlertmanagerChannel",
    "AlertmanagerConfig",
    "Channel",
    "ChannelConfig",
    "ChannelType",
    "ConsoleChannel",
    "ConsoleConfig",
    "EmailChannel",
    "EmailConfig",
    "Outcome",
    "SlackChannel",
    "SlackConfig",
    "Status",
    "WebhookChannel",
    "WebhookConfig",
    "alertmanager_payload",
    "console_line",
    "describe",
    "email_body",
    "email_message",
    "origin",
    "sign",
    "slack_payload",
    "to_alert",
    "verify",
]


@dataclass(frozen=True, slots=True)
class ChannelType:
    """One kind of channel: the model its config validates into, and what that builds."""

    config: type[ChannelConfig]
    channel: type[Channel]


CHANNELS: Final[dict[str, ChannelType]] = {
    "console": ChannelType(ConsoleConfig, ConsoleChannel),
    "webhook": ChannelType(WebhookConfig, WebhookChannel),
    "slack": ChannelType(SlackConfig, SlackChannel),
    "email": ChannelType(EmailConfig, EmailChannel),
    "alertmanager": ChannelType(AlertmanagerConfig, AlertmanagerChannel),
}
"""A new channel is one module and one line here."""


def describe(config: ChannelConfig) -> str:
    """A one-line, secret-free description for logs and config checks."""
    return config.describe()
