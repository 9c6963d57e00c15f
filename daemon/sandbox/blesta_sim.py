"""A simulated Blesta API, faithful to upstream-apis.md §1.

Routes `/api/{model}/{method}.{format}` with format `json`, `xml` or `php` rendered as Blesta's
API controller does (`blesta_formats`; anything else 415, no method 404); unknown model/method
404; bad Basic credentials or BLESTA-API-USER/KEY headers 401 (both forms are accepted).
Arguments are read where PHP reads them (`blesta_php.request_args`) — a JSON body is ignored as
real Blesta ignores it. Lists page at `page_size` (Blesta's default 20), carry no total and
narrow by default exactly like Blesta (invoices open, services active, transactions approved);
a missing required argument is a 500 whose `response` is the PHP reflection error; reports are
a CSV (or JSON) attachment. Handlers live in `blesta_sim_models`, `blesta_lists` and
`blesta_reports`; every table is indexed (`daemon.sandbox.listing`), so a page of a 100k-client
list costs a slice. A test that edits a row in place should call `reindex(row)` on its table.

Test hooks on `BlestaState`: `add_client()` (mutate while a client pages), `after_page` (called
after a list page is built), `fail_pages` (list pages that answer 500), `ignore_page` (a server
that serves page 1 for every page), `disabled` ("model/method" names that 404), `maintenance`,
`max_in_flight` (the most concurrent requests seen) and `calls` (every call as received).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.sandbox import blesta_lists, blesta_reports
from daemon.sandbox import blesta_sim_models as models
from daemon.sandbox.blesta_formats import CONTENT_TYPES, PhpArray, render
from daemon.sandbox.blesta_php import (
    MESSAGES,
    ApiError,
    basic_credentials,
    error_response,
    request_args,
)
from daemon.sandbox.faults import Faults, SimStats, fault_middleware
from daemon.sandbox.listing import Table

TABLES = ("clients", "contacts", "numbers", "invoices", "services", "transactions", "packages")
HASH_FIELDS = ("client_id", "contact_id")
_REGISTERED = (blesta_lists, blesta_reports)  # their handlers register on import

__all__ = ["MESSAGES", "ApiError", "BlestaState", "error_response", "make_app"]


def _row_id(row: dict[str, Any]) -> int:
    return int(row["id"])


class BlestaTable(Table):
    """Rows keyed by their numeric id (a string, as PHP returns it); per-client and per-contact
    lists are hash-indexed."""

    def __init__(self, rows: Iterable[dict[str, Any]] = ()):
        super().__init__(rows, key=_row_id, hash_fields=HASH_FIELDS)


@dataclass
class BlestaState:
    """Everything the simulated Blesta knows; tests read and mutate it directly."""

    users: dict[str, str] = field(default_factory=lambda: {"sync": "demo-blesta-key"})
    # Tables (any iterable assigned is turned into one; they also behave as lists)
    clients: BlestaTable = field(default_factory=BlestaTable)
    contacts: BlestaTable = field(default_factory=BlestaTable)
    numbers: BlestaTable = field(default_factory=BlestaTable)
    invoices: BlestaTable = field(default_factory=BlestaTable)
    services: BlestaTable = field(default_factory=BlestaTable)
    transactions: BlestaTable = field(default_factory=BlestaTable)
    packages: BlestaTable = field(default_factory=BlestaTable)
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

    def __setattr__(self, name: str, value: Any) -> None:
        if name in TABLES and not isinstance(value, BlestaTable):
            value = BlestaTable(value)  # a test or benchmark assigned a plain list
        super().__setattr__(name, value)

    @classmethod
    def demo(cls, clients: int = 30, seed: int = 0, **kw: Any) -> BlestaState:
        """Deterministic demo data: `clients` clients with contacts, numbers, invoices,
        services, transactions and a handful of packages."""
        state = cls(seed=seed, **kw)
        models.populate(state, clients)
        return state

    def next_id(self, rows: BlestaTable) -> int:
        """Never reuses an id, like an auto-increment column; O(1), so big demos build fast."""
        return rows.next_id()

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
        model, _, rest = request.match_info["tail"].partition("/")
        if not model or not rest:
            return error_response(404)  # no resource given
        method, dot, fmt = rest.partition(".")
        fmt = fmt.lower()
        if not dot or fmt not in CONTENT_TYPES:
            return error_response(415)
        if not authorised(request, state):
            return render(fmt, model, _error_body(401), 401)
        if state.maintenance:
            return render(fmt, model, _error_body(503), 503)
        args = await request_args(request)
        state.calls.append((request.method, model, method, args))
        key = f"{model}/{method}"
        handler = None if key in state.disabled else models.HANDLERS.get(key)
        if handler is None:
            status = 403 if key in models.NOT_CALLABLE else 404
            return render(fmt, model, _error_body(status), status)
        try:
            result = handler(state, args)
        except ApiError as exc:
            body = _error_body(exc.status, errors=exc.errors, response=exc.response)
            return render(fmt, model, body, exc.status)
        if isinstance(result, web.StreamResponse):
            return result
        return render(fmt, model, PhpArray(response=result))

    app.router.add_route("*", "/api/{tail:.*}", handle)
    return app


def _error_body(
    status: int, *, errors: dict[str, Any] | None = None, response: Any = None
) -> PhpArray:
    """Blesta's error envelope: message, then errors (when any), then response."""
    body = PhpArray(message=MESSAGES.get(status, "Error"))
    if errors:
        body["errors"] = errors
    body["response"] = response
    return body


def authorised(request: web.Request, state: BlestaState) -> bool:
    """Basic auth (every version) or the BLESTA-API-USER/KEY headers (recent versions)."""
    creds = basic_credentials(request)
    if creds is None and "BLESTA-API-USER" in request.headers:
        creds = (request.headers["BLESTA-API-USER"], request.headers.get("BLESTA-API-KEY", ""))
    return creds is not None and state.users.get(creds[0]) == creds[1] and bool(creds[1])
