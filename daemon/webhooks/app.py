"""The webhook listener: `POST /webhooks/netsapiens/<model>/<secret>` → inbox → 2xx.

What each answer means to the PBX (a post answered above 302 counts as a failed delivery):

- 200: the events are committed; `{"accepted", "duplicates", "rejected"}`. A redelivery is a
  200 whose events are all `duplicates`.
- 400: the body is not UTF-8 JSON, holds NaN/Infinity, nests deeper than `max_depth`, has more
  than `max_elements` values, is JSON but neither object nor array, or none of its elements is
  a usable event. The text says which, briefly, and never echoes the input.
- 403: the client address (see `remote`) is not in `allow_from`.
- 404: wrong secret or unknown model: one response for both, the same as the router's for an
  unknown path, so neither can be probed.
- 405: another method on the webhook path (aiohttp's router).
- 408: the body did not arrive within `read_timeout`.
- 413: the body is over `max_body_bytes`, by Content-Length or counted while reading (after
  any Content-Encoding is undone).
- 503: the inbox could not commit (StoreError): nothing was stored; the PBX should retry.

Order of checks: source, then secret and model, then the body — an unauthenticated client
never gets the body parsed. An empty array is 200 with nothing accepted: not an error, and a
4xx would count against the subscription. In a batch with some unusable elements the usable
ones are stored, and `rejected` counts the rest. The 200 is sent only after the inbox commit;
`on_events` is then called with the ids of the *new* events (never duplicates), before the
response, to wake the dispatcher — it must not block.

Handlers reach their dependencies through `LISTENER` (`web.AppKey`), a box holding the current
`ListenerDeps`: a started aiohttp app's state cannot be reassigned, so a SIGHUP reload swaps the
box's contents with `reload_listener(app, new_deps)` (new secrets, limits, allow_from) while
requests in flight finish with the deps they started with. The service adds its own routes
(`/healthz`, `/metrics`) to the app `make_app` returns, then serves it with
`access.listener_runner`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from daemon.clock import Clock
from daemon.config import NETSAPIENS_MODELS, Settings
from daemon.crashpoints import crashpoint
from daemon.errors import ConfigError, StoreError
from daemon.webhooks.body import DEFAULT_MAX_DEPTH
from daemon.webhooks.event import PayloadError
from daemon.webhooks.events import parse_payload
from daemon.webhooks.inbox import InboxWriter, new_event
from daemon.webhooks.remote import IPAddress, IPNetwork, client_address, is_allowed, networks
from daemon.webhooks.secrets import SecretCheck, WebhookSecrets

log = structlog.get_logger(__name__)

__all__ = [
    "LISTENER",
    "ROUTE",
    "ListenerBox",
    "ListenerDeps",
    "deps_from_settings",
    "make_app",
    "reload_listener",
]

ROUTE = "/webhooks/netsapiens/{model}/{secret}"
# A full 1 MB batch of NetSapiens message objects is ~30,000 JSON values; this bounds the
# shapes that are all structure (`[[],[],...]`), not legitimate volume.
DEFAULT_MAX_ELEMENTS = 100_000
DEFAULT_READ_TIMEOUT = 30.0


def _ignore(outcome: str) -> None:
    return None


@dataclass(frozen=True)
class ListenerDeps:
    """Everything the listener needs, handed in by the service (no globals).

    `models`: the model names accepted in the URL — every NetSapiens model, subscribed or not
    (a subscription made by hand for another model still lands in the inbox).
    `on_events(ids)`: called after the commit with the new events' ids; must not block.
    `on_outcome(label)`: one call per request (`accepted`, or the rejection reason), for metrics.
    """

    inbox: InboxWriter
    secrets: SecretCheck
    clock: Clock
    on_events: Callable[[Sequence[int]], None]
    models: frozenset[str] = frozenset(NETSAPIENS_MODELS)
    max_body_bytes: int = 1_048_576
    allow_from: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    default_region: str = "US"
    max_depth: int = DEFAULT_MAX_DEPTH
    max_elements: int = DEFAULT_MAX_ELEMENTS
    read_timeout: float = DEFAULT_READ_TIMEOUT
    on_outcome: Callable[[str], None] = _ignore


class ListenerBox:
    """The current ListenerDeps of one app; replaced whole, never mutated field by field."""

    def __init__(self, deps: ListenerDeps):
        self.deps = deps


LISTENER = web.AppKey("webhook_listener", ListenerBox)


def deps_from_settings(
    settings: Settings,
    *,
    inbox: InboxWriter,
    clock: Clock,
    on_events: Callable[[Sequence[int]], None],
    loaded_at: datetime,
    on_outcome: Callable[[str], None] = _ignore,
) -> ListenerDeps:
    """ListenerDeps from `[http]`, `[daemon]` and `[webhooks.netsapiens]`. `loaded_at` starts
    the previous secret's grace; a reload that keeps the same previous secret should pass the
    time it was first loaded."""
    hooks = settings.webhooks.netsapiens
    if hooks is None:
        raise ConfigError("[webhooks.netsapiens] is not configured")
    previous = hooks.previous_secret.get_secret_value() if hooks.previous_secret else None
    secrets = WebhookSecrets.rotating(
        hooks.secret.get_secret_value(),
        previous,
        loaded_at=loaded_at,
        grace=timedelta(seconds=hooks.rotation_grace),
    )
    return ListenerDeps(
        inbox=inbox,
        secrets=secrets,
        clock=clock,
        on_events=on_events,
        max_body_bytes=int(settings.http.max_body_bytes),
        allow_from=networks(hooks.allow_from),
        trusted_proxies=networks(settings.http.trusted_proxies),
        default_region=settings.daemon.default_region,
        on_outcome=on_outcome,
    )


class _Refused(Exception):
    """Internal: answer `status`. `reason` is a short label from a fixed set (the log's
    `reason`, the metric's outcome); `detail` is the sentence the client is told, never an
    echo of its input; `close` drops the connection afterwards (a body left half-read)."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str = "",
        *,
        close: bool = False,
        note: str | None = None,
    ):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.close = close
        self.note = note  # for the log only


