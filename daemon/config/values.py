"""Scalar value types of the configuration: durations, rate limits, URLs, listen addresses.

They are plain functions so the rest of the daemon (and tests) can parse the same spellings the
file accepts, and `Annotated` aliases so the models say what a field holds rather than how it
is checked.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_HINT = "expected seconds or a string like '30s', '15m', '2h', '1d', '1h30m'"
_MONTHS = re.compile(r"^(\d{4})-(\d{2})\.\.(current|(\d{4})-(\d{2}))$")


def parse_duration(value: object) -> float:
    """Seconds from `"1h30m"`, `"90d"`, `"250ms"` or a bare number of seconds.

    Accepts numbers too because TOML users write `timeout = 30` as often as `"30s"`; refuses
    negatives and booleans, which are always a mistake in a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    text = value.strip().lower().replace(" ", "")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if number < 0 or number != number or number == float("inf"):
            raise ValueError(f"invalid duration {value!r}: must be a finite, positive number")
        return number
    if not text or not _DURATION_FULL.fullmatch(text):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest `1h30m` spelling, so summaries read like the file that produced them."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms" if seconds else "0s"
    whole = int(seconds)
    rest = seconds - whole
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    if whole or rest or not parts:
        parts.append(f"{whole + rest:g}s")
    return "".join(parts)


@dataclass(frozen=True)
class RateLimit:
    """A request budget: at most `count` requests in any `per` seconds."""

    count: int
    per: float

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.per)}"


def parse_rate_limit(value: object) -> RateLimit:
    """`"600/5m"` → RateLimit(600, 300.0); `"10/s"` means ten per second."""
    if isinstance(value, RateLimit):
        return value
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"invalid rate limit {value!r}: expected 'COUNT/DURATION' like '600/5m'")
    count_text, per_text = (p.strip() for p in value.split("/", 1))
    if not count_text.isdigit() or int(count_text) <= 0:
        raise ValueError(f"invalid rate limit {value!r}: the count must be a positive integer")
    if per_text in _UNITS:
        per_text = "1" + per_text
    try:
        per = parse_duration(per_text)
    except ValueError as exc:
        raise ValueError(f"invalid rate limit {value!r}: {exc}") from None
    if per <= 0:
        raise ValueError(f"invalid rate limit {value!r}: the period must be positive")
    return RateLimit(int(count_text), per)


def check_http_url(value: str) -> str:
    """Only http(s) with a host: anything else is a typo that would fail at the first request."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r}: expected http:// or https:// and a host")
    return value


def check_listen(value: str) -> str:
    """`host:port` (`[::1]:8780` for IPv6); port 0 asks the OS for a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {value!r}: expected 'host:port'")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"invalid listen address {value!r}: unbalanced brackets")
    return value


def check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"invalid IP address or network {value!r}") from None
    return value


def check_cron(value: str) -> str:
    if not croniter.is_valid(value):
        raise ValueError(f"invalid cron expression {value!r}")
    return value


def parse_months(value: str) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """`"2024-01..current"` → ((2024, 1), None); `"2024-01..2024-06"` → ((2024, 1), (2024, 6))."""
    m = _MONTHS.match(value.strip())
    if not m:
        raise ValueError(
            f"invalid months {value!r}: expected 'YYYY-MM..current' or 'YYYY-MM..YYYY-MM'"
        )
    start = (int(m.group(1)), int(m.group(2)))
    end = None if m.group(3) == "current" else (int(m.group(4)), int(m.group(5)))
    for year, month in (start, end or start):
        if not 1 <= month <= 12 or year < 1970:
            raise ValueError(f"invalid months {value!r}: no such month {year}-{month:02d}")
    if end is not None and end < start:
        raise ValueError(f"invalid months {value!r}: the range ends before it starts")
    return start, end


def _duration(value: Any) -> Any:
    return parse_duration(value)


def _rate_limit(value: Any) -> Any:
    return None if value is None else parse_rate_limit(value)


Duration = Annotated[float, BeforeValidator(_duration)]
RateLimitValue = Annotated[RateLimit | None, BeforeValidator(_rate_limit)]
