"""The store API both backends implement and every caller uses: what one commit writes
(`Changes` and its parts), the errors, and the `Store` and `Connection` protocols. Neither
backend is imported here, and neither backend imports the other."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class StoreError(Exception):
    """A database that cannot be used as it is; the message says what to do."""


class UnstorableValue(StoreError):
    """A commit held a value no column of this store can hold (an integer outside signed
    64 bits; in PostgreSQL also a text with NUL): nothing of it was written."""


class OwnershipLost(StoreError):
    """A stream position moved under us: another process owns the stream, so this one stops
    before it writes anything (its whole transaction is rolled back)."""

    def __init__(
        self, stream: str, expected: int | None, found: int | None, owner: str | None
    ) -> None:
        self.stream, self.expected, self.found, self.owner = stream, expected, found, owner
        was = "no position" if expected is None else f"position {expected}"
        now = "none" if found is None else str(found)
        by = f", written by {owner}" if owner else ""
        super().__init__(
            f"another process owns stream {stream!r} (expected {was}, found {now}{by}); "
            "this one stops to avoid corrupting the projection"
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far one file has been committed, and how to recognise it again: the file is its
    (device, inode); `fingerprint` hashes its first bytes (inode reuse shows as a mismatch)
    and `tail_hash` the bytes before `offset` (a rewrite shows as a mismatch)."""

    device: int
    inode: int
    source: str
    fingerprint: str
    offset: int
    line: int
    tail_hash: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected line: where it was, why, and its bytes (the first 64 KiB)."""

    source: str
    offset: int
    line: int
    reason: str
    detail: str
    raw: bytes
    raw_size: int


@dataclass(slots=True)
class Changes:
    """Everything one transaction writes."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    workstreams: list[dict[str, Any]] = field(default_factory=list)
    pattern_runs: list[dict[str, Any]] = field(default_factory=list)
    states: list[tuple[str, bytes]] = field(default_factory=list)
    task_states: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(group key, task id, state) of the run tasks that changed: a run's state is saved in
    parts, its header in `states` and each task apart, so a commit writes what changed."""
    index: list[tuple[str, bytes]] = field(default_factory=list)
    stalled: list[tuple[int, str]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    forget: list[tuple[int, int]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    derived: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    alert_states: list[tuple[str, str, bytes]] = field(default_factory=list)
    alert_states_deleted: list[tuple[str, str]] = field(default_factory=list)
    """(rule, group) of alert states to delete, after `alert_states` are written."""
    hastened: list[tuple[str, float]] = field(default_factory=list)
    """(run_id, Unix time): the run's waiting jobs fall due then (its explicit end came)."""
    evaluated: list[int] = field(default_factory=list)
    positions: list[tuple[str, int | None, int]] = field(default_factory=list)
    """(stream, expected position or None when never seen, new position): compare-and-set."""

    def __bool__(self) -> bool:
        return any(
            (
                self.runs,
                self.tasks,
                self.workstreams,
                self.pattern_runs,
                self.states,
                self.task_states,
                self.index,
                self.stalled,
                self.dead_letters,
                self.checkpoints,
                self.forget,
                self.counters,
                self.derived,
                self.outbox,
                self.alert_states,
                self.alert_states_deleted,
                self.hastened,
                self.evaluated,
                self.positions,
            )
        )


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One external effect to carry out: an alert to one channel, or a job (report, archive).
    `id` is stable, so recording it twice is harmless and receivers can drop repeats."""

    id: str
    kind: str
    target: str
    state: str
    payload: dict[str, Any]
    run_id: str | None = None
    alert_id: str | None = None
    rule: str | None = None
    event_time: str | None = None
    not_before: float = 0.0
    """Unix time before which it is not carried out (a completion that settles)."""


class Cursor(Protocol):
    """The part of a DB-API cursor callers use."""

    @property
    def description(self) -> Any: ...
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection that takes `?` placeholders and explicit BEGIN … COMMIT (autocommit)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...
    def close(self) -> None: ...


HeldTrigger = tuple[int, int, str, str, str, str, bytes]
"""A trigger held back: its place in decision order (time, tier, id), then what makes it
the same as another (rule, role, event id), then the trigger serialised."""


class Holding(Protocol):
    """Where a replay keeps its triggers and derived events until the input is folded."""

    def __len__(self) -> int:
        """Triggers held."""
        ...

    def hold(
        self, triggers: Sequence[HeldTrigger], derived: Iterable[tuple[int, bytes]]
    ) -> None: ...

    def triggers(self, batch: int) -> Iterator[list[bytes]]:
        """Every trigger in decision order (time, tier, id, then as held), the first copy
        of each (rule, role, event id) only, `batch` at a time."""
        ...

    def derived(self, batch: int) -> Iterator[list[bytes]]:
        """Every derived event (held with its event time) in time order, then as held,
        `batch` at a time."""
        ...

    def close(self) -> None: ...


class TaskSpill(Protocol):
    """Where a fold's retired tasks wait, by the part number of the run state that retired
    them (see `stream.core.retire`); private to one process."""

    def put(self, part: int, rows: Iterable[tuple[str, int, bytes]]) -> None: ...
    def take(self, part: int, task_id: str) -> tuple[bytes, int] | None: ...
    def latest_end(self, part: int) -> int | None: ...
    def task_ids(self, part: int) -> Iterator[str]: ...
    def drop(self, parts: Iterable[int]) -> None: ...


class Store(Protocol):
    """A projection store: everything one `commit` is given lands in one transaction."""

    @property
    def path(self) -> Path | str:
        """Where the projection lives, printable (a PostgreSQL URL without its password)."""

    @property
    def db(self) -> Connection: ...
    def transaction(self) -> AbstractContextManager[Any]: ...
    def source_id(self, path: str) -> int: ...
    def commit(self, changes: Changes, seen_at: str) -> None: ...
    def write(self, changes: Changes, seen_at: str) -> None: ...
    def position(self, stream: str) -> int | None: ...
    def load_group(self, group_key: str) -> tuple[dict[str, Any] | None, set[str]]: ...
    def open_runs(self) -> Iterator[tuple[str, str, int]]: ...
    def checkpoints(self) -> dict[tuple[int, int], Checkpoint]: ...
    def alert_states(self) -> Iterator[tuple[str, str, dict[str, Any]]]: ...
    def unevaluated(self) -> list[tuple[int, dict[str, Any]]]: ...
    def counters(self) -> dict[str, int]: ...
    def set_meta(self, items: Iterable[tuple[str, str]]) -> None: ...
    def meta(self) -> dict[str, str]: ...
    def snapshot(self) -> dict[str, list[dict[str, Any]]]: ...
    def finalize(self) -> None: ...
    def close(self) -> None: ...
