"""The email channel: one plain-text mail per notification through an SMTP relay."""

from __future__ import annotations

import re
import smtplib
import ssl
import threading
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Annotated, Any, ClassVar, Literal, TextIO

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from runwatch.sinks.channels.base import (
    CONTROL,
    ChannelConfig,
    Described,
    Outcome,
    Status,
    Timeout,
    as_text,
    clip,
    network_outcome,
    printable,
)


def _check_address(value: str) -> str:
    if CONTROL.search(value) or "@" not in parseaddr(value)[1]:
        raise ValueError("must be an email address")
    return value


Address = Annotated[str, AfterValidator(_check_address)]


class EmailConfig(ChannelConfig):
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

    address_key: ClassVar[str | None] = "host"

    @field_validator("recipients", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """One string (as an environment variable gives it) is a comma-separated list."""
        if isinstance(value, str):
            return [r.strip() for r in value.split(",") if r.strip()]
        return value

    @property
    def smtp_port(self) -> int:
        return self.port or {"starttls": 587, "ssl": 465, "none": 25}[self.security]

    def build(
        self, name: str, *, stream: TextIO | None = None, lock: threading.Lock | None = None
    ) -> EmailChannel:
        return EmailChannel(name, self)

    def describe(self) -> str:
        return (
            f"email via {self.host}:{self.smtp_port} ({self.security}) "
            f"to {len(self.recipients)} recipient(s)"
        )


class EmailChannel(Described[EmailConfig]):
    """One plain-text mail per notification; SMTP 4xx and network trouble are worth a retry."""

    kind = "email"

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
            return network_outcome(e, self.config.timeout)
        except smtplib.SMTPException as e:
            return Outcome("failed", f"SMTP error ({type(e).__name__})")
        except OSError as e:
            return network_outcome(e, self.config.timeout)
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
    message["Subject"] = clip(printable(subject), 200)
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
    lines += ["", "Event:", *(f"  {k}: {as_text(v)}" for k, v in (n.get("event") or {}).items())]
    lines += ["", f"-- runwatch alert {n['alert_id']}, delivery {n['id']}"]
    return "\n".join(lines) + "\n"
