"""Alert channels against real loopback HTTP and SMTP servers: one attempt per send, the
right Outcome for every reply, wire formats receivers rely on, and no secret ever shown."""

from __future__ import annotations

import io
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from helpers import notification
from receivers import SmtpReceiver, WebhookReceiver, free_port
from runwatch.sinks.channels import (
    NOT_ENDED,
    Channel,
    ConsoleChannel,
    ConsoleConfig,
    EmailConfig,
    Outcome,
    SlackConfig,
    Status,
    WebhookConfig,
    describe,
    sign,
    verify,
)

# The Standard Webhooks reference test vector (also used by the svix libraries' tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as receiver:
        yield receiver


def send_webhook(url: str, note: dict[str, Any] | None = None, **config: Any) -> Outcome:
    channel = WebhookConfig(url=url, **config).build("ops-hook")
    try:
        return channel.send(note or notification())
    finally:
        channel.close()


def email_config(port: int, **changes: Any) -> EmailConfig:
    return EmailConfig(
        **{
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "sender": "runwatch <runwatch@example.org>",
            "recipients": ["ops@example.org", "ml@example.org"],
            "timeout": 2.0,
            **changes,
        }
    )


# ---------------------------------------------------------------- webhook: outcomes


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (400, "failed"),
        (401, "failed"),
        (404, "failed"),
        (410, "failed"),
    ],
)
def test_http_status_decides_the_outcome(
    hook: WebhookReceiver, status: int, expected: Status
) -> None:
    """The dispatcher retries on `retry` only, so a bad request must not be hammered forever."""
    hook.script((status,))
    assert send_webhook(hook.url) == Outcome(expected, f"HTTP {status}")
    assert len(hook.requests) == 1


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        ("2", 2.0, 2.0),
        (timedelta(seconds=30), 27.0, 30.0),  # sent as an HTTP-date that far ahead
        (timedelta(minutes=-5), 0.0, 0.0),
        ("999999", 3600.0, 3600.0),
        ("soon", None, None),
    ],
)
def test_retry_after_is_honoured_and_clamped(
    hook: WebhookReceiver, header: str | timedelta, low: float | None, high: float | None
) -> None:
    """A receiver asking for a pause gets it, but a hostile header cannot park a channel."""
    if isinstance(header, timedelta):
        header = format_datetime(datetime.now(UTC) + header, usegmt=True)
    hook.script((429, {"Retry-After": header}))
    outcome = send_webhook(hook.url)
    assert outcome.status == "retry"
    if low is None:
        assert outcome.retry_after is None
    else:
        assert outcome.retry_after is not None
        assert low <= outcome.retry_after <= (high or 0.0)


def test_a_hanging_receiver_times_out_as_retry(hook: WebhookReceiver) -> None:
    """A stuck receiver must cost one timeout, not a stuck worker thread."""
    hook.script(("hang", 2.0))
    started = time.monotonic()
    outcome = send_webhook(hook.url, timeout=0.3)
    assert outcome == Outcome("retry", "timeout after 0.3 s")
    assert time.monotonic() - started < 1.5


def test_redirects_are_failures_and_not_followed(hook: WebhookReceiver) -> None:
    """Following a redirect would hand a signed body and a bearer token to another host."""
    with WebhookReceiver() as elsewhere:
        hook.script((302, {"Location": elsewhere.url}))
        assert send_webhook(hook.url, token="tok-123") == Outcome("failed", "HTTP 302")
        # a receiver records a request before it answers, so a followed redirect would
        # already be in `elsewhere` when the send returned
        assert len(hook.requests) == 1
        assert elsewhere.requests == []


def test_receiver_down_then_up_on_the_same_port(hook: WebhookReceiver) -> None:
    """A receiver restart is transient: refused is `retry`, and the next attempt lands."""
    hook.stop()
    assert send_webhook(hook.url) == Outcome("retry", "connection refused")
    hook.start()
    assert send_webhook(hook.url).status == "delivered"
    assert len(hook.wait_for(1)) == 1


# ---------------------------------------------------------------- webhook: wire format


