"""Run archives: one verified zip per run, written once and never rewritten.

Delivery contract. `build_archive` writes `<directory>/<safe_filename(run_id)>.zip` holding
`events.jsonl`, `reports/<name>`, `artifacts/<relative path>` (the run's artifact folder) and
`manifest.json` (SHA-256, size and kind of every other member, plus every skipped entry and why).

- Atomic: the zip is written to `.<stem>.<token>.tmp` beside it, fsynced, re-read and re-hashed
  against its manifest, renamed, and the directory fsynced. A crash, even kill -9, leaves at most
  a temp file, which the run's next attempt removes; a final name only ever holds a verified zip.
- Idempotent: if the run's newest archive verifies it is returned untouched (`created=False`).
  A corrupt one is kept, reported in `corrupt`, and the next version `<stem>+v2.zip` (`+v3`, ...)
  is written beside it; `new_version=True` always writes the next version. `+` never occurs in
  a stem, so one run's version cannot be mistaken for another run's archive; `run_archives`
  lists a run's archives by version.
- Pre-flight: nothing is written unless the disk has free_space_factor x the member bytes plus
  reserve_bytes free.
- Nothing outside the run is read: symlinks are never followed (one whose target lies in the run
  folder is stored as a link), and a folder the run id leads out of the template's base folder
  counts as missing. Unreadable, vanished, special and unencodable entries are skipped, and
  so are names that would leave the folder where `\\` separates too (`..\\x` on Windows); a
  backslash is otherwise an ordinary name character and kept.
- Verifying reads each member once and looks it up in the manifest: linear in the members.
- Private: an archive holds whatever the run's folder held (keys, configs, data), so it is
  created 0o600 (ARCHIVE_MODE), whatever the modes of the files in it; its events, reports and
  manifest members are 0o600 too, and artifact members keep their own file's mode.
- Builds and retention passes in one directory take turns (a flock that dies with its holder).
Failures raise `ArchiveError(reason, detail)`: insufficient_space, verify_failed, io_error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import re
import secrets
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import BinaryIO, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runwatch.sinks.naming import safe_filename

MANIFEST: Final = "manifest.json"
EVENTS: Final = "events.jsonl"
_CHUNK: Final = 1 << 20
ARCHIVE_MODE: Final = 0o600
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_MODE: Final = stat.S_IFREG | 0o600
_LINK_MODE: Final = stat.S_IFLNK | 0o777
_DIRECTORY: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SEPARATORS: Final = re.compile(r"[/\\]")
_READ: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a fifo never blocks
# What zipfile raises, depending on which byte is damaged, when it reads a corrupt archive.
_CORRUPT: Final = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    struct.error,
    OSError,
)


class ArchiveConfig(BaseModel):
    """Where archives go, where a run's artifacts are, and how long archives are kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    directory: Path = Path(".archive")
    artifacts: str = ".worktrees/{run_id}"
    free_space_factor: float = Field(1.5, ge=1.0)
    reserve_bytes: int = Field(0, ge=0)
    keep_last: int | None = Field(None, ge=1)
    max_age_days: float | None = Field(None, gt=0)
    max_total_bytes: int | None = Field(None, ge=0)

    @field_validator("artifacts")
    @classmethod
    def _names_the_run(cls, template: str) -> str:
        """Each run has its own artifact folder, so the template must contain {run_id}."""
        if "{run_id}" not in template:
            raise ValueError("must contain {run_id}")
        return template


class ArchiveError(Exception):
    """No archive was made; `reason` is a stable snake_case code, `detail` names the path."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class ArchiveResult:
    """The run's archive as it is on disk; `version` 1 is `<stem>.zip`, N is `<stem>+vN.zip`."""

    path: Path
    sha256: str
    size_bytes: int
    members: int
    created: bool
    version: int
    skipped: tuple[tuple[str, str], ...] = ()
    corrupt: tuple[tuple[Path, str], ...] = ()


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    size: int
    sha256: str
    kind: Literal["file", "symlink"]


