"""Billomat client: JSON on request, list-shape quirks, the 15-minute quota.

Facts this module is faithful to (upstream-apis §3):

- Billomat answers XML unless asked otherwise, so every request carries
  `Accept: application/json` (writes also `Content-Type: application/json`);
- lists look like `{"clients": {"@page": "1", "@per_page": "100", "@total": "234",
  "client": [...]}}` with string metadata, and the item key holds an *object* for a single hit and
  is *absent* for none; `BillomatPage` normalises all three to a list;
- pages go up to `per_page=1000`; once `@total` is known the remaining pages are fetched
  concurrently, and the walk ends when `page * per_page >= total`;
- `order_by=date DESC` must reach the server as `date+DESC`, never `date%2BDESC`: we pass a
  space, which yarl encodes as `+` (a `+` given by the caller is read as that space);
- the quota is per fixed 15-minute window, announced on every response by
  `X-Rate-Limit-Remaining` / `X-Rate-Limit-Reset` (epoch of the next window). A 429 waits until
  the reset, and so does a request sent while `remaining == 0`; either wait is capped by
  `max_rate_wait`, beyond which `RateLimited` is raised rather than hanging for minutes;
- errors carry `{"errors": {"error": "text" | ["text", ...]}}`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from daemon.clients.auth import StaticHeaders
from daemon.clients.errormap import ErrorDetail
from daemon.clients.http import UpstreamClient, UpstreamSession
from daemon.clients.paging import DEFAULT_MAX_PAGES, WalkReport, walk_pages
from daemon.clients.response import Response
from daemon.clients.segments import segment
from daemon.clients.settings import options_from_settings, secret_value
from daemon.clock import Clock
from daemon.config.upstreams import BillomatUpstream
from daemon.errors import (
    MalformedResponse,
    RateLimited,
    UpstreamError,
    redact_excerpt,
)

Record = dict[str, Any]
Records = list[Record]

MAX_PER_PAGE = 1000
JSON_HEADERS = {"Accept": "application/json"}

# resource (URL segment and list root) -> item key; every one simply drops the plural "s"
RESOURCES: dict[str, str] = {
    name: name[:-1]
    for name in (
        "clients",
        "contacts",
        "invoices",
        "invoice-items",
        "invoice-payments",
        "articles",
        "units",
        "suppliers",
        "recurrings",
        "incomings",
        "offers",
        "credit-notes",
        "confirmations",
        "reminders",
        "delivery-notes",
        "letters",
        "templates",
    )
}

_XML_ERROR = re.compile(r"<error>(.*?)</error>", re.S)


def _to_int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def error_messages(resp: Response, body: Any = None) -> list[str]:
    """The texts of a Billomat error body (JSON or XML), redacted and shortened."""
    texts: list[str] = []
    if body is None and resp.body.strip():
        try:
            body = resp.parse_json()
        except UpstreamError:
            texts = _XML_ERROR.findall(resp.body[:65536].decode("utf-8", errors="replace"))
    if isinstance(body, dict):
        errors = body.get("errors")
        inner = errors.get("error") if isinstance(errors, dict) else errors
        if isinstance(inner, str):
            texts = [inner]
        elif isinstance(inner, list):
            texts = [str(t) for t in inner]
    return [redact_excerpt(t, resp.secrets, limit=200) for t in texts if str(t).strip()]


@dataclass
class RateState:
    """The quota as the last response announced it."""

    remaining: int | None = None
    reset: float | None = None  # epoch seconds when the next window starts

    def observe(self, resp: Response) -> None:
        remaining = _to_int(resp.headers.get("X-Rate-Limit-Remaining"))
        reset = _to_int(resp.headers.get("X-Rate-Limit-Reset"))
        if remaining is not None:
            self.remaining = remaining
        if reset is not None:
            self.reset = float(reset)


class BillomatErrors:
    """How Billomat says what went wrong (`{"errors": {"error": ...}}`, or the XML form), and
    a 200 that carries such a body instead of data. Every answer also updates the quota."""

    def __init__(self, rate: RateState):
        self.rate = rate

    def detail(self, resp: Response) -> ErrorDetail | None:
        self.rate.observe(resp)
        texts = error_messages(resp)
        if resp.status in (400, 422):
            return ErrorDetail("; ".join(texts), {"": texts})
        if resp.status == 404 and not texts:
            return ErrorDetail("not found (unknown record or account)")
        return ErrorDetail("; ".join(texts))

    def failure_in_success(self, resp: Response, body: Any) -> ErrorDetail | None:
        if isinstance(body, dict) and "errors" in body:
            return ErrorDetail("; ".join(error_messages(resp, body)) or "error body")
        return None


@dataclass
class BillomatPage:
    """One list page, normalised: `items` is always a list, the metadata ints."""

    items: Records
    page: int
    per_page: int
    total: int | None
    raw: Any = field(default=None, repr=False)

    @property
    def is_last(self) -> bool:
        if self.total is None:
            return len(self.items) < self.per_page
        return self.page * self.per_page >= self.total


def _meta(value: Any, name: str, upstream: str) -> int | None:
    if value is None:
        return None
    number = _to_int(value)
    if number is None or number < 0:
        raise MalformedResponse(f"{name} {value!r} is not a number", upstream=upstream)
    return number


def parse_list(body: Any, resource: str, page: int, per_page: int, upstream: str) -> BillomatPage:
    """A list answer with its documented quirks: one hit = an object, zero hits = the item key
    absent. Anything else (no list root, an item key holding a string) is a
    `MalformedResponse`, never "no records"."""
    root = body.get(resource) if isinstance(body, dict) else None
    if not isinstance(root, dict):
        raise MalformedResponse(
            f"{resource}: list answer without a {resource!r} root", upstream=upstream
        )
    raw_items = root.get(RESOURCES.get(resource, resource.rstrip("s")))
    if raw_items is None:
        items: Records = []
    elif isinstance(raw_items, dict):
        items = [raw_items]
    elif isinstance(raw_items, list) and all(isinstance(i, dict) for i in raw_items):
        items = raw_items
    else:
        raise MalformedResponse(f"{resource}: unexpected item shape", upstream=upstream)
    return BillomatPage(
        items,
        _meta(root.get("@page"), "@page", upstream) or page,
        _meta(root.get("@per_page"), "@per_page", upstream) or per_page,
        _meta(root.get("@total"), "@total", upstream),
        body,
    )


def _query(values: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "1" if value else "0"  # Billomat booleans are 1/0
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    if "order_by" in out:
        # yarl encodes a space as "+" and a "+" as "%2B"; Billomat wants the literal "+".
        out["order_by"] = out["order_by"].replace("+", " ")
    return out


@dataclass
class BillomatList:
    """A resource's list for the page walker: `@total` and `@per_page` on every page."""

    resource: BillomatResource
    first_page_size: int | None
    filters: Mapping[str, Any]

    @property
    def label(self) -> str:
        return self.resource.name

    @property
    def upstream(self) -> str:
        return self.resource._client.name

    async def fetch(self, page_no: int, size: int | None) -> BillomatPage:
        return await self.resource.list(page_no, size or MAX_PER_PAGE, **self.filters)

    def records(self, page: BillomatPage) -> Records:
        return page.items

    def announced_total(self, page: BillomatPage) -> int | None:
        return page.total

    def announced_size(self, page: BillomatPage) -> int | None:
        return page.per_page

    async def count(self) -> int | None:
        return None

    def missing_total(self, first: BillomatPage) -> str | None:
        return f"the {self.label} list carries no @total"


