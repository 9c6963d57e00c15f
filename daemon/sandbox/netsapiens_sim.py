"""A simulated NetSapiens PBX (API v2), faithful to upstream-apis §5: the HTTP side.

What it reproduces, so the client, the keeper and the backfill are tested against the PBX's
behaviour rather than our assumptions: the JSON token endpoint (password and refresh grants,
configurable lifetime, rotating refresh tokens where each refresh spends the old one,
revocation), 401 "The access token provided has expired", `~` as "my domain/user", messaging
(new session → 200 Message, send in session → 202 Accepted, session id rules), message session
and message lists, CDRs with datetime filters, 0-based `start`/`limit` paging on every list, and
the subscription table: explicit or token-bound expiry, expired rows vanishing, 409 on an exact
duplicate, `pending` → `active` after the first delivery and `error` after failures. The state
and the delivery of events live in `netsapiens_state`.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

from aiohttp import web

from daemon.sandbox.faults import Handler, fault_middleware
from daemon.sandbox.listing import Query
from daemon.sandbox.netsapiens_state import (
    MODELS,
    Delivery,
    NetsapiensState,
    Record,
    iso,
    ns_dt,
    parse_dt,
)
from daemon.sandbox.server import serve_app

__all__ = [
    "MODELS",
    "PREFIX",
    "SIM_INBOUND_PATH",
    "Delivery",
    "NetsapiensState",
    "iso",
    "make_netsapiens_app",
    "ns_dt",
    "serve_netsapiens",
]

PREFIX = "/ns-api/v2"
SIM_INBOUND_PATH = "/sandbox/inbound-sms"  # simulator control, outside the API (no token)
SESSION_ID = re.compile(r"^[A-Za-z0-9_]{32,}$")
MESSAGE_TYPES = frozenset({"sms", "mms", "chat", "chat-media"})


STATE = web.AppKey("netsapiens_state", NetsapiensState)
TOKEN = web.RequestKey("netsapiens_token", str)


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


def _st(request: web.Request) -> NetsapiensState:
    return request.app[STATE]


async def _json(request: web.Request) -> Record:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"code": 400, "message": "body is not JSON"}),
            content_type="application/json",
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"code": 400, "message": "body must be an object"}),
            content_type="application/json",
        )
    return body


async def token(request: web.Request) -> web.Response:
    st = _st(request)
    st.stats.token_requests += 1
    body = await _json(request)
    grant = str(body.get("grant_type", ""))
    st.grants.append(grant)
    if body.get("client_id") != st.client_id or body.get("client_secret") != st.client_secret:
        return _err(401, "The client credentials are invalid")
    if grant == "password":
        if body.get("username") != st.username or body.get("password") != st.password:
            return _err(401, "Invalid username and password combination")
    elif grant == "refresh_token":
        refresh = body.get("refresh_token")
        if refresh not in st.refresh_tokens:
            return _err(st.refresh_refused_status, "Invalid refresh token")
        st.refresh_tokens.discard(refresh)  # rotation: a refresh token works once
    else:
        return _err(400, f"The grant type '{grant}' is not supported")
    return web.json_response(st.issue())


@web.middleware
async def bearer_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PREFIX) or request.path.rstrip("/") == f"{PREFIX}/tokens":
        return await handler(request)
    st = _st(request)
    auth = request.headers.get("Authorization", "")
    tok = auth[7:] if auth.startswith("Bearer ") else ""
    expiry = st.tokens.get(tok)
    if expiry is None:
        return _err(401, "The access token provided is invalid")
    if st.now() >= expiry:
        return _err(401, "The access token provided has expired")
    request[TOKEN] = tok
    return await handler(request)


def _domain(request: web.Request) -> str:
    d = request.match_info["domain"]
    return _st(request).domain if d == "~" else d


def _user(request: web.Request) -> str:
    u = request.match_info.get("user", "~")
    return _st(request).user if u == "~" else u


def _paging(request: web.Request, default_limit: int = 100) -> tuple[int, int]:
    try:
        start = max(0, int(request.query.get("start", "0")))
        limit = int(request.query.get("limit", str(default_limit)))
    except ValueError:
        raise web.HTTPBadRequest(text="bad paging") from None
    return start, max(1, min(limit, 1000))


def _validate_message(body: Record) -> str | None:
    kind = body.get("type")
    if kind not in MESSAGE_TYPES:
        return f"type must be one of {sorted(MESSAGE_TYPES)}"
    if not body.get("destination"):
        return "destination is required"
    if kind in ("sms", "mms") and not body.get("from-number"):
        return "from-number is required for sms and mms"
    if kind in ("mms", "chat-media") and not body.get("data"):
        return "data is required for media messages"
    if kind in ("sms", "chat") and not isinstance(body.get("message"), str):
        return "message is required"
    return None


def _outbound(st: NetsapiensState, user: str, sid: str, body: Record) -> Record:
    dest = body["destination"]
    msg: Record = {
        "id": secrets.token_hex(16),
        "timestamp": iso(st.wall()),
        "type": body["type"],
        "domain": st.domain,
        "direction": "term",
        "from-number": body.get("from-number", ""),
        "from-user-id": user,
        "dialed": dest if isinstance(dest, str) else ",".join(map(str, dest)),
        "text": body.get("message", ""),
        "status": "sent",
        "media-type": body.get("mime-type", ""),
        "media-size": body.get("size", 0),
        "messagesession-id": sid,
        "messagesession-participants": [dest] if isinstance(dest, str) else list(dest),
    }
    st.sent.append({**body, "user": user, "messagesession-id": sid, "id": msg["id"]})
    if sid not in st.sessions:
        remote = dest if isinstance(dest, str) else str(dest[0])
        st.add_session(
            {
                "user": user,
                "domain": st.domain,
                "messagesession-id": sid,
                "messagesession-remote": remote,
                "messagesession-sms-number": body.get("from-number", ""),
                "messagesession-type": body["type"],
                "messagesession-participants": msg["messagesession-participants"],
            }
        )
    st.store_message(sid, msg)
    for hook in list(st.on_sent):
        hook(msg)
    return msg


async def start_session(request: web.Request) -> web.Response:
    st, body = _st(request), await _json(request)
    problem = _validate_message(body)
    if problem:
        return _err(400, problem)
    return web.json_response(_outbound(st, _user(request), secrets.token_hex(16), body))


async def send_in_session(request: web.Request) -> web.Response:
    st, body = _st(request), await _json(request)
    sid = request.match_info["sid"]
    if not SESSION_ID.match(sid):
        return _err(400, "messagesession id must be at least 32 characters of [A-Za-z0-9_]")
    if st.reject_unknown_sessions and sid not in st.sessions:
        return _err(404, "Message session not found")
    problem = _validate_message(body)
    if problem:
        return _err(400, problem)
    _outbound(st, _user(request), sid, body)
    return web.json_response({"code": 202, "message": "Accepted"}, status=202)


async def list_sessions(request: web.Request) -> web.Response:
    """Newest conversation first, from an indexed view of the sessions."""
    st, domain = _st(request), _domain(request)
    equal = [("domain", (domain,))]
    if "user" in request.match_info:
        equal.append(("user", (_user(request),)))
    newest_first = (("messagesession-last-datetime", True),)
    rows = st.session_list.select(Query(equal=tuple(equal), order=newest_first))
    start, limit = _paging(request)
    return web.json_response(list(rows[start : start + limit]))


async def list_messages(request: web.Request) -> web.Response:
    """A session's messages, oldest first; without `start`, the latest `limit` of them."""
    st, sid = _st(request), request.match_info["sid"]
    session = st.sessions.get(sid)
    if session is None or session["user"] != _user(request):
        return _err(404, "Message session not found")
    start, limit = _paging(request)
    messages = st.messages.get(sid, [])
    if "start" not in request.query:
        return web.json_response(messages[-limit:])
    return web.json_response(messages[start : start + limit])


