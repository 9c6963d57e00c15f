"""From an `[upstreams.*]` config table to what the HTTP core takes.

One place, so every client reads timeouts, retries, concurrency, rate limits and secrets the
same way (a `max_retries = 0` must mean no retries for every upstream, not only some).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from daemon.clients.http import HttpOptions
from daemon.clients.ratelimit import RateLimit


def seconds(value: Any, default: float) -> float:
    """A duration given as seconds or a timedelta (None → `default`)."""
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def secret_value(value: Any) -> str:
    """A pydantic `SecretStr` (or a plain string, or None) as text, for building credentials."""
    if value is None:
        return ""
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if callable(getter) else value)


def options_from_settings(cfg: Any, **overrides: Any) -> HttpOptions:
    """`HttpOptions` from the common upstream fields; absent fields take the core's defaults."""
    defaults = HttpOptions()
    rl = getattr(cfg, "rate_limit", None)
    retries = getattr(cfg, "max_retries", None)
    concurrency = getattr(cfg, "max_concurrency", None)
    max_bytes = getattr(cfg, "max_response_bytes", None)
    values: dict[str, Any] = {
        "timeout": seconds(getattr(cfg, "timeout", None), defaults.timeout),
        "max_retry_wait": seconds(getattr(cfg, "max_retry_wait", None), defaults.max_retry_wait),
        "max_response_bytes": defaults.max_response_bytes if max_bytes is None else int(max_bytes),
        "max_retries": defaults.max_retries if retries is None else int(retries),
        "max_concurrency": defaults.max_concurrency if concurrency is None else int(concurrency),
        "rate_limit": None if rl is None else RateLimit(int(rl.count), seconds(rl.per, 1.0)),
    }
    values.update(overrides)
    return HttpOptions(**values)
