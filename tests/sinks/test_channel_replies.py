"""HTTP channels against receivers whose reply body is huge or never ends: a channel reads at
most a bounded prefix of any reply, so a hostile or broken receiver cannot hold it or its
memory. Real loopback server, real sockets."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from helpers import notification
from receivers import WebhookReceiver
from runwatch.sinks.channels import Outcome, SlackConfig, WebhookConfig

# Loopback socket buffers hold a few MiB that the server counts as sent; an uncapped
# reader takes everything the server can send.
BUFFERED = 32 << 20


def send_in_thread(send: Callable[[], Outcome]) -> Outcome:
    """`send()`'s outcome; an AssertionError if it is still reading after 60 s."""
    outcomes: list[Outcome] = []
    worker = threading.Thread(target=lambda: outcomes.append(send()), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert outcomes, "the channel is still reading a reply that never ends"
    return outcomes[0]


@pytest.mark.parametrize(("status", "expected"), [(200, "delivered"), (503, "retry")])
def test_webhook_stops_reading_an_endless_reply(
    hook: WebhookReceiver, status: int, expected: str
) -> None:
    """The status decides the outcome; the body is not read at all."""
    hook.script(("endless", status))
    channel = WebhookConfig(url=hook.url).build("hook")
    try:
        outcome = send_in_thread(lambda: channel.send(notification()))
    finally:
        channel.close()
    assert outcome == Outcome(expected, f"HTTP {status}")
    [sent] = hook.streamed.wait_for(1, timeout=30)
    assert sent < BUFFERED


def test_slack_reads_at_most_a_bounded_prefix_of_an_endless_reply(hook: WebhookReceiver) -> None:
    """Slack's reply names an error in a few bytes; no more than a bounded prefix is read
    (64 KiB), and what was read is not mistaken for an error code."""
    hook.script(("endless", 400))
    channel = SlackConfig(url=hook.url, min_interval=0).build("slack")
    try:
        outcome = send_in_thread(lambda: channel.send(notification()))
    finally:
        channel.close()
    assert outcome == Outcome("failed", "HTTP 400")
    [sent] = hook.streamed.wait_for(1, timeout=30)
    assert sent < BUFFERED


def test_slack_error_code_still_arrives_after_the_cap(hook: WebhookReceiver) -> None:
    """A short reply is read whole."""
    hook.script((404, {}, b"channel_not_found"))
    channel = SlackConfig(url=hook.url, min_interval=0).build("slack")
    try:
        assert channel.send(notification()) == Outcome("failed", "HTTP 404 channel_not_found")
    finally:
        channel.close()
