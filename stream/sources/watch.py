"""File-change notifications from watchdog, reduced to what a follower's loop needs: which
paths changed, and whether files came or went (a re-scan is due); and from them, which
files each pass of the loop reads."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from runwatch.stream.sources.discovery import watched_directories
from runwatch.stream.sources.follow import Follower, Read


class FileChanges(FileSystemEventHandler):
    """Runs on the observer thread: note the changed paths and `poke` the loop, nothing more."""

    def __init__(self, poke: Callable[[], None]) -> None:
        self.poke = poke
        self.lock = threading.Lock()
        self.paths: set[str] = set()
        self.rescan = False

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type != "created":
            return
        with self.lock:
            self.paths.add(os.fsdecode(event.src_path))
            if event.event_type in ("created", "moved", "deleted"):
                self.rescan = True
                if getattr(event, "dest_path", None):
                    self.paths.add(os.fsdecode(event.dest_path))
        self.poke()

    def take(self) -> tuple[set[str], bool]:
        with self.lock:
            paths, rescan = self.paths, self.rescan
            self.paths, self.rescan = set(), False
        return paths, rescan


def watch_files(patterns: list[str], handler: FileChanges, *, poll: bool) -> Any:
    """An unstarted watchdog observer over the folders the patterns can match."""
    observer: Any = PollingObserver(timeout=1.0) if poll else Observer()
    for directory, recursive in watched_directories(patterns):
        if directory.is_dir():
            observer.schedule(handler, str(directory), recursive=recursive)
    return observer


class Passes:
    """Which files each pass of a follower's loop reads: those the notifications named, or
    all of them when a re-scan is due (every `rescan_s`, or files came or went) or the pass
    before left bytes unread."""

    def __init__(self, follower: Follower, changes: FileChanges, rescan_s: float) -> None:
        self.follower = follower
        self.changes = changes
        self.rescan_s = rescan_s
        self.due_rescan = 0.0
        """When the next re-scan is due (`time.monotonic`): a loop waits no longer."""

    def discover(self) -> None:
        self.follower.discover()
        self.due_rescan = time.monotonic() + self.rescan_s

    def read(self, budget: int, *, everything: bool) -> list[Read]:
        """At most about `budget` bytes; rotated files read to their end are retired."""
        paths, rescan = self.changes.take()
        if rescan or time.monotonic() >= self.due_rescan:
            self.discover()
            everything = True
        reads = self.follower.read(budget, None if everything else paths)
        self.follower.retire(reads)
        return reads