class _Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    format: Literal["runwatch-archive"] = "runwatch-archive"
    format_version: Literal[1] = 1
    run_id: str
    created_at: datetime
    version: int
    artifacts: Literal["present", "missing"]
    members: list[_Entry]
    skipped: dict[str, str]


@dataclass(frozen=True)
class _Blob:
    """A member held in memory: the events, a report, a symlink's target, the manifest."""

    name: str
    data: bytes
    mode: int = _FILE_MODE

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class _File:
    """A regular file listed at `run/relative`, read later without following any symlink."""

    name: str
    run: Path
    relative: str
    size: int
    mode: int


def build_archive(
    run_id: str,
    *,
    config: ArchiveConfig,
    events: bytes,
    reports: dict[str, bytes],
    new_version: bool = False,
    now: datetime,
) -> ArchiveResult:
    """The run's archive: its newest one if that verifies, else a new verified version."""
    directory, stem = config.directory, safe_filename(run_id)
    try:
        with _locked(directory) as lock:
            _remove_stale_temps(directory, stem)
            latest, newest, problems = _newest(directory, run_id)
            if newest and not new_version and not problems:
                return _result(newest, latest, created=False)
            members, skipped, artifacts = _plan(run_id, config.artifacts, events, reports)
            _preflight(config, sum(member.size for member in members))
            head = _Manifest(
                run_id=run_id,
                created_at=now,
                version=latest + 1,
                artifacts=artifacts,
                members=[],
                skipped={},
            )
            path = _write(directory, stem, members, skipped, head)
            os.fsync(lock)
            corrupt = ((newest, "; ".join(problems)),) if newest and problems else ()
            return _result(path, latest + 1, created=True, corrupt=corrupt)
    except OSError as error:
        raise ArchiveError("io_error", f"{directory}: {error}") from error


def verify_archive(path: Path) -> list[str]:
    """Every reason not to trust `path`; none means each member matches the manifest."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _check(archive, _Manifest.model_validate_json(archive.read(MANIFEST)))
    except KeyError:
        return [f"{path}: {MANIFEST} missing"]
    except ValidationError as error:
        return [f"{path}: {MANIFEST} invalid ({error.error_count()} errors)"]
    except _CORRUPT as error:
        return [f"{path}: unreadable zip ({type(error).__name__}: {error})"]


def archived_events(path: Path) -> list[bytes]:
    """The event lines an archive holds (a verified one: `build_archive` returned it)."""
    with zipfile.ZipFile(path) as archive:
        return archive.read(EVENTS).splitlines()


def run_archives(directory: Path, run_id: str) -> dict[int, Path]:
    """The run's archives by version; `+` never occurs in a stem, so no other run's match."""
    if not directory.is_dir():
        return {}
    pattern = re.compile(re.escape(safe_filename(run_id)) + r"(?:\+v([2-9]|[1-9][0-9]+))?\.zip")
    found = {
        int(match[1] or 1): directory / name
        for name in os.listdir(directory)
        if (match := pattern.fullmatch(name))
    }
    return dict(sorted(found.items()))


def apply_retention(config: ArchiveConfig, now: datetime) -> list[Path]:
    """Deletes the oldest `*.zip` in the directory until every limit holds; returns them."""
    if not config.directory.is_dir():
        return []
    deleted: list[Path] = []
    with _locked(config.directory):
        for path in _expired(_archives(config.directory), config, now):
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                done = ", ".join(map(str, deleted)) or "nothing"
                raise ArchiveError("io_error", f"{path}: {error}; deleted {done}") from error
            deleted.append(path)
    return deleted


# --- what goes in -------------------------------------------------------------------------


def _plan(
    run_id: str, template: str, events: bytes, reports: dict[str, bytes]
) -> tuple[list[_Blob | _File], dict[str, str], Literal["present", "missing"]]:
    """The members to write, in order, and each entry that will not be archived, with why."""
    members: list[_Blob | _File] = [_Blob(EVENTS, events)]
    skipped: dict[str, str] = {}
    for name, data in sorted(reports.items()):
        if _safe_member_name(name):
            members.append(_Blob(f"reports/{name}", data))
        else:
            skipped[f"reports/{_printable(name)}"] = "unsafe_name"
    folder, missing = _artifact_folder(template, run_id)
    if folder is None:
        skipped["artifacts/"] = missing
        return members, skipped, "missing"
    return [*members, *_walk(folder, "", skipped)], skipped, "present"


def _artifact_folder(template: str, run_id: str) -> tuple[Path | None, str]:
    """The run's artifact folder, or why there is none; never a folder outside the base."""
    base = os.path.abspath(os.path.dirname(template.partition("{run_id}")[0]) or ".")
    folder = os.path.abspath(template.replace("{run_id}", run_id))
    relative = os.path.relpath(folder, base)
    if "\0" in run_id or relative == "." or relative.split(os.sep)[0] == "..":
        return None, "outside_base"
    real = os.path.realpath(folder)
    if real != os.path.join(os.path.realpath(base), relative):
        return None, "outside_base"  # a symlink on the way leads elsewhere
    if not os.path.lexists(real):
        return None, "not_found"
    return (Path(real), "") if os.path.isdir(real) else (None, "not_a_directory")