class BillomatResource:
    """One Billomat resource (`clients`, `credit-notes`, ...)."""

    def __init__(self, client: BillomatClient, name: str):
        self._client = client
        self.name = name
        self.item_key = RESOURCES.get(name, name.rstrip("s"))

    def __repr__(self) -> str:
        return f"BillomatResource({self.name!r})"

    async def list(self, page: int = 1, per_page: int = 100, **filters: Any) -> BillomatPage:
        per_page = max(1, min(per_page, MAX_PER_PAGE))
        params = _query({**filters, "page": page, "per_page": per_page})
        body = await self._client.request("GET", self.name, params=params)
        return parse_list(body, self.name, page, per_page, self._client.name)

    async def iter_pages(
        self,
        per_page: int = MAX_PER_PAGE,
        *,
        max_pages: int = DEFAULT_MAX_PAGES,
        report: WalkReport | None = None,
        **filters: Any,
    ) -> AsyncGenerator[BillomatPage, None]:
        """Every page in order (`daemon.clients.paging`): concurrent once `@total` is known,
        pages 2..N already on the wire while page 1 is consumed; sequential otherwise."""
        walk = walk_pages(
            BillomatList(self, per_page, filters),
            window=max(1, self._client.page_concurrency),
            max_pages=max_pages,
            report=report,
        )
        async with aclosing(walk) as stream:
            async for page in stream:
                yield page

    async def iter_all(
        self, per_page: int = MAX_PER_PAGE, **filters: Any
    ) -> AsyncGenerator[Record, None]:
        async with aclosing(self.iter_pages(per_page, **filters)) as pages:
            async for page in pages:
                for item in page.items:
                    yield item

    async def get_all(self, per_page: int = MAX_PER_PAGE, **filters: Any) -> Records:
        """Everything in one list; for small sets (the CLI). Syncs stream `iter_pages`."""
        return [item async for item in self.iter_all(per_page, **filters)]

    def _unwrap(self, body: Any) -> Record:
        if isinstance(body, dict) and isinstance(body.get(self.item_key), dict):
            return dict(body[self.item_key])
        raise MalformedResponse(
            f"{self.name}: expected a {self.item_key!r} object", upstream=self._client.name
        )

    async def get(self, record_id: int | str) -> Record:
        return self._unwrap(await self._client.request("GET", f"{self.name}/{segment(record_id)}"))

    async def create(self, obj: Mapping[str, Any]) -> Record:
        """POST `{"<item>": obj}`; Billomat answers 201 with the saved object."""
        body = await self._client.request("POST", self.name, json={self.item_key: dict(obj)})
        return self._unwrap(body)

    async def update(self, record_id: int | str, obj: Mapping[str, Any]) -> Record:
        body = await self._client.request(
            "PUT", f"{self.name}/{segment(record_id)}", json={self.item_key: dict(obj)}
        )
        return self._unwrap(body)

    async def delete(self, record_id: int | str) -> None:
        """DELETE; Billomat answers 200 with an empty body."""
        await self._client.request("DELETE", f"{self.name}/{segment(record_id)}")


