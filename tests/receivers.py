"""Real loopback receivers for alert channels: an HTTP server and an SMTP server.

Both run in this process on 127.0.0.1, in background threads, record what arrives in
thread-safe lists and can be scripted to answer badly, so a test sees what a channel really
puts on the wire and how it reacts to real replies. Use them as context managers:

    with WebhookReceiver() as hook:
        hook.script((503,), (429, {"Retry-After": "2"}), ("hang", 1.0))
        ...  # point a channel at hook.url and send
        first, *_ = hook.wait_for(1, timeout=5)

    with SmtpReceiver() as smtp:
        smtp.script(451)  # the next message gets "451 4.3.0 ..."
        ...  # point an EmailConfig at smtp.host / smtp.port with security="none"
        [mail] = smtp.wait_for(1, timeout=5)
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Self, TypeVar, cast

import orjson
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

T = TypeVar("T")

# (status,), (status, headers), (status, headers, body) or ("hang", seconds): sleep, then 200.
Response = tuple[Any, ...]
_DEFAULT_REPLY: Response = (200, {}, b"")


class Served(ABC):
    """A server started on entering a `with` block and stopped on leaving it."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class Recorder(Generic[T]):
    """A list that receiver threads append to and tests wait on."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = threading.Condition()

    def add(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def items(self) -> list[T]:
        with self._changed:
            return list(self._items)

    def wait_for(self, count: int, timeout: float) -> list[T]:
        """Everything recorded once at least `count` items arrived; AssertionError on timeout."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._items) >= count, timeout):
                raise AssertionError(f"expected {count} within {timeout} s, got {len(self._items)}")
            return list(self._items)


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as it arrived; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any  # the parsed body, None when it is not JSON
    received_at: float  # time.monotonic()
    received_wall: float  # time.time()


class WebhookReceiver(Served):
    """An HTTP server on 127.0.0.1 that records every request and answers as scripted.

    `script(*responses)` queues replies, one per request: `(503,)`, `(429, {"Retry-After":
    "2"})`, `(400, {}, b"invalid_payload")`, `("hang", seconds)`, which sleeps before a 200
    so a client times out, or `("endless", status)`, a body that never ends (`streamed`
    records how many bytes went out before the client hung up). With the queue empty the
    reply is 200. `stop()` then `start()` simulates a receiver that goes down and comes back
    on the same port. Every connection is closed after one reply (HTTP/1.0), so a stopped
    receiver refuses the very next request.
    """

    def __init__(self, path: str = "/hook") -> None:
        self.port = 0
        self.path = path
        self.received: Recorder[ReceivedRequest] = Recorder()
        self.streamed: Recorder[int] = Recorder()
        self._replies: deque[Response] = deque()
        self._lock = threading.Lock()
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        return self.received.items()

    def script(self, *responses: Response) -> None:
        with self._lock:
            self._replies.extend(responses)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        return self.received.wait_for(count, timeout)

    def start(self) -> Self:
        """Listen (again) on `port`; the first start picks a free port."""
        server = _HttpServer(("127.0.0.1", self.port), _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; requests still sleeping in a "hang" finish on their own."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def _next_reply(self) -> Response:
        with self._lock:
            return self._replies.popleft() if self._replies else (200,)


class _HttpServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False  # a hanging handler must not hold up stop()
    receiver: WebhookReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        receiver = self.server.receiver
        receiver.received.add(
            ReceivedRequest(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                json=_json(body),
                received_at=time.monotonic(),
                received_wall=time.time(),
            )
        )
        reply = receiver._next_reply()
        if reply[0] == "endless":
            self._stream_forever(reply[1])
            return
        if reply[0] == "hang":
            time.sleep(reply[1])
            reply = (200,)
        status, headers, payload = (*reply, *_DEFAULT_REPLY[len(reply) :])
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client already gave up (a timeout test); there is no one to answer

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def _stream_forever(self, status: int) -> None:
        """A reply body with no length and no end, sent until the client hangs up; how many
        body bytes went out is recorded in `receiver.streamed`."""
        sent = 0
        chunk = b"x" * 65536
        try:
            self.send_response(status)
            self.end_headers()
            while True:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            self.server.receiver.streamed.add(sent)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on recorded requests, not on server logs."""


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted message: the SMTP envelope and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    data: bytes


class SmtpReceiver(Served):
    """An aiosmtpd server on 127.0.0.1 that records accepted mail.

    `script(451, 550, ...)` makes the next messages get that reply to DATA instead of 250 (a
    scripted message is not recorded). `credentials=(user, password)` requires AUTH (allowed
    without TLS here, on loopback only); `tls_context` offers STARTTLS with that context.
    """

    def __init__(self, credentials: tuple[str, str] | None = None, tls_context: Any = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.credentials = credentials
        self.received: Recorder[ReceivedMail] = Recorder()
        self._replies: deque[int | str] = deque()
        self._lock = threading.Lock()
        options: dict[str, Any] = {"tls_context": tls_context} if tls_context else {}
        if credentials:
            options |= {
                "authenticator": self._authenticate,
                "auth_required": True,
                "auth_require_tls": False,
            }
        self._controller = Controller(self, hostname=self.host, port=self.port, **options)

    def script(self, *replies: int | str) -> None:
        with self._lock:
            self._replies.extend(replies)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMail]:
        return self.received.wait_for(count, timeout)

    def start(self) -> Self:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            reply = self._replies.popleft() if self._replies else None
        if isinstance(reply, int):
            return f"{reply} {'4.3.0' if reply < 500 else '5.7.1'} scripted reply"
        if reply is not None:
            return reply
        data = cast(bytes, envelope.original_content)
        message = email.message_from_bytes(data, policy=email.policy.default)
        self.received.add(
            ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), message, data)
        )
        return "250 2.0.0 OK"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        valid = (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and (data.login.decode(), data.password.decode()) == self.credentials
        )
        return AuthResult(success=valid, handled=False)  # unhandled: aiosmtpd replies 535


def free_port() -> int:
    """A port nothing listens on right now (so connecting to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