def _cdr_rows(request: web.Request) -> Sequence[Record]:
    st, domain = _st(request), _domain(request)
    equal = [("domain", (domain,))]
    if "user" in request.match_info:
        equal.append(("call-term-user", (_user(request),)))
    start = parse_dt(request.query.get("datetime-start"))
    end = parse_dt(request.query.get("datetime-end"))
    if start is None and end is None:
        return st.cdrs.select(Query(equal=tuple(equal)))

    def in_range(c: Record) -> bool:
        began = parse_dt(c["call-start-datetime"])
        return began is None or not ((start and began < start) or (end and began > end))

    return st.cdrs.select(Query(equal=tuple(equal), extra=(start, end), test=in_range))


async def list_cdrs(request: web.Request) -> web.Response:
    start, limit = _paging(request, 500)
    return web.json_response(list(_cdr_rows(request)[start : start + limit]))


async def count_cdrs(request: web.Request) -> web.Response:
    return web.json_response({"total": len(_cdr_rows(request))})


async def create_subscription(request: web.Request) -> web.Response:
    st, body = _st(request), await _json(request)
    model, url = body.get("model"), body.get("post-url")
    if model not in MODELS:
        return _err(400, f"model must be one of {sorted(MODELS)}")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return _err(400, "post-url is required")
    domain = str(body.get("domain") or "*")
    if domain == "*" and st.scope not in ("Super User", "Reseller"):
        return _err(403, "domain '*' needs Super User scope")
    for s in st.live_subscriptions(model):
        if s["post-url"] == url and s["domain"] == domain:
            return _err(409, "Subscription already exists")
    expires = body.get("subscription-expires-datetime")
    if expires:
        when = parse_dt(str(expires))
        if when is None:
            return _err(400, "subscription-expires-datetime must be YYYY-MM-DD HH:MM:SS")
    else:  # the quirk: without an expiry it dies with the token that created it
        when = st._token_expiry_wall.get(request[TOKEN], st.wall() + timedelta(hours=1))
    sub: Record = {
        "id": secrets.token_hex(16),
        "model": model,
        "post-url": url,
        "subscription-geo-support": body.get("subscription-geo-support", "yes"),
        "user-scope": st.scope,
        "reseller": body.get("reseller", "*"),
        "domain": domain,
        "user": str(body.get("user") or "*"),
        "preferred-server": body.get("preferred-server", ""),
        "current-active-server": "core1.demo",
        "status": "pending",
        "error-count": 0,
        "posts-count": 0,
        "subscription-creation-datetime": iso(st.wall()),
        "subscription-expires-datetime": iso(when),
    }
    st.subscriptions[sub["id"]] = sub
    return web.json_response(sub)


