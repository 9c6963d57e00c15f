"""From an `[upstreams.*]` config table to what the HTTP core takes.

One place, so every client reads timeouts, retries, concurrency, rate limits, body limits and
secrets the same way (a `max_retries = 0` must mean no retries for every upstream, not only some).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from pydantic import SecretStr

from daemon.clients.http import HttpOptions
from daemon.config.upstreams import UpstreamSettings


def seconds(value: float | timedelta | None, default: float) -> float:
    """A duration given as seconds or a timedelta (None → `default`)."""
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def secret_value(value: SecretStr | str | None) -> str:
    """A pydantic `SecretStr` (or a plain string, or None) as text, for building credentials."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def options_from_settings(cfg: UpstreamSettings, **overrides: Any) -> HttpOptions:
    """`HttpOptions` from the fields every upstream table shares."""
    options = HttpOptions(
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
        max_concurrency=cfg.max_concurrency,
        rate_limit=cfg.rate_limit,
        max_retry_wait=cfg.max_retry_wait,
        max_response_bytes=cfg.max_response_bytes,
        action_reserve=cfg.action_reserve,
    )
    return replace(options, **overrides)
