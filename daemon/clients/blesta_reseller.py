"""Blesta Reseller API client (upstream-apis.md §2).

The Reseller API is a Blesta plugin controller at
`https://account.blesta.com/plugin/blesta_reseller/v2/index/{method}.json`, so it shares the
billing API's envelope, status codes and PHP encoding (`daemon.clients.blesta_wire`). Licence
methods take `vars[...]` fields (form body for POST, query for GET); `getpackagepricing` takes a
plain `package_id`.

`search` pages with `vars[page]` — not `page`, which the server ignores (a known SDK bug that
returns page 1 forever). Pages hold at most 25 rows and carry no total, so the walk ends on an
empty page or one shorter than the first (a short first page costs one extra, empty request
rather than trusting the documented 25 and losing rows should a server use less); a repeated
page raises instead of looping (`daemon.clients.paging`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from daemon.clients.auth import BasicAuth
from daemon.clients.blesta_wire import (
    BLESTA_ERRORS,
    FORM_CONTENT_TYPE,
    BlestaResponse,
    encode_php_params,
    form_body,
    list_rows,
)
from daemon.clients.blesta_wire import parse_response as _parse
from daemon.clients.http import HttpOptions, UpstreamClient, UpstreamSession
from daemon.clients.paging import DEFAULT_MAX_PAGES, WalkReport, walk_pages
from daemon.clients.settings import options_from_settings, secret_value
from daemon.clock import Clock
from daemon.config.upstreams import ResellerUpstream
from daemon.errors import MalformedResponse

DEFAULT_URL = "https://account.blesta.com/plugin/blesta_reseller/v2/index"
SEARCH_PAGE_SIZE = 25  # documented maximum; the walk itself learns from page 1


def _flag(value: bool) -> str:
    # The Reseller docs spell this parameter `vars[test_mode]=true|false`.
    return "true" if value else "false"


@dataclass
class ResellerSearch:
    """`search` for the page walker: `vars[page]`, at most 25 rows a page, no total."""

    client: ResellerClient
    term: str
    first_page_size: int | None = None

    @property
    def label(self) -> str:
        return "search"

    @property
    def upstream(self) -> str:
        return self.client.name

    async def fetch(self, page_no: int, size: int | None) -> list[Any]:
        resp = await self.client.call(
            "GET", "search", {"vars": {"search": self.term, "page": page_no}}
        )
        return list_rows(resp.data, f"search page {page_no}", self.client.name, resp.status)

    def records(self, page: list[Any]) -> list[Any]:
        return page

    def announced_total(self, page: list[Any]) -> int | None:
        return None

    def announced_size(self, page: list[Any]) -> int | None:
        return None

    async def count(self) -> int | None:
        return None

    def missing_total(self, first: list[Any]) -> str | None:
        return None  # this list never announces a total


class ResellerClient(UpstreamClient):
    """Calls the Blesta Reseller API for one account. Owns its session: use `async with`."""

    def __init__(self, session: UpstreamSession):
        self.session = session

    @classmethod
    def create(
        cls,
        url: str,
        user: str,
        password: str,
        *,
        clock: Clock,
        name: str = "reseller",
        options: HttpOptions | None = None,
    ) -> ResellerClient:
        session = UpstreamSession(
            name,
            url or DEFAULT_URL,
            options or HttpOptions(),
            clock=clock,
            auth=BasicAuth(user, password),
            secrets=[password],
            errors=BLESTA_ERRORS,
        )
        return cls(session)

    @classmethod
    def from_settings(cls, cfg: ResellerUpstream, *, clock: Clock) -> ResellerClient:
        return cls.create(
            str(cfg.url),
            str(cfg.user),
            secret_value(cfg.password),
            clock=clock,
            name=str(cfg.name),
            options=options_from_settings(cfg),
        )

    async def call(
        self, verb: str, method: str, args: Mapping[str, Any] | None = None
    ) -> BlestaResponse:
        """One raw call: GET args in the query, POST/PUT args as a form body."""
        verb = verb.upper()
        pairs = encode_php_params(args)
        if verb in ("GET", "DELETE"):
            resp = await self.session.request(verb, f"{method}.json", params=pairs)
        else:
            resp = await self.session.request(
                verb,
                f"{method}.json",
                data=form_body(pairs),
                headers={"Content-Type": FORM_CONTENT_TYPE},
            )
        return _parse(resp)

    # -- account and catalogue ------------------------------------------------------------------

    async def getcredit(self) -> float:
        """Account credit; the API answers a bare number (sometimes as a string)."""
        value = (await self.call("GET", "getcredit")).data
        try:
            return float(value)
        except (TypeError, ValueError):
            raise MalformedResponse(
                f"getcredit returned {value!r}, not a number", upstream=self.name
            ) from None

    async def getpackages(self) -> list[dict[str, Any]]:
        return self._list("getpackages", (await self.call("GET", "getpackages")).data)

    async def getpackagepricing(self, package_id: int | str) -> list[dict[str, Any]]:
        resp = await self.call("GET", "getpackagepricing", {"package_id": package_id})
        return self._list("getpackagepricing", resp.data)

    # -- licences ---------------------------------------------------------------------------------

    async def addlicense(self, pricing_id: int | str, test_mode: bool = False) -> str:
        """Buy a licence; returns the licence key. POST, so never retried after a 500."""
        resp = await self.call(
            "POST",
            "addlicense",
            {"vars": {"pricing_id": pricing_id, "test_mode": _flag(test_mode)}},
        )
        if not isinstance(resp.data, str | int) or isinstance(resp.data, bool) or not resp.data:
            raise MalformedResponse(
                f"addlicense returned {resp.data!r}, not a licence key", upstream=self.name
            )
        return str(resp.data)

    async def _licence_op(self, method: str, license: str, test_mode: bool) -> Any:
        resp = await self.call(
            "POST", method, {"vars": {"license": license, "test_mode": _flag(test_mode)}}
        )
        return resp.data  # body undocumented; a 200 means done

    async def cancellicense(self, license: str, test_mode: bool = False) -> Any:
        return await self._licence_op("cancellicense", license, test_mode)

    async def suspendlicense(self, license: str, test_mode: bool = False) -> Any:
        return await self._licence_op("suspendlicense", license, test_mode)

    async def unsuspendlicense(self, license: str, test_mode: bool = False) -> Any:
        return await self._licence_op("unsuspendlicense", license, test_mode)

    async def update_reissue(self, license: str) -> Any:
        """Allow the licence to be reissued (moved to a new domain/IP/path)."""
        resp = await self.call(
            "POST", "update", {"vars": {"license": license, "reissue_status": "reissue"}}
        )
        return resp.data

    # -- search -----------------------------------------------------------------------------------

    async def search_pages(
        self,
        term: str = "",
        *,
        max_pages: int = DEFAULT_MAX_PAGES,
        report: WalkReport | None = None,
    ) -> AsyncGenerator[tuple[int, list[Any]], None]:
        """`(page_no, rows)` for every page of a search (see module docstring)."""
        walk = walk_pages(ResellerSearch(self, term), window=1, max_pages=max_pages, report=report)
        page_no = 0
        async with aclosing(walk) as stream:
            async for rows in stream:
                page_no += 1
                yield page_no, rows

    async def search(self, term: str = "") -> AsyncIterator[dict[str, Any]]:
        """Every non-cancelled licence matching `term` (key, domain, IP or path)."""
        async for _, rows in self.search_pages(term):
            for row in rows:
                yield row

    async def search_all(self, term: str = "") -> list[dict[str, Any]]:
        return [row async for row in self.search(term)]

    def _list(self, method: str, data: Any) -> list[Any]:
        return list_rows(data, method, self.name, 200)
