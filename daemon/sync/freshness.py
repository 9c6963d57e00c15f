"""Is a sync job's data as fresh as its schedule promises? A pure function of the schedule,
the last success and the clock, so `/healthz` and its tests agree on every case.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from daemon.sync.schedule import Schedule

GRACE = 300.0  # seconds a job may be late beyond two missed ticks and its jitter


@dataclass(frozen=True)
class JobFreshness:
    state: Literal["ok", "pending", "stale"]
    stale_at: datetime  # when the job turns (or turned) stale without a new success

    @property
    def ok(self) -> bool:
        return self.state != "stale"


def job_freshness(
    schedule: Schedule,
    last_success: datetime | None,
    *,
    started_at: datetime,
    now: datetime,
    grace: float = GRACE,
) -> JobFreshness:
    """Whether a job's data is as fresh as its schedule promises.

    Stale once the second tick after the last success has passed, plus the start jitter and
    `grace`: one failed or skipped run is not yet a problem, two are. For `every` that is
    2 × every + jitter + grace; for `cron` the second cron tick (a weekday 09:00 job that last
    succeeded on Friday is stale on Tuesday at 09:00 + grace).

    A job that never succeeded counts from `started_at` (the service's start, when its first
    run is due) and is `pending` until that count makes it stale. A job that was already
    overdue at start (the service was down) is given its catch-up run: it is not stale before
    `started_at` + jitter + grace.
    """
    slack = timedelta(seconds=schedule.jitter + grace)
    base = last_success if last_success is not None else started_at
    stale_at = schedule.next_after(schedule.next_after(base)) + slack
    if last_success is not None:
        stale_at = max(stale_at, started_at + slack)
    if now > stale_at:
        return JobFreshness("stale", stale_at)
    return JobFreshness("ok" if last_success is not None else "pending", stale_at)
