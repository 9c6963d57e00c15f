"""Logging: structlog configured once, one JSON object per line, secrets never written.

Every record, from our own loggers or from the standard library (aiohttp.access included),
goes through the same processor chain and the same handler on stdout, so a log line has one
shape whoever wrote it. Redaction is the last step before the bytes leave, and it runs twice:
on the event dict (so secret-named keys and known secret values are masked field by field) and
on the rendered line (so a secret that reached the output some other way — an exception's repr,
a pretty traceback — is still masked).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 4
SECRET_KEY_NAMES = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "key",
        "api_key",
        "apikey",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "authorization",
        "proxy_authorization",
        "client_secret",
        "app_secret",
        "cookie",
        "set_cookie",
    }
)
# Suffixes catch `x_api_key`, `webhook_secret`, `ns_password`; plain `_key` is left out on
# purpose so `dedupe_key` and `idempotency_key` stay readable in the log.
_SECRET_SUFFIXES = ("_password", "_secret", "_token", "_api_key", "_apikey")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_FIRST_KEYS = ("timestamp", "level", "event", "logger")

log = structlog.get_logger(__name__)


def is_secret_key(name: object) -> bool:
    """Whether a field called `name` holds a secret (`Authorization`, `client_secret`, ...)."""
    if not isinstance(name, str):
        return False
    norm = name.strip().lower().replace("-", "_")
    return norm in SECRET_KEY_NAMES or norm.endswith(_SECRET_SUFFIXES)


class Redactor:
    """Masks secret-named fields and known secret values, in event dicts and in text.

    The set of secrets grows at runtime (`add_secrets`) because OAuth tokens only exist after
    the first login; it is the one piece of module state besides `log`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            new = set(self._secrets)
            for value in values:
                if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
                    new.add(value)
                    # The same secret as it appears inside rendered JSON (quotes, backslashes,
                    # non-ASCII escaped), so the final text pass matches it too.
                    escaped = json.dumps(value)[1:-1]
                    if escaped != value:
                        new.add(escaped)
            if new != self._secrets:
                self._secrets = frozenset(new)
                # Longest first, so a secret containing another is masked whole.
                alternatives = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, alternatives)))

    def clear(self) -> None:
        with self._lock:
            self._secrets = frozenset()
            self._pattern = None

    def text(self, value: str) -> str:
        pattern = self._pattern
        return pattern.sub(REDACTED, value) if pattern is not None else value

    def value(self, value: Any, key: object = None) -> Any:
        if is_secret_key(key) and value is not None and value != "":
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        if isinstance(value, BaseException):
            return self.text(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        """structlog processor: mask the event dict field by field (and put the fields a
        reader scans for first)."""
        ordered = {k: event_dict[k] for k in _FIRST_KEYS if k in event_dict}
        ordered.update(event_dict)
        return {
            k: (self.text(v) if k == "event" and isinstance(v, str) else self.value(v, k))
            for k, v in ordered.items()
        }


_REDACTOR = Redactor()


def add_secrets(values: Iterable[str]) -> None:
    """Register secret values learned at runtime (tokens) so they are masked from now on."""
    _REDACTOR.add(values)


def clear_secrets() -> None:
    """Forget every registered secret (tests; a reload re-registers the new config's)."""
    _REDACTOR.clear()


def redact_text(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret (and `extra`) masked, for output outside logging."""
    for secret in sorted((s for s in extra if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _REDACTOR.text(text)


class _RedactedRenderer:
    """Renders, then masks the rendered line: the safety net for anything the dict pass missed."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        rendered = self._renderer(logger, method, event_dict)
        return _REDACTOR.text(rendered if isinstance(rendered, str) else str(rendered))


class _DaemonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so configuring again replaces it instead of doubling."""


def _drop_formatted_message(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """`logging.Formatter` leaves `record.message` behind, which ExtraAdder would copy: it is
    the `event` again."""
    if event_dict.get("message") == event_dict.get("event"):
        event_dict.pop("message", None)
    return event_dict


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):
        return False


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and the stdlib root logger; safe to call again (reload, tests).

    `secrets` are added to the redactor; earlier ones stay registered, because a line logged
    after a reload may still carry a value from before it.
    """
    stream = sys.stdout if stream is None else stream
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    add_secrets(secrets)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    if fmt not in ("json", "console", "auto"):
        raise ValueError(f"unknown log format {fmt!r}")
    tty = _isatty(stream)
    if fmt == "console" or (fmt == "auto" and tty):
        renderer: Processor = structlog.dev.ConsoleRenderer(
            colors=tty,
            exception_formatter=structlog.dev.plain_traceback,  # rich would print locals
        )
        final: list[Processor] = [_REDACTOR, _RedactedRenderer(renderer)]
    else:
        final = [
            structlog.processors.format_exc_info,
            _REDACTOR,
            _RedactedRenderer(structlog.processors.JSONRenderer(default=repr)),
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_formatted_message],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _DaemonHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _DaemonHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # aiohttp.access is INFO per request: route it, keep it at the configured level.
    logging.getLogger("aiohttp.access").setLevel(numeric)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: module-level `log` objects must follow a reconfiguration.
        cache_logger_on_first_use=False,
    )