def test_body_is_an_alertmanager_v4_payload(hook: WebhookReceiver) -> None:
    """Existing Alertmanager receivers (chat bridges, pagers) must accept our body unchanged."""
    note = notification(suppressed=2)
    assert send_webhook(hook.url, note).status == "delivered"
    [request] = hook.wait_for(1)
    body = request.json
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert {
        k: body[k]
        for k in ("version", "groupKey", "truncatedAlerts", "status", "receiver", "externalURL")
    } == {
        "version": "4",
        "groupKey": "run_id=R1",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ops-hook",
        "externalURL": "",
    }
    assert body["groupLabels"] == {"alertname": "run_failure", "run_id": "R1"}
    [alert] = body["alerts"]
    assert alert["labels"] == {
        "alertname": "run_failure",
        "severity": "critical",
        "run_id": "R1",
        "team": "ml",
    }
    assert body["commonLabels"] == alert["labels"]
    assert alert["annotations"] == {"summary": note["summary"], "description": note["description"]}
    assert alert["startsAt"] == note["starts_at"]
    assert alert["endsAt"] == NOT_ENDED
    assert alert["generatorURL"] == ""
    assert len(alert["fingerprint"]) == 16
    assert body["runwatch"] == note


def test_resolved_payload_carries_the_end_and_the_same_fingerprint(hook: WebhookReceiver) -> None:
    """Receivers pair a resolution with its firing alert by fingerprint, as in Alertmanager."""
    send_webhook(hook.url)
    send_webhook(
        hook.url,
        notification(id="resolved-1", state="resolved", ends_at="2026-11-22T08:00:00.000000Z"),
    )
    firing, resolved = (r.json for r in hook.wait_for(2))
    assert resolved["status"] == resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "2026-11-22T08:00:00.000000Z"
    assert resolved["alerts"][0]["fingerprint"] == firing["alerts"][0]["fingerprint"]


def test_webhook_id_is_stable_across_attempts(hook: WebhookReceiver) -> None:
    """Receivers drop repeats by webhook-id, which is what makes at-least-once safe."""
    hook.script((503,))
    note = notification()
    assert send_webhook(hook.url, note, secret=VECTOR_SECRET).status == "retry"
    assert send_webhook(hook.url, note, secret=VECTOR_SECRET).status == "delivered"
    first, second = hook.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == note["id"]
    for request in (first, second):
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5


def test_signing_reproduces_the_standard_webhooks_test_vector() -> None:
    """Reproducing the reference vector means receivers' Standard Webhooks libraries accept us."""
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert verify(
        VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, f"v1,bm9wZQ== {VECTOR_SIGNATURE}"
    )
    assert not verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY, VECTOR_SIGNATURE)


def test_a_received_request_verifies_and_a_changed_byte_does_not(hook: WebhookReceiver) -> None:
    """The signature covers exactly the bytes sent, so tampering is caught at the receiver."""
    assert send_webhook(hook.url, secret=VECTOR_SECRET).status == "delivered"
    [request] = hook.wait_for(1)
    msg_id = request.headers["webhook-id"]
    timestamp = int(request.headers["webhook-timestamp"])
    signature = request.headers["webhook-signature"]
    assert verify(VECTOR_SECRET, msg_id, timestamp, request.body, signature)
    tampered = request.body[:10] + bytes([request.body[10] ^ 1]) + request.body[11:]
    assert not verify(VECTOR_SECRET, msg_id, timestamp, tampered, signature)
    other_secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    assert not verify(other_secret, msg_id, timestamp, request.body, signature)


def test_unsigned_webhooks_carry_no_signature_header(hook: WebhookReceiver) -> None:
    """A receiver must not see a signature it cannot check against any configured secret."""
    send_webhook(hook.url)
    [request] = hook.wait_for(1)
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == notification()["id"]


def test_bearer_token_and_custom_headers_arrive(hook: WebhookReceiver) -> None:
    """Receivers behind an API gateway authenticate us by these headers."""
    send_webhook(hook.url, token="tok-123", headers={"X-Env": "prod", "X-Team": "ml"})
    [request] = hook.wait_for(1)
    assert request.headers["authorization"] == "Bearer tok-123"
    assert request.headers["x-env"] == "prod"
    assert request.headers["x-team"] == "ml"
    assert request.headers["user-agent"] == "runwatch"


# ---------------------------------------------------------------- secrets


