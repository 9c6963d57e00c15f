"""One mapping from an upstream's answer to the typed error tree, with per-API readers.

Every upstream agrees on what a status means (401 is an auth failure, 429 a rate limit, a 5xx or
a proxy's HTML page a server error); they differ only in where the human message and the field
errors sit in the body, in a few special cases (a refused OAuth grant, NetSapiens' 409 on a
duplicate subscription), and in how a *200* can still carry an error. So the status table lives
here once, and each API contributes an `ErrorReader` that reads its bodies — nothing else.

Why a 2xx is checked too: an upstream that answers `200 {"errors": ...}` (Blesta behind some
proxies, Billomat) or `200 {"error": ...}` (Halo) instead of the data asked for must fail that
call, not be read as "no records" — a sync that read it as an empty list would tombstone a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from daemon.errors import (
    AuthError,
    ForbiddenError,
    MalformedResponse,
    NotFoundError,
    RateLimited,
    ServerError,
    UpstreamError,
    UpstreamResponseError,
    UpstreamTimeout,
    ValidationError,
)

if TYPE_CHECKING:
    from daemon.clients.response import Response

# status -> (error type, message when the body says nothing); 5xx and HTML pages are below.
STATUS_ERRORS: Mapping[int, tuple[type[UpstreamError], str]] = {
    400: (ValidationError, "request rejected"),
    401: (AuthError, "credentials refused"),
    403: (ForbiddenError, "access forbidden"),
    404: (NotFoundError, "not found"),
    408: (UpstreamTimeout, "upstream reported a request timeout"),
    409: (UpstreamResponseError, "conflict"),
    422: (ValidationError, "request rejected"),
    429: (RateLimited, "rate limited"),
}


@dataclass(frozen=True)
class ErrorDetail:
    """What an API's body says about a failure. `kind` overrides the status table (a refused
    OAuth grant is an `AuthError` whatever its status)."""

    message: str = ""
    field_errors: Mapping[str, Sequence[str]] | None = None
    kind: type[UpstreamError] | None = None


class ErrorReader(Protocol):
    """An API's knowledge of its own error bodies."""

    def detail(self, resp: Response) -> ErrorDetail | None:
        """Message, field errors or a type override read from a non-2xx answer."""
        ...

    def failure_in_success(self, resp: Response, body: Any) -> ErrorDetail | None:
        """A 2xx whose parsed body is really an error; None when it is a genuine answer."""
        ...


class PlainReader:
    """For upstreams whose bodies add nothing: the status table alone."""

    def detail(self, resp: Response) -> ErrorDetail | None:
        return None

    def failure_in_success(self, resp: Response, body: Any) -> ErrorDetail | None:
        return None


def error_kwargs(resp: Response) -> dict[str, Any]:
    """The context every upstream error carries (never a secret: the excerpt is redacted)."""
    return {
        "upstream": resp.upstream,
        "status": resp.status,
        "method": resp.method,
        "path": resp.url.path,
        "excerpt": resp.excerpt(),
    }


def classify(status: int, content_type: str) -> tuple[type[UpstreamError], str]:
    """The error type and default message for a non-2xx status."""
    if status in STATUS_ERRORS:
        return STATUS_ERRORS[status]
    if status >= 500 or content_type == "text/html":
        return ServerError, "server error"
    return UpstreamResponseError, "unexpected answer"


def build_error(
    resp: Response,
    kind: type[UpstreamError],
    message: str,
    field_errors: Mapping[str, Sequence[str]] | None = None,
) -> UpstreamError:
    kw = error_kwargs(resp)
    if issubclass(kind, ValidationError):
        return kind(message, field_errors=field_errors, **kw)
    return kind(message, **kw)


def map_error(resp: Response, reader: ErrorReader | None = None) -> UpstreamError:
    """The typed error for a non-2xx answer."""
    kind, default = classify(resp.status, resp.content_type)
    detail = reader.detail(resp) if reader is not None else None
    if detail is None:
        return build_error(resp, kind, default)
    return build_error(resp, detail.kind or kind, detail.message or default, detail.field_errors)


def check_success(resp: Response, body: Any, reader: ErrorReader | None) -> None:
    """Raise when a 2xx body is an error in disguise (see the module docstring)."""
    if reader is None:
        return
    detail = reader.failure_in_success(resp, body)
    if detail is None:
        return
    kind = detail.kind or MalformedResponse
    message = detail.message or "the upstream answered success with an error body"
    raise build_error(
        resp, kind, f"answered {resp.status} with an error: {message}", detail.field_errors
    )
