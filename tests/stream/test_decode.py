"""decode: one line of bytes → a normalised Event or a Rejection naming the reason (contract §1)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import UPSTREAM, accepted, jsonl
from runwatch.projections import ORCHESTRATOR, PATTERN, Event, format_time, to_micros
from runwatch.stream.core.decode import (
    EARLIEST_US,
    REASONS,
    Rejection,
    decode,
    parse_time,
)

T0 = "2025-11-26T14:46:52.742613Z"
T0_US = to_micros(datetime(2025, 11, 26, 14, 46, 52, 742613, tzinfo=UTC))


# --- rejections: one case per reason -------------------------------------------------------

REJECTIONS = [
    # (reason, line, a piece of the detail that says where the problem is)
    (
        "invalid_utf8",
        b'{"event_type": "note\xff\xfe", "timestamp": "2025-01-01T00:00:00Z"}',
        "byte 21",
    ),
    ("nul_bytes", b'{"event_type": "note"}\x00\x00\x00', "column 23"),
    ("nul_bytes", b'{"event_type": "note", "run_id": "a\\u0000"}', "escaped NUL"),
    ("invalid_json", b'{"event_type": "note", "timestamp": ', ""),
    ("not_object", b"[1, 2, 3]", "list"),
    ("missing_type", jsonl(timestamp=T0, run_id="r1"), "event_type"),
    ("bad_type", jsonl(kind=42, timestamp=T0, run_id="r1"), "kind"),
    ("missing_time", jsonl(event_type="run_started", run_id="r1"), "timestamp"),
    ("bad_time", jsonl(event_type="run_started", ts="yesterday", run_id="r1"), "ts"),
    (
        "bad_payload",
        jsonl(event_type="run_started", timestamp=T0, run_id="r1", data=[1, 2]),
        "data",
    ),
    ("bad_field", jsonl(event_type="run_started", timestamp=T0, run_id=["r1"]), "run_id"),
    ("missing_run_id", jsonl(event_type="task_started", timestamp=T0, task_id="t1"), "run_id"),
    (
        "missing_pattern_run_id",
        jsonl(
            event_type="pattern.execution.started",
            timestamp=T0,
            job_id="JOB-1",
            status="in_progress",
        ),
        "pattern_run_id",
    ),
]


def test_every_reason_of_decode_has_a_case() -> None:
    """A reason without a case is a rejection path nobody has watched happen (the line
    splitter's and the processor's own reasons have theirs in test_garbage.py)."""
    outside_decode = {"line_too_long", "internal_error", "unstorable_value", "bad_headers"}
    assert {case[0] for case in REJECTIONS} == set(REASONS) - outside_decode


@pytest.mark.parametrize(("reason", "raw", "where"), REJECTIONS, ids=[c[0] for c in REJECTIONS])
def test_bad_line_is_rejected_with_its_reason(reason: str, raw: bytes, where: str) -> None:
    """Operators triage dead letters by reason code and fix the field the detail names."""
    result = decode(raw)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail
    assert where in result.detail


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'"just a string"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (b"", "invalid_json"),
        (b"\x00" * 64, "nul_bytes"),
        (jsonl(event_type="   ", timestamp=T0), "bad_type"),
        (jsonl(event_type="", timestamp=T0), "bad_type"),
        (jsonl(event_type="note", timestamp=T0, payload="text"), "bad_payload"),
        (jsonl(event_type="note", timestamp=T0, details=3), "bad_payload"),
        (jsonl(event_type="note", timestamp=T0, payload={"run_id": 1.5}), "bad_field"),
        (
            jsonl(event_type="task_started", timestamp=T0, run_id="r1", task_id={"id": 1}),
            "bad_field",
        ),
        (jsonl(event_type="run_started", timestamp=T0, run_id=""), "missing_run_id"),
        (jsonl(event_type="step_started", timestamp=T0), "missing_run_id"),
        (jsonl(event_type="workstream_started", timestamp=T0), "missing_run_id"),
        (jsonl(event_type="job_completed", timestamp=T0), "missing_run_id"),
        (jsonl(event_type="Pattern.Selection.Started", timestamp=T0), "missing_pattern_run_id"),
    ],
)
def test_more_bad_shapes(raw: bytes, reason: str) -> None:
    """Each of these shapes has been seen in real logs and must land in the right bucket."""
    result = decode(raw)
    assert isinstance(result, Rejection)
    assert result.reason == reason


# --- acceptance: the two orchestrator shapes and the pattern shape -------------------------


def test_event_bus_shape_is_normalised() -> None:
    """The upstream event bus writes this shape; every field must land where projections look."""
    obj = {
        "event_type": "task_completed",
        "timestamp": "2025-11-26T14:46:52.742613+00:00",
        "severity": "warning",
        "message": "done",
        "run_id": "RUN-1",
        "workstream_id": "WS-1",
        "job_id": "JOB-1",
        "task_id": "TASK-1",
        "tool_id": "aider",
        "worker_id": "W-1",
        "file_id": None,
        "payload": {"exit_code": 0},
    }
    raw = orjson.dumps(obj)
    event = accepted(raw)
    assert event.family == ORCHESTRATOR
    assert event.type == "task_completed"
    assert event.time == T0_US
    assert event.severity == "warning"
    assert event.run_id == "RUN-1"
    assert event.task == "TASK-1"
    assert event.workstream == "WS-1"
    assert event.payload == {"exit_code": 0}
    assert event.id == "h:" + hashlib.blake2b(raw, digest_size=16).hexdigest()
    assert event.raw == obj


def test_run_event_v1_shape_is_normalised() -> None:
    """The older run-event v1 files are still on disk and must fold into the same runs."""
    obj = {
        "event_id": "01JH9F8P2ZJ1A8E5R6C792Q2EQ",
        "run_id": "01JH9F8P2ZJ1A8E5R6C792Q2ER",
        "ts": "2025-11-26T14:46:52.742613Z",
        "kind": "tool_call_completed",
        "step_attempt_id": "01JH9F8P2ZJ1A8E5R6C792Q2ES",
        "payload": {"tool": "pytest"},
    }
    event = accepted(orjson.dumps(obj))
    assert event.family == ORCHESTRATOR
    assert event.id == "01JH9F8P2ZJ1A8E5R6C792Q2EQ"
    assert event.type == "tool_call_completed"
    assert event.time == T0_US
    assert event.run_id == "01JH9F8P2ZJ1A8E5R6C792Q2ER"
    assert event.task == "01JH9F8P2ZJ1A8E5R6C792Q2ES"
    assert event.workstream is None
    assert event.severity == "info"
    assert event.payload == {"tool": "pytest"}


def test_upstream_pattern_events_all_decode() -> None:
    """The real upstream samples are the ground truth for the pattern shape: none may bounce."""
    files = [
        UPSTREAM / "pattern_events" / "pattern_events.jsonl",
        *sorted((UPSTREAM / "pattern_events" / "jobs").rglob("*.jsonl")),
    ]
    count = 0
    for path in files:
        for raw in path.read_bytes().splitlines():
            if not raw.strip():
                continue
            obj = orjson.loads(raw)
            event = accepted(raw)
            assert event.family == PATTERN
            assert event.task == obj["pattern_run_id"]
            assert event.id == obj["event_id"]
            assert event.type == obj["event_type"].lower()
            assert event.type.startswith("pattern.")
            assert event.time == parse_time(obj["timestamp"])
            assert event.payload == obj.get("details", {})
            count += 1
    assert count >= 8


def test_pattern_run_id_may_come_from_details() -> None:
    """Some emitters nest the pattern_run_id in details; the event still belongs to its run."""
    event = accepted(
        jsonl(
            event_type="pattern.execution.completed",
            timestamp=T0,
            details={"pattern_run_id": "PRUN-9", "duration_seconds": 2.5},
        )
    )
    assert event.family == PATTERN
    assert event.task == "PRUN-9"


# --- the normalisation table, alias by alias -----------------------------------------------


@pytest.mark.parametrize("field", ["event_type", "kind", "type", "event"])
def test_type_aliases(field: str) -> None:
    """Every producer names the type differently; all must be understood."""
    event = accepted(jsonl(**{field: "run_started"}, timestamp=T0, run_id="r1"))
    assert event.type == "run_started"


def test_type_alias_precedence() -> None:
    """When several type fields are present, event_type wins, then kind, type, event."""
    assert accepted(jsonl(event_type="a", kind="b", type="c", event="d", ts=T0)).type == "a"
    assert accepted(jsonl(kind="b", type="c", event="d", ts=T0)).type == "b"
    assert accepted(jsonl(type="c", event="d", ts=T0)).type == "c"
    assert accepted(jsonl(event_type=None, event="d", ts=T0)).type == "d"


def test_type_is_stripped_and_lower_cased() -> None:
    """`Task_Started ` and `task_started` are one lifecycle step, not two."""
    event = accepted(jsonl(event_type="  Task_Started\t", timestamp=T0, run_id="r1", task_id="t1"))
    assert event.type == "task_started"


@pytest.mark.parametrize("field", ["timestamp", "ts", "time"])
def test_time_aliases(field: str) -> None:
    """Every producer names the time differently; all must be understood."""
    event = accepted(jsonl(event_type="note", **{field: T0}))
    assert event.time == T0_US


def test_time_alias_precedence() -> None:
    """timestamp wins over ts, which wins over time."""
    early, late = "2025-01-01T00:00:00Z", "2025-06-01T00:00:00Z"
    assert accepted(jsonl(event_type="n", timestamp=early, ts=late, time=late)).time == parse_time(
        early
    )
    assert accepted(jsonl(event_type="n", ts=early, time=late)).time == parse_time(early)


@pytest.mark.parametrize("field", ["payload", "data", "details"])
def test_payload_aliases(field: str) -> None:
    """Every producer names the payload differently; all must be understood."""
    event = accepted(jsonl(event_type="note", timestamp=T0, **{field: {"k": [1, 2]}}))
    assert event.payload == {"k": [1, 2]}


def test_payload_defaults_to_empty_object() -> None:
    """Projections read payload fields without guarding for a missing payload."""
    assert accepted(jsonl(event_type="note", timestamp=T0)).payload == {}
    assert accepted(jsonl(event_type="note", timestamp=T0, payload=None)).payload == {}


def test_run_id_from_payload_when_absent_at_top_level() -> None:
    """Some emitters only put run_id in the payload; the event still belongs to its run."""
    event = accepted(jsonl(event_type="run_started", timestamp=T0, payload={"run_id": "r7"}))
    assert event.run_id == "r7"
    top = accepted(
        jsonl(event_type="run_started", timestamp=T0, run_id="top", payload={"run_id": "inner"})
    )
    assert top.run_id == "top"


def test_integer_ids_become_strings() -> None:
    """Numeric ids are common; `7` and `"7"` must key the same run."""
    event = accepted(jsonl(event_type="task_started", timestamp=T0, run_id=7, task_id=3))
    assert (event.run_id, event.task) == ("7", "3")


def test_event_without_run_scope_needs_no_run_id() -> None:
    """A free-standing note or tool event is fine without run_id; only run-scoped ones need it."""
    event = accepted(jsonl(event_type="heartbeat", timestamp=T0))
    assert event.run_id is None
    assert event.family == ORCHESTRATOR


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"task_id": "T"}, "T"),
        ({"step_attempt_id": "A"}, "A"),
        ({"step_id": "S"}, "S"),
        ({"task_id": "T", "step_attempt_id": "A", "step_id": "S"}, "T"),
        ({"step_attempt_id": "A", "step_id": "S"}, "A"),
        ({"payload": {"task_id": "PT"}}, "PT"),
        ({"payload": {"step_attempt_id": "PA"}}, "PA"),
        ({"payload": {"step_id": "PS"}}, "PS"),
        ({"step_id": "S", "payload": {"task_id": "PT"}}, "S"),
        ({}, None),
    ],
)
def test_task_key(fields: dict[str, Any], expected: str | None) -> None:
    """The task key is looked up top level first, then in the payload, in a fixed order."""
    event = accepted(jsonl(event_type="task_started", timestamp=T0, run_id="r1", **fields))
    assert event.task == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"workstream_id": "WS"}, "WS"),
        ({"job_id": "JOB"}, "JOB"),
        ({"workstream_id": "WS", "job_id": "JOB"}, "WS"),
        ({"payload": {"workstream_id": "PWS"}}, "PWS"),
        ({"payload": {"job_id": "PJOB"}}, "PJOB"),
        ({"job_id": "JOB", "payload": {"workstream_id": "PWS"}}, "JOB"),
        ({}, None),
    ],
)
def test_workstream_key(fields: dict[str, Any], expected: str | None) -> None:
    """Workstream comes from workstream_id, else job_id, top level first, then the payload."""
    event = accepted(
        jsonl(event_type="task_started", timestamp=T0, run_id="r1", task_id="t", **fields)
    )
    assert event.workstream == expected


# --- time ----------------------------------------------------------------------------------


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> int:
    return to_micros(datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-01T10:00:00Z", utc(2025, 1, 1, 10)),
        ("2025-01-01T10:00:00.123456Z", utc(2025, 1, 1, 10, 0, 0, 123456)),
        ("2025-01-01T12:00:00+02:00", utc(2025, 1, 1, 10)),
        ("2025-01-01T05:30:00-04:30", utc(2025, 1, 1, 10)),
        ("2025-01-01T10:00:00", utc(2025, 1, 1, 10)),
        ("2025-01-01 10:00:00", utc(2025, 1, 1, 10)),
        (" 2025-01-01T10:00:00Z ", utc(2025, 1, 1, 10)),
        (1735725600, utc(2025, 1, 1, 10)),
        (1735725600.25, utc(2025, 1, 1, 10, 0, 0, 250000)),
        (1735725600000, utc(2025, 1, 1, 10)),
        (1735725600123, utc(2025, 1, 1, 10, 0, 0, 123000)),
        (946_684_800, utc(2000, 1, 1)),
        (100_000_000_000, 100_000_000_000 * 1_000_000),  # exactly 1e11: still seconds
        (100_000_000_001, 100_000_000_001 * 1_000),  # just above: milliseconds
    ],
)
def test_time_parsing(value: Any, expected: int) -> None:
    """Times from every producer end up as the same UTC instant, or ordering breaks."""
    assert parse_time(value) == expected
    if expected >= EARLIEST_US:
        assert accepted(jsonl(event_type="note", timestamp=value)).time == expected
    else:
        assert decode(jsonl(event_type="note", timestamp=value)) == Rejection(
            "bad_time", f"timestamp is before 2000-01-01: {value}"
        )


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -1.5,
        -1_735_725_600_000,
        True,
        False,
        10**30,
        1e300,
        2**63 - 1,
        "yesterday",
        "",
        "2025-13-01T00:00:00Z",
        [2025],
        {"at": 1},
    ],
)
def test_bad_times_are_rejected(value: Any) -> None:
    """A time that cannot be placed on the UTC timeline must not be guessed at."""
    result = decode(jsonl(event_type="note", ts=value))
    assert isinstance(result, Rejection)
    assert result.reason == "bad_time"
    assert "ts" in result.detail


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-05:00",  # valid ISO, but after 9999-12-31 once converted to UTC
        "0001-01-01T00:00:00+05:00",  # valid ISO, but before 0001-01-01 once converted to UTC
    ],
)
def test_iso_time_out_of_range_after_utc_conversion_is_rejected(value: str) -> None:
    """Every accepted time must be storable as a UTC ISO string, or the processor crashes."""
    result = decode(jsonl(event_type="note", ts=value))
    assert isinstance(result, Rejection), (
        f"accepted with time {result.time} µs, which format_time() cannot render"
    )
    assert result.reason == "bad_time"


# --- id and severity -----------------------------------------------------------------------


def test_derived_id_is_blake2b_128_of_the_raw_line() -> None:
    """Without event_id, the id must be a pure function of the bytes so re-reads dedupe."""
    raw = b'{"event_type": "note", "timestamp": "2025-01-01T00:00:00Z"}'
    expected = "h:" + hashlib.blake2b(raw, digest_size=16).hexdigest()
    first, second = accepted(raw), accepted(bytes(raw))
    assert first.id == expected
    assert second.id == expected
    assert len(expected) == 2 + 32
    other = accepted(raw.replace(b": ", b":"))
    assert other.id != expected


@given(st.binary(max_size=600))
def test_derived_id_is_blake2b_128_of_any_line(noise: bytes) -> None:
    """Lines of every length (the hash works in 128-byte blocks) get the same id as ever."""
    raw = orjson.dumps({"event_type": "note", "timestamp": T0, "noise": noise.hex()})
    assert accepted(raw).id == "h:" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def test_event_id_is_used_when_present() -> None:
    """Upstream ids are kept so the same event in two files is applied once."""
    raw = jsonl(event_id="EVT-1", event_type="note", timestamp=T0)
    assert accepted(raw).id == "EVT-1"
    assert accepted(jsonl(event_id="", event_type="note", timestamp=T0)).id.startswith("h:")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "info"),
        ("debug", "debug"),
        ("info", "info"),
        ("warning", "warning"),
        ("warn", "warning"),
        ("WARNING", "warning"),
        ("error", "error"),
        ("err", "error"),
        ("Error", "error"),
        ("critical", "critical"),
        ("fatal", "critical"),
        ("loud", "info"),
        (3, "info"),
    ],
)
def test_severity(value: Any, expected: str) -> None:
    """Error counts depend on severity; the usual spellings must count, junk defaults to info."""
    fields: dict[str, Any] = {"event_type": "note", "timestamp": T0}
    if value is not None:
        fields["severity"] = value
    assert accepted(orjson.dumps(fields)).severity == expected


# --- never raises --------------------------------------------------------------------------


def check_never_raises(raw: bytes) -> None:
    result = decode(raw)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in REASONS
        assert isinstance(result.detail, str)
        assert result.detail
    else:
        assert isinstance(result.time, int)
        assert isinstance(result.type, str)
        assert result.type
        assert isinstance(result.payload, dict)


@settings(max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_decode_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    """Any bytes at all may reach the processor; it must never crash on them."""
    check_never_raises(raw)


FIELDS = [
    "event_type",
    "kind",
    "type",
    "event",
    "timestamp",
    "ts",
    "time",
    "payload",
    "data",
    "details",
    "run_id",
    "task_id",
    "step_attempt_id",
    "step_id",
    "workstream_id",
    "job_id",
    "pattern_run_id",
    "event_id",
    "severity",
]
TYPES = [
    "run_started",
    "task_started",
    "job_created",
    "note",
    "pattern.execution.completed",
    "  RUN_Completed ",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(TYPES)
    | st.datetimes().map(datetime.isoformat)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, database=None)
@given(JSON)
def test_decode_never_raises_on_arbitrary_json(value: Any) -> None:
    """Valid JSON of any shape, including huge numbers, must become an Event or a Rejection."""
    check_never_raises(json.dumps(value).encode())


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.dictionaries(
        st.sampled_from(FIELDS),
        SCALARS | st.dictionaries(st.sampled_from(FIELDS), SCALARS, max_size=4),
        min_size=1,
        max_size=10,
    ),
    st.sampled_from(TYPES),
    st.sampled_from(["timestamp", "ts", "time"]),
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
        st.datetimes().map(datetime.isoformat),
    ),
)
def test_decode_never_raises_on_event_like_objects(
    fields: dict[str, Any], etype: str, time_field: str, when: Any
) -> None:
    """Near-miss events reach the deep normalisation paths; those must not raise either."""
    check_never_raises(json.dumps({**fields, "event_type": etype, time_field: when}).encode())


def test_time_helper_exposes_microseconds() -> None:
    """Stored times are UTC microseconds; one microsecond is one unit."""
    assert parse_time("1970-01-01T00:00:00.000001Z") == 1
    assert format_time(parse_time(T0)) == T0
    assert parse_time("2025-11-26T15:46:52.742613+01:00") == T0_US
    assert parse_time("2025-11-26T14:46:52.742613") == T0_US
    since_epoch = datetime(2025, 11, 26, 14, 46, 52, 742613, tzinfo=UTC) - datetime(
        1970, 1, 1, tzinfo=UTC
    )
    assert since_epoch // timedelta(microseconds=1) == T0_US


def test_huge_float_epoch_is_bad_time_not_a_crash() -> None:
    """A float so large that converting it to microseconds overflows is rejected, not raised."""
    result = decode(b'{"event_type":"run_started","timestamp":1.797693134862316e+305,"run_id":"r"}')
    assert isinstance(result, Rejection)
    assert result.reason == "bad_time"
