"""A simulated Billomat account, faithful to upstream-apis §3.

Reproduces what trips naive clients: XML unless `Accept: application/json` (or `format=json`),
list roots with string metadata where one hit is an object and none leaves the key out,
`per_page` capped at 1000, writes wrapped in the singular key (201 on create, empty 200 on
delete), the quota per fixed 15-minute wall-clock window with `X-Rate-Limit-Remaining` /
`X-Rate-Limit-Reset` on every answer and the documented 429 message, and 404 for an unknown
account. The account is the first path segment (`/{billomat_id}/api/...`) because loopback has
no `{id}.billomat.net` host; `/api/...` serves the configured account. `BillomatState.now`
(epoch seconds) is injectable so tests control the window.

Filters: any non-control parameter is an equality filter (a comma means OR, as for `status`);
documents take the documented `from`/`to` date range; `HEAD` on a list answers its total in
`X-Total-Count`. An empty `X-AppId`/`X-AppSecret` pair (billomapy always sends one) counts as no
app. Listings are indexed (`daemon.sandbox.listing`) and demo records are made per resource on
first use, so a large `demo_size` stays fast.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from daemon.sandbox.billomat_data import (
    CONTROL_PARAMS,
    HASH_FIELDS,
    RESOURCES,
    BillomatResource,
    Record,
    demo_record,
)
from daemon.sandbox.faults import Faults, SimStats, fault_middleware
from daemon.sandbox.listing import Query, Table, page
from daemon.sandbox.server import serve_app

WINDOW = 900  # seconds: xx:00, xx:15, xx:30, xx:45
MAX_PER_PAGE = 1000


@dataclass
class BillomatState:
    """Everything a test may set or inspect."""

    billomat_id: str = "demo"
    api_keys: set[str] = field(default_factory=lambda: {"demo-key"})
    apps: dict[str, str] = field(default_factory=lambda: {"demo-app": "demo-app-secret"})
    quota_unregistered: int = 300
    quota_registered: int = 1000
    demo_size: int = 60
    now: Callable[[], float] = time.time
    records: dict[str, Table] = field(default_factory=dict)  # by resource, built lazily
    faults: Faults = field(default_factory=Faults)
    stats: SimStats = field(default_factory=SimStats)
    usage: Counter[tuple[int, bool]] = field(default_factory=Counter)
    raw_queries: list[str] = field(default_factory=list)  # as received, for encoding tests
    accepts: list[str] = field(default_factory=list)
    rate_limited: int = 0
    handler_delay: float = 0.0  # seconds each answer takes (real time), to overlap requests
    in_flight: int = 0
    max_in_flight: int = 0  # concurrent requests seen, to show pages are fetched in parallel

    def table(self, name: str) -> Table:
        """The records of one resource (demo records are made on first use)."""
        table = self.records.get(name)
        if table is None:
            table = Table(
                (demo_record(name, i) for i in range(1, self.demo_size + 1)),
                key=_record_id,
                hash_fields=HASH_FIELDS,
            )
            self.records[name] = table
        return table

    def window(self) -> tuple[int, int]:
        """(start, reset): the current 15-minute window and the epoch the next one starts."""
        now = int(self.now())
        start = now - now % WINDOW
        return start, start + WINDOW


STATE: web.AppKey[BillomatState] = web.AppKey("billomat_state", BillomatState)


def _record_id(record: Record) -> int:
    return int(record["id"])


def _wants_json(request: web.Request) -> bool:
    return (
        "application/json" in request.headers.get("Accept", "")
        or request.query.get("format") == "json"
    )


def _xml(value: Any, tag: str) -> str:
    """A minimal XML rendering (Billomat's default format); only for clients that forgot JSON."""
    if isinstance(value, dict):
        attrs = "".join(
            f' {k[1:]}="{escape(str(v))}"' for k, v in value.items() if k.startswith("@")
        )
        inner = "".join(_xml(v, k) for k, v in value.items() if not k.startswith("@"))
        return f"<{tag}{attrs}>{inner}</{tag}>"
    if isinstance(value, list):
        return "".join(_xml(v, tag) for v in value)
    return f"<{tag}>{escape('' if value is None else str(value))}</{tag}>"


def _reply(request: web.Request, body: Any, status: int = 200) -> web.Response:
    if body is None:
        return web.Response(status=status)
    if _wants_json(request):
        return web.json_response(body, status=status)
    (root, inner), *_ = body.items()
    xml = '<?xml version="1.0" encoding="UTF-8"?>\n' + _xml(inner, root)
    return web.Response(status=status, text=xml, content_type="application/xml")


def _errors(request: web.Request, status: int, *messages: str) -> web.Response:
    error: str | list[str] = messages[0] if len(messages) == 1 else list(messages)
    return _reply(request, {"errors": {"error": error}}, status)


@web.middleware
async def quota(request: web.Request, handler: Any) -> web.StreamResponse:
    """Account check, auth and the 15-minute quota; rate headers on every answer."""
    if request.path.startswith("/__sim__/"):
        return await handler(request)  # type: ignore[no-any-return]
    st = request.app[STATE]
    st.raw_queries.append(request.raw_path.partition("?")[2])
    st.accepts.append(request.headers.get("Accept", ""))
    account = request.match_info.get("account", st.billomat_id)
    if account != st.billomat_id:
        return web.Response(status=404, text="Not Found")
    # an empty pair is no app at all (billomapy sends one when the user registered none)
    app_id = request.headers.get("X-AppId") or None
    app_secret = request.headers.get("X-AppSecret") or None
    key = request.headers.get("X-BillomatApiKey") or request.query.get("api_key")
    if key not in st.api_keys or (
        (app_id or app_secret) is not None and st.apps.get(app_id or "") != app_secret
    ):
        return _errors(request, 401, "Unauthorized")
    registered = app_id is not None
    limit = st.quota_registered if registered else st.quota_unregistered
    start, reset = st.window()
    used = st.usage[(start, registered)]
    headers = {"X-Rate-Limit-Reset": str(reset)}
    if used >= limit:
        st.rate_limited += 1
        wait = reset - int(st.now())
        resp = _errors(
            request,
            429,
            f"Maximum number of requests ({limit} per 15 minutes) reached. "
            f"Try again in {wait} seconds.",
        )
        resp.headers.update(headers | {"X-Rate-Limit-Remaining": "0"})
        return resp
    st.usage[(start, registered)] = used + 1
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        if st.handler_delay:
            await asyncio.sleep(st.handler_delay)
        response = await handler(request)
    finally:
        st.in_flight -= 1
    response.headers.update(headers | {"X-Rate-Limit-Remaining": str(limit - used - 1)})
    return response  # type: ignore[no-any-return]


def _table(request: web.Request) -> tuple[BillomatResource, Table]:
    res = RESOURCES.get(request.match_info["resource"])
    if res is None:
        raise web.HTTPNotFound(text="Not Found")
    return res, request.app[STATE].table(res.name)


def _order(order_by: str) -> tuple[tuple[str, bool], ...]:
    """`date DESC,id ASC` (a `+` arrives as a space) → ((field, descending), ...)."""
    parts = []
    for part in order_by.split(","):
        field_name, _, direction = part.strip().partition(" ")
        if field_name:
            parts.append((field_name, direction.strip().upper() == "DESC"))
    return tuple(parts)


def list_query(res: BillomatResource, q: Any) -> Query:
    """The listing a request asks for, as a cacheable `Query`."""
    equal = tuple(sorted((k, tuple(v.split(","))) for k, v in q.items() if k not in CONTROL_PARAMS))
    start = q.get("from") if res.dated else None
    end = q.get("to") if res.dated else None

    def in_range(rec: Record) -> bool:
        day = str(rec.get("date", ""))[:10]
        return bool(day) and (not start or day >= start) and (not end or day <= end)

    ranged = bool(start or end)
    order = _order(q.get("order_by", ""))
    if order == (("id", False),):
        order = ()  # the canonical order already
    return Query(
        equal=equal,
        order=order,
        extra=(start, end) if ranged else None,
        test=in_range if ranged else None,
    )


async def list_records(request: web.Request) -> web.Response:
    res, table = _table(request)
    q = request.query
    try:
        page_no = max(1, int(q.get("page", "1")))
        per_page = min(MAX_PER_PAGE, max(1, int(q.get("per_page", "100"))))
    except ValueError:
        return _errors(request, 400, "page and per_page must be numbers")
    rows = table.select(list_query(res, q))
    if request.method == "HEAD":  # documented: the total of a filtered list, no body
        return web.Response(status=200, headers={"X-Total-Count": str(len(rows))})
    chunk = page(rows, page_no, per_page)
    root: dict[str, Any] = {
        "@page": str(page_no),
        "@per_page": str(per_page),
        "@total": str(len(rows)),
    }
    if len(chunk) == 1:
        root[res.item] = chunk[0]  # the quirk: one hit is an object
    elif chunk:
        root[res.item] = chunk  # and zero hits leave the key out
    return _reply(request, {res.name: root})


def _lookup(request: web.Request) -> tuple[BillomatResource, Table, Record | None]:
    res, table = _table(request)
    try:
        return res, table, table.get(int(request.match_info["id"]))
    except ValueError:
        return res, table, None


async def _payload(request: web.Request, key: str) -> Record | web.Response:
    if "json" not in request.headers.get("Content-Type", ""):
        return _errors(request, 400, "Content-Type must be application/json")
    try:
        body = await request.json()
    except ValueError:
        return _errors(request, 400, "Invalid JSON")
    if not isinstance(body, dict) or not isinstance(body.get(key), dict):
        return _errors(request, 400, f"Missing element {key}")
    return dict(body[key])


async def get_record(request: web.Request) -> web.Response:
    res, _, rec = _lookup(request)
    if rec is None:
        return _errors(request, 404, "Not found")
    return _reply(request, {res.item: rec})


async def create_record(request: web.Request) -> web.Response:
    res, table = _table(request)
    data = await _payload(request, res.item)
    if isinstance(data, web.Response):
        return data
    if res.name == "invoices" and not data.get("client_id"):
        return _errors(request, 400, "client_id is missing", "Invoice has no items")
    rec = {k: str(v) if isinstance(v, int | float) else v for k, v in data.items()}
    rec["id"] = str(table.next_id())
    if res.name == "invoices":
        rec.setdefault("status", "DRAFT")
    if res.dated:
        today = datetime.fromtimestamp(request.app[STATE].now(), UTC).date()
        rec.setdefault("date", today.isoformat())
    table.add(rec)
    return _reply(request, {res.item: rec}, 201)


async def update_record(request: web.Request) -> web.Response:
    res, table, rec = _lookup(request)
    if rec is None:
        return _errors(request, 404, "Not found")
    data = await _payload(request, res.item)
    if isinstance(data, web.Response):
        return data
    rec.update({k: v for k, v in data.items() if k != "id"})
    table.reindex(rec)
    return _reply(request, {res.item: rec})


async def delete_record(request: web.Request) -> web.Response:
    _, table, rec = _lookup(request)
    if rec is None:
        return _errors(request, 404, "Not found")
    table.remove(rec)
    return web.Response(status=200)  # Billomat: 200 with an empty body


async def invoice_action(request: web.Request) -> web.Response:
    if request.match_info["resource"] != "invoices":
        return _errors(request, 404, "Not found")
    _, table, rec = _lookup(request)
    if rec is None:
        return _errors(request, 404, "Not found")
    action = request.match_info["action"]
    if action == "complete" and request.method == "PUT":
        if rec.get("status") != "DRAFT":
            return _errors(request, 400, "Invoice is not a draft")
        rec["status"] = "OPEN"
        table.reindex(rec)
        return web.Response(status=200)
    if action == "cancel" and request.method == "PUT":
        rec["status"] = "CANCELED"
        table.reindex(rec)
        return web.Response(status=200)
    if action == "email" and request.method == "POST":
        return web.Response(status=200)
    if action == "pdf" and request.method == "GET":
        pdf = {
            "id": rec["id"],
            "invoice_id": rec["id"],
            "filename": f"{rec.get('invoice_number', rec['id'])}.pdf",
            "mimetype": "application/pdf",
            "base64file": "JVBERi0xLjQKJSVFT0YK",
        }
        return _reply(request, {"pdf": pdf})
    return _errors(request, 404, "Not found")


def make_billomat_app(state: BillomatState | None = None) -> web.Application:
    """The simulator app; `state` is kept at `app[STATE]`."""
    st = state or BillomatState()
    app = web.Application(middlewares=[fault_middleware(st.faults, st.stats), quota])
    app[STATE] = st
    for prefix in ("/api", "/{account}/api"):
        app.router.add_get(prefix + "/{resource}", list_records)
        app.router.add_post(prefix + "/{resource}", create_record)
        app.router.add_get(prefix + "/{resource}/{id}", get_record)
        app.router.add_put(prefix + "/{resource}/{id}", update_record)
        app.router.add_delete(prefix + "/{resource}/{id}", delete_record)
        app.router.add_route("*", prefix + "/{resource}/{id}/{action}", invoice_action)
    return app


@asynccontextmanager
async def serve_billomat(state: BillomatState, *, port: int = 0) -> AsyncIterator[str]:
    """Serve a Billomat simulator on loopback; yields the API base URL for `url =`."""
    async with serve_app(make_billomat_app(state), port=port) as root:
        yield f"{root}/{state.billomat_id}/api"
