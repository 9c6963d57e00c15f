"""Blesta billing API client (upstream-apis.md §1).

`BlestaClient` sends `{base}/{model}/{method}.json` through the shared `UpstreamSession`, with
arguments encoded where PHP reads them (query for GET/DELETE, urlencoded form for POST/PUT).

Pagination is the part other clients get wrong: Blesta lists carry no total and the page size is
a server setting (`Blesta.results_per_page`, default 20, not 25). So `iter_pages` reads page 1,
asks the sibling count method (`getListCount` with the same filters), *learns* the page size from
page 1, and then fetches the remaining pages concurrently; without a count it walks pages until
an empty or short one. A failed page raises — a partial list is never reported as complete — and
a server that ignores `page` (the same page again) is a `MalformedResponse`, not an endless loop.

Records inserted upstream while we page: Blesta orders lists by id by default, so new records
land at the end; after the planned pages we keep reading while the last page is full, so they
are picked up. Under another order an insertion shifts rows forward and a row at a page boundary
may be yielded twice (never silently lost); consumers upsert by id. Rows deleted meanwhile can
shift one row back past the boundary; the next full sync sees it again.

Reports live in `daemon.clients.blesta_report`; they are re-exported here as methods.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from datetime import date
from typing import Any, Literal

import structlog

from daemon.clients import blesta_report
from daemon.clients.auth import BasicAuth, StaticHeaders
from daemon.clients.blesta_wire import (
    FORM_CONTENT_TYPE,
    BlestaResponse,
    blesta_error,
    encode_php_params,
    form_body,
    parse_csv,
    parse_response,
)
from daemon.clients.http import HttpOptions, UpstreamClient, UpstreamSession
from daemon.clients.paging import ordered_pages
from daemon.clients.settings import options_from_settings, secret_value
from daemon.clock import Clock
from daemon.errors import AuthError, MalformedResponse, UpstreamError

__all__ = [
    "BlestaClient",
    "BlestaResponse",
    "blesta_error",
    "encode_php_params",
    "parse_csv",
]

log = structlog.get_logger(__name__)

Verb = Literal["GET", "POST", "PUT", "DELETE"]
Target = tuple[str, str, Mapping[str, Any] | None]
PAGING_ARGS = ("page", "order_by", "order")


def make_auth(mode: str, user: str, key: str) -> BasicAuth | StaticHeaders:
    """'basic' (every Blesta version) or 'header' (BLESTA-API-USER/KEY, what the SDK sends)."""
    if mode == "header":
        return StaticHeaders({"BLESTA-API-USER": user, "BLESTA-API-KEY": key})
    if mode == "basic":
        return BasicAuth(user, key)
    raise ValueError(f"unknown Blesta auth mode {mode!r} (basic or header)")


class BlestaClient(UpstreamClient):
    """Calls one Blesta installation. Owns its session: use `async with`."""

    def __init__(self, session: UpstreamSession):
        self.session = session
        self._page_sizes: dict[tuple[str, str], int] = {}

    @classmethod
    def create(
        cls,
        url: str,
        user: str,
        key: str,
        *,
        clock: Clock,
        name: str = "blesta",
        auth: str = "basic",
        options: HttpOptions | None = None,
    ) -> BlestaClient:
        """A client for `url` (the API root, e.g. `https://billing.example.com/api`)."""
        session = UpstreamSession(
            name,
            url,
            options or HttpOptions(),
            clock=clock,
            auth=make_auth(auth, user, key),
            secrets=[key],
            error_mapper=blesta_error,
        )
        return cls(session)

    @classmethod
    def from_settings(cls, cfg: Any, *, clock: Clock) -> BlestaClient:
        return cls.create(
            str(cfg.url),
            str(cfg.user),
            secret_value(cfg.key),
            clock=clock,
            name=str(cfg.name),
            auth=str(getattr(cfg, "auth", "basic") or "basic"),
            options=options_from_settings(cfg),
        )

    # -- single calls -------------------------------------------------------------------------

    async def call(
        self, verb: Verb | str, model: str, method: str, args: Mapping[str, Any] | None = None
    ) -> BlestaResponse:
        """One API call; arguments go where PHP reads them for this verb."""
        verb = verb.upper()
        path = f"{model}/{method}.json"
        pairs = encode_php_params(args)
        if verb in ("GET", "DELETE"):
            resp = await self.session.request(verb, path, params=pairs)
        else:
            resp = await self.session.request(
                verb,
                path,
                data=form_body(pairs),
                headers={"Content-Type": FORM_CONTENT_TYPE},
            )
        return parse_response(resp)

    async def get(
        self, model: str, method: str, args: Mapping[str, Any] | None = None
    ) -> BlestaResponse:
        return await self.call("GET", model, method, args)

    async def post(
        self, model: str, method: str, args: Mapping[str, Any] | None = None
    ) -> BlestaResponse:
        return await self.call("POST", model, method, args)

    async def put(
        self, model: str, method: str, args: Mapping[str, Any] | None = None
    ) -> BlestaResponse:
        return await self.call("PUT", model, method, args)

    async def delete(
        self, model: str, method: str, args: Mapping[str, Any] | None = None
    ) -> BlestaResponse:
        return await self.call("DELETE", model, method, args)

    async def count(
        self, model: str, method: str = "getListCount", args: Mapping[str, Any] | None = None
    ) -> int:
        """An integer-returning method (`getListCount`, `getStatusCount`)."""
        resp = await self.get(model, method, args)
        value = resp.data
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise MalformedResponse(
                f"{model}/{method} returned {type(value).__name__}, not a count",
                upstream=self.name,
                status=resp.status,
            )
        try:
            return int(value)
        except ValueError:
            raise MalformedResponse(
                f"{model}/{method} returned {value!r}, not a count",
                upstream=self.name,
                status=resp.status,
            ) from None

    # -- lists ----------------------------------------------------------------------------------

    def page_size(self, model: str, method: str = "getList") -> int | None:
        """The page size learned for this list, if a multi-page fetch has shown it."""
        return self._page_sizes.get((model, method))

    async def _page(
        self, model: str, method: str, args: Mapping[str, Any] | None, page: int
    ) -> list[Any]:
        resp = await self.get(model, method, {**(args or {}), "page": page})
        rows = resp.data
        if rows is None or rows is False:
            return []  # some list methods answer false/null for "nothing here"
        if isinstance(rows, dict):
            rows = list(rows.values())  # PHP arrays with non-sequential keys arrive as objects
        if not isinstance(rows, list):
            raise MalformedResponse(
                f"{model}/{method} page {page} is {type(rows).__name__}, not a list",
                upstream=self.name,
                status=resp.status,
            )
        return rows

    async def _try_count(
        self, model: str, count_method: str | None, args: Mapping[str, Any] | None
    ) -> int | None:
        if not count_method:
            return None
        count_args = {k: v for k, v in (args or {}).items() if k not in PAGING_ARGS}
        try:
            return await self.count(model, count_method, count_args)
        except AuthError:
            raise
        except UpstreamError as exc:
            log.info(
                "blesta.count_unavailable",
                upstream=self.name,
                model=model,
                method=count_method,
                error=type(exc).__name__,
            )
            return None

    async def iter_pages(
        self,
        model: str,
        method: str = "getList",
        args: Mapping[str, Any] | None = None,
        *,
        concurrency: int | None = None,
        count_method: str | None = "getListCount",
    ) -> AsyncIterator[tuple[int, list[Any]]]:
        """Yield `(page_no, rows)` in order until the list is exhausted (see module docstring).

        An empty list yields nothing. Raises on any failed page.
        """
        # Page 1 and the count travel together: one round trip for the common small list.
        counting = asyncio.ensure_future(self._try_count(model, count_method, args))
        try:
            first = await self._page(model, method, args, 1)
            if not first:
                return
            yield 1, first
            total = await counting
        finally:
            counting.cancel()  # no-op when done; gather also marks a stored exception as seen
            await asyncio.gather(counting, return_exceptions=True)
        if total is not None and total <= len(first):
            return
        known = self._page_sizes.get((model, method))
        if total is None and known is not None and len(first) < known:
            return  # a short first page of a list whose page size we already learned
        size = len(first)
        previous = first
        last_page = 1
        if total is not None:
            self._learn(model, method, size)
            pages = range(2, math.ceil(total / size) + 1)
            window = concurrency or self.session.options.max_concurrency

            async def fetch(n: int) -> list[Any]:
                return await self._page(model, method, args, n)

            async for page_no, rows in ordered_pages(fetch, pages, window=window):
                self._check_repeat(model, method, page_no, rows, previous)
                if rows:
                    yield page_no, rows
                previous, last_page = rows, page_no
            if len(previous) < size:
                return
        # Sequential: no count, or the list grew past the count while we paged.
        while True:
            page_no = last_page + 1
            rows = await self._page(model, method, args, page_no)
            if not rows:
                return
            self._check_repeat(model, method, page_no, rows, previous)
            if page_no == 2 and total is None:
                self._learn(model, method, size)
            yield page_no, rows
            if len(rows) < size:
                return
            previous, last_page = rows, page_no

    def _learn(self, model: str, method: str, size: int) -> None:
        if self._page_sizes.get((model, method)) != size:
            self._page_sizes[(model, method)] = size
            log.debug("blesta.page_size", upstream=self.name, model=model, size=size)

    def _check_repeat(
        self, model: str, method: str, page_no: int, rows: list[Any], previous: list[Any]
    ) -> None:
        if rows and rows == previous:
            raise MalformedResponse(
                f"{model}/{method} page {page_no} repeats page {page_no - 1}: "
                "the server ignores `page`; refusing to loop",
                upstream=self.name,
            )

    async def iter_records(
        self,
        model: str,
        method: str = "getList",
        args: Mapping[str, Any] | None = None,
        *,
        concurrency: int | None = None,
        count_method: str | None = "getListCount",
    ) -> AsyncIterator[Any]:
        """Every row of every page, in order."""
        async for _, rows in self.iter_pages(
            model, method, args, concurrency=concurrency, count_method=count_method
        ):
            for row in rows:
                yield row

    async def get_all(
        self,
        model: str,
        method: str = "getList",
        args: Mapping[str, Any] | None = None,
        *,
        concurrency: int | None = None,
        count_method: str | None = "getListCount",
    ) -> list[Any]:
        """The whole list in memory; for small lists and scripts (sync streams pages instead)."""
        return [
            row
            async for row in self.iter_records(
                model, method, args, concurrency=concurrency, count_method=count_method
            )
        ]

    async def extract(self, targets: Mapping[str, Target]) -> dict[str, list[Any]]:
        """Several `get_all`s at once: `{"clients": ("clients", "getList", {...}), ...}`.

        The session's connection limit still bounds requests in flight; the first failure
        cancels the rest and is raised.
        """
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = {n: tg.create_task(self.get_all(*t)) for n, t in targets.items()}
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None  # callers handle typed errors, not groups
        return {n: task.result() for n, task in tasks.items()}

    # -- reports --------------------------------------------------------------------------------

    async def get_report(
        self, report_type: str, start_date: date | str, end_date: date | str, fmt: str = "csv"
    ) -> list[dict[str, Any]]:
        """One report as rows (see `blesta_report.get_report`)."""
        return await blesta_report.get_report(self, report_type, start_date, end_date, fmt)

    def report_series(
        self, report_type: str, start: str, end: str | None = None
    ) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        """`(period, rows)` per month from `start` to `end` ('YYYY-MM', or 'current'/None)."""
        return blesta_report.report_series(self, report_type, start, end)