async def list_subscriptions(request: web.Request) -> web.Response:
    start, limit = _paging(request, 100)
    rows = sorted(
        _st(request).live_subscriptions(), key=lambda s: s["subscription-creation-datetime"]
    )
    return web.json_response(rows[start : start + limit])


def _subscription(request: web.Request) -> Record:
    st = _st(request)
    st.live_subscriptions()
    sub = st.subscriptions.get(request.match_info["id"])
    if sub is None:
        raise web.HTTPNotFound(
            text=json.dumps({"code": 404, "message": "Subscription not found"}),
            content_type="application/json",
        )
    return sub


async def get_subscription(request: web.Request) -> web.Response:
    return web.json_response(_subscription(request))


async def update_subscription(request: web.Request) -> web.Response:
    sub, body = _subscription(request), await _json(request)
    for key in ("error-count", "posts-count"):
        if key in body and body[key] not in (0, "0"):
            return _err(400, f"{key} may only be set to 0")
    if "subscription-expires-datetime" in body:
        when = parse_dt(str(body["subscription-expires-datetime"]))
        if when is None:
            return _err(400, "subscription-expires-datetime must be YYYY-MM-DD HH:MM:SS")
        body["subscription-expires-datetime"] = iso(when)
    for key, value in body.items():
        if key in sub and key not in ("id", "model", "user-scope"):
            sub[key] = int(value) if key.endswith("-count") else value
    return web.json_response({"code": 202, "message": "Accepted"}, status=202)


async def delete_subscription(request: web.Request) -> web.Response:
    sub = _subscription(request)
    del _st(request).subscriptions[sub["id"]]
    return web.json_response({"code": 202, "message": "Accepted"}, status=202)


async def sim_inbound_sms(request: web.Request) -> web.Response:
    """`POST /sandbox/inbound-sms {"from", "to", "text"}`: make an SMS arrive (for `daemon
    sandbox` users and subprocess tests); answers the Message and the delivery statuses."""
    st, body = _st(request), await _json(request)
    if not all(isinstance(body.get(k), str) and body[k] for k in ("from", "to", "text")):
        return _err(400, "from, to and text are required")
    before = len(st.deliveries)
    msg = await st.inbound_sms(body["from"], body["to"], body["text"])
    made = [d.status for d in st.deliveries[before:]]
    return web.json_response({"message": msg, "deliveries": made})


def make_netsapiens_app(state: NetsapiensState | None = None) -> web.Application:
    st = state or NetsapiensState()
    app = web.Application(middlewares=[fault_middleware(st.faults, st.stats), bearer_guard])
    app[STATE] = st
    d, u = f"{PREFIX}/domains/{{domain}}", f"{PREFIX}/domains/{{domain}}/users/{{user}}"
    app.router.add_post(f"{PREFIX}/tokens", token)
    app.router.add_post(SIM_INBOUND_PATH, sim_inbound_sms)
    app.router.add_post(f"{u}/messages", start_session)
    app.router.add_post(f"{u}/messagesessions/{{sid}}/messages", send_in_session)
    app.router.add_get(f"{u}/messagesessions/{{sid}}/messages", list_messages)
    app.router.add_get(f"{u}/messagesessions", list_sessions)
    app.router.add_get(f"{d}/messagesessions", list_sessions)
    app.router.add_get(f"{d}/cdrs", list_cdrs)
    app.router.add_get(f"{d}/cdrs/count", count_cdrs)
    app.router.add_get(f"{u}/cdrs", list_cdrs)
    app.router.add_post(f"{PREFIX}/subscriptions", create_subscription)
    app.router.add_get(f"{PREFIX}/subscriptions", list_subscriptions)
    app.router.add_get(f"{PREFIX}/subscriptions/{{id}}", get_subscription)
    app.router.add_put(f"{PREFIX}/subscriptions/{{id}}", update_subscription)
    app.router.add_delete(f"{PREFIX}/subscriptions/{{id}}", delete_subscription)
    return app


@asynccontextmanager
async def serve_netsapiens(state: NetsapiensState, *, port: int = 0) -> AsyncIterator[str]:
    """Serve the simulator; yields the `api_url` (the client adds `/ns-api/v2`)."""
    async with serve_app(make_netsapiens_app(state), port=port) as url:
        yield url
