"""What every alert channel shares: the `Channel` interface and the `Outcome` of one attempt,
the frozen, secret-safe config base, and the HTTP and network helpers.

Delivery contract: `send` makes exactly one attempt and never raises for a delivery problem; it
returns an `Outcome` and the dispatcher owns retries and backoff. Every attempt for one
notification carries the same id (`webhook-id`, `Message-ID`), so receivers can drop the repeats
that at-least-once delivery brings. No secret, URL or header value reaches an `Outcome`, a repr
or a validation error.
"""

from __future__ import annotations

import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Final,
    Generic,
    Literal,
    Protocol,
    TextIO,
    TypeVar,
)
from urllib.parse import urlsplit

import orjson
from pydantic import AnyHttpUrl, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

Status = Literal["delivered", "retry", "failed"]
Timeout = Annotated[float, Field(gt=0, le=300)]

MAX_RETRY_AFTER: Final = 3600.0
MAX_REPLY_BYTES: Final = 64 * 1024
USER_AGENT: Final = "runwatch"
CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]+")

if TYPE_CHECKING:  # loaded by the first channel that posts: most commands never do
    import requests


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


class ChannelConfig(BaseModel):
    """Frozen and strict; errors never echo their input, which may be a secret."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    address_key: ClassVar[str | None] = None
    """The key whose empty value switches the channel off (its variable is not set)."""

    def build(
        self, name: str, *, stream: TextIO | None = None, lock: threading.Lock | None = None
    ) -> Channel:
        """The channel; `stream` and `lock` concern only channels that write to a stream."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line, secret-free description for logs and config checks."""
        raise NotImplementedError

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """URLs shrink to their origin and header values are hidden: both can carry secrets."""
        for key, value in super().__repr_args__():
            if isinstance(value, AnyHttpUrl):
                yield key, origin(str(value))
            elif key == "headers":
                yield key, dict.fromkeys(value, "**********")
            else:
                yield key, value


C = TypeVar("C", bound=ChannelConfig)


class Described(Generic[C]):
    """A channel made from its config; its repr is the config's, which is already free of
    secrets."""

    def __init__(self, name: str, config: C) -> None:
        self.name = name
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.config!r})"


class Posting(Described[C]):
    """A channel that POSTs each notification over one kept-alive HTTP session."""

    def __init__(self, name: str, config: C) -> None:
        import requests

        super().__init__(name, config)
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()


def conceal(value: Any) -> Any:
    """Wraps a raw string before the checks run, so their errors show `SecretStr('**********')`
    as the input even inside a model that does not hide inputs."""
    return SecretStr(value) if isinstance(value, str) else value


CONCEAL: Final = BeforeValidator(conceal)


def origin(url: str) -> str:
    """`scheme://host[:port]`: what can be shown of a URL whose path or query may be a secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def post(
    session: requests.Session,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    *,
    explain: Callable[[bytes], str] | None = None,
) -> Outcome:
    """One attempt: a POST that never follows a redirect, its reply classified. `explain`
    turns the first bytes of the reply body (at most MAX_REPLY_BYTES: a receiver may answer
    with a huge or endless body) into a note for the detail; without it the body is not
    read. The rest is dropped with the connection."""
    import requests

    try:
        response = session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True
        )
    except (requests.ConnectionError, requests.Timeout) as e:
        return network_outcome(e, timeout)
    except requests.RequestException as e:
        return Outcome("failed", f"request error ({type(e).__name__})")
    with response:
        note = "" if explain is None else explain(_first_bytes(response))
        return classify(response.status_code, response.headers, note)


def _first_bytes(response: requests.Response) -> bytes:
    import requests

    head = bytearray()
    try:
        for chunk in response.iter_content(8192):
            head += chunk
            if len(head) >= MAX_REPLY_BYTES:
                break
    except requests.RequestException:
        pass  # the status already says how the delivery went; the text only explains it
    return bytes(head[:MAX_REPLY_BYTES])


def classify(code: int, headers: Mapping[str, str], note: str = "") -> Outcome:
    """2xx delivered; 408, 429 and 5xx retried (honouring Retry-After); the rest failed."""
    detail = f"HTTP {code} {note}".rstrip()
    if 200 <= code < 300:
        return Outcome("delivered", detail)
    if code in (408, 429) or code >= 500:
        return Outcome("retry", detail, parse_retry_after(headers.get("Retry-After")))
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
    (TimeoutError, "retry", "timeout after {} s"),
)


def network_outcome(error: BaseException, timeout: float) -> Outcome:
    """Named from the exception types alone: library messages carry URLs."""
    chain = list(_causes(error))
    for kinds, status, detail in _NETWORK:
        if any(isinstance(e, kinds) for e in chain):
            return Outcome(status, detail.format(timeout))
    requests = sys.modules.get("requests")  # its timeouts are no TimeoutError
    if requests is not None and any(isinstance(e, requests.Timeout) for e in chain):
        return Outcome("retry", f"timeout after {timeout} s")
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


def printable(text: str) -> str:
    return CONTROL.sub(" ", text)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
