"""Scalar value types of the configuration: durations, rate limits, URLs, listen addresses.

They are plain functions so the rest of the daemon (and tests) can parse the same spellings the
file accepts, and `Annotated` aliases so the models say what a field holds rather than how it
is checked.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_FULL = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d|w))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_DURATION_HINT = "expected seconds or a string like '30s', '15m', '2h', '1d', '1h30m'"
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MONTHS = re.compile(r"^([0-9]{4})-([0-9]{2})\.\.(current|([0-9]{4})-([0-9]{2}))$")
# Ten years: longer than any sensible interval, timeout or retention, and short enough that
# `now + duration` never overflows a datetime or a monotonic deadline.
MAX_DURATION = 3650 * 86400.0
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_BYTE_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)")
_BYTE_HINT = "expected a number of bytes or a size like '512KB', '64MB', '64MiB', '1GiB'"
MAX_RATE_COUNT = 1_000_000


def show(value: object, limit: int = 40) -> str:
    """`repr(value)` cut short, so a problem never echoes a whole pasted blob."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def expand_user(path: str | Path) -> Path:
    """`Path(path).expanduser()`, with `~nosuchuser` a ValueError instead of a RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {show(str(path))}: no such user's home") from None


def parse_duration(value: object) -> float:
    """Seconds from `"1h30m"`, `"90d"`, `"250ms"` or a bare number of seconds.

    Accepts numbers too because TOML users write `timeout = 30` as often as `"30s"`; refuses
    negatives, booleans, `nan`/`inf` and anything over ten years, which are always a mistake
    (and `inf` or `99999999999w` would overflow the first datetime they meet).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid duration {show(value)}: {_DURATION_HINT}")
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif text and _DURATION_FULL.fullmatch(text):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"invalid duration {show(value)}: {_DURATION_HINT}")
    elif isinstance(value, int):
        # Clamped before float(): a huge TOML integer would raise OverflowError there.
        seconds = float(max(-1, min(value, int(MAX_DURATION) + 1)))
    else:
        seconds = float(value)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"invalid duration {show(value)}: must be a finite number")
    if seconds < 0:
        raise ValueError(f"invalid duration {show(value)}: must not be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"invalid duration {show(value)}: at most 3650d (ten years)")
    return seconds


def parse_byte_size(value: object) -> int:
    """Bytes from `1048576`, `"512KB"`, `"64MB"` (powers of 1000) or `"64MiB"` (of 1024)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid size {show(value)}: {_BYTE_HINT}")
    if isinstance(value, int):
        return value
    m = _BYTE_SIZE.fullmatch(value.strip().lower())
    if m is None or m.group(2) not in _BYTE_UNITS or len(m.group(1)) > 20:
        raise ValueError(f"invalid size {show(value)}: {_BYTE_HINT}")
    return round(float(m.group(1)) * _BYTE_UNITS[m.group(2)])


def format_byte_size(size: int) -> str:
    """`67108864` → `64MiB`, `64000000` → `64MB`: the exact spelling, for summaries."""
    for unit, factor in (("GiB", 1024**3), ("GB", 1000**3), ("MiB", 1024**2), ("MB", 1000**2),
                         ("KiB", 1024), ("KB", 1000)):  # fmt: skip
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


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
        raise ValueError(
            f"invalid rate limit {show(value)}: expected 'COUNT/DURATION' like '600/5m'"
        )
    count_text, per_text = (p.strip() for p in value.split("/", 1))
    if not (count_text.isascii() and count_text.isdigit()) or len(count_text) > 9:
        raise ValueError(f"invalid rate limit {show(value)}: the count must be a positive integer")
    count = int(count_text)
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(
            f"invalid rate limit {show(value)}: the count must be between 1 and {MAX_RATE_COUNT}"
        )
    if per_text in _UNITS:
        per_text = "1" + per_text
    try:
        per = parse_duration(per_text)
    except ValueError as exc:
        raise ValueError(f"invalid rate limit {show(value)}: {exc}") from None
    if per <= 0:
        raise ValueError(f"invalid rate limit {show(value)}: the period must be positive")
    return RateLimit(count, per)


def mask_userinfo(url: str) -> str:
    """`url` with everything between `://` and its last `@` replaced, so an error message can
    quote the rest. The last `@`, not the first `/`: a password pasted unencoded may hold `/`,
    `?` or `#`, which would otherwise end the part that is masked."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}{sep}[REDACTED]@{rest.rpartition('@')[2]}"


def check_http_url(value: str) -> str:
    """Only http(s) with a host and no credentials: anything else is a typo that would fail at
    the first request, or a password that every summary and log line would then carry.

    Any `@` is refused, before the URL is parsed: `https://admin:8080/pw@host` parses as host
    `admin`, port 8080 and a path holding the password, and a parse error can quote a piece of
    it. The base URLs of the upstreams have no `@`."""
    shown = show(mask_userinfo(value), 80)
    if "@" in value:
        raise ValueError(
            f"invalid URL {shown}: credentials in the URL are not allowed; put them in the "
            "upstream's own fields (user/key, password, client_id/client_secret)"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"invalid URL {shown}: a malformed host or port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {shown}: expected http:// or https:// and a host")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"invalid URL {shown}: contains whitespace or control characters")
    return value