def test_no_secret_in_any_outcome_repr_or_description(hook: WebhookReceiver) -> None:
    """Outcomes, reprs and descriptions reach logs and the audit trail; secrets must not."""
    secrets = [
        "URLPASS",
        "QUERYSECRET",
        "tok-SECRET",
        "HDRSECRET",
        "SLACKPATH",
        "SMTPPASS",
        VECTOR_SECRET,
    ]
    webhook = WebhookConfig(
        url=f"http://user:URLPASS@127.0.0.1:{hook.port}/h?key=QUERYSECRET",
        secret=VECTOR_SECRET,
        token="tok-SECRET",
        headers={"X-Key": "HDRSECRET"},
        timeout=0.3,
    )
    slack = SlackConfig(
        url=f"http://127.0.0.1:{hook.port}/services/SLACKPATH", timeout=0.3, min_interval=0
    )
    email = email_config(free_port(), username="ops", password="SMTPPASS")
    channels: list[Channel] = [webhook.build("w"), slack.build("s"), email.build("e")]
    hook.script((503,), (503,), ("hang", 1.0), ("hang", 1.0))
    outcomes = [c.send(notification()) for c in channels[:2] * 2] + [
        channels[2].send(notification())
    ]
    hook.stop()
    outcomes += [c.send(notification()) for c in channels]
    shown = [*(o.detail for o in outcomes), *map(repr, channels)]
    shown += [text for c in (webhook, slack, email) for text in (repr(c), str(c), describe(c))]
    assert {o.status for o in outcomes} == {"retry"}
    assert not [(s, text) for s in secrets for text in shown if s in text]
    assert f"http://127.0.0.1:{hook.port}" in repr(webhook)


class LoaderSettings(BaseModel):
    """Stands for the loader's top-level model, which does not hide inputs in its errors."""

    webhook: WebhookConfig | None = None
    slack: SlackConfig | None = None


@pytest.mark.parametrize(
    "channel",
    [
        {"webhook": {"url": "http://example.org", "secret": "whsec_not*base64*SECRETBITS"}},
        {"webhook": {"url": "http://example.org", "token": "tok SECRETBITS"}},
        {"slack": {"url": "hooks.slack.com/services/SECRETBITS"}},
    ],
)
def test_validation_errors_do_not_echo_the_rejected_secret(channel: dict[str, Any]) -> None:
    """Config errors are printed to the terminal; a mistyped secret is still a secret."""
    with pytest.raises(ValidationError) as caught:
        LoaderSettings.model_validate(channel)
    assert "SECRETBITS" not in str(caught.value)
    assert "SecretStr('**********')" in str(caught.value)


# ---------------------------------------------------------------- slack


def test_slack_message_has_text_and_blocks(hook: WebhookReceiver) -> None:
    """Slack shows `text` in notifications and `blocks` in the channel; both must be there."""
    note = notification(summary="run <R1> failed & stopped", suppressed=3)
    channel = SlackConfig(url=hook.url, min_interval=0).build("slack")
    assert channel.send(note) == Outcome("delivered", "HTTP 200")
    body = hook.wait_for(1)[0].json
    assert body["text"] == "[CRITICAL] run_failure firing: run &lt;R1&gt; failed &amp; stopped"
    header, section, context = body["blocks"]
    assert header["type"] == "header"
    assert "CRITICAL run_failure firing" in header["text"]["text"]
    assert section["text"]["text"].startswith("run &lt;R1&gt; failed")
    fields = [f["text"] for f in section["fields"]]
    assert fields == [
        "*Severity*\nCRITICAL",
        "*Rule*\nrun_failure",
        "*Run*\nR1",
        "*State*\nfiring",
        "*Event time*\n2026-11-22T07:00:00.000000Z",
    ]
    assert "3 repeats suppressed" in context["elements"][0]["text"]


def test_slack_sends_are_paced_by_min_interval(hook: WebhookReceiver) -> None:
    """Slack drops bursts over about one message a second; pacing keeps alerts from vanishing."""
    channel = SlackConfig(url=hook.url, min_interval=0.3).build("slack")
    assert channel.send(notification()).status == "delivered"
    assert channel.send(notification(id="second")).status == "delivered"
    first, second = hook.wait_for(2)
    assert second.received_at - first.received_at >= 0.3 - 0.02  # connect time of the first


def test_slack_rate_limit_is_retried_after_its_delay(hook: WebhookReceiver) -> None:
    """Slack's 429 says exactly when to come back; retrying sooner only extends the block."""
    hook.script((429, {"Retry-After": "3"}))
    channel = SlackConfig(url=hook.url, min_interval=0).build("slack")
    assert channel.send(notification()) == Outcome("retry", "HTTP 429", 3.0)


