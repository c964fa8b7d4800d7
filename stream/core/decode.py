"""One line of bytes → a normalised `Event` or a `Rejection` (contract §1). Never raises."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from typing import Any, Final, NamedTuple

import orjson

from runwatch.projections import ORCHESTRATOR, PATTERN, Event

RAW_KEEP: Final = 64 * 1024
"""Dead letters keep at most this many bytes of the offending line."""

REASONS: Final = {
    "invalid_utf8": "the line is not valid UTF-8",
    "nul_bytes": "the line contains NUL bytes (often a crash left the file padded), or a "
    "\\u0000 escape, which no text column of PostgreSQL can hold",
    "invalid_json": "the line is not valid JSON",
    "not_object": "the line is JSON but not an object",
    "missing_type": "no event_type / kind / type / event field",
    "bad_type": "the event type is not a non-empty string",
    "missing_time": "no timestamp / ts / time field",
    "bad_time": "the time is not ISO-8601 or epoch seconds/milliseconds, or lies before "
    "2000-01-01 or more than max_future_skew ahead of the wall clock",
    "bad_payload": "payload / data / details is present but not an object, or a stored "
    "field of it holds an integer outside signed 64 bits",
    "bad_field": "an id field is neither a string nor an integer",
    "missing_run_id": "a run/task/workstream event without run_id",
    "missing_pattern_run_id": "a pattern event without pattern_run_id",
    "line_too_long": "the line is longer than max_line_bytes",
    "unstorable_value": "the line made a row value no store column can hold; the run is "
    "kept as it was before the line (the dead letter has no line number, only the offset)",
    "internal_error": "folding the line raised an unexpected error (a runwatch bug: please "
    "report it with the line)",
    "bad_headers": "a JetStream message's Runwatch-* headers are not what a shipper writes",
}

TYPE_FIELDS: Final = ("event_type", "kind", "type", "event")
TIME_FIELDS: Final = ("timestamp", "ts", "time")
PAYLOAD_FIELDS: Final = ("payload", "data", "details")
TASK_FIELDS: Final = ("task_id", "step_attempt_id", "step_id")
WORKSTREAM_FIELDS: Final = ("workstream_id", "job_id")
RUN_SCOPED_PREFIXES: Final = ("run_", "task_", "step_", "workstream_", "job_")
SEVERITIES: Final = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
    "err": "error",
    "critical": "critical",
    "fatal": "critical",
}

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
EARLIEST_US: Final = (datetime(2000, 1, 1, tzinfo=UTC) - _EPOCH) // _ONE_US
"""Earlier event times are refused: an epoch 0 or a 1970 date is a producer bug."""
STORED_INTEGERS: Final = ("total_tasks", "total_steps")
"""Payload integers that reach a store column (projections/runs.py, run_created)."""
_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)
_PREVIEW: Final = 60
_MIN_US: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _ONE_US
_MAX_US: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _ONE_US
NO_LATEST: Final = _MAX_US
"""`latest_us` when no upper bound but the calendar's applies."""
_EMPTY: Final[dict[str, Any]] = {}
fromisoformat = datetime.fromisoformat
_TYPES: dict[str, str] = {}  # raw type string -> normalised; event types are a small set
_TYPES_MAX: Final = 10_000
_ID_HASH: Final = blake2b(digest_size=16)
"""Never updated: copying it costs less than making a BLAKE2b-128 from its keyword."""


class Rejection(NamedTuple):
    """Why a line was refused: a reason code from REASONS and a message naming the field."""

    reason: str
    detail: str


class BadField(Exception):
    """Internal: a field failed a rule; becomes a Rejection."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode(line: bytes, latest_us: int = NO_LATEST) -> Event | Rejection:
    """Normalise one line (no line ending). Bad input becomes a Rejection, never an exception;
    event times after `latest_us` (UTC µs) are refused as bad_time."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return _undecodable(line, exc)
    if type(obj) is not dict:
        return Rejection("not_object", f"expected a JSON object, got {type(obj).__name__}")
    # Most lines hold no backslash: one memchr spares the slower search for the escape.
    escaped = line.find(b"\\")
    if escaped >= 0 and (escaped := _escaped_nul(line, line.find(b"\\u0000", escaped))) >= 0:
        # a NUL in a value: no text column of PostgreSQL can hold it
        return Rejection("nul_bytes", f"escaped NUL (\\u0000) at column {escaped + 1}")
    try:
        return _normalise(obj, line, latest_us)
    except BadField as bad:
        return Rejection(bad.reason, bad.detail)


