"""`format_time` builds the text by arithmetic on a cached minute: it must agree with the
datetime library on every representable instant, and refuse the same ones."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runwatch.projections.events import format_time

MICROSECOND = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1)
FIRST = (datetime.min - EPOCH) // MICROSECOND
LAST = (datetime.max - EPOCH) // MICROSECOND
DAY = 86_400_000_000


def by_datetime(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds") + "Z"


def test_agrees_with_datetime_across_the_calendar() -> None:
    rng = random.Random(13)
    edges = [FIRST, LAST, 0, -1, 1, DAY - 1, DAY, -DAY, -DAY - 1]
    recent = [rng.randrange(1_600_000_000_000_000, 1_900_000_000_000_000) for _ in range(20_000)]
    anywhere = [rng.randint(FIRST, LAST) for _ in range(20_000)]
    for us in [*edges, *recent, *anywhere]:
        assert format_time(us) == by_datetime(us), us


@given(st.integers(FIRST, LAST), st.integers(0, 59_999_999))
def test_agrees_with_datetime_within_a_cached_minute(us: int, later: int) -> None:
    """The text of a minute is cached: other instants of it must still come out right."""
    again = min(us - us % 60_000_000 + later, LAST)
    assert (format_time(us), format_time(again)) == (by_datetime(us), by_datetime(again))


@pytest.mark.parametrize("us", [FIRST - 1, LAST + 1, 10**30, -(10**30)])
def test_refuses_what_datetime_cannot_hold(us: int) -> None:
    with pytest.raises(OverflowError):
        by_datetime(us)
    with pytest.raises(OverflowError):
        format_time(us)


def test_none_stays_none() -> None:
    assert format_time(None) is None
