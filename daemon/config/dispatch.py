"""Settings of the event path: business hours, the dispatcher, and the loop guard.

Kept apart from `models` (the file's sections) because they are sub-tables with rules of their
own: `[daemon.business_hours]`, `[daemon.dispatch]` and `[webhooks.netsapiens.guard]`.
"""

from __future__ import annotations

import re
from datetime import date, time
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from daemon.config.fields import Count, between, field_error
from daemon.config.values import Duration

_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_hours(value: str) -> tuple[time, time]:
    """`"09:00-17:30"` → (09:00, 17:30); `"22:00-06:00"` spans midnight; `24:00` ends a day."""
    m = _RANGE.match(value)
    if not m:
        raise ValueError(f"invalid hours {value!r}: expected 'HH:MM-HH:MM', e.g. '09:00-17:00'")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    for h, mi in ((h1, m1), (h2, m2)):
        if not (0 <= h <= 24 and 0 <= mi <= 59) or (h == 24 and mi != 0):
            raise ValueError(f"invalid hours {value!r}: no such time {h:02d}:{mi:02d}")
    if (h1, m1) == (h2, m2):
        raise ValueError(f"invalid hours {value!r}: an empty range")
    start = time(h1 % 24, m1)
    end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
    return start, end


def _ranges(value: str | list[str]) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        parse_hours(item)
    return items


Hours = Annotated[str | list[str], AfterValidator(_ranges)]


def _iso_date(value: str) -> str:
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid date {value!r}: expected YYYY-MM-DD") from None
    if len(value) != 10:
        raise ValueError(f"invalid date {value!r}: expected YYYY-MM-DD")
    return value


class BusinessHours(_Model):
    """`[daemon.business_hours]`: open ranges per weekday in `daemon.timezone`; a day not
    listed is closed. `mon = "09:00-17:00"`, `sat = ["10:00-12:00", "13:00-15:00"]`."""

    mon: Hours = []
    tue: Hours = []
    wed: Hours = []
    thu: Hours = []
    fri: Hours = []
    sat: Hours = []
    sun: Hours = []
    closed_dates: list[Annotated[str, AfterValidator(_iso_date)]] = []  # local dates closed

    def ranges(self, weekday: int) -> list[tuple[time, time]]:
        """Open ranges of a weekday (0 = Monday), parsed."""
        value = getattr(self, WEEKDAYS[weekday])
        return [parse_hours(v) for v in ([value] if isinstance(value, str) else value)]


Positive = Annotated[Duration, Field(gt=0)]


class DispatchSettings(_Model):
    """`[daemon.dispatch]`: how the inbox is worked."""

    concurrency: Count = Field(default=8, ge=1, le=64)  # events handled at once (other senders)
    max_attempts: Count = Field(default=6, ge=1, le=50)  # tries of one action before `dead`
    backoff: Positive = 30.0  # first retry delay; doubles, with full jitter
    backoff_cap: Positive = 3600.0
    # A claimed event is hidden from other claims this long; shorter than a handling can take
    # it would only make the claim useless, so a floor.
    lease: Annotated[Duration, between(minimum=30.0)] = 300.0
    poll: Positive = 5.0  # how often due retries are looked for (new events wake it at once)

    @model_validator(mode="after")
    def _backoff_within_cap(self) -> DispatchSettings:
        if self.backoff > self.backoff_cap:
            # Accepted, the cap would silently win from the first retry: say so instead.
            raise field_error("backoff", "must be at most `backoff_cap`")
        return self


class LoopGuardSettings(_Model):
    """`[webhooks.netsapiens.guard]`: the layers that stop auto-responders ping-ponging
    (DESIGN §5). `own_numbers` (the numbers we send from) live in `[webhooks.netsapiens]`."""

    # Never auto-reply to an event the PBX delivered later than this after it happened
    # (received_at - occurred_at; an occurred_at in the future counts as no delay) ...
    max_event_age: Positive = 900.0
    # ... nor to one that waited longer than this in our inbox before its rules ran (a restart
    # after an outage, a sender blocked behind a failing action): a stale conversation.
    max_inbox_wait: Positive = 3600.0
    replies_per_conversation_per_hour: Count = Field(default=5, ge=1, le=1000)
    echo_window: Positive = 3600.0  # a message repeating one of our replies this recently
    repeat_window: Positive = 3600.0  # the same text from one sender is answered once
    breaker_replies: Count = Field(default=60, ge=1, le=100_000)  # auto-replies in ...
    breaker_window: Positive = 300.0  # ... this window open the breaker ...
    breaker_pause: Positive = 900.0  # ... for this long: all auto-replies pause
