"""The typed error tree every part of the daemon raises.

Callers decide behaviour by type, never by message text::

    DaemonError
    ├── ConfigError                 invalid or unreadable configuration (CLI exit 2)
    ├── UpstreamError               anything an upstream API call can end in
    │   ├── UpstreamUnavailable     transient: worth retrying later
    │   │   ├── NetworkError        connection reset/dropped (also ConnectionError)
    │   │   │   └── ConnectError    never connected: safe to retry even a POST
    │   │   ├── UpstreamTimeout     no answer in time (also TimeoutError)
    │   │   ├── ServerError         5xx, or an HTML error page from a proxy
    │   │   └── RateLimited         429 (carries retry_after seconds when known)
    │   ├── AuthError               credentials or tokens refused (401, OAuth errors)
    │   └── UpstreamResponseError   the upstream answered, and the answer is final
    │       ├── ForbiddenError      403
    │       ├── NotFoundError       404 (also LookupError)
    │       ├── ValidationError     400/422 with per-field errors
    │       ├── ResponseTooLarge    an answer over max_response_bytes (after decompression)
    │       └── MalformedResponse   a 2xx body we cannot parse, or one that carries an error
    ├── LimitExceeded               a sync run hit max_pages or max_duration
    ├── UnstorableRecord            a record JSON cannot hold (NaN, Infinity, absurd nesting)
    ├── JobBusy                     a sync job already running in another process
    ├── StoreError                  the database refused or is unusable
    │   ├── DatabaseMismatch        a newer schema, or an SQLite too old (exit 2)
    │   └── DatabaseInUse           another `daemon run` serves this database
    └── RuleError                   a rule or template failed while acting

Errors carry the upstream name, HTTP status and a short body excerpt so the log line is
actionable, and never a secret: excerpts pass through `redact_excerpt` with the secrets the
caller knows about.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

EXCERPT_LIMIT = 300


class DaemonError(Exception):
    """Root of every error the daemon raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file: where (`sync[2].every`) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(DaemonError):
    """The configuration is invalid; carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[ConfigProblem] | str, *, source: str | None = None):
        if isinstance(problems, str):
            problems = [ConfigProblem("", problems)]
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        self.source = source
        head = f"invalid configuration{f' in {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


def redact_excerpt(
    text: str, secrets: Iterable[str] = (), limit: int = EXCERPT_LIMIT, *, cut: bool = False
) -> str:
    """Shorten an upstream body for an error message, masking every known secret — the
    caller's `secrets` and all the log redactor knows (config secrets, Basic pairs, tokens) —
    in every spelling an echo can carry (JSON-escaped, URL-encoded, base64). Masked before it
    is shortened, so this cut can never leave half a secret behind; `cut` says `text` is
    itself the head of a longer body, whose end may hold the first part of one (dropped)."""
    from daemon.logs import redact_cut, redact_text  # lazy: this module is the bottom layer

    text = redact_cut(text, secrets) if cut else redact_text(text, secrets)
    text = _SECRET_FIELD.sub(r"\1[REDACTED]", text)
    return shorten(" ".join(text.split()), limit)


# A credential by its field's name, whether or not its value is known yet: a token endpoint's
# answer that fails to parse (cut short, not JSON) carries a token no one has registered, and
# its excerpt put it in the error in clear (found by probing). JSON and form spellings; a value
# cut short by the body's end is masked too.
_SECRET_FIELD = re.compile(
    r"""((?:"|\b)(?:access_token|refresh_token|id_token|client_secret|password)"""
    r"""(?:"\s*:\s*"|=))[^"&\s]*"""
)


def shorten(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its head and an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class UpstreamError(DaemonError):
    """An upstream API call failed. `status` is None when no HTTP answer arrived."""

    transient = False

    def __init__(
        self,
        message: str,
        *,
        upstream: str,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        excerpt: str = "",
    ):
        self.upstream = upstream
        self.status = status
        self.method = method
        self.path = path
        self.excerpt = excerpt
        where = f"{method} {path}" if method and path else (path or "")
        parts = [f"{upstream}: {message}"]
        if status is not None:
            parts.append(f"(HTTP {status})")
        if where:
            parts.append(f"[{where}]")
        if excerpt:
            parts.append(f"— {excerpt}")
        super().__init__(" ".join(parts))

    def as_dict(self) -> dict[str, object]:
        """A JSON-safe description, as `daemon api` prints it on failure."""
        return {
            "error": type(self).__name__,
            "message": str(self),
            "upstream": self.upstream,
            "status": self.status,
            "method": self.method,
            "path": self.path,
            "excerpt": self.excerpt,
        }


class UpstreamUnavailable(UpstreamError):
    """Transient failure: the same call may succeed later."""

    transient = True


class NetworkError(UpstreamUnavailable, ConnectionError):
    """The connection failed or dropped before a complete answer."""


class ConnectError(NetworkError):
    """The connection was never established, so the upstream cannot have acted on the request;
    even a POST is safe to retry."""


class UpstreamTimeout(UpstreamUnavailable, TimeoutError):
    """The upstream did not answer within the configured timeout."""


class ServerError(UpstreamUnavailable):
    """5xx, or a non-API error page (HTML from a proxy)."""


class BudgetExhausted(UpstreamUnavailable):
    """Our own rate budget for the upstream has no room for an action's request within the
    wait an action may spend (`daemon.clients.priority`). Nothing was sent; `retry_in` is
    the wait in seconds before room is expected."""

    def __init__(self, message: str, *, retry_in: float, **kw: object):
        self.retry_in = retry_in
        super().__init__(message, **kw)  # type: ignore[arg-type]


class RateLimited(UpstreamUnavailable):
    """429. `retry_after` is the wait in seconds the upstream asked for, when it said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object):
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class AuthError(UpstreamError):
    """Credentials or tokens were refused; retrying the same call will not help."""


class UpstreamResponseError(UpstreamError):
    """The upstream gave a final, non-success answer."""


class ForbiddenError(UpstreamResponseError):
    """403: authenticated but not allowed."""


class NotFoundError(UpstreamResponseError, LookupError):
    """404: no such resource, model or method."""


class ValidationError(UpstreamResponseError):
    """400/422: the upstream rejected the input; `field_errors` maps field → messages."""

    def __init__(
        self,
        message: str,
        *,
        field_errors: Mapping[str, Sequence[str]] | None = None,
        **kw: object,
    ):
        self.field_errors: dict[str, list[str]] = {
            k: list(v) for k, v in (field_errors or {}).items()
        }
        super().__init__(message, **kw)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        d = super().as_dict()
        d["field_errors"] = self.field_errors
        return d


class MalformedResponse(UpstreamResponseError):
    """A success status whose body is not what the API promises (not JSON, wrong shape)."""


class ResponseTooLarge(UpstreamResponseError):
    """The answer (after decompression) is larger than the upstream's `max_response_bytes`;
    reading stopped at the limit, so memory stays bounded whatever the upstream sends."""


class LimitExceeded(DaemonError):
    """A sync run reached its `max_pages` or `max_duration`: it stops, is recorded `failed`,
    and tombstones nothing. Pages already committed stay."""


class UnstorableRecord(DaemonError, ValueError):
    """An upstream record that JSON cannot represent; the message names the record's id. The
    job that fetched it fails; nothing of that page is written."""


class JobBusy(DaemonError):
    """The sync job is running in another process (`run-once` beside the service, or the other
    way round). Two walks of one job at once can each vouch for completeness and tombstone a
    record that still exists (found by probing), so the second does not start."""


class StoreError(DaemonError):
    """The database could not be opened, migrated or written."""


class DatabaseMismatch(StoreError):
    """This build of the daemon cannot use the database, and trying again cannot change that:
    a newer daemon wrote it, or the SQLite library is too old for the store. Commands exit 2
    (like an invalid config), so systemd's `RestartPreventExitStatus=2` does not restart the
    service every few seconds after a downgrade."""


class DatabaseInUse(StoreError):
    """Another `daemon run` serves this database. Two would each take the other's in-flight
    events for a crash's leftovers and send their SMS and tickets a second time. Exit 1: the
    other may be on its way out, and systemd tries again."""


class RuleError(DaemonError):
    """A rule failed while acting (template error, missing lookup); fails that action only."""
