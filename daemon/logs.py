"""Logging: structlog configured once, one JSON object per line, secrets never written.

Every record, from our own loggers or from the standard library (aiohttp.access included),
goes through the same processor chain and the same handler on stdout, so a log line has one
shape whoever wrote it. Redaction is the last step before the bytes leave, and it runs twice:
on the event dict (so secret-named keys and known secret values are masked field by field) and
on the rendered line (so a secret that reached the output some other way — an exception's repr,
a pretty traceback — is still masked).

The same redactor guards every other way out: the CLI's stdout and stderr (`RedactingStream`),
error text stored in the database (`redact_text`) and upstream error excerpts. A secret is
registered with the spellings it takes on the wire (`secret_forms`): as is, JSON-escaped,
URL-encoded, base64 — and a Basic credential as the base64 of its `user:secret` pair — because
an upstream that echoes a request echoes it encoded.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 4
# Secrets shorter than this are still masked, but `check-config` warns: a short value matches
# ordinary text too, and one under MIN_SECRET_LENGTH cannot be masked at all.
RECOMMENDED_SECRET_LENGTH = 8
# Tokens issued at runtime are kept for this many registrations: an hourly token would
# otherwise grow the pattern every log line is matched against for as long as the process runs.
MAX_TRANSIENT_SECRETS = 64
# Above this size, text is first scanned for each registered spelling (a C-speed substring
# search) and the regex runs only over the spellings present.
_SCAN_THRESHOLD = 4096
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


def _b64(text: str) -> str:
    # Unpadded: a prefix of the padded form, so it matches whether or not the `=` survived.
    return base64.b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def _spellings(bases: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for base in bases:
        escaped = json.dumps(base)[1:-1]
        for form in (
            base,
            escaped,
            json.dumps(base, ensure_ascii=False)[1:-1],
            json.dumps(escaped)[1:-1],  # a JSON request body echoed inside a JSON answer
            quote(base, safe=""),
            quote_plus(base, safe=""),
        ):
            out.update((form, _lower_hex(form)))
    return {f for f in out if len(f) >= MIN_SECRET_LENGTH}


def secret_forms(value: str) -> set[str]:
    """Every spelling of `value` to mask: as is, JSON-escaped (ASCII or not, once or twice),
    URL-encoded (`%20` and `+` styles, either hex case) and base64 — and each encoding of the
    base64 too.
    Empty when `value` is shorter than MIN_SECRET_LENGTH."""
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return set()
    return _spellings((value, _b64(value)))


def basic_pair_forms(user: str, secret: str) -> set[str]:
    """The spellings of HTTP Basic credentials: base64 of `user:secret`, as
    `Authorization: Basic ...` carries them, in every encoding `secret_forms` knows."""
    if not secret:
        return set()
    return _spellings((_b64(f"{user}:{secret}"),))


class Redactor:
    """Masks secret-named fields and known secret values, in event dicts and in text.

    The set of secrets grows at runtime (`add_secrets`) because OAuth tokens only exist after
    the first login; it is the one piece of module state besides `log`. Secrets from the
    configuration stay registered; transient ones (tokens) are kept for the last
    MAX_TRANSIENT_SECRETS registrations — and each owner's (an upstream's) latest ones for as
    long as they are its latest, however many other upstreams registered since: a token still
    in use must never fall out (found by probing: 64 refreshes of another upstream's short
    tokens unmasked one).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._permanent: set[str] = set()
        self._transient: collections.deque[frozenset[str]] = collections.deque(
            maxlen=MAX_TRANSIENT_SECRETS
        )
        self._current: dict[str, frozenset[str]] = {}  # each owner's latest transient forms
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(
        self, values: Iterable[str], *, transient: bool = False, owner: str | None = None
    ) -> None:
        forms: set[str] = set()
        for value in values:
            forms |= secret_forms(value)
        self.add_forms(forms, transient=transient, owner=owner)

    def add_forms(
        self, forms: Iterable[str], *, transient: bool = False, owner: str | None = None
    ) -> None:
        """Register already-derived spellings (see `secret_forms`, `basic_pair_forms`);
        `owner` names whose latest transient secrets these are (kept while they are)."""
        forms = frozenset(f for f in forms if isinstance(f, str) and len(f) >= MIN_SECRET_LENGTH)
        if not forms:
            return
        with self._lock:
            if transient:
                if forms not in self._transient:
                    self._transient.append(forms)
                if owner is not None:
                    self._current[owner] = forms
            else:
                self._permanent |= forms
            new = frozenset(self._permanent.union(*self._transient, *self._current.values()))
            if new != self._secrets:
                self._secrets = new
                self._pattern = _pattern(new)

    def forms(self) -> frozenset[str]:
        """Every spelling registered now."""
        return self._secrets

    def clear(self) -> None:
        with self._lock:
            self._permanent = set()
            self._transient.clear()
            self._current.clear()
            self._secrets = frozenset()
            self._pattern = None

    def text(self, value: str) -> str:
        pattern, secrets = self._pattern, self._secrets
        if pattern is None:
            return value
        if len(value) > _SCAN_THRESHOLD:
            present = [s for s in secrets if s in value]
            if not present:
                return value
            pattern = _pattern(present)
        return pattern.sub(REDACTED, value)

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


