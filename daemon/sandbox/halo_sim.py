"""A simulated HaloPSA tenant, faithful to upstream-apis §4.

What it reproduces, so the real client is tested against Halo's behaviour rather than our
assumptions about it: the client-credentials token endpoint (optional `?tenant=` requirement,
OAuth error bodies, configurable token lifetime, revocation), Bearer checks with 401 for expired
or unknown tokens, `pageinate`/`page_size`/`page_no` paging with `record_count`, unpaged lists
sized by `count`, bare-array endpoints, CRMNote ignoring paging, array-body writes answering an
object for one element and a list for several, and the hosted rolling-window rate limit.
Time comes from `HaloState.now` (monotonic seconds) so tests can share a `FakeClock`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.sandbox.faults import Faults, SimStats, fault_middleware
from daemon.sandbox.server import serve_app

Record = dict[str, Any]


@dataclass(frozen=True)
class SimResource:
    """How the simulator serves one Halo path (`list_key=None`: a bare array)."""

    path: str
    list_key: str | None
    ignores_paging: bool = False


SIM_RESOURCES: dict[str, SimResource] = {
    r.path.lower(): r
    for r in (
        SimResource("Tickets", "tickets"),
        SimResource("Actions", "actions"),
        SimResource("Client", "clients"),
        SimResource("Users", "users"),
        SimResource("Agent", None),
        SimResource("Asset", "assets"),
        SimResource("Site", "sites"),
        SimResource("Invoice", "invoices"),
        SimResource("ClientContract", "contracts"),
        SimResource("Opportunities", "tickets"),
        SimResource("Projects", "tickets"),
        SimResource("Appointment", "appointments"),
        SimResource("Item", "items"),
        SimResource("KBArticle", "articles"),
        SimResource("Supplier", "suppliers"),
        SimResource("Attachment", "attachments"),
        SimResource("Status", None),
        SimResource("Team", None),
        SimResource("Category", "categories"),
        SimResource("Priority", None),
        SimResource("SLA", None),
        SimResource("TicketType", "tickettypes"),
        SimResource("TopLevel", None),
        SimResource("Expense", "expenses"),
        SimResource("Timesheet", "timesheets"),
        SimResource("Release", "releases"),
        SimResource("Report", "reports"),
        SimResource("Webhook", None),
        SimResource("Workday", "workdays"),
        SimResource("SoftwareLicence", "licences"),
        SimResource("CRMNote", "actions", ignores_paging=True),
        SimResource("Quotation", "quotes"),
    )
}

CLOSED_STATUS = 9
_FIRST = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gia", "Hal", "Ivy", "Jon"]
_LAST = ["Stone", "Rivers", "Moss", "Hart", "Lake", "Ford", "Wells", "Reed"]


def demo_record(path: str, i: int) -> Record:
    """A deterministic record number `i` (1-based) for a resource."""
    name = f"{_FIRST[i % len(_FIRST)]} {_LAST[i % len(_LAST)]}"
    client_id = (i % 7) + 1
    p = path.lower()
    if p in ("tickets", "opportunities", "projects"):
        return {
            "id": i,
            "summary": f"Demo {p[:-1]} {i}: printer on floor {i % 5}",
            "details": f"Reported by {name}",
            "client_id": client_id,
            "user_id": i % 20 + 1,
            "agent_id": i % 4 + 1,
            "status_id": CLOSED_STATUS if i % 4 == 0 else (i % 3) + 1,
            "tickettype_id": 1,
            "dateoccurred": f"2025-01-{(i % 28) + 1:02d}T09:00:00",
        }
    if p == "client":
        return {"id": i, "name": f"Client {i} Ltd", "inactive": i % 10 == 0, "toplevel_id": 1}
    if p == "users":
        return {
            "id": i,
            "name": name,
            "client_id": client_id,
            "site_id": client_id,
            "emailaddress": f"user{i}@example.com",
            "phonenumber": f"+1555010{i % 10000:04d}",
        }
    if p == "agent":
        return {"id": i, "name": f"Agent {name}", "email": f"agent{i}@example.com"}
    if p == "status":
        return {"id": i, "name": f"Status {i}", "type": 2 if i == CLOSED_STATUS else 1}
    if p == "team":
        return {"id": i, "name": f"Team {i}"}
    if p == "actions" or p == "crmnote":
        return {"id": i, "ticket_id": (i % 10) + 1, "client_id": client_id, "note": f"Note {i}"}
    return {"id": i, "name": f"{path} {i}", "client_id": client_id}


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
    records: dict[str, dict[int, Record]] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    stats: SimStats = field(default_factory=SimStats)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (now())
    token_queries: list[dict[str, str]] = field(default_factory=list)
    writes: list[Any] = field(default_factory=list)  # raw POST bodies, for tests
    rate_limited: int = 0
    unauthorized: int = 0  # API requests refused for an expired/unknown token
    _window: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        for key, res in SIM_RESOURCES.items():
            if key in self.records:
                continue
            size = min(self.demo_size, 12) if res.list_key is None else self.demo_size
            self.records[key] = {i: demo_record(res.path, i) for i in range(1, size + 1)}

    def table(self, path: str) -> dict[int, Record]:
        return self.records[path.lower()]

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


def _resource(request: web.Request) -> tuple[SimResource, dict[int, Record]]:
    key = request.match_info["resource"].lower()
    res = SIM_RESOURCES.get(key)
    if res is None:
        raise web.HTTPNotFound(text=json.dumps({"message": "Not found"}))
    return res, request.app[STATE].table(key)


def _matches(rec: Record, q: Any) -> bool:
    if q.get("open_only") == "true" and rec.get("status_id") == CLOSED_STATUS:
        return False
    if q.get("closed_only") == "true" and rec.get("status_id") != CLOSED_STATUS:
        return False
    for key in ("client_id", "user_id", "agent_id", "status_id", "ticket_id", "site_id"):
        if key in q and str(rec.get(key)) != q[key]:
            return False
    search = q.get("search", "").lower()
    if search and not any(
        search in str(rec.get(k, "")).lower() for k in ("name", "summary", "details", "note")
    ):
        return False
    return True


async def list_records(request: web.Request) -> web.Response:
    res, table = _resource(request)
    q = request.query
    rows = [r for _, r in sorted(table.items()) if _matches(r, q)]
    total = len(rows)
    body: dict[str, Any] = {"record_count": total}
    try:
        if q.get("pageinate", "").lower() == "true":
            size = max(1, int(q.get("page_size", "50")))
            size = min(size, request.app[STATE].max_page_size or size)
            page_no = 1 if res.ignores_paging else max(1, int(q.get("page_no", "1")))
            chunk = rows[(page_no - 1) * size : page_no * size]
            body.update(page_no=page_no, page_size=size)
        else:
            chunk = rows[: max(0, int(q.get("count", "50")))]
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
        removed = table.pop(int(request.match_info["id"]), None)
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
            saved.append(current)
            continue
        if res.path in ("Tickets",) and not obj.get("summary"):
            return web.json_response({"message": "Please enter a Summary"}, status=400)
        new_id = max(table, default=0) + 1
        rec = {**obj, "id": new_id}
        table[new_id] = rec
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
