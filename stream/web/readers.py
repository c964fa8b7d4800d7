"""Read-only connections for the web app's worker threads: each read borrows one, so
requests never share a connection and never open one per request."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from runwatch.sinks.store import Connection, is_postgres
from runwatch.sinks.store.web_reads import open_reader

T = TypeVar("T")


class Readers:
    """A pool of reader connections to one projection (SQLite file or PostgreSQL URL)."""

    def __init__(self, target: str | Path, *, size: int = 8) -> None:
        self.target = target
        self.idle: queue.LifoQueue[Connection] = queue.LifoQueue(size)
        self.file = None if is_postgres(target) else Path(target)
        self.identity = self._identity()

    def _identity(self) -> tuple[int, int] | None:
        """The SQLite file's (device, inode): a replay swaps in a new file under the name."""
        if self.file is None:
            return None
        try:
            found = self.file.stat()
        except OSError:
            return None
        return found.st_dev, found.st_ino

    def read(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`query(connection, *args)` on a borrowed connection; a connection that failed is
        closed instead of returned, so the next read opens a fresh one."""
        identity = self._identity()
        if identity != self.identity:  # connections to the old file would read it forever
            self.close()
            self.identity = identity
        try:
            connection = self.idle.get_nowait()
        except queue.Empty:
            connection = open_reader(self.target)
        try:
            result = query(connection, *args, **kwargs)
        except BaseException:
            connection.close()
            raise
        try:
            self.idle.put_nowait(connection)
        except queue.Full:
            connection.close()
        return result

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()
