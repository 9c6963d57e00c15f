"""NetSapiens wire formats shared by the client, the webhook parser and the gap filler: its
datetimes and its message session ids. Pure, and free of the HTTP client, so parsing a webhook
body does not import aiohttp.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "DEFAULT_PAGE",
    "NS_DATETIME",
    "format_ns_datetime",
    "parse_ns_datetime",
    "validate_session_id",
]

SESSION_ID = re.compile(r"^[A-Za-z0-9_]{32,}$")
NS_DATETIME = "%Y-%m-%d %H:%M:%S"
DEFAULT_PAGE = 500  # list endpoints' `limit` when the caller gives none


# The span a PBX time may take. Outside it a time is nonsense, and worse: `0001-01-01T00:00+01:00`
# cannot even be moved to UTC (OverflowError), and a time at either end of the calendar makes
# later arithmetic on it (a look-up window, a delay) overflow. Such a time is unknown, as an
# unparseable one is.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def parse_ns_datetime(value: Any) -> datetime | None:
    """A NetSapiens datetime in either form as aware UTC; None for empty/zero/unparseable, and
    for a time outside 1970..9000.

    `2023-10-09 17:16:36` carries no zone and is UTC; `0000-00-00 00:00:00` means "never"."""
    if isinstance(value, datetime):
        parsed = value
    elif not isinstance(value, str):
        return None
    else:
        text = value.strip()
        if not text or text.startswith("0000-00-00"):
            return None
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    try:
        utc = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        return None
    return utc if _EARLIEST <= utc < _LATEST else None


def format_ns_datetime(value: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS` in UTC, the form the subscription and CDR filters take."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: NetSapiens times are sent as UTC")
    return value.astimezone(UTC).strftime(NS_DATETIME)


def validate_session_id(session_id: str) -> str:
    """The id unchanged, or `ValueError`: ≥32 characters of `[A-Za-z0-9_]` (upstream-apis §5)."""
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise ValueError("message session id must be at least 32 characters of [A-Za-z0-9_]")
    return session_id
