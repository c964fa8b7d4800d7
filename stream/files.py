"""Finding input files and recognising them again: paths, globs, identity fingerprints."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Final

from runwatch.sinks.sqlite_store import Checkpoint

FINGERPRINT_BYTES: Final = 1024
TAIL_HASH_BYTES: Final = 256


class InputError(Exception):
    """A path argument that names nothing readable."""


def expand(patterns: list[str]) -> list[Path]:
    """Files named directly, `*.jsonl` under directories (recursively), and glob matches;
    sorted and without repeats, so a replay reads them in a stable order."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = [p for p in path.rglob("*.jsonl") if p.is_file()]
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(pattern):
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
        else:
            raise InputError(f"{pattern}: no such file or directory")
        for match in matches:
            found.setdefault(str(match.resolve()), match.resolve())
    return [found[key] for key in sorted(found)]


def fingerprint(path: Path) -> str:
    """A hash of the file's first bytes (up to 1 KiB), prefixed with how many were hashed."""
    with path.open("rb") as handle:
        head = handle.read(FINGERPRINT_BYTES)
    return f"{len(head)}:{hashlib.blake2b(head, digest_size=16).hexdigest()}"


def tail_hash(path: Path, offset: int) -> str:
    """A hash of the bytes just before `offset`: tells a grown file from a rewritten one."""
    start = max(0, offset - TAIL_HASH_BYTES)
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read(offset - start)
    return f"{len(data)}:{hashlib.blake2b(data, digest_size=16).hexdigest()}"


def checkpoint_for(path: Path, offset: int, line: int) -> Checkpoint:
    """Where reading of `path` stopped, with what identifies the file."""
    info = os.stat(path)
    return Checkpoint(info.st_dev, info.st_ino, str(path), fingerprint(path), offset, line,
                      tail_hash(path, offset))