def _walk(run: Path, prefix: str, skipped: dict[str, str]) -> Iterator[_Blob | _File]:
    """Members for everything under `run/prefix`, in name order, never through a symlink."""
    try:
        fd = _open_beneath(run, prefix.rstrip("/") or ".", _DIRECTORY)
        try:
            with os.scandir(fd) as scan:
                names = sorted(entry.name for entry in scan)
        finally:
            os.close(fd)
    except OSError as error:
        skipped[f"artifacts/{prefix}"] = _reason(error)
        return
    for name in names:
        yield from _visit(run, prefix + name, skipped)


def _visit(run: Path, relative: str, skipped: dict[str, str]) -> Iterator[_Blob | _File]:
    """The member for one entry, judged by lstat so that a fifo is never opened."""
    name = f"artifacts/{relative}"
    try:
        info = os.lstat(run / relative)
    except OSError as error:
        skipped[_printable(name)] = _reason(error)
        return
    if _printable(name) != name:
        skipped[_printable(name)] = "name_not_utf8"
    elif not _safe_member_name(name):
        skipped[name] = "unsafe_name"  # `..\x` would leave the folder on Windows
    elif stat.S_ISDIR(info.st_mode):
        yield from _walk(run, relative + "/", skipped)
    elif stat.S_ISREG(info.st_mode):
        yield _File(name, run, relative, info.st_size, info.st_mode)
    elif stat.S_ISLNK(info.st_mode):
        yield from _link(run, relative, skipped)
    else:
        skipped[name] = "special_file"


def _link(run: Path, relative: str, skipped: dict[str, str]) -> Iterator[_Blob]:
    """A symlink as a link member, only if where it finally leads lies inside the run."""
    target = Path(os.path.realpath(run / relative))
    if not target.is_relative_to(run):
        skipped[f"artifacts/{relative}"] = "symlink_outside_run"
        return
    text = os.path.relpath(target, (run / relative).parent)
    yield _Blob(f"artifacts/{relative}", os.fsencode(text), _LINK_MODE)


def _safe_member_name(name: str) -> bool:
    """A relative path that extracts inside its folder on any system: no empty, `.` or `..`
    part, whether `/` alone separates parts (POSIX) or `\\` does too (Windows tools), no NUL.
    A backslash is a name character on POSIX, so `a\\b.txt` is kept as it is."""
    parts = set(_SEPARATORS.split(name))
    return _printable(name) == name and not {"", ".", ".."} & parts and "\0" not in name


def _printable(name: str) -> str:
    """`name` with undecodable bytes escaped, so that the manifest can still list it."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _reason(error: OSError) -> str:
    """The manifest's code for an entry that could not be read."""
    if isinstance(error, FileNotFoundError):
        return "vanished"
    return "permission_denied" if isinstance(error, PermissionError) else "unreadable"


