"""`business_hours`: a pure function of the table and a local time, tested as a table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from daemon.config.dispatch import BusinessHours
from daemon.rules.context import build_context, is_open, local_time
from tests.rules.util import contact, event

NY = ZoneInfo("America/New_York")
WEEK = {"mon": "09:00-17:00", "tue": "09:00-17:00", "wed": "09:00-17:00"}
NIGHTS = {"fri": "22:00-06:00", "sat": ["10:00-12:00", "13:00-24:00"], "sun": "00:00-24:00"}


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    """January 2025: the 6th is a Monday, so `day` 6..12 is Monday..Sunday."""
    return datetime(2025, 1, day, hh, mm, ss, tzinfo=NY)


CASES: list[tuple[str, dict[str, Any] | None, datetime, bool]] = [
    ("no table: always open", None, at(12, 3), True),
    ("empty table: always closed", {}, at(6, 10), False),
    ("inside", WEEK, at(6, 10), True),
    ("at the start", WEEK, at(6, 9), True),
    ("a second before", WEEK, at(6, 8, 59, 59), False),
    ("at the end: closed", WEEK, at(6, 17), False),
    ("a second before the end", WEEK, at(6, 16, 59, 59), True),
    ("day not listed", WEEK, at(9, 10), False),
    ("two ranges: first", NIGHTS, at(11, 11), True),
    ("two ranges: gap", NIGHTS, at(11, 12, 30), False),
    ("two ranges: second", NIGHTS, at(11, 13), True),
    ("24:00 ends the day inclusive", NIGHTS, at(11, 23, 59, 59), True),
    ("all day", NIGHTS, at(12, 0), True),
    ("overnight: before start", NIGHTS, at(10, 21, 59), False),
    ("overnight: evening", NIGHTS, at(10, 22), True),
    ("overnight: after midnight, next day", NIGHTS, at(11, 3), True),
    ("overnight: ends next morning", NIGHTS, at(11, 6), False),
    ("overnight: not the day before", {"fri": "22:00-06:00"}, at(10, 3), False),
    ("sunday overnight into monday", {"sun": "20:00-02:00"}, at(13, 1), True),
    ("closed date", {**WEEK, "closed_dates": ["2025-01-07"]}, at(7, 10), False),
    ("other dates unaffected", {**WEEK, "closed_dates": ["2025-01-07"]}, at(8, 10), True),
    ("closed date cuts the night", {**NIGHTS, "closed_dates": ["2025-01-11"]}, at(11, 3), False),
    ("closed date leaves its eve", {**NIGHTS, "closed_dates": ["2025-01-11"]}, at(10, 23), True),
]


@pytest.mark.parametrize(
    ("table", "when", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_is_open(table: dict[str, Any] | None, when: datetime, expected: bool) -> None:
    hours = None if table is None else BusinessHours.model_validate(table)
    assert is_open(hours, when) is expected


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        (datetime(2025, 1, 6, 13, 59, tzinfo=UTC), False),  # 08:59 EST
        (datetime(2025, 1, 6, 14, 0, tzinfo=UTC), True),  # 09:00 EST
        (datetime(2025, 7, 7, 13, 0, tzinfo=UTC), True),  # 09:00 EDT (a Monday)
        (datetime(2025, 7, 7, 12, 59, tzinfo=UTC), False),  # 08:59 EDT
    ],
)
def test_wall_clock_follows_daylight_saving(utc: datetime, expected: bool) -> None:
    hours = BusinessHours(mon="09:00-17:00")
    assert is_open(hours, local_time(utc, NY)) is expected


def test_local_time_needs_an_aware_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        local_time(datetime(2025, 1, 6, 10), NY)


def test_context() -> None:
    now = datetime(2025, 1, 6, 15, tzinfo=UTC)
    ctx = build_context(event(), contact=contact(), now=now, zone=NY, hours=None)
    assert set(ctx) == {"event", "contact", "client", "now", "business_hours"}
    assert ctx["now"] == now and ctx["now"].utcoffset().total_seconds() == -5 * 3600
    assert ctx["business_hours"] is True
    assert ctx["contact"] == {
        "phone": "+15551230000",
        "table": "blesta_clients",
        "record_id": "17",
        "name": "Ada Lovelace",
    }
    assert ctx["client"]["first_name"] == "Ada"
    assert ctx["event"]["from"] == "+15551230000" and ctx["event"]["raw"]["dialed"]
    bare = build_context(event(), contact=None, now=now, zone=NY, hours=BusinessHours())
    assert set(bare) == {"event", "now", "business_hours"} and bare["business_hours"] is False
