"""Blesta billing API client (upstream-apis.md §1).

`BlestaClient` sends `{base}/{model}/{method}.json` through the shared `UpstreamSession`, with
arguments encoded where PHP reads them (query for GET/DELETE, urlencoded form for POST/PUT).

Pagination is the part other clients get wrong: Blesta lists carry no total and the page size is
a server setting (`Blesta.results_per_page`, default 20, not 25). So `iter_pages` reads page 1
together with the sibling count method (`getListCount`, same filters), *learns* the page size
from page 1 and fetches the remaining pages concurrently; without a count it walks pages until an
empty or short one (`daemon.clients.paging` holds those rules for every upstream). A list answer
must be a list: `{"response": null}` or `false` is a `MalformedResponse`, never "no records".

Records inserted upstream while we page: Blesta orders lists by id by default, so new records
land at the end and the walk's extra page picks them up. Under another order, or when rows are
deleted mid-walk, rows shift between pages; the walk's report then says "incomplete" (the count
moved, or the distinct ids disagree with it) and the sync tombstones nothing that run.

Reports live in `daemon.clients.blesta_report`; they are re-exported here as methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import structlog

from daemon.clients import blesta_report
from daemon.clients.auth import BasicAuth, StaticHeaders
from daemon.clients.blesta_wire import (
    BLESTA_ERRORS,
    FORM_CONTENT_TYPE,
    BlestaResponse,
    encode_php_params,
    form_body,
    list_rows,
    parse_csv,
    parse_response,
)
from daemon.clients.http import HttpOptions, UpstreamClient, UpstreamSession
from daemon.clients.paging import DEFAULT_MAX_PAGES, WalkReport, walk_pages
from daemon.clients.settings import options_from_settings, secret_value
from daemon.clock import Clock
from daemon.config.upstreams import BlestaUpstream
from daemon.errors import AuthError, MalformedResponse, NotFoundError, UpstreamError

__all__ = [
    "BLESTA_ERRORS",
    "BlestaClient",
    "BlestaResponse",
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


@dataclass
class BlestaList:
    """One Blesta list method as the page walker sees it: fixed server page size, no total on
    the page, the total from the sibling count method (`getListCount`, same filters)."""

    client: BlestaClient
    model: str
    method: str
    args: dict[str, Any]
    count_method: str | None
    first_page_size: int | None = None
    # Why the last count call gave no total although there is a count method; None when it
    # answered or the method does not exist (404: a list without a count).
    count_failure: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model}/{self.method}"

    @property
    def upstream(self) -> str:
        return self.client.name

    async def fetch(self, page_no: int, size: int | None) -> list[Any]:
        return await self.client._page(self.model, self.method, self.args, page_no)

    def records(self, page: list[Any]) -> list[Any]:
        return page

    def announced_total(self, page: list[Any]) -> int | None:
        return None

    def announced_size(self, page: list[Any]) -> int | None:
        return None

    async def count(self) -> int | None:
        counted, self.count_failure = await self.client._try_count(
            self.model, self.count_method, self.args
        )
        return counted

    def missing_total(self, first: list[Any]) -> str | None:
        return self.count_failure


class BlestaClient(UpstreamClient):
    """Calls one Blesta installation. Owns its session: use `async with`."""

    def __init__(self, session: UpstreamSession):
        self.session = session

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
            errors=BLESTA_ERRORS,
        )
        return cls(session)

    @classmethod
    def from_settings(cls, cfg: BlestaUpstream, *, clock: Clock) -> BlestaClient:
        return cls.create(
            str(cfg.url),
            str(cfg.user),
            secret_value(cfg.key),
            clock=clock,
            name=str(cfg.name),
            auth=cfg.auth,
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

    async def _page(
        self, model: str, method: str, args: Mapping[str, Any] | None, page: int
    ) -> list[Any]:
        resp = await self.get(model, method, {**(args or {}), "page": page})
        return list_rows(resp.data, f"{model}/{method} page {page}", self.name, resp.status)

    async def _try_count(
        self, model: str, count_method: str | None, args: Mapping[str, Any] | None
    ) -> tuple[int | None, str | None]:
        """`(total, None)`; `(None, None)` for a list without a count (no count method, or
        Blesta answers 404: the model has no such method); `(None, why)` when the count
        failed otherwise: the walk then goes on without a total but cannot vouch for it."""
        if not count_method:
            return None, None
        count_args = {k: v for k, v in (args or {}).items() if k not in PAGING_ARGS}
        try:
            return await self.count(model, count_method, count_args), None
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
            if isinstance(exc, NotFoundError):
                return None, None
            return None, f"{model}/{count_method} failed ({type(exc).__name__})"

    async def iter_pages(
        self,
        model: str,
        method: str = "getList",
        args: Mapping[str, Any] | None = None,
        *,
        concurrency: int | None = None,
        count_method: str | None = "getListCount",
        max_pages: int = DEFAULT_MAX_PAGES,
        report: WalkReport | None = None,
    ) -> AsyncGenerator[tuple[int, list[Any]], None]:
        """Yield `(page_no, rows)` in order until the list is exhausted (see module docstring).

        An empty list yields nothing. Raises on any failed, malformed or repeated page; `report`
        (when given) says afterwards whether the walk can vouch for having seen everything.
        """
        source = BlestaList(self, model, method, dict(args or {}), count_method)
        walk = walk_pages(
            source,
            window=concurrency or self.session.options.max_concurrency,
            max_pages=max_pages,
            report=report,
        )
        page_no = 0
        async with aclosing(walk) as stream:
            async for rows in stream:
                page_no += 1
                yield page_no, rows

    async def iter_records(
        self,
        model: str,
        method: str = "getList",
        args: Mapping[str, Any] | None = None,
        *,
        concurrency: int | None = None,
        count_method: str | None = "getListCount",
    ) -> AsyncGenerator[Any, None]:
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
    ) -> AsyncGenerator[tuple[str, list[dict[str, Any]]], None]:
        """`(period, rows)` per month from `start` to `end` ('YYYY-MM', or 'current'/None)."""
        return blesta_report.report_series(self, report_type, start, end)
