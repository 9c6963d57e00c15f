"""A simulated HaloPSA tenant, faithful to upstream-apis §4.

What it reproduces, so the real client is tested against Halo's behaviour rather than our
assumptions about it: the client-credentials token endpoint (optional `?tenant=` requirement,
OAuth error bodies, configurable token lifetime, revocation), Bearer checks with 401 for expired
or unknown tokens, `pageinate`/`page_size`/`page_no` paging with `record_count`, unpaged lists
sized by `count`, bare-array endpoints, CRMNote ignoring paging, Actions listed per ticket (none
without `ticket_id`), `order`/`orderdesc`, booleans in any case (`True` from Python clients),
array-body writes answering an object for one element and a list for several, and the hosted
rolling-window rate limit. Time comes from `HaloState.now` (monotonic seconds) so tests can share
a `FakeClock`.

Listings are indexed (`daemon.sandbox.listing`): a page costs the same at 100k tickets as at
100, so benchmarks measure the client. Demo records are generated per resource on first use, so
a large `demo_size` costs only for the resources a client touches.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.sandbox.faults import Faults, SimStats, fault_middleware
from daemon.sandbox.halo_data import (
    BARE_ARRAY_SIZE,
    CLOSED_STATUS,
    EQUALITY_FILTERS,
    HASH_FIELDS,
    SEARCH_FIELDS,
    SIM_RESOURCES,
    Record,
    SimResource,
    demo_record,
)
from daemon.sandbox.listing import Query, Table, page
from daemon.sandbox.server import serve_app

__all__ = ["CLOSED_STATUS", "SIM_RESOURCES", "HaloState", "make_halo_app", "serve_halo"]


@dataclass
class HaloState:
    """Everything a test may set or inspect. `rate_limit=(count, seconds)` enables the hosted
    rolling window; `tenant` set with `require_tenant` refuses token requests without it."""

    client_id: str = "halo-client"
    client_secret: str = "halo-secret"  # noqa: S105 - demo credential
    scope: str = "all"
    tenant: str | None = None
    require_tenant: bool = False
    token_ttl: float = 3600.0
    revoked: bool = False
    rate_limit: tuple[int, float] | None = None
    demo_size: int = 120
    max_page_size: int | None = None  # a server-side cap on page_size, echoed back
    now: Callable[[], float] = time.monotonic
    records: dict[str, Table] = field(default_factory=dict)  # by lower-case path, built lazily
    faults: Faults = field(default_factory=Faults)
    stats: SimStats = field(default_factory=SimStats)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (now())
    token_queries: list[dict[str, str]] = field(default_factory=list)
    writes: list[Any] = field(default_factory=list)  # raw POST bodies, for tests
    rate_limited: int = 0
    unauthorized: int = 0  # API requests refused for an expired/unknown token
    _window: deque[float] = field(default_factory=deque)

    def table(self, path: str) -> Table:
        """The records of one resource (demo records are made on first use)."""
        key = path.lower()
        table = self.records.get(key)
        if table is None:
            res = SIM_RESOURCES[key]
            size = min(self.demo_size, BARE_ARRAY_SIZE) if res.list_key is None else self.demo_size
            table = Table(
                (demo_record(res.path, i) for i in range(1, size + 1)),
                key=_record_id,
                hash_fields=HASH_FIELDS,
            )
            self.records[key] = table
        return table

    def expire_tokens(self) -> None:
        """Every issued token stops working now (as if its lifetime ran out server-side)."""
        self.tokens.clear()

    def _over_rate(self) -> bool:
        if self.rate_limit is None:
            return False
        count, per = self.rate_limit
        now = self.now()
        while self._window and now - self._window[0] >= per:
            self._window.popleft()
        if len(self._window) >= count:
            return True
        self._window.append(now)
        return False


STATE: web.AppKey[HaloState] = web.AppKey("halo_state", HaloState)


def _record_id(record: Record) -> int:
    return int(record["id"])


def _flag(q: Any, name: str) -> bool:
    """Halo reads booleans case-insensitively (Python clients send `True`)."""
    return str(q.get(name, "")).strip().lower() in ("true", "1")


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


async def token(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.stats.token_requests += 1
    st.token_queries.append(dict(request.query))
    form = await request.post()
    if st.require_tenant and request.query.get("tenant") != st.tenant:
        return _oauth_error(400, "invalid_request", "tenant is required for this instance")
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "grant_type not supported")
    if (
        st.revoked
        or form.get("client_id") != st.client_id
        or form.get("client_secret") != st.client_secret
    ):
        return _oauth_error(401, "invalid_client", "Invalid client credentials")
    access = secrets.token_urlsafe(24)
    st.tokens[access] = st.now() + st.token_ttl
    return web.json_response(
        {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(st.token_ttl),
            "scope": str(form.get("scope") or st.scope),
        }
    )


@web.middleware
async def api_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer check and the rolling-window rate limit, for `/api/` only."""
    if not request.path.lower().startswith("/api/"):
        return await handler(request)  # type: ignore[no-any-return]
    st = request.app[STATE]
    header = request.headers.get("Authorization", "")
    tok = header[7:] if header.startswith("Bearer ") else ""
    expiry = st.tokens.get(tok)
    if st.revoked or expiry is None or st.now() >= expiry:
        st.unauthorized += 1
        return web.json_response({"message": "Unauthorized"}, status=401)
    if st._over_rate():
        st.rate_limited += 1
        count, per = st.rate_limit or (0, 0)
        minutes = f"{per / 60:g}"
        return web.Response(
            status=429,
            text=f"Rate Limit Reached - {count} Requests per rolling {minutes} minute window",
        )
    return await handler(request)  # type: ignore[no-any-return]


