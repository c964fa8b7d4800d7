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
    "bad_time": "the time is not ISO-8601 or epoch seconds/milliseconds",
    "bad_payload": "payload / data / details is present but not an object",
    "bad_field": "an id field is neither a string nor an integer",
    "missing_run_id": "a run/task/workstream event without run_id",
    "missing_pattern_run_id": "a pattern event without pattern_run_id",
    "line_too_long": "the line is longer than max_line_bytes",
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
_MIN_US: Final = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _ONE_US
_MAX_US: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _ONE_US
_EMPTY: Final[dict[str, Any]] = {}
fromisoformat = datetime.fromisoformat
_TYPES: dict[str, str] = {}  # raw type string -> normalised; event types are a small set
_TYPES_MAX: Final = 10_000


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


def decode(line: bytes) -> Event | Rejection:
    """Normalise one line (no line ending). Bad input becomes a Rejection, never an exception."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return _undecodable(line, exc)
    if type(obj) is not dict:
        return Rejection("not_object", f"expected a JSON object, got {type(obj).__name__}")
    escaped = line.find(b"\\u0000")
    if escaped >= 0:  # a NUL in a value: no text column of PostgreSQL can hold it
        return Rejection("nul_bytes", f"escaped NUL (\\u0000) at column {escaped + 1}")
    try:
        return _normalise(obj, line)
    except BadField as bad:
        return Rejection(bad.reason, bad.detail)


def _normalise(obj: dict[str, Any], line: bytes) -> Event:
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
                if not _MIN_US <= time <= _MAX_US:
                    time = None
        except (ValueError, OverflowError):
            pass
    if time is None:
        field, when = _first(obj, TIME_FIELDS)
        time = parse_time(when, field) if when is not None else _missing_time()

    payload = get("payload")
    if type(payload) is not dict:
        field, payload = _first(obj, PAYLOAD_FIELDS)
        if payload is None:
            payload = _EMPTY
        elif type(payload) is not dict:
            raise BadField(
                "bad_payload", f"{field} must be an object, got {type(payload).__name__}"
            )

    run_id = get("run_id")
    if type(run_id) is not str or not run_id:
        run_id = _id(obj, "run_id")
        if run_id is None and payload:
            run_id = _id(payload, "run_id", "payload.")

    event_id = get("event_id")
    if type(event_id) is not str or not event_id:
        event_id = "h:" + blake2b(line, digest_size=16).hexdigest()

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
        raise BadField("bad_type", f"{field} must be a non-empty string, got {value!r:.80}")
    normal = value.strip().lower()
    if len(_TYPES) < _TYPES_MAX:
        _TYPES[value] = normal
    return normal


def _missing_time() -> int:
    raise BadField("missing_time", "no field timestamp, ts or time")


def parse_time(value: Any, field: str = "timestamp") -> int:
    """ISO-8601 (Z, offset or naive = UTC) or epoch seconds (> 1e11: milliseconds) → UTC µs."""
    if type(value) is str:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise BadField("bad_time", f"{field} is not ISO-8601: {value!r:.80}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        micros: int = (moment - _EPOCH) // _ONE_US
        if not _MIN_US <= micros <= _MAX_US:  # an offset can push year 1 or 9999 out of range
            raise BadField("bad_time", f"{field} is out of range in UTC: {value!r:.80}")
        return micros
    if type(value) is int or type(value) is float:
        seconds = value / 1000 if value > 1e11 else value
        if not math.isfinite(seconds) or seconds < 0:
            raise BadField("bad_time", f"{field} is not a valid epoch time: {value!r}")
        if seconds > _MAX_US / 1_000_000:  # before multiplying: a huge float overflows
            raise BadField("bad_time", f"{field} is out of range: {value!r}")
        micros = round(seconds * 1_000_000)
        if micros > _MAX_US:
            raise BadField("bad_time", f"{field} is out of range: {value!r}")
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