def test_slack_error_code_is_reported(hook: WebhookReceiver) -> None:
    """Slack names the problem (e.g. a deleted channel); the operator needs that word."""
    hook.script((404, {}, b"no_service"))
    channel = SlackConfig(url=hook.url, min_interval=0).build("slack")
    assert channel.send(notification()) == Outcome("failed", "HTTP 404 no_service")


# ---------------------------------------------------------------- email


def test_email_subject_message_id_and_body(smtp: SmtpReceiver) -> None:
    """A stable Message-ID lets mail clients fold a retried alert into one message."""
    outcome = email_config(smtp.port).build("mail").send(notification(suppressed=2))
    assert outcome == Outcome("delivered", "accepted for 2 of 2 recipients")
    [mail] = smtp.wait_for(1)
    message = mail.message
    assert mail.mail_from == "runwatch@example.org"
    assert mail.rcpt_tos == ["ops@example.org", "ml@example.org"]
    assert message["Subject"] == "[CRITICAL] run_failure: run R1 failed: 3 of 10 tasks failed"
    assert message["Message-ID"] == "<9f1c0aa5d2e34b7c@runwatch>"
    assert message["Date"]
    body = message.get_content()
    for text in (
        "run R1 failed: 3 of 10 tasks failed",
        "tasks t3, t7, t9",
        "run_id = R1",
        "type: run_finished",
        "failed: 3",
        "Event time: 2026-11-22T07:00:00.000000Z",
        "Suppressed: 2",
    ):
        assert text in body


def test_resolved_test_mail_says_so_in_the_subject(smtp: SmtpReceiver) -> None:
    """Inbox rules and humans sort on the subject: resolution and test mail must show there."""
    email_config(smtp.port).build("mail").send(
        notification(state="resolved", severity="high", test=True, summary="line\nbreak")
    )
    [mail] = smtp.wait_for(1)
    assert mail.message["Subject"] == "[TEST] [HIGH] run_failure resolved: line break"


@pytest.mark.parametrize(("reply", "status"), [(451, "retry"), (550, "failed")])
def test_smtp_reply_class_decides_the_outcome(
    smtp: SmtpReceiver, reply: int, status: Status
) -> None:
    """4xx is the server saying try later; 5xx is final, and retrying it would be spam."""
    smtp.script(reply)
    outcome = email_config(smtp.port).build("mail").send(notification())
    assert outcome == Outcome(status, f"SMTP {reply}")
    assert smtp.received.items() == []


def test_smtp_connection_refused_is_retried() -> None:
    """A mail relay restarting is transient."""
    outcome = email_config(free_port()).build("mail").send(notification())
    assert outcome == Outcome("retry", "connection refused")


def test_a_silent_smtp_server_times_out_as_retry() -> None:
    """A relay that accepts the connection but never greets must cost one timeout, no more."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        outcome = (
            email_config(silent.getsockname()[1], timeout=0.3).build("mail").send(notification())
        )
    assert outcome == Outcome("retry", "timeout after 0.3 s")
    assert time.monotonic() - started < 1.5


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_smtp_login_failure_is_final_and_hides_the_password() -> None:
    """Wrong credentials will not heal by retrying, and the detail must not echo them."""
    with SmtpReceiver(credentials=("ops", "right-pass")) as smtp:
        wrong = email_config(smtp.port, username="ops", password="WRONGPASS").build("mail")
        right = email_config(smtp.port, username="ops", password="right-pass").build("mail")
        failed = wrong.send(notification())
        assert failed.status == "failed"
        assert "authentication failed" in failed.detail
        assert "WRONGPASS" not in failed.detail
        assert right.send(notification()).status == "delivered"
        assert len(smtp.wait_for(1)) == 1


def test_starttls_is_never_downgraded_to_plain_text(smtp: SmtpReceiver) -> None:
    """With `starttls` configured, a server that does not offer TLS gets no mail and no password."""
    outcome = email_config(smtp.port, security="starttls").build("mail").send(notification())
    assert outcome == Outcome("failed", "SMTP error (SMTPNotSupportedError)")
    assert smtp.received.items() == []


def test_starttls_rejects_an_untrusted_certificate(tmp_path: Path) -> None:
    """Encryption without checking who answers protects nothing; a self-signed relay is refused."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with SmtpReceiver(tls_context=context) as smtp:
        outcome = email_config(smtp.port, security="starttls").build("mail").send(notification())
        assert outcome == Outcome("failed", "TLS certificate not trusted")
        assert smtp.received.items() == []