# --- writing and checking -----------------------------------------------------------------


def _preflight(config: ArchiveConfig, member_bytes: int) -> None:
    """Refuses before anything is written unless the disk keeps its margin afterwards."""
    needed = math.ceil(config.free_space_factor * member_bytes) + config.reserve_bytes
    free = shutil.disk_usage(config.directory).free
    if free < needed:
        raise ArchiveError(
            "insufficient_space",
            f"{config.directory}: {free} bytes free, "
            f"{needed} needed for {member_bytes} bytes of members",
        )


def _write(
    directory: Path,
    stem: str,
    members: list[_Blob | _File],
    skipped: dict[str, str],
    head: _Manifest,
) -> Path:
    """The archive appears only complete, fsynced and verified; a failed attempt leaves none."""
    path = directory / (f"{stem}+v{head.version}.zip" if head.version > 1 else f"{stem}.zip")
    temp = directory / f".{stem}.{secrets.token_hex(8)}.tmp"
    try:
        with os.fdopen(os.open(temp, _CREATE, ARCHIVE_MODE), "wb") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
                entries = [
                    entry
                    for member in members
                    if (entry := _add(archive, member, skipped, head.created_at))
                ]
                manifest = head.model_copy(update={"members": entries, "skipped": skipped})
                _add(
                    archive,
                    _Blob(MANIFEST, manifest.model_dump_json(indent=2).encode()),
                    skipped,
                    head.created_at,
                )
            handle.flush()
            os.fsync(handle.fileno())
        if problems := verify_archive(temp):
            raise ArchiveError("verify_failed", "; ".join(problems))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _add(
    archive: zipfile.ZipFile, member: _Blob | _File, skipped: dict[str, str], now: datetime
) -> _Entry | None:
    """Stores one member and returns its manifest entry, or None if it could not be read."""
    if isinstance(member, _Blob):
        return _store(archive, member, [member.data], now)
    source = _open(member)
    if isinstance(source, str):
        skipped[member.name] = source
        return None
    with source:
        return _store(archive, member, iter(partial(source.read, _CHUNK), b""), now)


def _open(member: _File) -> BinaryIO | str:
    """The listed file, still a regular file inside the run, or why it cannot be read."""
    try:
        fd = _open_beneath(member.run, member.relative, _READ)
    except OSError as error:
        return _reason(error)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return "special_file"
    return os.fdopen(fd, "rb")


def _open_beneath(run: Path, relative: str, flags: int) -> int:
    """`run/relative` opened one step at a time, never through a symlink, even a new one."""
    *parents, last = relative.split("/")
    fd = os.open(run, _DIRECTORY)
    try:
        for part in parents:
            parent, fd = fd, os.open(part, _DIRECTORY, dir_fd=fd)
            os.close(parent)
        return os.open(last, flags, dir_fd=fd)
    finally:
        os.close(fd)


def _store(
    archive: zipfile.ZipFile, member: _Blob | _File, chunks: Iterable[bytes], now: datetime
) -> _Entry:
    """Writes the chunks as one member, hashing exactly the bytes that went in."""
    info = zipfile.ZipInfo(member.name, now.timetuple()[:6])
    info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, member.mode << 16
    digest, size = hashlib.sha256(), 0
    with archive.open(info, "w", force_zip64=True) as out:  # a file may grow while read
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    kind: Literal["file", "symlink"] = "symlink" if stat.S_ISLNK(member.mode) else "file"
    return _Entry(name=member.name, size=size, sha256=digest.hexdigest(), kind=kind)


