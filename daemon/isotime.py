"""ISO 8601 text of aware UTC datetimes, at a fraction of `datetime.isoformat`'s cost.

The webhook path formats each event's times two or three times (received and occurred, for the
row and the payload). `isoformat` parses its keyword arguments and runs C `sprintf` for every
field and for the `+00:00` offset, about 1.2 µs a call; the webhook benchmark showed it as
3 % of a request. The text of recent seconds is kept, and only the microseconds are added.
A bottom-layer module, like `clock`.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["db_text", "iso_text"]

# Text of recent seconds, by second. Several: one delivery's received and occurred times are
# different seconds, and one kept second thrashed between them. Emptied when full; dict reads
# and writes are atomic under the GIL, so the writer thread and the event loop can share it.
_SECONDS: dict[int, str] = {}
_KEEP = 256


def _second(when: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS` of an aware UTC `when`."""
    key = when.toordinal() * 86400 + when.hour * 3600 + when.minute * 60 + when.second
    text = _SECONDS.get(key)
    if text is None:
        if len(_SECONDS) >= _KEEP:
            _SECONDS.clear()
        text = _SECONDS[key] = when.replace(microsecond=0, tzinfo=None).isoformat()
    return text


def db_text(when: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ`, the store's fixed-width form; `when` must be aware UTC
    (`tzinfo is UTC`), which the caller checks."""
    return _second(when) + "." + str(when.microsecond).zfill(6) + "Z"


def iso_text(when: datetime) -> str:
    """Exactly `when.isoformat()`, for any aware or naive `when`; quick for UTC."""
    if when.tzinfo is not UTC:
        return when.isoformat()
    micro = when.microsecond
    if micro:
        return _second(when) + "." + str(micro).zfill(6) + "+00:00"
    return _second(when) + "+00:00"
