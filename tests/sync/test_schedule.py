"""Schedule maths: table tests of (schedule, last run, now) → due."""

from datetime import UTC, datetime, timedelta

import pytest

from daemon.sync.schedule import Schedule, first_due, next_due, upcoming

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("schedule", "last", "now", "expected"),
    [
        (Schedule(every=900), None, T0, T0),  # never ran: now
        (Schedule(every=900), T0, T0 + 5 * M, T0 + 15 * M),  # pending tick
        (Schedule(every=900), T0, T0 + 15 * M, T0 + 15 * M),  # exactly due
        (Schedule(every=900), T0 - timedelta(days=3), T0, T0),  # overdue: once, now
        (Schedule(cron="*/15 * * * *"), T0 + 1 * M, T0 + 2 * M, T0 + 15 * M),
        (Schedule(cron="0 3 * * *"), T0 - timedelta(days=2), T0, T0),  # missed nightly: now
    ],
)
def test_first_due(schedule: Schedule, last: datetime | None, now: datetime, expected: datetime):
    assert first_due(schedule, last, now) == expected


@pytest.mark.parametrize(
    ("schedule", "started", "now", "expected"),
    [
        (Schedule(every=900), T0, T0 + 2 * M, T0 + 15 * M),
        # a run that overran two ticks: the next tick on the grid, not three queued runs
        (Schedule(every=900), T0, T0 + 40 * M, T0 + 45 * M),
        (Schedule(every=900), T0, T0 + 45 * M, T0 + 60 * M),
        (Schedule(cron="*/15 * * * *"), T0, T0 + 1 * M, T0 + 15 * M),
        (Schedule(cron="*/15 * * * *"), T0, T0 + 31 * M, T0 + 45 * M),
        (Schedule(cron="0 * * * *"), T0, T0 + 1 * M, T0 + 60 * M),
    ],
)
def test_next_due(schedule: Schedule, started: datetime, now: datetime, expected: datetime):
    assert next_due(schedule, started, now) == expected


def test_upcoming_cron_and_interval():
    assert upcoming(Schedule(cron="0 */6 * * *"), T0, 3) == [
        T0 + timedelta(hours=6),
        T0 + timedelta(hours=12),
        T0 + timedelta(hours=18),
    ]
    assert upcoming(Schedule(every=60), T0, 2) == [T0 + M, T0 + 2 * M]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"every": 60, "cron": "* * * * *"},
        {"every": 0},
        {"cron": "not cron"},
        {"every": 5, "jitter": -1},
    ],
)
def test_invalid_schedules(kwargs: dict[str, object]):
    with pytest.raises(ValueError):
        Schedule(**kwargs)  # type: ignore[arg-type]
