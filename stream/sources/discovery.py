"""Finding input files and recognising them again: paths, globs, identity fingerprints."""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import time
from pathlib import Path
from typing import Final

from runwatch.sinks.store.api import Checkpoint
from runwatch.stream.errors import InputError

FINGERPRINT_BYTES: Final = 1024
TAIL_HASH_BYTES: Final = 256
TIMESTAMP_TICK_NS: Final = 2_000_000_000
"""How coarse a folder's mtime may be (a kernel tick; a second, or two on FAT): a folder
changed less than this before it was listed is listed again at the next scan."""


def expand(patterns: list[str]) -> list[Path]:
    """The files patterns name (as `Scanner` finds them), sorted and without repeats, so a
    replay reads them in a stable order; a pattern that names nothing is an error."""
    found: set[str] = set()
    for pattern in patterns:
        if not (glob.has_magic(pattern) or os.path.exists(pattern)):
            raise InputError(f"{pattern}: no such file or directory")
        found.update(Scanner([pattern]).files())
    return [Path(name) for name in sorted(found)]


def digest(data: bytes) -> str:
    """How checkpoints fingerprint bytes: their length and BLAKE2b-128."""
    return f"{len(data)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def checkpoint_for(path: Path, offset: int, line: int) -> Checkpoint:
    """Where reading of `path` stopped, with what identifies the file: its (device, inode),
    a digest of its first bytes and one of the bytes just before `offset`."""
    with path.open("rb") as handle:
        info = os.fstat(handle.fileno())
        head = handle.read(min(FINGERPRINT_BYTES, offset))
        start = max(0, offset - TAIL_HASH_BYTES)
        handle.seek(start)
        tail = handle.read(offset - start)
    return Checkpoint(info.st_dev, info.st_ino, str(path), digest(head), offset, line, digest(tail))


class Scanner:
    """Lists the files the patterns match now; a directory means every `*.jsonl` below it,
    and a pattern that matches nothing yet is not an error (unlike replay's `expand`).

    Re-scans are cheap on big trees: a directory whose modification time has not changed
    since a listing (taken over `TIMESTAMP_TICK_NS` after that time) has the same entries,
    so it costs one stat instead of a listing."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns
        self.listings: dict[str, tuple[int, list[str], list[str]]] = {}

    def files(self) -> list[str]:
        found: set[str] = set()
        for pattern in self.patterns:
            absolute = os.path.abspath(pattern)
            if os.path.isdir(absolute):
                found.update(self._tree(absolute, "*.jsonl"))
            elif glob.has_magic(pattern):
                base = static_prefix(absolute)
                if "**" in pattern:
                    # fnmatch's * crosses "/"; glob's "**/" may also match no folder at all
                    shallow = absolute.replace("**" + os.sep, "")
                    found.update(
                        p
                        for p in self._tree(base, "*")
                        if fnmatch.fnmatchcase(p, absolute) or fnmatch.fnmatchcase(p, shallow)
                    )
                else:
                    found.update(
                        os.path.abspath(p) for p in glob.glob(pattern) if os.path.isfile(p)
                    )
            elif os.path.isfile(absolute):
                found.add(absolute)
        return sorted(found)

    def _tree(self, root: str, name_pattern: str) -> list[str]:
        out: list[str] = []
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                modified = os.stat(folder).st_mtime_ns
            except OSError:
                self.listings.pop(folder, None)
                continue
            listing = self.listings.get(folder)
            if listing is None or listing[0] != modified:
                # listed within a timestamp tick of its last change: a change after the
                # listing may still leave the same mtime, so this listing is not kept
                trusted = modified < time.time_ns() - TIMESTAMP_TICK_NS
                listing = (modified if trusted else -1, *_list(folder))
                self.listings[folder] = listing
            out.extend(
                p for p in listing[2] if fnmatch.fnmatchcase(os.path.basename(p), name_pattern)
            )
            stack.extend(listing[1])
        return out


def _list(folder: str) -> tuple[list[str], list[str]]:
    """(subdirectories, files) of one directory; links are not followed."""
    subdirectories, files = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirectories.append(entry.path)
                elif entry.is_file():
                    files.append(entry.path)
    except OSError:
        pass
    return subdirectories, files


def static_prefix(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or os.sep


def watched_directories(patterns: list[str]) -> list[tuple[Path, bool]]:
    """(directory, recursive) pairs to watch so that every matching file is seen."""
    out: dict[Path, bool] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            out[path.absolute()] = True
            continue
        parts = path.parts
        static = []
        for part in parts:
            if glob.has_magic(part):
                break
            static.append(part)
        recursive = len(static) < len(parts) - 1 or "**" in pattern
        base = Path(*static) if static else Path(".")
        if len(static) == len(parts):
            base = base.parent
        out[base.absolute()] = out.get(base.absolute(), False) or recursive
    return sorted(out.items())
