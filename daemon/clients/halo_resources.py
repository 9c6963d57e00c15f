"""HaloPSA resources: which path and list key each uses, and how to page through them.

Halo's REST API has one shape for every resource (`GET /api/<Path>` lists, `GET
/api/<Path>/<id>` reads one, `POST /api/<Path>` with a JSON *array* creates or updates,
`DELETE /api/<Path>/<id>` deletes), but the list envelopes differ: most answer
`{"record_count": N, "<key>": [...]}`, some a bare JSON array, and some ignore paging and
answer page 1 for every `page_no`. `HaloResource` hides those differences.

Paths and list keys. "halo-ps" = homotechsual/HaloAPI (its `Get-Halo*.ps1` resource and
`ResourceType`); "guess" = not seen in any client we read, chosen by Halo's naming pattern.
Where our list key is a guess, the parser also accepts the one list an envelope holds beside its
`record_count`, so a wrong guess still reads records; an envelope with no list at all is a
`MalformedResponse`, never "no records".

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

from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from daemon.clients.paging import DEFAULT_MAX_PAGES, WalkReport, walk_pages
from daemon.clients.segments import segment
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


def _count(value: Any, upstream: str) -> int | None:
    if value is None:
        return None
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON `Infinity`
        count = -1
    if count < 0 or isinstance(value, bool) or (isinstance(value, float) and value != count):
        raise MalformedResponse(f"record_count {value!r} is not a count", upstream=upstream)
    return count


def _objects(items: list[Any], upstream: str) -> Records:
    if not all(isinstance(r, dict) for r in items):
        raise MalformedResponse(
            "a list answer holds something other than records", upstream=upstream
        )
    return items


def parse_list(
    body: Any, list_key: str | None, upstream: str = "halo"
) -> tuple[Records, int | None]:
    """Records and record_count from a list answer in any of Halo's envelopes.

    A bare array, or an object with the resource's list key (or, where our key is a guess, the
    one list it holds beside a `record_count`). Anything else — an object with no list, a
    `null` — is a `MalformedResponse`: reading it as "no records" would let a sync tombstone.
    """
    if isinstance(body, list):
        return _objects(body, upstream), None
    if not isinstance(body, dict):
        raise MalformedResponse("list answer is neither an object nor an array", upstream=upstream)
    records: Any = body.get(list_key) if list_key else None
    if records is None and "record_count" in body:  # our key is a guess: the one list there
        lists = [v for v in body.values() if isinstance(v, list)]
        records = lists[0] if len(lists) == 1 else None
    if not isinstance(records, list):
        want = f"a {list_key!r} list" if list_key else "a list"
        raise MalformedResponse(f"list answer without {want}", upstream=upstream)
    return _objects(records, upstream), _count(body.get("record_count"), upstream)


def as_records(body: Any, upstream: str = "halo") -> Records:
    """A write answer as a list: Halo returns one object for one element, maybe a list else."""
    if body is None:
        return []
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        return [r for r in body if isinstance(r, dict)]
    raise MalformedResponse("write answer is neither an object nor an array", upstream=upstream)


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


@dataclass
class HaloList:
    """A resource's list for the page walker: `pageinate=true`, `record_count` on each page,
    an echoed `page_size` where the server caps what we asked for."""

    resource: HaloResource
    first_page_size: int | None
    filters: Mapping[str, Any]

    @property
    def label(self) -> str:
        return self.resource.spec.path

    @property
    def upstream(self) -> str:
        return self.resource._client.name

    async def fetch(self, page_no: int, size: int | None) -> HaloPage:
        return await self.resource.list(size or DEFAULT_PAGE_SIZE, page_no, **self.filters)

    def records(self, page: HaloPage) -> Records:
        return page.records

    def announced_total(self, page: HaloPage) -> int | None:
        return page.record_count

    def announced_size(self, page: HaloPage) -> int | None:
        echoed = page.raw.get("page_size") if isinstance(page.raw, dict) else None
        return echoed if isinstance(echoed, int) and echoed > 0 else None

    async def count(self) -> int | None:
        return None

    def missing_total(self, first: HaloPage) -> str | None:
        # An envelope carries `record_count` beside its list; a bare array never has one.
        if isinstance(first.raw, dict):
            return f"the {self.label} answer carries no record_count"
        return None


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
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        *,
        max_pages: int = DEFAULT_MAX_PAGES,
        report: WalkReport | None = None,
        **filters: Any,
    ) -> AsyncGenerator[HaloPage, None]:
        """Every page in order, by `daemon.clients.paging`'s rules: with a `record_count`,
        pages 2.. are fetched concurrently (bounded by the client's `page_concurrency`); a bare
        array is walked until a short page. A page repeating an earlier one raises: some
        endpoints (CRMNote) ignore paging, and following them would loop forever."""
        source = HaloList(self, page_size, filters)
        walk = walk_pages(
            source,
            window=max(1, self._client.page_concurrency),
            max_pages=max_pages,
            report=report,
        )
        async with aclosing(walk) as stream:
            async for page in stream:
                yield page

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
            "GET", f"{self.spec.path}/{segment(record_id)}", params=query_params(params) or None
        )
        if not isinstance(body, dict):
            raise MalformedResponse(
                f"{self.spec.path}/{segment(record_id)}: not an object", upstream=self._client.name
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
        await self._client.request("DELETE", f"{self.spec.path}/{segment(record_id)}")


class AgentResource(HaloResource):
    """Agents, plus `me()`: the agent the API credentials act as."""

    async def me(self) -> Record:
        body = await self._client.request("GET", f"{self.spec.path}/me")
        if not isinstance(body, dict):
            raise MalformedResponse("Agent/me: not an object", upstream=self._client.name)
        return body
