"""A simulated Blesta API, faithful to upstream-apis.md §1.

Routes `/api/{model}/{method}.{format}`: only `json` is served (anything else 415); unknown
model/method 404; bad Basic credentials or BLESTA-API-USER/KEY headers 401 (both forms are
accepted). Arguments are read where PHP reads them (`blesta_php.request_args`) — a JSON body is
ignored as real Blesta ignores it. Lists page at `page_size` (Blesta's default 20), carry no total
and narrow by default exactly like Blesta (invoices open, services active, transactions approved);
a missing required argument is a 500 whose `response` is the PHP reflection error; reports are a
CSV attachment with every cell quoted. Data handlers live in `blesta_sim_models`.

Test hooks on `BlestaState`: `add_client()` (mutate while a client pages), `after_page` (called
after a list page is built), `fail_pages` (list pages that answer 500), `ignore_page` (a server
that serves page 1 for every page), `disabled` ("model/method" names that 404), `maintenance`,
`max_in_flight` (the most concurrent requests seen) and `calls` (every call as received).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.sandbox import blesta_sim_models as models
from daemon.sandbox.blesta_php import (
    MESSAGES,
    ApiError,
    basic_credentials,
    error_response,
    request_args,
)
from daemon.sandbox.faults import Faults, SimStats, fault_middleware

__all__ = ["MESSAGES", "ApiError", "BlestaState", "error_response", "make_app"]


@dataclass
class BlestaState:
    """Everything the simulated Blesta knows; tests read and mutate it directly."""

    users: dict[str, str] = field(default_factory=lambda: {"sync": "demo-blesta-key"})
    clients: list[dict[str, Any]] = field(default_factory=list)
    contacts: list[dict[str, Any]] = field(default_factory=list)
    numbers: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    transactions: list[dict[str, Any]] = field(default_factory=list)
    packages: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    page_size: int = 20
    report_bom: bool = False
    faults: Faults = field(default_factory=Faults)
    stats: SimStats = field(default_factory=SimStats)
    maintenance: bool = False
    ignore_page: bool = False
    fail_pages: set[int] = field(default_factory=set)
    disabled: set[str] = field(default_factory=set)
    after_page: Callable[[str, int], None] | None = None
    calls: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    _high_water: dict[int, int] = field(default_factory=dict, repr=False)

    @classmethod
    def demo(cls, clients: int = 30, seed: int = 0, **kw: Any) -> BlestaState:
        """Deterministic demo data: `clients` clients with contacts, numbers, invoices,
        services, transactions and a handful of packages."""
        state = cls(seed=seed, **kw)
        models.populate(state, clients)
        return state

    def next_id(self, rows: list[dict[str, Any]]) -> int:
        """Never reuses an id, like an auto-increment column; O(1), so big demos build fast."""
        key = id(rows)
        high = self._high_water.get(key)
        if high is None:
            high = max((int(r["id"]) for r in rows), default=0)
        if rows:
            high = max(high, int(rows[-1]["id"]))
        self._high_water[key] = high + 1
        return high + 1

    def add_client(self, **fields: Any) -> dict[str, Any]:
        """Insert a client as if created in Blesta's UI; returns the stored row."""
        return models.new_client(self, {k: str(v) for k, v in fields.items()})


def make_app(state: BlestaState) -> web.Application:
    """The simulator app; serve it with `daemon.sandbox.server.serve_app` (base url + '/api')."""

    @web.middleware
    async def in_flight(request: web.Request, handler: Any) -> web.StreamResponse:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        finally:
            state.in_flight -= 1

    app = web.Application(middlewares=[in_flight, fault_middleware(state.faults, state.stats)])

    async def handle(request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        model, _, rest = tail.partition("/")
        method, dot, fmt = rest.rpartition(".") if "." in rest else (rest, "", "")
        if not dot or fmt != "json":
            return error_response(415)
        if not authorised(request, state):
            return error_response(401)
        if state.maintenance:
            return error_response(503)
        args = await request_args(request)
        state.calls.append((request.method, model, method, args))
        key = f"{model}/{method}"
        handler = None if key in state.disabled else models.HANDLERS.get(key)
        if handler is None:
            status = 403 if key in models.NOT_CALLABLE else 404
            return error_response(status)
        try:
            result = handler(state, args)
        except ApiError as exc:
            return error_response(exc.status, errors=exc.errors, response=exc.response)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response({"response": result})

    app.router.add_route("*", "/api/{tail:.*}", handle)
    return app


def authorised(request: web.Request, state: BlestaState) -> bool:
    """Basic auth (every version) or the BLESTA-API-USER/KEY headers (recent versions)."""
    creds = basic_credentials(request)
    if creds is None and "BLESTA-API-USER" in request.headers:
        creds = (request.headers["BLESTA-API-USER"], request.headers.get("BLESTA-API-KEY", ""))
    return creds is not None and state.users.get(creds[0]) == creds[1] and bool(creds[1])
