"""The quick ISO formatting gives exactly what `datetime.isoformat` gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from daemon.isotime import db_text, iso_text
from daemon.store.util import to_db

aware_utc = st.datetimes(timezones=st.just(UTC))
zones = st.sampled_from([None, UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5))])


@given(st.lists(aware_utc, min_size=1, max_size=5))
def test_db_text_is_isoformat_with_z(whens: list[datetime]) -> None:
    # several in a row: the kept second must never leak into the next one's text
    for when in whens:
        assert db_text(when) == when.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@given(st.datetimes(timezones=zones))
def test_iso_text_is_isoformat(when: datetime) -> None:
    assert iso_text(when) == when.isoformat()


def test_times_of_one_second_differ_only_in_microseconds() -> None:
    base = datetime(2026, 11, 27, 18, 30, 5, tzinfo=UTC)
    assert db_text(base) == "2026-11-27T18:30:05.000000Z"
    assert db_text(base.replace(microsecond=7)) == "2026-11-27T18:30:05.000007Z"
    assert iso_text(base) == "2026-11-27T18:30:05+00:00"
    assert iso_text(base + timedelta(seconds=1)) == "2026-11-27T18:30:06+00:00"


def test_to_db_converts_other_zones_to_utc() -> None:
    when = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert to_db(when) == "2025-12-31T23:00:00.000000Z"
