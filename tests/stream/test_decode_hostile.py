"""decode on hostile lines: never raises, bounded messages, storable values, a time window."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpers import accepted, jsonl
from runwatch.projections import Event, to_micros
from runwatch.stream.core.decode import (
    EARLIEST_US,
    REASONS,
    STORED_INTEGERS,
    Rejection,
    decode,
)

T0 = "2025-11-26T14:46:52.742613Z"


def utc(year: int, month: int, day: int) -> int:
    return to_micros(datetime(year, month, day, tzinfo=UTC))


# --- hostile lines: never raise, bounded messages, storable values -------------------------

DEEP = 1000


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (b'{"event_type": %s, "timestamp": 0}', "bad_type"),
        (b'{"event_type": "note", "timestamp": %s}', "bad_time"),
        (
            b'{"event_type": "note", "timestamp": "2025-01-01T00:00:00Z", "payload": %s}',
            "bad_payload",
        ),
        (b'{"event_type": "note", "timestamp": "2025-01-01T00:00:00Z", "run_id": %s}', "bad_field"),
    ],
)
def test_deeply_nested_value_is_a_rejection_with_a_short_detail(
    template: bytes, reason: str
) -> None:
    """A message that formats a whole 1,000-deep value overflows the stack and crash-loops the
    service on the same line; the detail shows a bounded preview instead."""
    result = decode(template % nested(DEEP))
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert len(result.detail) < 200


def test_huge_string_values_are_previewed_not_copied() -> None:
    """A multi-megabyte bad value must not become a multi-megabyte detail."""
    blank_type = b'{"event_type": "' + b" " * 4_000_000 + b'", "ts": "x"}'
    bad_time = b'{"event_type": "note", "ts": "' + b"9" * 4_000_000 + b'"}'
    for raw, reason in ((blank_type, "bad_type"), (bad_time, "bad_time")):
        result = decode(raw)
        assert isinstance(result, Rejection)
        assert result.reason == reason
        assert len(result.detail) < 200


@pytest.mark.parametrize("name", STORED_INTEGERS)
@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_integer_beyond_64_bits_in_a_stored_field_is_bad_payload(name: str, value: int) -> None:
    """SQLite and PostgreSQL store signed 64-bit integers; a larger one failed the commit and
    stopped the service, so it is refused at the door, naming the field."""
    result = decode(
        jsonl(event_type="run_created", timestamp=T0, run_id="r", payload={name: value})
    )
    assert isinstance(result, Rejection)
    assert result.reason == "bad_payload"
    assert f"payload.{name}" in result.detail


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 12])
def test_integer_within_64_bits_in_a_stored_field_is_accepted(value: int) -> None:
    """The limit is the store's, not a guess: every signed 64-bit value still folds."""
    event = accepted(
        jsonl(event_type="run_created", timestamp=T0, run_id="r", payload={"total_tasks": value})
    )
    assert event.payload == {"total_tasks": value}


def test_times_before_2000_are_bad_time() -> None:
    """An epoch 0 or a 1970 date is a producer bug, not history; folding it would make a run
    look decades long."""
    assert utc(2000, 1, 1) == EARLIEST_US
    for value in (0, 946_684_799, "1999-12-31T23:59:59.999999Z", "1970-01-01T00:00:00Z"):
        result = decode(jsonl(event_type="note", timestamp=value))
        assert isinstance(result, Rejection), value
        assert result.reason == "bad_time"
        assert "2000-01-01" in result.detail
    assert accepted(jsonl(event_type="note", timestamp="2000-01-01T00:00:00Z")).time == EARLIEST_US


def test_times_after_the_latest_allowed_are_bad_time() -> None:
    """A clock far in the future would hold a run open (or stalled) for years; the bound is
    passed in so decode stays a pure function of its arguments."""
    latest = utc(2026, 1, 1)
    assert accepted(jsonl(event_type="note", timestamp="2026-01-01T00:00:00Z")).time == latest
    at_bound = decode(jsonl(event_type="note", timestamp="2026-01-01T00:00:00Z"), latest_us=latest)
    assert isinstance(at_bound, Event)
    for value in ("2026-01-01T00:00:00.000001Z", 1_767_225_601, "2026-01-01T01:00:00+00:30"):
        result = decode(jsonl(event_type="note", ts=value), latest_us=latest)
        assert isinstance(result, Rejection), value
        assert result.reason == "bad_time"
        assert "ts" in result.detail
        assert "max_future_skew" in result.detail


@pytest.mark.parametrize("text", ["C:\\u0000", "\\\\u0000", "\\u0000 and \\u0000", "\\\\\\u0000"])
def test_escaped_backslash_before_u0000_is_text_not_a_nul(text: str) -> None:
    """A Windows path or a regex in a message may read `\\u0000`: a backslash and five
    characters, which every store can hold, not a NUL."""
    assert "\x00" not in text
    event = accepted(jsonl(event_type="note", timestamp=T0, message=text))
    assert event.raw["message"] == text


@pytest.mark.parametrize("text", ["\x00", "\\\x00", "ok \\u0000 then \x00", "\x00\\"])
def test_real_escaped_nul_is_still_rejected(text: str) -> None:
    """A real NUL cannot be stored in a PostgreSQL text column, however it is spelled."""
    raw = jsonl(event_type="note", timestamp=T0, message=text)
    assert b"\\u0000" in raw
    result = decode(raw)
    assert isinstance(result, Rejection)
    assert result.reason == "nul_bytes"


def test_readme_explains_every_reason() -> None:
    """Operators look a dead letter's reason up in the README; none may be missing."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Bad input and limits", 1)[1].split("\n## ", 1)[0]
    assert [reason for reason in REASONS if f"`{reason}`" not in section] == []