def _pattern(spellings: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so a secret containing another is masked whole.
    return re.compile("|".join(map(re.escape, sorted(spellings, key=len, reverse=True))))


_REDACTOR = Redactor()


def add_secrets(
    values: Iterable[str], *, transient: bool = False, owner: str | None = None
) -> None:
    """Register secret values (config secrets; tokens with `transient=True` as they are
    issued, `owner` the upstream whose current ones they are) so they are masked, in every
    spelling, from now on."""
    _REDACTOR.add(values, transient=transient, owner=owner)


def add_basic_pair(user: str, secret: str) -> None:
    """Register an HTTP Basic credential: its `Authorization` header is base64 of the pair."""
    _REDACTOR.add_forms(basic_pair_forms(user, secret))


def clear_secrets() -> None:
    """Forget every registered secret (tests; a reload re-registers the new config's)."""
    _REDACTOR.clear()


def redact_text(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret (and `extra`) masked in every spelling, for output
    outside logging: CLI output, error text stored in the database, error excerpts."""
    forms: set[str] = set()
    for secret in extra:
        forms |= secret_forms(secret)
    if forms:
        text = _pattern(forms).sub(REDACTED, text)
    return _REDACTOR.text(text)


def redact_cut(text: str, extra: Iterable[str] = ()) -> str:
    """`redact_text` for the head of a longer text (an error body cut to an excerpt): also drops
    an end that could be the start of a secret the cut split in two, which no pattern matches
    whole."""
    text = redact_text(text, extra)
    forms = set(_REDACTOR.forms())
    for secret in extra:
        forms |= secret_forms(secret)
    cut = _partial_tail(text, forms)
    return text[:-cut] if cut else text


def _partial_tail(text: str, forms: Iterable[str]) -> int:
    """The length of the longest end of `text` that is the beginning of one of `forms`."""
    best = 0
    for form in forms:
        for k in range(min(len(form) - 1, len(text)), best, -1):
            if text.endswith(form[:k]):
                best = k
                break
    return best


def redact_strings(value: Any) -> Any:
    """`value` (JSON-like data) with every string, key or value, passed through `redact_text`
    — before it is encoded, so a secret that an echo JSON-escaped once is still recognised
    when the encoder escapes it a second time. Keys are not judged by name: this is for
    answers and error reports, where a field called `key` is data."""
    if isinstance(value, str):
        return _REDACTOR.text(value)
    if isinstance(value, Mapping):
        return {redact_strings(k): redact_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_strings(v) for v in value]
    return value


def mask_webhook_url(url: str, secrets: Iterable[str] = ()) -> str:
    """A webhook post URL fit to show: `https://hooks.example.com/webhooks/netsapiens/message/
    [REDACTED]`. The last path segment is the secret by construction (`<public_url>/<model>/
    <secret>`), so it is masked even when the secret is not known here (a URL recorded under an
    older secret); any user info and query are masked too, and known secrets anywhere."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url, secrets) if url else url
    if not parts.scheme or not parts.netloc:
        return redact_text(url, secrets)
    head, _, last = parts.path.rstrip("/").rpartition("/")
    path = f"{head}/{REDACTED}" if last else parts.path
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = REDACTED if parts.query else ""
    return redact_text(urlunsplit((parts.scheme, netloc, path, query, "")), secrets)


class RedactingStream:
    """A text stream that masks every registered secret before it writes: the CLI's stdout and
    stderr pass through one, so no command's output can carry a secret, whoever printed it.

    Text is held until a line ends (or `flush`), so a secret split across two `write` calls is
    still seen whole; everything up to the last line break is masked and written in one piece.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
        if cut:
            ready, self._pending = self._pending[:cut], self._pending[cut:]
            self.stream.write(_REDACTOR.text(ready))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            ready, self._pending = self._pending, ""
            self.stream.write(_REDACTOR.text(ready))
        self.stream.flush()

    def isatty(self) -> bool:
        return _isatty(self.stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def redacted_stdio() -> Iterator[None]:
    """Route `sys.stdout` and `sys.stderr` through `RedactingStream` for the duration."""
    saved = sys.stdout, sys.stderr
    out, err = RedactingStream(saved[0]), RedactingStream(saved[1])
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        for stream in (out, err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed pipe: nothing more can be written anyway
        sys.stdout, sys.stderr = saved


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
    basic_pairs: Iterable[tuple[str, str]] = (),
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and the stdlib root logger; safe to call again (reload, tests).

    `secrets` (and the HTTP Basic `(user, secret)` pairs) are added to the redactor; earlier
    ones stay registered, because a line logged after a reload may still carry a value from
    before it.
    """
    stream = sys.stdout if stream is None else stream
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    add_secrets(secrets)
    for user, secret in basic_pairs:
        add_basic_pair(user, secret)
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
    # No line renders a call site, a thread or a process, so records need not look them up:
    # the stdlib's documented switches (logging HOWTO, "Optimization"). They skip the frame
    # walk and line-number look-up (up to 3 µs a line in a long function such as the webhook
    # handler), `threading.current_thread()`, and a getpid() system call every record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp.access is INFO per request: route it, keep it at the configured level.
    logging.getLogger("aiohttp.access").setLevel(numeric)
    # aiosqlite logs every statement with its parameters at DEBUG: event payloads (phone
    # numbers, message text) and subscription URLs. Never wanted, even at debug.
    logging.getLogger("aiosqlite").setLevel(max(numeric, logging.INFO))

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