def _escaped_nul(line: bytes, at: int) -> int:
    """Where the first real `\\u0000` escape is, from `at` on, or -1. An escape is real when
    an odd run of backslashes leads to the `u`: `\\\\u0000` is a backslash and text."""
    while at >= 0:
        start = at
        while start > 0 and line[start - 1] == 92:  # backslash
            start -= 1
        if (at - start) % 2 == 0:
            return at
        at = line.find(b"\\u0000", at + 1)
    return -1


def _normalise(obj: dict[str, Any], line: bytes, latest_us: int) -> Event:
    # Written for speed (the per-event budget is a few µs): the common field names are
    # looked up directly and the alias chains are only walked when those are absent.
    get = obj.get
    etype = get("event_type")
    if etype is None:
        field, etype = _first(obj, TYPE_FIELDS)
    else:
        field = "event_type"
    normal = _TYPES.get(etype) if type(etype) is str else None
    if normal is None:
        normal = _event_type(field, etype)

    when = get("timestamp")
    if when is None:
        when = get("ts")
    time: int | None = None
    if type(when) is str:  # the common case, inlined: ISO-8601 with an offset, in range
        try:
            moment = fromisoformat(when)
            if moment.tzinfo is not None:
                time = (moment - _EPOCH) // _ONE_US
                if not EARLIEST_US <= time <= latest_us:
                    time = None
        except (ValueError, OverflowError):
            pass
    if time is None:
        field, when = _first(obj, TIME_FIELDS)
        time = parse_time(when, field) if when is not None else _missing_time()
        _check_time_window(time, field, when, latest_us)

    payload = get("payload")
    field = "payload"
    if type(payload) is not dict:
        field, payload = _first(obj, PAYLOAD_FIELDS)
        if payload is None:
            payload = _EMPTY
        elif type(payload) is not dict:
            raise BadField(
                "bad_payload", f"{field} must be an object, got {type(payload).__name__}"
            )
    if normal == "run_created":
        _check_stored_integers(payload, field)

    run_id = get("run_id")
    if type(run_id) is not str or not run_id:
        run_id = _id(obj, "run_id")
        if run_id is None and payload:
            run_id = _id(payload, "run_id", "payload.")

    event_id = get("event_id")
    if type(event_id) is not str or not event_id:
        digest = _ID_HASH.copy()
        digest.update(line)
        event_id = "h:" + digest.hexdigest()

    given = get("severity")
    severity = "info"
    if type(given) is str:
        severity = SEVERITIES.get(given) or SEVERITIES.get(given.lower(), "info")

    if normal.startswith("pattern."):
        pattern_run_id = _id(obj, "pattern_run_id")
        if pattern_run_id is None and payload:
            pattern_run_id = _id(payload, "pattern_run_id", "details.")
        if pattern_run_id is None:
            raise BadField("missing_pattern_run_id", f"{normal} has no pattern_run_id")
        return Event(
            PATTERN, event_id, normal, time, severity, payload, run_id, pattern_run_id, None, obj
        )

    if run_id is None and normal.startswith(RUN_SCOPED_PREFIXES):
        raise BadField("missing_run_id", f"{normal} has no run_id")
    task = get("task_id")
    if type(task) is not str or not task:
        task = _scoped_id(obj, payload, TASK_FIELDS)
    workstream = get("workstream_id")
    if type(workstream) is not str or not workstream:
        workstream = _scoped_id(obj, payload, WORKSTREAM_FIELDS)
    return Event(
        ORCHESTRATOR, event_id, normal, time, severity, payload, run_id, task, workstream, obj
    )


def _event_type(field: str, value: Any) -> str:
    if value is None:
        raise BadField("missing_type", "no field event_type, kind, type or event")
    if type(value) is not str or not value.strip():
        raise BadField("bad_type", f"{field} must be a non-empty string, got {preview(value)}")
    normal = value.strip().lower()
    if len(_TYPES) < _TYPES_MAX:
        _TYPES[value] = normal
    return normal


