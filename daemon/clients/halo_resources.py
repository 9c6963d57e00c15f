"""HaloPSA resources: which path and list key each uses, and how to page through them.

Halo's REST API has one shape for every resource (`GET /api/<Path>` lists, `GET
/api/<Path>/<id>` reads one, `POST /api/<Path>` with a JSON *array* creates or updates,
`DELETE /api/<Path>/<id>` deletes), but the list envelopes differ: most answer
`{"record_count": N, "<key>": [...]}`, some a bare JSON array, and some ignore paging and
answer page 1 for every `page_no`. `HaloResource` hides those differences.

Paths and list keys. "halo-ps" = homotechsual/HaloAPI (its `Get-Halo*.ps1` resource and
`ResourceType`); "guess" = not seen in any client we read, chosen by Halo's naming pattern.
The parser also accepts a bare array or any single list in the envelope, so a wrong guess
still reads records; only `record_count` (and with it concurrent paging) would be lost.

| attribute          | path             | list key       | source                        |
|--------------------|------------------|----------------|-------------------------------|
| tickets            | Tickets          | tickets        | upstream-apis §4              |
| actions            | Actions          | actions        | upstream-apis §4              |
| clients            | Client           | clients        | upstream-apis §4              |
| users              | Users            | users          | upstream-apis §4              |
| agents             | Agent            | (bare array)   | upstream-apis §4; + Agent/me  |
| assets             | Asset            | assets         | upstream-apis §4              |
| sites              | Site             | sites          | upstream-apis §4              |
| invoices           | Invoice          | invoices       | upstream-apis §4              |
| contracts          | ClientContract   | contracts      | halo-ps path; key a guess     |
| opportunities      | Opportunities    | tickets        | halo-ps                       |
| projects           | Projects         | tickets        | halo-ps                       |
| appointments       | Appointment      | appointments   | halo-ps                       |
| items              | Item             | items          | halo-ps                       |
| kb_articles        | KBArticle        | articles       | halo-ps                       |
| suppliers          | Supplier         | suppliers      | halo-ps                       |
| attachments        | Attachment       | attachments    | halo-ps                       |
| statuses           | Status           | (bare array)   | upstream-apis §4              |
| teams              | Team             | (bare array)   | upstream-apis §4              |
| categories         | Category         | categories     | halo-ps                       |
| priorities         | Priority         | (bare array)   | guess                         |
| slas               | SLA              | (bare array)   | guess                         |
| ticket_types       | TicketType       | tickettypes    | halo-ps                       |
| top_levels         | TopLevel         | (bare array)   | guess                         |
| expenses           | Expense          | expenses       | guess                         |
| timesheets         | Timesheet        | timesheets     | halo-ps                       |
| releases           | Release          | releases       | halo-ps                       |
| reports            | Report           | reports        | halo-ps                       |
| webhooks           | Webhook          | (bare array)   | guess                         |
| workdays           | Workday          | workdays       | halo-ps                       |
| software_licences  | SoftwareLicence  | licences       | halo-ps                       |
| crm_notes          | CRMNote          | actions        | halo-ps; ignores paging       |
| quotations         | Quotation        | quotes         | halo-ps                       |
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import structlog

from daemon.clients.paging import ordered_pages
from daemon.errors import MalformedResponse

log = structlog.get_logger(__name__)

Record = dict[str, Any]
Records = list[Record]

DEFAULT_PAGE_SIZE = 50  # safe across Halo versions and clients (upstream-apis §4)


@dataclass(frozen=True)
class ResourceSpec:
    """Where a resource lives and how its list is wrapped (`list_key=None`: a bare array)."""

    name: str
    path: str
    list_key: str | None


RESOURCES: dict[str, ResourceSpec] = {
    s.name: s
    for s in (
        ResourceSpec("tickets", "Tickets", "tickets"),
        ResourceSpec("actions", "Actions", "actions"),
        ResourceSpec("clients", "Client", "clients"),
        ResourceSpec("users", "Users", "users"),
        ResourceSpec("agents", "Agent", None),
        ResourceSpec("assets", "Asset", "assets"),
        ResourceSpec("sites", "Site", "sites"),
        ResourceSpec("invoices", "Invoice", "invoices"),
        ResourceSpec("contracts", "ClientContract", "contracts"),
        ResourceSpec("opportunities", "Opportunities", "tickets"),
        ResourceSpec("projects", "Projects", "tickets"),
        ResourceSpec("appointments", "Appointment", "appointments"),
        ResourceSpec("items", "Item", "items"),
        ResourceSpec("kb_articles", "KBArticle", "articles"),
        ResourceSpec("suppliers", "Supplier", "suppliers"),
        ResourceSpec("attachments", "Attachment", "attachments"),
        ResourceSpec("statuses", "Status", None),
        ResourceSpec("teams", "Team", None),
        ResourceSpec("categories", "Category", "categories"),
        ResourceSpec("priorities", "Priority", None),
        ResourceSpec("slas", "SLA", None),
        ResourceSpec("ticket_types", "TicketType", "tickettypes"),
        ResourceSpec("top_levels", "TopLevel", None),
        ResourceSpec("expenses", "Expense", "expenses"),
        ResourceSpec("timesheets", "Timesheet", "timesheets"),
        ResourceSpec("releases", "Release", "releases"),
        ResourceSpec("reports", "Report", "reports"),
        ResourceSpec("webhooks", "Webhook", None),
        ResourceSpec("workdays", "Workday", "workdays"),
        ResourceSpec("software_licences", "SoftwareLicence", "licences"),
        ResourceSpec("crm_notes", "CRMNote", "actions"),
        ResourceSpec("quotations", "Quotation", "quotes"),
    )
}


def find_spec(name: str) -> ResourceSpec:
    """A resource by attribute name (`kb_articles`), with dashes/spaces (`kb-articles`,
    `kb articles`) or by its Halo path (`KBArticle`, any case); `KeyError` when unknown."""
    key = name.strip().replace("-", "_").replace(" ", "_").lower()
    if key in RESOURCES:
        return RESOURCES[key]
    for spec in RESOURCES.values():
        if spec.path.lower() == key.replace("_", ""):
            return spec
    raise KeyError(name)


class Requester(Protocol):
    """What a resource needs from its client (kept abstract to avoid an import cycle)."""

    page_concurrency: int

    @property
    def name(self) -> str: ...

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any: ...


@dataclass
class HaloPage:
    """One page of a list. `record_count` is the total across pages, None for bare arrays."""

    records: Records
    record_count: int | None
    page_no: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    raw: Any = field(default=None, repr=False)


def parse_list(
    body: Any, list_key: str | None, upstream: str = "halo"
) -> tuple[Records, int | None]:
    """Records and record_count from a list answer in any of Halo's envelopes."""
    if isinstance(body, list):
        return [r for r in body if isinstance(r, dict)], None
    if not isinstance(body, dict):
        raise MalformedResponse("list answer is neither an object nor an array", upstream=upstream)
    records: Any = body.get(list_key) if list_key else None
    if records is None:  # unknown key: take the one list the envelope holds
        lists = [v for v in body.values() if isinstance(v, list)]
        records = lists[0] if len(lists) == 1 else []
    count = body.get("record_count")
    try:
        record_count = int(count) if count is not None else None
    except (TypeError, ValueError):
        record_count = None
    return [r for r in records if isinstance(r, dict)], record_count


