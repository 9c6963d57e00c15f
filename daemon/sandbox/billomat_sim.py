"""A simulated Billomat account, faithful to upstream-apis §3.

Reproduces what trips naive clients: XML unless `Accept: application/json` (or `format=json`),
list roots with string metadata where one hit is an object and none leaves the key out,
`per_page` capped at 1000, writes wrapped in the singular key (201 on create, empty 200 on
delete), the quota per fixed 15-minute wall-clock window with `X-Rate-Limit-Remaining` /
`X-Rate-Limit-Reset` on every answer and the documented 429 message, and 404 for an unknown
account. The account is the first path segment (`/{billomat_id}/api/...`) because loopback has
no `{id}.billomat.net` host; `/api/...` serves the configured account. `BillomatState.now`
(epoch seconds) is injectable so tests control the window.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from daemon.clients.billomat import RESOURCES
from daemon.sandbox.faults import Faults, SimStats, fault_middleware
from daemon.sandbox.server import serve_app

Record = dict[str, Any]
WINDOW = 900  # seconds: xx:00, xx:15, xx:30, xx:45
MAX_PER_PAGE = 1000

RESOURCE_NAMES = tuple(RESOURCES)  # the resources the client knows, and their item keys
_CONTROL = {"page", "per_page", "order_by", "format", "api_key"}


def demo_record(resource: str, i: int) -> Record:
    """A deterministic record `i` (1-based); scalars as strings, as Billomat sends them."""
    client_id = str((i % 9) + 1)
    if resource == "clients":
        return {
            "id": str(i),
            "client_number": f"KD{i:05d}",
            "name": f"Kunde {i} GmbH",
            "email": f"kunde{i}@example.de",
            "phone": f"+49 30 5550{i:04d}",
            "country_code": "DE",
        }
    if resource == "contacts":
        return {"id": str(i), "client_id": client_id, "first_name": f"Kim{i}", "phone": ""}
    if resource == "invoices":
        status = ("DRAFT", "OPEN", "PAID", "OVERDUE")[i % 4]
        return {
            "id": str(i),
            "client_id": client_id,
            "invoice_number": f"RE{i:05d}",
            "status": status,
            "date": f"2025-{(i % 12) + 1:02d}-{(i % 28) + 1:02d}",
            "total_gross": f"{100 + i}.00",
        }
    if resource == "invoice-items":
        return {"id": str(i), "invoice_id": str((i % 20) + 1), "title": f"Item {i}"}
    return {"id": str(i), "client_id": client_id, "name": f"{resource} {i}"}


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
    records: dict[str, dict[int, Record]] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    stats: SimStats = field(default_factory=SimStats)
    usage: Counter[tuple[int, bool]] = field(default_factory=Counter)
    raw_queries: list[str] = field(default_factory=list)  # as received, for encoding tests
    accepts: list[str] = field(default_factory=list)
    rate_limited: int = 0
    handler_delay: float = 0.0  # seconds each answer takes (real time), to overlap requests
    in_flight: int = 0
    max_in_flight: int = 0  # concurrent requests seen, to show pages are fetched in parallel

    def __post_init__(self) -> None:
        for name in RESOURCE_NAMES:
            self.records.setdefault(
                name, {i: demo_record(name, i) for i in range(1, self.demo_size + 1)}
            )

    def window(self) -> tuple[int, int]:
        """(start, reset): the current 15-minute window and the epoch the next one starts."""
        now = int(self.now())
        start = now - now % WINDOW
        return start, start + WINDOW


STATE: web.AppKey[BillomatState] = web.AppKey("billomat_state", BillomatState)


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
    app_id = request.headers.get("X-AppId")
    key = request.headers.get("X-BillomatApiKey") or request.query.get("api_key")
    if key not in st.api_keys or (
        app_id is not None and st.apps.get(app_id) != request.headers.get("X-AppSecret")
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


def _table(request: web.Request) -> tuple[str, dict[int, Record]]:
    name = request.match_info["resource"]
    table = request.app[STATE].records.get(name)
    if table is None:
        raise web.HTTPNotFound(text="Not Found")
    return name, table


def _sorted(rows: list[Record], order_by: str) -> list[Record]:
    for part in reversed([p.strip() for p in order_by.split(",") if p.strip()]):
        field_name, _, direction = part.partition(" ")

        def key(r: Record, f: str = field_name) -> tuple[int, float | str]:
            v = str(r.get(f, ""))
            try:
                return (0, float(v))
            except ValueError:
                return (1, v)

        rows.sort(key=key, reverse=direction.strip().upper() == "DESC")
    return rows


async def list_records(request: web.Request) -> web.Response:
    name, table = _table(request)
    q = request.query
    try:
        page = max(1, int(q.get("page", "1")))
        per_page = min(MAX_PER_PAGE, max(1, int(q.get("per_page", "100"))))
    except ValueError:
        return _errors(request, 400, "page and per_page must be numbers")
    rows = [
        r
        for r in table.values()
        if all(str(r.get(k, "")) in v.split(",") for k, v in q.items() if k not in _CONTROL)
    ]
    rows = _sorted(rows, q.get("order_by", "id ASC"))
    chunk = rows[(page - 1) * per_page : page * per_page]
    root: dict[str, Any] = {
        "@page": str(page),
        "@per_page": str(per_page),
        "@total": str(len(rows)),
    }
    item_key = name[:-1]
    if len(chunk) == 1:
        root[item_key] = chunk[0]  # the quirk: one hit is an object
    elif chunk:
        root[item_key] = chunk  # and zero hits leave the key out
    return _reply(request, {name: root})


def _lookup(request: web.Request) -> tuple[str, dict[int, Record], Record | None]:
    name, table = _table(request)
    try:
        return name, table, table.get(int(request.match_info["id"]))
    except ValueError:
        return name, table, None


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
    name, _, rec = _lookup(request)
    if rec is None:
        return _errors(request, 404, "Not found")
    return _reply(request, {name[:-1]: rec})


async def create_record(request: web.Request) -> web.Response:
    name, table = _table(request)
    data = await _payload(request, name[:-1])
    if isinstance(data, web.Response):
        return data
    if name == "invoices" and not data.get("client_id"):
        return _errors(request, 400, "client_id is missing", "Invoice has no items")
    new_id = max(table, default=0) + 1
    rec = {k: str(v) if isinstance(v, int | float) else v for k, v in data.items()}
    rec["id"] = str(new_id)
    if name == "invoices":
        rec.setdefault("status", "DRAFT")
    table[new_id] = rec
    return _reply(request, {name[:-1]: rec}, 201)


async def update_record(request: web.Request) -> web.Response:
    name, _, rec = _lookup(request)
    if rec is None:
        return _errors(request, 404, "Not found")
    data = await _payload(request, name[:-1])
    if isinstance(data, web.Response):
        return data
    rec.update({k: v for k, v in data.items() if k != "id"})
    return _reply(request, {name[:-1]: rec})


async def delete_record(request: web.Request) -> web.Response:
    _, table, rec = _lookup(request)
    if rec is None:
        return _errors(request, 404, "Not found")
    table.pop(int(rec["id"]))
    return web.Response(status=200)  # Billomat: 200 with an empty body


async def invoice_action(request: web.Request) -> web.Response:
    if request.match_info["resource"] != "invoices":
        return _errors(request, 404, "Not found")
    _, _, rec = _lookup(request)
    if rec is None:
        return _errors(request, 404, "Not found")
    action = request.match_info["action"]
    if action == "complete" and request.method == "PUT":
        if rec.get("status") != "DRAFT":
            return _errors(request, 400, "Invoice is not a draft")
        rec["status"] = "OPEN"
        return web.Response(status=200)
    if action == "cancel" and request.method == "PUT":
        rec["status"] = "CANCELED"
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