class InvoiceResource(BillomatResource):
    """Invoices plus their actions (billomapy's complete/cancel/email/pdf)."""

    async def complete(self, record_id: int | str, template_id: int | None = None) -> Any:
        """Close a draft (DRAFT → OPEN), rendering the PDF with `template_id` when given."""
        payload = {"complete": {"template_id": template_id} if template_id else {}}
        return await self._client.request(
            "PUT", f"invoices/{segment(record_id)}/complete", json=payload
        )

    async def cancel(self, record_id: int | str) -> Any:
        return await self._client.request("PUT", f"invoices/{segment(record_id)}/cancel")

    async def email(self, record_id: int | str, email: Mapping[str, Any]) -> Any:
        """Send by e-mail; `email` is Billomat's `email` object (recipients, subject, ...)."""
        return await self._client.request(
            "POST", f"invoices/{segment(record_id)}/email", json={"email": dict(email)}
        )

    async def pdf(self, record_id: int | str) -> Record:
        """The PDF as Billomat's `pdf` object (`base64file`, `filename`, `mimetype`, ...)."""
        body = await self._client.request("GET", f"invoices/{segment(record_id)}/pdf")
        if isinstance(body, dict) and isinstance(body.get("pdf"), dict):
            return dict(body["pdf"])
        raise MalformedResponse("invoice pdf: expected a 'pdf' object", upstream=self._client.name)


