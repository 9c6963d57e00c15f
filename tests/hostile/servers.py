"""Small hostile upstreams for the data-safety tests: each speaks one API's wire format well
enough for our real client, and lets a test script exactly how it lies.

A `Script` holds the list the upstream serves and the ways it misbehaves: a total that is not
the truth, pages that repeat or never end, error bodies on a 200, a hook run after each page
(to delete or insert records mid-walk, or to move the fake clock). The four apps (Blesta, Halo,
Billomat, Reseller) read the same script, so one scenario can be run against each API.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.sandbox.server import serve_app

Body = Any
Hook = Callable[[int], None]
NOT_SET = object()


@dataclass
class Script:
    """What the hostile upstream serves. `rows` is the truth; everything else is a lie."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 20
    total: Any = NOT_SET  # what the count/total says; NOT_SET = the truth, None = no total
    bodies: dict[int, Body] = field(default_factory=dict)  # page -> whole body, as sent
    raw: dict[int, str] = field(default_factory=dict)  # page -> body text (not even JSON)
    statuses: dict[int, int] = field(default_factory=dict)  # page -> HTTP status
    repeat_from: int | None = None  # from this page on, answer page 1 again (ignores paging)
    endless: bool = False  # every page is full of new records, forever
    after_page: Hook | None = None  # called with the page number once it has been served
    requests: list[int] = field(default_factory=list)  # page numbers asked for, in order

    def announced_total(self) -> Any:
        return len(self.rows) if self.total is NOT_SET else self.total

    def page(self, n: int, size: int | None = None) -> list[dict[str, Any]]:
        size = size or self.page_size
        if self.endless:
            start = (n - 1) * size
            return [{"id": str(start + i + 1), "name": f"row {start + i + 1}"} for i in range(size)]
        if self.repeat_from is not None and n >= self.repeat_from:
            n = 1
        return [dict(r) for r in self.rows[(n - 1) * size : n * size]]

    def served(self, n: int) -> None:
        self.requests.append(n)
        if self.after_page is not None:
            self.after_page(n)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def blesta_app(script: Script) -> web.Application:
    """`/api/clients/getList.json?page=N` and `/api/clients/getListCount.json`."""

    async def handle(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method == "getListCount":
            total = script.announced_total()
            if total is None:
                return _json(
                    {"message": "The requested resource does not exist.", "response": None}, 404
                )
            return _json({"response": total})
        n = _int(request.query.get("page"), 1)
        try:
            if n in script.raw:
                return web.Response(text=script.raw[n], content_type="application/json")
            if n in script.bodies:
                return _json(script.bodies[n], script.statuses.get(n, 200))
            if n in script.statuses:
                return _json({"message": "boom", "response": "boom"}, script.statuses[n])
            return _json({"response": script.page(n)})
        finally:
            script.served(n)

    app = web.Application()
    app.router.add_get("/api/{model}/{method}.json", handle)
    return app


def halo_app(script: Script, *, list_key: str = "tickets") -> web.Application:
    """`POST /auth/token` and `GET /api/<Resource>?pageinate=true&page_size=&page_no=`."""

    async def token(request: web.Request) -> web.Response:
        return _json({"access_token": "hostile-token", "token_type": "Bearer", "expires_in": 3600})

    async def listing(request: web.Request) -> web.Response:
        size = _int(request.query.get("page_size"), 50)
        n = _int(request.query.get("page_no"), 1)
        try:
            if n in script.bodies:
                return _json(script.bodies[n], script.statuses.get(n, 200))
            if n in script.statuses:
                return _json({"message": "boom"}, script.statuses[n])
            body: dict[str, Any] = {list_key: script.page(n, size)}
            total = script.announced_total()
            if total is not None:
                body["record_count"] = total
            return _json(body)
        finally:
            script.served(n)

    app = web.Application()
    app.router.add_post("/auth/token", token)
    app.router.add_get("/api/{resource}", listing)
    return app


def billomat_app(script: Script) -> web.Application:
    """`GET /api/clients?page=&per_page=` in Billomat's envelope (string metadata)."""

    async def listing(request: web.Request) -> web.Response:
        size = _int(request.query.get("per_page"), 100)
        n = _int(request.query.get("page"), 1)
        try:
            if n in script.bodies:
                return _json(script.bodies[n], script.statuses.get(n, 200))
            if n in script.statuses:
                return _json({"errors": {"error": "boom"}}, script.statuses[n])
            root: dict[str, Any] = {
                "@page": str(n),
                "@per_page": str(size),
                "client": script.page(n, size),
            }
            total = script.announced_total()
            if total is not None:
                root["@total"] = str(total)
            return _json({"clients": root})
        finally:
            script.served(n)

    app = web.Application()
    app.router.add_get("/api/clients", listing)
    return app


def reseller_app(script: Script) -> web.Application:
    """`GET /search.json?vars[page]=N` (25 a page, no total)."""

    async def search(request: web.Request) -> web.Response:
        n = _int(request.query.get("vars[page]"), 1)
        try:
            if n in script.bodies:
                return _json(script.bodies[n], script.statuses.get(n, 200))
            if n in script.statuses:
                return _json({"message": "boom", "response": "boom"}, script.statuses[n])
            rows = [{**r, "fields": {"license_module_key": r["id"]}} for r in script.page(n, 25)]
            return _json({"response": rows})
        finally:
            script.served(n)

    app = web.Application()
    app.router.add_get("/search.json", search)
    return app


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    async with serve_app(app) as url:
        yield url


def clients(n: int, start: int = 1) -> list[dict[str, Any]]:
    return [
        {"id": str(i), "first_name": f"Client{i}", "phone": f"+1555000{i:04d}"}
        for i in range(start, start + n)
    ]