def as_records(body: Any, upstream: str = "halo") -> Records:
    """A write answer as a list: Halo returns one object for one element, maybe a list else."""
    if body is None:
        return []
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        return [r for r in body if isinstance(r, dict)]
    raise MalformedResponse("write answer is neither an object nor an array", upstream=upstream)


def _signature(records: Records) -> str:
    """Identity of a page's content, to notice an endpoint that repeats page 1."""
    ids = [r.get("id") for r in records]
    if all(i is not None for i in ids):
        material = json.dumps(ids, default=str)
    else:
        material = json.dumps(records, sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()


def query_params(values: Mapping[str, Any]) -> dict[str, str]:
    """Filters as Halo expects them: lowercase booleans, comma lists, None dropped."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple | set):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


class HaloResource:
    """One Halo resource: list/page, read, and array-body writes."""

    def __init__(self, client: Requester, spec: ResourceSpec):
        self._client = client
        self.spec = spec

    def __repr__(self) -> str:
        return f"HaloResource({self.spec.path!r})"

    async def list(
        self, page_size: int = DEFAULT_PAGE_SIZE, page_no: int = 1, **filters: Any
    ) -> HaloPage:
        """One page (`pageinate=true`, sic)."""
        params = query_params(
            {**filters, "pageinate": True, "page_size": page_size, "page_no": page_no}
        )
        body = await self._client.request("GET", self.spec.path, params=params)
        records, count = parse_list(body, self.spec.list_key, self._client.name)
        echoed = body.get("page_size") if isinstance(body, dict) else None
        size = echoed if isinstance(echoed, int) and echoed > 0 else page_size
        return HaloPage(records, count, page_no, size, body)

    async def iter_pages(
        self, page_size: int = DEFAULT_PAGE_SIZE, **filters: Any
    ) -> AsyncGenerator[HaloPage, None]:
        """Every page in order. With a `record_count`, pages 2.. are fetched concurrently
        (bounded by the client's `page_concurrency`); a bare array is walked sequentially until
        a short page. A page repeating page 1 (or its predecessor) ends the walk: some
        endpoints (CRMNote) ignore paging, and following them would loop forever."""
        first = await self.list(page_size, 1, **filters)
        yield first
        if not first.records:
            return
        seen = {_signature(first.records)}
        # the page size is learned from the server: an echoed page_size, or a short first page
        # when more records exist (a server-side cap), not assumed from what we asked for
        size = first.page_size
        if first.record_count is not None and first.record_count > len(first.records):
            size = min(size, len(first.records))
        if len(first.records) > size:
            return  # paging ignored and everything sent at once (some bare-array endpoints)
        if first.record_count is not None:
            pages = math.ceil(first.record_count / size)
            if pages <= 1 or len(first.records) >= first.record_count:
                return

            async def fetch(n: int) -> HaloPage:
                return await self.list(size, n, **filters)

            window = max(1, self._client.page_concurrency)
            # ordered_pages is an async generator typed as AsyncIterator; aclosing needs aclose
            walk = cast(
                AsyncGenerator[tuple[int, HaloPage], None],
                ordered_pages(fetch, range(2, pages + 1), window=window),
            )
            async with aclosing(walk) as stream:
                async for n, page in stream:
                    if not self._fresh(page, n, seen):
                        return
                    yield page
            return
        last, n = first, 1
        while len(last.records) >= size:
            n += 1
            last = await self.list(size, n, **filters)
            if not self._fresh(last, n, seen):
                return
            yield last

    def _fresh(self, page: HaloPage, page_no: int, seen: set[str]) -> bool:
        if not page.records:
            return False
        sig = _signature(page.records)
        if sig in seen:
            log.warning(
                "halo.paging_ignored",
                upstream=self._client.name,
                resource=self.spec.path,
                page_no=page_no,
            )
            return False
        seen.add(sig)
        return True

    async def list_all(
        self, page_size: int = DEFAULT_PAGE_SIZE, **filters: Any
    ) -> AsyncGenerator[Record, None]:
        """Every record, streamed page by page (memory holds a page window, not the set)."""
        async with aclosing(self.iter_pages(page_size, **filters)) as pages:
            async for page in pages:
                for record in page.records:
                    yield record

    async def get(self, record_id: int | str, **params: Any) -> Record:
        """One record (`includedetails=True` and the like pass through as query params)."""
        body = await self._client.request(
            "GET", f"{self.spec.path}/{record_id}", params=query_params(params) or None
        )
        if not isinstance(body, dict):
            raise MalformedResponse(
                f"{self.spec.path}/{record_id}: not an object", upstream=self._client.name
            )
        return body

    async def batch_create(self, objs: Iterable[Mapping[str, Any]]) -> Records:
        """POST the objects as one JSON array; elements with `id` update, others create."""
        body = await self._client.request("POST", self.spec.path, json=[dict(o) for o in objs])
        return as_records(body, self._client.name)

    async def create(self, obj: Mapping[str, Any]) -> Record:
        """Create one record; returns the saved record (with its new id)."""
        saved = await self.batch_create([obj])
        return saved[0] if saved else {}

    async def update(self, obj: Mapping[str, Any]) -> Record:
        """Update by POSTing `[obj]`; Halo tells update from create by the `id` it carries."""
        if obj.get("id") in (None, ""):
            raise ValueError(f"update of {self.spec.path} needs an 'id'")
        saved = await self.batch_create([obj])
        return saved[0] if saved else {}

    async def delete(self, record_id: int | str) -> None:
        await self._client.request("DELETE", f"{self.spec.path}/{record_id}")


class AgentResource(HaloResource):
    """Agents, plus `me()`: the agent the API credentials act as."""

    async def me(self) -> Record:
        body = await self._client.request("GET", f"{self.spec.path}/me")
        if not isinstance(body, dict):
            raise MalformedResponse("Agent/me: not an object", upstream=self._client.name)
        return body
