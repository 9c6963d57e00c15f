"""Serving the listener: an access log that never writes a request path, and the runner for it.

aiohttp's default access log writes the request line, and the webhook's request line carries
the secret (`/webhooks/netsapiens/message/<secret>`). Redaction would mask a secret the log knows
about, but not one it does not (a mistyped or rotated-away secret a scanner tries, a request for
a path that matches no route). So the access line names the *route template* instead:
`/webhooks/netsapiens/{model}/[secret]`, or `[unmatched]` for a request no route took — never the
path, never the query. It is logged at DEBUG: at INFO the per-delivery record is the listener's
own `webhook.accepted` / `webhook.rejected` line, and health checks polled every few seconds
should not fill the journal.

Serve the app (and any routes the service adds, such as `/healthz`) with `listener_runner(app)`
instead of a bare `web.AppRunner(app)`. It also turns off aiohttp's "lingering close": by default,
after a handler answers without reading the whole body (a 404, a 413, a 408), aiohttp keeps the
connection for up to 10 s reading and discarding the rest — time a slow or hostile client gets
for free — and when the body is broken (a false `Content-Encoding`) that read raises and aiohttp
logs an "Unhandled exception" traceback. With `lingering_time=0` such a connection is closed
right after the answer.

Malformed HTTP (a bad request line, conflicting length headers, an encoding we cannot decode)
is the client's fault, yet aiohttp logs it as an ERROR with a traceback, and the parser's
message quotes the offending line — which may be the request line, secret and all. The runner
gives aiohttp a server logger whose filter turns those records into one `http.bad_request`
line (`status`, `error` type, `remote`; no message, no traceback). Other server errors (a bug in
a handler) keep their traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

__all__ = [
    "ACCESS_LEVEL",
    "SERVER_LOGGER",
    "ClientErrorFilter",
    "RouteAccessLogger",
    "listener_runner",
    "route_label",
]

ACCESS_LEVEL = logging.DEBUG
SERVER_LOGGER = "daemon.webhooks.server"  # what aiohttp's request handler logs through
UNMATCHED = "[unmatched]"
# Route placeholders whose value is secret: their name is shown masked, never their value.
SECRET_PLACEHOLDERS = ("{secret}",)


def route_label(request: web.BaseRequest) -> str:
    """The template of the route that served `request` (`/webhooks/netsapiens/{model}/[secret]`),
    `[unmatched]` when none did (404 and 405 from the router)."""
    if not isinstance(request, web.Request):  # a request the parser refused: never routed
        return UNMATCHED
    try:
        match_info = request.match_info
    except AssertionError:  # aiohttp asserts it was routed; an error page was not
        return UNMATCHED
    if match_info is None or match_info.http_exception is not None:
        return UNMATCHED
    resource = match_info.route.resource
    if resource is None:
        return UNMATCHED
    label: str = resource.canonical
    for placeholder in SECRET_PLACEHOLDERS:
        label = label.replace(placeholder, "[" + placeholder[1:-1] + "]")
    return label


class RouteAccessLogger(AbstractAccessLogger):
    """One `http.access` record per request: method, route template, status, duration, peer."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.log(
            ACCESS_LEVEL,
            "http.access",
            extra={
                "method": request.method,
                "route": route_label(request),
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "remote": request.remote,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(ACCESS_LEVEL)


class ClientErrorFilter(logging.Filter):
    """Rewrites aiohttp's records about malformed requests into one `http.bad_request` line
    without the parser's message or a traceback (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg, record.args = "http.bad_request", ()
            record.exc_info, record.exc_text = None, None
            if record.levelno > logging.INFO:
                record.levelno, record.levelname = logging.INFO, "INFO"
            record.status = exc.code
            record.error = type(exc).__name__
            record.remote = remote if isinstance(remote, str) else None
        return True


def _server_logger() -> logging.Logger:
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())
    return logger


def listener_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """An `AppRunner` for the listener app: route-only access log on `aiohttp.access`, client
    errors logged without tracebacks, no lingering close, no signal handling of its own (the
    service owns signals). `kwargs` go to `AppRunner` (`shutdown_timeout`, ...)."""
    kwargs.setdefault("handle_signals", False)
    kwargs.setdefault("lingering_time", 0)
    kwargs.setdefault("logger", _server_logger())
    return web.AppRunner(
        app,
        access_log_class=RouteAccessLogger,
        access_log=logging.getLogger("aiohttp.access"),
        **kwargs,
    )