def check_listen(value: str) -> str:
    """`host:port` (`[::1]:8780` for IPv6); port 0 asks the OS for a free one."""
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit())
        or len(port) > 5
        or not 0 <= int(port) <= 65535
    ):
        raise ValueError(f"invalid listen address {show(value)}: expected 'host:port'")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"invalid listen address {show(value)}: unbalanced brackets")
    return value


def check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"invalid IP address or network {show(value)}") from None
    return value


_CRON_REFERENCE = datetime(2025, 1, 1, tzinfo=UTC)


_CRON_FIELDS = (  # name, lowest, highest, names allowed (their values in order from lowest)
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                      "nov", "dec")),
    ("day-of-week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)  # fmt: skip
_CRON_ITEM = re.compile(r"(\*|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?")


def _cron_field_problem(text: str, field: tuple[str, int, int, tuple[str, ...]]) -> str | None:
    """Why `text` is not plain cron for `field` (numbers, names, `*`, `a-b` with a <= b, `/n`,
    lists), or None. croniter also reads extensions nobody here asked for: `R` (random), `H`
    (hashed), a reversed range that wraps (`1-0` fires every minute) — found by probing."""
    name, low, high, names = field
    for item in text.lower().split(","):
        m = _CRON_ITEM.fullmatch(item)
        if m is None:
            return f"{name} {item!r} is not a number, a name, '*', a range or a step"
        bounds = []
        for part in (m.group(2), m.group(3)):
            if part is None:
                continue
            number = low + names.index(part) if part in names else None
            if number is None and (not part.isascii() or not part.isdigit()):
                return f"{name} {part!r} is not a number" + (" or a name" if names else "")
            number = int(part) if number is None else number
            if not low <= number <= high:
                return f"{name} {number} is out of range ({low}-{high})"
            bounds.append(number)
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            return f"{name} range {item!r} runs backwards"
        if m.group(4) is not None and int(m.group(4)) == 0:
            return f"{name} step 0"
    return None


def check_cron(value: str) -> str:
    """Five fields (minute hour day month weekday), UTC, in plain cron, and it must fire: `0 0 31
    2 *` is a valid expression for a job that would never run."""
    fields = [f for f in value.split(" ") if f]
    if len(fields) != 5 or not value.isprintable():  # a newline or tab would break the summary
        raise ValueError(
            f"invalid cron expression {show(value)}: expected five fields separated by spaces "
            "(minute hour day-of-month month day-of-week)"
        )
    for text, field in zip(fields, _CRON_FIELDS, strict=True):
        if problem := _cron_field_problem(text, field):
            raise ValueError(f"invalid cron expression {show(value)}: {problem}")
    from croniter import croniter  # loaded only for configs that schedule by cron

    errors = (ValueError, KeyError, TypeError, OverflowError, IndexError)
    try:
        valid = croniter.is_valid(value)
    except errors:
        valid = False
    if not valid:
        raise ValueError(f"invalid cron expression {show(value)}")
    try:
        croniter(value, _CRON_REFERENCE).get_next(datetime)
    except errors:
        raise ValueError(f"invalid cron expression {show(value)}: it never fires") from None
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


def _byte_size(value: Any) -> Any:
    return parse_byte_size(value)


Duration = Annotated[float, BeforeValidator(_duration)]
RateLimitValue = Annotated[RateLimit | None, BeforeValidator(_rate_limit)]
ByteSize = Annotated[int, BeforeValidator(_byte_size)]
