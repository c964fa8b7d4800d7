"""The dashboard on uvicorn in a thread of its own, so the service's loop never waits for
a browser: bound before `start` returns (a port in use is an error at once, and port 0
gives a free one), stopped by `stop` in about a second, open event streams included."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from runwatch.stream.errors import ServiceError
from runwatch.stream.web.app import Dashboard, guarded


class WebServer:
    """Serves `dashboard` on host:port until `stop()`."""

    def __init__(self, host: str, port: int, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
            self.socket.listen(256)
        except OSError:
            self.socket.close()
            raise
        self.host = host
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            guarded(dashboard),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
            server_header=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, daemon=True, name="web")

    def _serve(self) -> None:
        self.server.run(sockets=[self.socket])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServiceError(f"the web server on {self.url} did not start")
            time.sleep(0.01)

    def nudge(self) -> None:
        """A commit happened: the live feed reads it now rather than at its next poll."""
        self.dashboard.feed.nudge()

    def stop(self) -> None:
        loop = self.dashboard.feed.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.dashboard.feed.close)
        self.server.should_exit = True
        self.thread.join(5)
        self.socket.close()
