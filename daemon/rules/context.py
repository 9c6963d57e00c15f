"""What a rule's `when` and templates can see (DESIGN §3), built from values handed in.

Pure: the event, the contact the caller looked up, and `now` all come from outside, so a rule
can be tested at 03:00 on a Sunday without waiting for one.

    event           the normalised event (`Event.as_context()`): kind, from, to, body, ...
    contact         phone, table, record_id, name — undefined when the sender is unknown
    client          the synced record behind the contact (its `data`) — undefined likewise
    now             aware datetime in `daemon.timezone`
    business_hours  True while `[daemon.business_hours]` says open; always True without it
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from daemon.config.dispatch import BusinessHours
from daemon.store.contacts import Contact
from daemon.webhooks.event import Event

_END_OF_DAY = time(23, 59, 59, 999999)  # how `parse_hours` spells 24:00


def _in_range(start: time, end: time, at: time) -> bool:
    """Whether `at` lies in a same-day range [start, end); 24:00 ends the day inclusive."""
    return start <= at and (at < end or end == _END_OF_DAY)


def is_open(hours: BusinessHours | None, local: datetime) -> bool:
    """Whether the business is open at `local` (a wall-clock time in `daemon.timezone`).

    - No `[daemon.business_hours]` table: always open.
    - A weekday's ranges are `start-end`; a range whose end is not after its start spans
      midnight (`"22:00-06:00"` on Monday is Monday 22:00 to Tuesday 06:00), and `24:00`
      ends a day.
    - A date in `closed_dates` is closed for the whole calendar day, midnight to midnight,
      including the after-midnight part of the previous day's overnight range.
    """
    if hours is None:
        return True
    today: date = local.date()
    if today.isoformat() in hours.closed_dates:
        return False
    at = local.time().replace(tzinfo=None)
    for start, end in hours.ranges(today.weekday()):
        if start < end:
            if _in_range(start, end, at):
                return True
        elif at >= start:  # an overnight range, before midnight
            return True
    yesterday = (today - timedelta(days=1)).weekday()
    for start, end in hours.ranges(yesterday):
        if start >= end and at < end:  # the previous night's range, after midnight
            return True
    return False


def local_time(now: datetime, zone: ZoneInfo) -> datetime:
    """`now` (aware, any zone) as wall-clock time in `zone`."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(zone)


def contact_context(contact: Contact) -> dict[str, Any]:
    return {
        "phone": contact.phone,
        "table": contact.table,
        "record_id": contact.record_id,
        "name": contact.name,
    }


def build_context(
    event: Event,
    *,
    contact: Contact | None,
    now: datetime,
    zone: ZoneInfo,
    hours: BusinessHours | None,
) -> dict[str, Any]:
    """The variables of every template and `when` evaluated for `event`.

    `contact` and `client` are left out (so they are undefined, and `| default(...)` applies)
    when no contact is known. `client` is the record as synced — whatever fields its upstream
    has (`first_name` for Blesta clients, `name` for Halo ones, ...).
    """
    local = local_time(now, zone)
    ctx: dict[str, Any] = {
        "event": event.as_context(),
        "now": local,
        "business_hours": is_open(hours, local),
    }
    if contact is not None:
        ctx["contact"] = contact_context(contact)
        ctx["client"] = contact.data
    return ctx
