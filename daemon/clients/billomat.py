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

import math
import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, cast

from daemon.clients.auth import StaticHeaders
from daemon.clients.http import Response, UpstreamClient, UpstreamSession
from daemon.clients.paging import ordered_pages
from daemon.clients.settings import options_from_settings, seconds, secret_value
from daemon.clock import Clock
from daemon.errors import (
    AuthError,
    ForbiddenError,
    MalformedResponse,
    NotFoundError,
    RateLimited,
    ServerError,
    UpstreamError,
    ValidationError,
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


def error_messages(resp: Response) -> list[str]:
    """The texts of a Billomat error body (JSON or XML), redacted and shortened."""
    texts: list[str] = []
    body: Any = None
    if resp.body.strip():
        try:
            body = resp.json()
        except UpstreamError:
            texts = _XML_ERROR.findall(resp.text())
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


def parse_list(body: Any, resource: str, page: int, per_page: int, upstream: str) -> BillomatPage:
    """A list answer with its quirks: single hit = object, zero hits = key absent."""
    root = body.get(resource) if isinstance(body, dict) else None
    if root is None and isinstance(body, dict) and len(body) == 1:
        root = next(iter(body.values()))
    if not isinstance(root, dict):
        raise MalformedResponse(
            f"{resource}: list answer without a {resource!r} root", upstream=upstream
        )
    raw_items = root.get(RESOURCES.get(resource, resource.rstrip("s")))
    if raw_items is None:
        items: Records = []
    elif isinstance(raw_items, dict):
        items = [raw_items]
    elif isinstance(raw_items, list):
        items = [i for i in raw_items if isinstance(i, dict)]
    else:
        raise MalformedResponse(f"{resource}: unexpected item shape", upstream=upstream)
    return BillomatPage(
        items,
        _to_int(root.get("@page")) or page,
        _to_int(root.get("@per_page")) or per_page,
        _to_int(root.get("@total")),
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
        self, per_page: int = MAX_PER_PAGE, **filters: Any
    ) -> AsyncGenerator[BillomatPage, None]:
        """Every page in order; concurrent once `@total` is known, sequential otherwise."""
        first = await self.list(1, per_page, **filters)
        yield first
        if first.is_last or not first.items:
            return
        size = first.per_page  # learned from the server, not assumed
        if first.total is not None:

            async def fetch(n: int) -> BillomatPage:
                return await self.list(n, size, **filters)

            pages = range(2, math.ceil(first.total / size) + 1)
            window = max(1, self._client.page_concurrency)
            walk = cast(
                AsyncGenerator[tuple[int, BillomatPage], None],
                ordered_pages(fetch, pages, window=window),
            )
            async with aclosing(walk) as stream:
                async for _, page in stream:
                    yield page
            return
        page = first
        while not page.is_last and page.items:
            page = await self.list(page.page + 1, size, **filters)
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
        return self._unwrap(await self._client.request("GET", f"{self.name}/{record_id}"))

    async def create(self, obj: Mapping[str, Any]) -> Record:
        """POST `{"<item>": obj}`; Billomat answers 201 with the saved object."""
        body = await self._client.request("POST", self.name, json={self.item_key: dict(obj)})
        return self._unwrap(body)

    async def update(self, record_id: int | str, obj: Mapping[str, Any]) -> Record:
        body = await self._client.request(
            "PUT", f"{self.name}/{record_id}", json={self.item_key: dict(obj)}
        )
        return self._unwrap(body)

    async def delete(self, record_id: int | str) -> None:
        """DELETE; Billomat answers 200 with an empty body."""
        await self._client.request("DELETE", f"{self.name}/{record_id}")


class InvoiceResource(BillomatResource):
    """Invoices plus their actions (billomapy's complete/cancel/email/pdf)."""

    async def complete(self, record_id: int | str, template_id: int | None = None) -> Any:
        """Close a draft (DRAFT → OPEN), rendering the PDF with `template_id` when given."""
        payload = {"complete": {"template_id": template_id} if template_id else {}}
        return await self._client.request("PUT", f"invoices/{record_id}/complete", json=payload)

    async def cancel(self, record_id: int | str) -> Any:
        return await self._client.request("PUT", f"invoices/{record_id}/cancel")

    async def email(self, record_id: int | str, email: Mapping[str, Any]) -> Any:
        """Send by e-mail; `email` is Billomat's `email` object (recipients, subject, ...)."""
        return await self._client.request(
            "POST", f"invoices/{record_id}/email", json={"email": dict(email)}
        )

    async def pdf(self, record_id: int | str) -> Record:
        """The PDF as Billomat's `pdf` object (`base64file`, `filename`, `mimetype`, ...)."""
        body = await self._client.request("GET", f"invoices/{record_id}/pdf")
        if isinstance(body, dict) and isinstance(body.get("pdf"), dict):
            return dict(body["pdf"])
        raise MalformedResponse("invoice pdf: expected a 'pdf' object", upstream=self._client.name)


def base_url(cfg: Any) -> str:
    """`cfg.base_url` (the settings' property), else the url override, else the account's."""
    explicit = getattr(cfg, "base_url", None) or getattr(cfg, "url", None)
    return str(explicit) if explicit else f"https://{cfg.billomat_id}.billomat.net/api"


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
    ):
        self.session = session

        self.clock = session.clock
        self.max_rate_wait = max_rate_wait
        self.page_concurrency = page_concurrency or session.options.max_concurrency
        self.rate = RateState()
        self.invoices = InvoiceResource(self, "invoices")
        self._resources: dict[str, BillomatResource] = {
            name: self.invoices if name == "invoices" else BillomatResource(self, name)
            for name in RESOURCES
        }

    @classmethod
    def from_settings(cls, cfg: Any, *, clock: Clock) -> BillomatClient:
        """Build from an `[upstreams.<name>]` table of kind billomat (unopened)."""
        api_key = secret_value(cfg.api_key)
        app_id = getattr(cfg, "app_id", None) or None
        app_secret = secret_value(getattr(cfg, "app_secret", None))
        headers = {"X-BillomatApiKey": api_key}
        if app_id and app_secret:
            headers.update({"X-AppId": str(app_id), "X-AppSecret": app_secret})
        max_wait = seconds(getattr(cfg, "max_rate_wait", None), 60.0)
        client: BillomatClient

        def mapper(resp: Response) -> UpstreamError | None:
            return client._map_error(resp)

        def retry_after(resp: Response, now_epoch: float) -> float | None:
            return client._retry_after(resp, now_epoch)

        session = UpstreamSession(
            str(cfg.name),
            base_url(cfg),
            options_from_settings(cfg, retry_after_cap=max_wait),
            clock=clock,
            auth=StaticHeaders(headers),
            secrets=[api_key, app_secret],
            error_mapper=mapper,
            retry_after=retry_after,
            default_headers=JSON_HEADERS,
        )
        client = cls(session, max_rate_wait=max_wait)
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

    def _map_error(self, resp: Response) -> UpstreamError | None:
        self.rate.observe(resp)
        texts = error_messages(resp)
        if not texts and resp.status != 404:
            return None
        message = "; ".join(texts)
        kw: dict[str, Any] = {
            "upstream": resp.upstream,
            "status": resp.status,
            "method": resp.method,
            "path": resp.url.path,
            "excerpt": resp.excerpt(),
        }
        s = resp.status
        if s == 401:
            return AuthError(message or "API key refused", **kw)
        if s == 403:
            return ForbiddenError(message or "access forbidden", **kw)
        if s == 404:
            return NotFoundError(message or "not found (unknown record or account)", **kw)
        if s in (400, 422):
            return ValidationError(message, field_errors={"": texts}, **kw)
        if s == 429:
            return RateLimited(message, **kw)
        if s >= 500:
            return ServerError(message, **kw)
        return None