class BillomatClient(UpstreamClient):
    """Billomat over one `UpstreamSession`; use as `async with BillomatClient.from_settings(...)`.

    Resources are reached with `client.resource("credit-notes")` or as attributes with
    underscores (`client.credit_notes`). `rate` holds the last quota headers seen.
    """

    kind = "billomat"

    def __init__(
        self,
        session: UpstreamSession,
        *,
        max_rate_wait: float = 60.0,
        page_concurrency: int | None = None,
        rate: RateState | None = None,
    ):
        self.session = session

        self.clock = session.clock
        self.max_rate_wait = max_rate_wait
        self.page_concurrency = page_concurrency or session.options.max_concurrency
        self.rate = rate or RateState()
        self.invoices = InvoiceResource(self, "invoices")
        self._resources: dict[str, BillomatResource] = {
            name: self.invoices if name == "invoices" else BillomatResource(self, name)
            for name in RESOURCES
        }

    @classmethod
    def from_settings(cls, cfg: BillomatUpstream, *, clock: Clock) -> BillomatClient:
        """Build from an `[upstreams.<name>]` table of kind billomat (unopened)."""
        api_key = secret_value(cfg.api_key)
        app_id = cfg.app_id or None
        app_secret = secret_value(cfg.app_secret)
        headers = {"X-BillomatApiKey": api_key}
        if app_id and app_secret:
            headers.update({"X-AppId": str(app_id), "X-AppSecret": app_secret})
        max_wait = cfg.max_rate_wait
        options = options_from_settings(cfg, retry_after_cap=max_wait)
        # Waiting for the next quota window is one wait of up to max_rate_wait: allow it.
        options = replace(options, max_retry_wait=max(options.max_retry_wait, max_wait))
        client: BillomatClient
        rate = RateState()

        def retry_after(resp: Response, now_epoch: float) -> float | None:
            return client._retry_after(resp, now_epoch)

        session = UpstreamSession(
            str(cfg.name),
            cfg.base_url,
            options,
            clock=clock,
            auth=StaticHeaders(headers),
            secrets=[api_key, app_secret],
            errors=BillomatErrors(rate),
            retry_after=retry_after,
            default_headers=JSON_HEADERS,
        )
        client = cls(session, max_rate_wait=max_wait, rate=rate)
        return client

    def __getattr__(self, attr: str) -> BillomatResource:
        resources = self.__dict__.get("_resources", {})
        key = attr.replace("_", "-")
        if key in resources:
            return resources[key]  # type: ignore[no-any-return]
        raise AttributeError(attr)

    def resource(self, name: str) -> BillomatResource:
        """By name (`credit-notes`, `credit_notes`); `KeyError` when Billomat has none."""
        return self._resources[name.strip().lower().replace("_", "-")]

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """One call under the quota; parsed JSON, or None for an empty body (DELETE)."""
        await self._wait_for_quota()
        headers = dict(JSON_HEADERS)
        if json is not None:
            headers["Content-Type"] = "application/json"
        resp = await self.session.request(
            method, path.lstrip("/"), params=params, json_body=json, headers=headers
        )
        self.rate.observe(resp)
        if not resp.body.strip():
            return None
        return resp.json()

    async def _wait_for_quota(self) -> None:
        """The last answer said the window is spent: wait for the next one (capped)."""
        if self.rate.remaining is None or self.rate.remaining > 0 or self.rate.reset is None:
            return
        wait = self.rate.reset - self.clock.now().timestamp()
        if wait <= 0:
            return
        if wait > self.max_rate_wait:
            raise RateLimited(
                f"quota spent; next window in {wait:.0f}s exceeds max_rate_wait "
                f"{self.max_rate_wait:g}s",
                upstream=self.name,
                retry_after=wait,
            )
        await self.clock.sleep(wait)
        self.rate.remaining = None  # a new window; the next answer tells the truth

    def _retry_after(self, resp: Response, now_epoch: float) -> float | None:
        self.rate.observe(resp)
        if resp.status != 429:
            return None
        reset = _to_int(resp.headers.get("X-Rate-Limit-Reset"))
        return None if reset is None else max(0.0, reset - now_epoch)