def _check_time_window(micros: int, field: str, value: Any, latest_us: int) -> None:
    if micros < EARLIEST_US:
        raise BadField("bad_time", f"{field} is before 2000-01-01: {preview(value)}")
    if micros > latest_us:
        raise BadField(
            "bad_time",
            f"{field} is more than max_future_skew ahead of the wall clock: {preview(value)}",
        )


def _check_stored_integers(payload: dict[str, Any], field: str) -> None:
    for name in STORED_INTEGERS:
        value = payload.get(name)
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            raise BadField(
                "bad_payload", f"{field}.{name} is outside signed 64 bits: {preview(value)}"
            )


def preview(value: Any) -> str:
    """A short, safe rendering of an untrusted value for a message: never a full repr, which
    may be megabytes long, or overflow the stack on a deeply nested value."""
    kind = type(value)
    if kind is str:
        text: str = value
        shown = repr(text[:_PREVIEW])
        return shown if len(text) <= _PREVIEW else f"{shown[:-1]}…{shown[-1]} ({len(text)} chars)"
    if kind is int:
        number: int = value
        return (
            str(number)
            if number.bit_length() <= 128
            else f"an integer of {number.bit_length()} bits"
        )
    if kind is float or kind is bool or value is None:
        return repr(value)
    if kind is list or kind is dict:
        return f"a {'list' if kind is list else 'object'} of {len(value)} item(s)"
    return f"a {kind.__name__}"


def _missing_time() -> int:
    raise BadField("missing_time", "no field timestamp, ts or time")


def parse_time(value: Any, field: str = "timestamp") -> int:
    """ISO-8601 (Z, offset or naive = UTC) or epoch seconds (> 1e11: milliseconds) → UTC µs."""
    if type(value) is str:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise BadField("bad_time", f"{field} is not ISO-8601: {preview(value)}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        micros: int = (moment - _EPOCH) // _ONE_US
        if not _MIN_US <= micros <= _MAX_US:  # an offset can push year 1 or 9999 out of range
            raise BadField("bad_time", f"{field} is out of range in UTC: {preview(value)}")
        return micros
    if type(value) is int or type(value) is float:
        seconds = value / 1000 if value > 1e11 else value
        if not math.isfinite(seconds) or seconds < 0:
            raise BadField("bad_time", f"{field} is not a valid epoch time: {preview(value)}")
        if seconds > _MAX_US / 1_000_000:  # before multiplying: a huge float overflows
            raise BadField("bad_time", f"{field} is out of range: {preview(value)}")
        micros = round(seconds * 1_000_000)
        if micros > _MAX_US:
            raise BadField("bad_time", f"{field} is out of range: {preview(value)}")
        return micros
    raise BadField("bad_time", f"{field} must be a string or a number, got {type(value).__name__}")


def _first(obj: dict[str, Any], fields: tuple[str, ...]) -> tuple[str, Any]:
    for name in fields:
        value = obj.get(name)
        if value is not None:
            return name, value
    return fields[0], None


def _id(obj: dict[str, Any], name: str, prefix: str = "") -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise BadField("bad_field", f"{prefix}{name} must be a string, got {type(value).__name__}")


def _scoped_id(obj: dict[str, Any], payload: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """The first of `fields` present at the top level, else in the payload."""
    for where, prefix in ((obj, ""), (payload, "payload.")):
        for name in fields:
            value = where.get(name)
            if value is not None and value != "":
                return value if type(value) is str else _id(where, name, prefix)
    return None


def _undecodable(line: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    nul = line.find(b"\x00")
    if nul >= 0:
        return Rejection("nul_bytes", f"NUL byte at column {nul + 1}")
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return Rejection("invalid_utf8", f"invalid UTF-8 at byte {bad.start + 1}")
    return Rejection("invalid_json", str(exc))


def internal_error(exc: Exception) -> Rejection:
    """The rejection of a line whose fold raised: a runwatch bug, kept with its bytes."""
    return Rejection("internal_error", f"{type(exc).__name__}: {preview(str(exc))}")