async def _read_body(request: web.Request, deps: ListenerDeps) -> bytes:
    """The body, refused past `max_body_bytes` before it is all in memory."""
    limit = deps.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise _Refused(413, "too large", f"over {limit} bytes")
    content = request.content
    if content.is_eof() and not content.exception():  # all there already (the usual case)
        body = content.read_nowait()
        if len(body) > limit:
            raise _Refused(413, "too large", f"over {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deps.read_timeout):
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    raise _Refused(413, "too large", f"over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise _Refused(408, "body timeout", "the body came too slowly", close=True) from None
    except (web.RequestPayloadError, HttpProcessingError):  # bad chunking, a false encoding
        raise _Refused(400, "unreadable body", "the body cannot be decoded", close=True) from None
    except ConnectionError:
        raise _Refused(400, "connection lost", close=True) from None
    return b"".join(chunks)


_TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Payload Too Large",
    503: "Service Unavailable",
}


def _refusal(
    deps: ListenerDeps, refused: _Refused, model: str | None, remote: str | None
) -> web.Response:
    deps.on_outcome(refused.reason)
    log.warning(
        "webhook.rejected",
        reason=refused.reason,
        model=model,
        remote=remote,
        status=refused.status,
        **({"detail": refused.detail} if refused.detail else {}),
        **({"note": refused.note} if refused.note else {}),
    )
    if refused.status == 404:
        # Exactly what the router answers for an unknown path, whichever check failed.
        raise web.HTTPNotFound()
    text = f"{refused.status}: {_TITLES.get(refused.status, 'Error')}"
    if refused.detail:
        text += f" ({refused.detail})"
    response = web.Response(status=refused.status, text=text)
    if refused.close:
        response.force_close()
    return response


def _remote(request: web.Request, deps: ListenerDeps) -> IPAddress | None:
    return client_address(
        request.remote, request.headers.getall("X-Forwarded-For", ()), deps.trusted_proxies
    )


async def handle_webhook(request: web.Request) -> web.Response:
    deps = request.app[LISTENER].deps  # read once: a reload mid-request does not mix deps
    started = deps.clock.monotonic()
    now = deps.clock.now()
    model_given = request.match_info["model"]
    known = model_given in deps.models
    model = model_given if known else None  # an unknown "model" is attacker text: not logged
    # The client address is worked out only when it decides something or is logged.
    addr: IPAddress | None = _remote(request, deps) if deps.allow_from else None
    try:
        _admit(request, deps, addr, now, known)
        body = await _read_body(request, deps)
        try:
            parsed = parse_payload(
                model_given,
                body,
                default_region=deps.default_region,
                max_depth=deps.max_depth,
                max_elements=deps.max_elements,
            )
        except PayloadError as exc:
            raise _Refused(400, exc.kind, str(exc)) from None
        if parsed.rejected and not parsed.events:
            raise _Refused(
                400,
                "no valid event",
                "no element of the body is a usable event",
                note=parsed.rejected[0].reason,  # may quote the PBX's text: logged, not answered
            )
        crashpoint("after_parse")
        rows = [new_event(e, via="webhook", received_at=now) for e in parsed.events]
        rejected = parsed.rejected
        # The events live on as rows: let the parsed objects go before the wait for the commit
        # rather than keep them alive (and scanned by the garbage collector) meanwhile.
        del parsed
        try:
            results = await deps.inbox.insert_events(rows) if rows else []
        except StoreError as exc:
            log.error("webhook.failed", model=model, events=len(rows), error=str(exc))
            raise _Refused(503, "store unavailable", "retry later") from None
    except _Refused as refused:
        if addr is None:
            addr = _remote(request, deps)
        return _refusal(deps, refused, model, str(addr) if addr is not None else None)
    crashpoint("after_commit_before_2xx")
    new_ids = [r.id for r in results if not r.duplicate]
    if new_ids:
        _wake(deps, new_ids)
    duplicates = len(results) - len(new_ids)
    deps.on_outcome("accepted")
    log.info(
        "webhook.accepted",
        model=model,
        events=len(new_ids),
        duplicates=duplicates,
        rejected=len(rejected),
        duration_ms=round((deps.clock.monotonic() - started) * 1000, 2),
        **({"first_rejection": rejected[0].reason} if rejected else {}),
    )
    return web.json_response(
        {"accepted": len(new_ids), "duplicates": duplicates, "rejected": len(rejected)}
    )


def _admit(
    request: web.Request, deps: ListenerDeps, addr: IPAddress | None, now: datetime, known: bool
) -> None:
    """The checks that need no body: the source, the secret, the model."""
    if not is_allowed(addr, deps.allow_from):
        raise _Refused(403, "source not allowed")
    if not deps.secrets.matches(request.match_info["secret"], now):
        raise _Refused(404, "bad secret")
    if not known:
        raise _Refused(404, "unknown model")


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: the checks that need no body first, and the announced length,
    so a wrong secret or an oversized body is refused before the client is invited to send it
    (aiohttp's own handler answers 100 Continue to anyone). The refusal closes the connection:
    the body it announced is never read."""
    deps = request.app[LISTENER].deps
    model = request.match_info["model"]
    addr = _remote(request, deps)
    try:
        _admit(request, deps, addr, deps.clock.now(), model in deps.models)
        length = request.content_length
        if length is not None and length > deps.max_body_bytes:
            raise _Refused(413, "too large", f"over {deps.max_body_bytes} bytes")
    except _Refused as refused:
        refused.close = True
        known = model if model in deps.models else None
        return _refusal(deps, refused, known, str(addr) if addr is not None else None)
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="Unknown Expect")
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response's size
    return None


def _wake(deps: ListenerDeps, ids: Sequence[int]) -> None:
    """Tell the dispatcher. The events are committed whatever happens here, and the dispatcher
    finds them on its next pass anyway, so a failure is logged, not answered with an error."""
    try:
        deps.on_events(ids)
    except Exception as exc:  # a supervision boundary: the delivery itself succeeded
        log.error("webhook.wake_failed", events=len(ids), error=repr(exc))


def make_app(deps: ListenerDeps) -> web.Application:
    """The listener app. The service may add routes (`/healthz`, `/metrics`) before serving it
    with `daemon.webhooks.access.listener_runner`."""
    # client_max_size bounds `request.read()`/`post()` in routes the service adds; the webhook
    # handler enforces max_body_bytes itself while streaming.
    app = web.Application(client_max_size=deps.max_body_bytes)
    app[LISTENER] = ListenerBox(deps)
    app.router.add_post(
        ROUTE, handle_webhook, name="netsapiens-webhook", expect_handler=_expect_continue
    )
    return app


def reload_listener(app: web.Application, deps: ListenerDeps) -> None:
    """Serve the next requests with `deps` (a SIGHUP reload). `client_max_size`, which only
    bounds routes the service added, keeps its value from `make_app`."""
    app[LISTENER].deps = deps
