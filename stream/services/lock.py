"""One writer per SQLite database: the lock file beside it that every service takes."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from runwatch.stream.errors import ServiceError


class DatabaseLock:
    """An exclusive lock beside the database, so that two services never write one file."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ServiceError(
                f"{self.path.with_suffix('')}: already in use by another runwatch process "
                f"(pid {holder}); stop it first, or give this one another --db"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