# ---------------------------------------------------------------- console


def test_console_line_is_readable() -> None:
    """Operators read the console at a glance: time, severity, rule, state, summary, repeats."""
    out = io.StringIO()
    channel = ConsoleConfig().build("console", stream=out)
    assert channel.send(notification(suppressed=2)) == Outcome("delivered", "written")
    assert out.getvalue() == (
        "2026-11-22T07:00:00.000000Z CRITICAL run_failure [firing] "
        "run R1 failed: 3 of 10 tasks failed (suppressed 2)\n"
    )


def test_console_colours_severity_only_and_neutralises_escapes() -> None:
    """Log text reaches the terminal, so it must not be able to send escape sequences."""
    out = io.StringIO()
    ConsoleChannel("console", out, color=True).send(notification(summary="bad\x1b[2Jthing"))
    line = out.getvalue()
    assert line.startswith("2026-11-22T07:00:00.000000Z \x1b[1;31mCRITICAL\x1b[0m run_failure")
    assert line.count("\x1b") == 2
    assert "bad\\x1b[2Jthing" in line


def test_console_waits_for_the_shared_lock() -> None:
    """Lines from the alert thread must not interleave with the progress bar or tables."""
    out, lock = io.StringIO(), threading.Lock()
    channel = ConsoleChannel("console", out, lock=lock)
    with lock:
        writer = threading.Thread(target=channel.send, args=(notification(),))
        writer.start()
        writer.join(0.1)
        assert out.getvalue() == ""
    writer.join(2)
    assert out.getvalue().count("\n") == 1


def test_console_write_failure_is_retried() -> None:
    """A closed stream is not the notification's fault; the dispatcher may try again."""
    out = io.StringIO()
    channel = ConsoleChannel("console", out)
    out.close()
    assert channel.send(notification()) == Outcome("retry", "console write failed")


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("model", "fields", "bad"),
    [
        (WebhookConfig, {"url": "not a url"}, "url"),
        (WebhookConfig, {"url": "ftp://example.org/x"}, "url"),
        (
            WebhookConfig,
            {"url": "http://example.org", "secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
            "secret",
        ),
        (WebhookConfig, {"url": "http://example.org", "secret": "whsec_***"}, "secret"),
        (WebhookConfig, {"url": "http://example.org", "timeout": 0}, "timeout"),
        (WebhookConfig, {"url": "http://example.org", "headers": {"webhook-id": "x"}}, "headers"),
        (WebhookConfig, {"url": "http://example.org", "headers": {"X-A": "a\r\nB: b"}}, "headers"),
        (WebhookConfig, {"url": "http://example.org", "token": "two words"}, "token"),
        (WebhookConfig, {"url": "http://example.org", "retries": 3}, "retries"),
        (SlackConfig, {"url": "hooks.slack.com/services/T/B/X"}, "url"),
        (EmailConfig, {"host": "smtp", "sender": "a@example.org", "recipients": []}, "recipients"),
        (
            EmailConfig,
            {"host": "smtp", "sender": "a@example.org", "recipients": ["nobody"]},
            "recipients",
        ),
        (
            EmailConfig,
            {
                "host": "smtp",
                "sender": "a@example.org\r\nBcc: x@y.z",
                "recipients": ["b@example.org"],
            },
            "sender",
        ),
        (
            EmailConfig,
            {
                "host": "smtp",
                "sender": "a@example.org",
                "recipients": ["b@example.org"],
                "security": "tls",
            },
            "security",
        ),
    ],
)
def test_bad_config_names_the_field(model: type[Any], fields: dict[str, Any], bad: str) -> None:
    """Config errors are the one place to fail fast, and the message must say which key."""
    with pytest.raises(ValidationError) as caught:
        model(**fields)
    assert bad in {str(error["loc"][0]) for error in caught.value.errors() if error["loc"]}


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("none", 25)])
def test_smtp_port_follows_security(security: str, port: int) -> None:
    """The usual port for each mode, so a config needs only the host."""
    config = EmailConfig(
        host="smtp", security=security, sender="a@example.org", recipients=["b@example.org"]
    )
    assert config.smtp_port == port
    assert describe(config) == f"email via smtp:{port} ({security}) to 1 recipient(s)"
