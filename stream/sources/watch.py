"""File-change notifications from watchdog, reduced to what a follower's loop needs: which
paths changed, and whether files came or went (a re-scan is due)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from runwatch.stream.sources.discovery import watched_directories


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