def _resource(request: web.Request) -> tuple[SimResource, Table]:
    key = request.match_info["resource"].lower()
    res = SIM_RESOURCES.get(key)
    if res is None:
        raise web.HTTPNotFound(text=json.dumps({"message": "Not found"}))
    return res, request.app[STATE].table(key)


def list_query(q: Any) -> Query:
    """The listing a request asks for (its filters and order), as a cacheable `Query`."""
    equal = tuple((k, (str(q[k]),)) for k in EQUALITY_FILTERS if k in q)
    open_only, closed_only = _flag(q, "open_only"), _flag(q, "closed_only")
    search = str(q.get("search", "")).lower()

    def test(rec: Record) -> bool:
        closed = rec.get("status_id") == CLOSED_STATUS
        if (open_only and closed) or (closed_only and not closed):
            return False
        return not search or any(search in str(rec.get(k, "")).lower() for k in SEARCH_FIELDS)

    needs_test = open_only or closed_only or bool(search)
    order_field = str(q.get("order", "")).strip()
    order = ((order_field, _flag(q, "orderdesc")),) if order_field else ()
    return Query(
        equal=equal,
        order=order,
        extra=(open_only, closed_only, search) if needs_test else None,
        test=test if needs_test else None,
    )


async def list_records(request: web.Request) -> web.Response:
    res, table = _resource(request)
    q = request.query
    if res.per_ticket and "ticket_id" not in q:
        rows: Sequence[Record] = ()  # listing is per ticket: nothing without one
    else:
        rows = table.select(list_query(q))
    body: dict[str, Any] = {"record_count": len(rows)}
    try:
        if _flag(q, "pageinate"):
            size = max(1, int(q.get("page_size", "50")))
            size = min(size, request.app[STATE].max_page_size or size)
            page_no = 1 if res.ignores_paging else max(1, int(q.get("page_no", "1")))
            chunk = page(rows, page_no, size)
            body.update(page_no=page_no, page_size=size)
        else:
            chunk = list(rows[: max(0, int(q.get("count", "50")))])
    except ValueError:
        return web.Response(status=400, text="page_size, page_no and count must be numbers")
    if res.list_key is None:
        return web.json_response(chunk)
    body[res.list_key] = chunk
    return web.json_response(body)


async def get_record(request: web.Request) -> web.Response:
    if request.match_info["resource"].lower() == "agent" and request.match_info["id"] == "me":
        return web.json_response({"id": 1, "name": "API Agent", "is_api_agent": True})
    _, table = _resource(request)
    try:
        rec = table.get(int(request.match_info["id"]))
    except ValueError:
        rec = None
    if rec is None:
        return web.json_response({"message": "Record not found"}, status=404)
    return web.json_response(rec)


async def delete_record(request: web.Request) -> web.Response:
    _, table = _resource(request)
    try:
        removed = table.discard_key(int(request.match_info["id"]))
    except ValueError:
        removed = None
    if removed is None:
        return web.json_response({"message": "Record not found"}, status=404)
    return web.Response(status=200)


async def write_records(request: web.Request) -> web.Response:
    res, table = _resource(request)
    st = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return web.Response(status=400, text="Request body is not valid JSON")
    st.writes.append(body)
    if not isinstance(body, list) or not all(isinstance(o, dict) for o in body):
        return web.Response(status=400, text="The request body must be a JSON array of objects")
    saved: list[Record] = []
    for obj in body:
        rid = obj.get("id")
        if rid not in (None, "", 0):
            try:
                current = table.get(int(rid))
            except (TypeError, ValueError):
                current = None
            if current is None:
                return web.json_response({"message": f"Record {rid} not found"}, status=400)
            current.update(obj)
            current["id"] = int(rid)
            table.reindex(current)
            saved.append(current)
            continue
        if res.path in ("Tickets",) and not obj.get("summary"):
            return web.json_response({"message": "Please enter a Summary"}, status=400)
        rec = table.add({**obj, "id": table.next_id()})
        saved.append(rec)
    return web.json_response(saved[0] if len(saved) == 1 else saved, status=201)


def make_halo_app(state: HaloState | None = None) -> web.Application:
    """The simulator app; `state` is kept at `app[STATE]` for tests and the sandbox."""
    st = state or HaloState()
    app = web.Application(middlewares=[fault_middleware(st.faults, st.stats), api_guard])
    app[STATE] = st
    app.router.add_post("/auth/token", token)
    app.router.add_get("/api/{resource}", list_records)
    app.router.add_post("/api/{resource}", write_records)
    app.router.add_get("/api/{resource}/{id}", get_record)
    app.router.add_delete("/api/{resource}/{id}", delete_record)
    return app


@asynccontextmanager
async def serve_halo(state: HaloState, *, port: int = 0) -> AsyncIterator[str]:
    """Serve a Halo simulator on loopback; yields the tenant URL."""
    async with serve_app(make_halo_app(state), port=port) as url:
        yield url