def _check(archive: zipfile.ZipFile, manifest: _Manifest) -> list[str]:
    """Members missing, extra, duplicated, unsafely named, or differing from the manifest in
    size or hash: one pass over the members, each looked up in the manifest by name."""
    expected = {entry.name: entry for entry in manifest.members}
    seen: set[str] = set()
    duplicated: set[str] = set()
    problems = []
    for info in archive.infolist():
        name = info.filename
        if name in seen:
            if name not in duplicated:
                duplicated.add(name)
                problems.append(f"duplicate member {name}")
            continue
        seen.add(name)
        if not _safe_member_name(name):
            problems.append(f"unsafe member name: {name}")
        entry = expected.get(name)
        if entry is not None:
            problems += _check_member(archive, info, entry)
        elif name != MANIFEST:
            problems.append(f"extra member: {name}")
    problems += [f"member missing: {name}" for name in expected if name not in seen]
    return problems


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, entry: _Entry) -> list[str]:
    """Re-reads one member (zipfile checks its CRC at the end) and re-hashes it."""
    digest, size = hashlib.sha256(), 0
    if stat.S_ISLNK(info.external_attr >> 16) != (entry.kind == "symlink"):
        return [f"{entry.name}: not a {entry.kind} as the manifest says"]
    try:
        with archive.open(info) as member:
            for chunk in iter(partial(member.read, _CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
    except _CORRUPT as error:
        return [f"{entry.name}: unreadable ({type(error).__name__}: {error})"]
    if size != entry.size:
        return [f"{entry.name}: {size} bytes, manifest says {entry.size}"]
    return [] if digest.hexdigest() == entry.sha256 else [f"{entry.name}: sha256 mismatch"]


def _result(
    path: Path, version: int, *, created: bool, corrupt: tuple[tuple[Path, str], ...] = ()
) -> ArchiveResult:
    """What a verified archive on disk holds, read back from the archive itself."""
    with zipfile.ZipFile(path) as archive:
        manifest = _Manifest.model_validate_json(archive.read(MANIFEST))
    with path.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    return ArchiveResult(
        path=path,
        sha256=sha256,
        size_bytes=path.stat().st_size,
        members=len(manifest.members) + 1,
        created=created,
        version=version,
        skipped=tuple(manifest.skipped.items()),
        corrupt=corrupt,
    )


# --- the directory ------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[int]:
    """Holds the directory's exclusive lock (a killed holder releases it); yields its fd."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _newest(directory: Path, run_id: str) -> tuple[int, Path | None, list[str]]:
    """The run's highest version (0 if none), its path, and what is wrong with it."""
    versions = run_archives(directory, run_id)
    if not versions:
        return 0, None, []
    latest = max(versions)
    return latest, versions[latest], verify_archive(versions[latest])


def _remove_stale_temps(directory: Path, stem: str) -> None:
    """Temp files of this run left by a crashed attempt; the lock rules out a live writer."""
    pattern = re.compile(re.escape(f".{stem}.") + r"[0-9a-f]{16}\.tmp")
    for name in os.listdir(directory):
        if pattern.fullmatch(name):
            (directory / name).unlink(missing_ok=True)


def _archives(directory: Path) -> list[tuple[float, str, int, Path]]:
    """The `*.zip` regular files directly in `directory`, oldest (mtime, then name) first."""
    with os.scandir(directory) as scan:
        return sorted(
            (
                entry.stat(follow_symlinks=False).st_mtime,
                entry.name,
                entry.stat(follow_symlinks=False).st_size,
                Path(entry.path),
            )
            for entry in scan
            if entry.name.endswith(".zip") and entry.is_file(follow_symlinks=False)
        )


def _expired(
    archives: list[tuple[float, str, int, Path]], config: ArchiveConfig, now: datetime
) -> list[Path]:
    """Oldest first, each archive that breaks the age, count or total-size limit."""
    days = config.max_age_days
    cutoff = now.timestamp() - days * 86400 if days is not None else -math.inf
    keep = config.keep_last if config.keep_last is not None else len(archives)
    limit = config.max_total_bytes if config.max_total_bytes is not None else math.inf
    total, doomed = sum(size for _, _, size, _ in archives), []
    for index, (mtime, _, size, path) in enumerate(archives):
        if mtime < cutoff or len(archives) - index > keep or total > limit:
            doomed.append(path)
            total -= size
    return doomed
