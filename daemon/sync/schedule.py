"""Schedule maths as pure functions of (last run, now), so every case is a table test.

`every` schedules tick at a fixed interval from the last run; `cron` schedules follow the
expression in UTC. After downtime an overdue job is due *now*, once — never once per missed
tick — and the next tick is computed from the catch-up run, not from the missed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from croniter import croniter


def _croniter() -> type[croniter]:
    """croniter, imported by the first cron schedule: interval-only configs never load it."""
    from croniter import croniter

    return croniter


@dataclass(frozen=True)
class Schedule:
    """When one job runs: exactly one of `every` (seconds) or `cron`, plus start jitter."""

    every: float | None = None
    cron: str | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ValueError("a schedule needs exactly one of every / cron")
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be positive")
        if self.cron is not None and not _croniter().is_valid(self.cron):
            raise ValueError(f"invalid cron expression {self.cron!r}")
        if self.jitter < 0:
            raise ValueError("jitter must not be negative")

    def next_after(self, t: datetime) -> datetime:
        """The first nominal tick strictly after `t` (aware UTC in, aware UTC out)."""
        if self.every is not None:
            return t + timedelta(seconds=self.every)
        assert self.cron is not None
        nxt = _croniter()(self.cron, t).get_next(datetime)
        assert isinstance(nxt, datetime)
        return nxt

    def describe(self) -> str:
        return f"every {self.every:g}s" if self.every is not None else f"cron {self.cron}"


def first_due(schedule: Schedule, last_run_at: datetime | None, now: datetime) -> datetime:
    """When a job should first run after (re)start.

    Never run: now. Overdue (the tick after the last run has passed): now, once. Otherwise the
    pending tick. A last run later than now was recorded by a clock that ran fast and has been
    stepped back: it counts as now, or the job would wait out the step (found by probing).
    """
    if last_run_at is None:
        return now
    due = schedule.next_after(min(last_run_at, now))
    return now if due <= now else due


def next_due(schedule: Schedule, started_at: datetime, now: datetime) -> datetime:
    """The tick after a run that started at `started_at`, skipping ticks already past.

    For `every`, the interval counts from the run's start (so a 15m job runs every 15m however
    long it takes, unless it overruns); ticks that passed during a long run are skipped, not
    queued. A start later than now (the wall clock stepped back since) counts as now, so a
    step back of a day does not hold a 60 s job for a day (found by probing).
    """
    due = schedule.next_after(min(started_at, now))
    if due > now:
        return due
    if schedule.every is not None:
        missed = int((now - due).total_seconds() // schedule.every) + 1
        return due + timedelta(seconds=schedule.every * missed)
    return schedule.next_after(now)


def upcoming(schedule: Schedule, now: datetime, count: int) -> list[datetime]:
    """The next `count` nominal ticks after `now` (for `check-config`)."""
    out: list[datetime] = []
    t = now
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(t)
    return out
