"""Per-upstream fetch strategies: turn a `[[sync]]` job into a stream of `Page`s and a verdict.

One small class per upstream kind, each a thin adapter over that client's own paging (the
clients walk pages through `daemon.clients.paging`, concurrently when the total is known, and
stop on repeated pages), so the runner never knows which API it is talking to. After the pages,
each fetcher says whether the run saw the whole list (`completeness()`), which is what the
runner's tombstones depend on.

Incremental mode (`mode = "incremental"`, `cursor_field`): where the upstream has a
"modified since" filter (Halo assets' `lastupdatefromdate`) the stored cursor is sent as that
filter and records are requested in cursor order. The runner stores the new cursor only after
a walk it can vouch for (every page, the total matched by the distinct ids), so a failed page,
a record that moved while the walk went on or an upstream ignoring the order never moves the
mark past a record not yet read. Elsewhere the APIs have no such filter (upstream-apis.md), so
the job rescans and the store's hash check makes unchanged rows free; the cursor is still kept
as a high-water mark and no tombstones are written.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon.canonical import canonical_json, sha256_hex
from daemon.clients.paging import WalkReport
from daemon.config.models import RESELLER_ALIASES, RESELLER_RESOURCES, SyncJob
from daemon.config.values import parse_months
from daemon.errors import ConfigError, MalformedResponse
from daemon.sync.fetch import Completeness, Fetcher, Page

if TYPE_CHECKING:  # each client is imported when a job needs it (`build_fetcher`)
    from daemon.clients.billomat import BillomatClient, BillomatResource
    from daemon.clients.blesta import BlestaClient
    from daemon.clients.blesta_reseller import ResellerClient
    from daemon.clients.halo import HaloClient
    from daemon.clients.halo_resources import HaloResource
    from daemon.clients.netsapiens import NetsapiensClient

    SyncClient = BlestaClient | ResellerClient | BillomatClient | HaloClient


def record_id(record: Any, *keys: str) -> str:
    """The record's own id (first of `keys` present), else a hash of its canonical JSON."""
    if isinstance(record, dict):
        for key in (*keys, "id"):
            value = record.get(key)
            if value not in (None, ""):
                return str(value)
    try:
        text = canonical_json(record)
    except ValueError:
        text = repr(record)  # NaN inside: the store refuses the record and names this id
    return "sha256:" + sha256_hex(text)


def as_pairs(rows: Iterable[Any], *keys: str) -> list[tuple[str, dict[str, Any]]]:
    """`(id, record)` pairs; non-object rows are wrapped so nothing is silently dropped."""
    return [(record_id(r, *keys), r if isinstance(r, dict) else {"value": r}) for r in rows]


def month_range(spec: str) -> tuple[str, str | None]:
    """`"2024-01..current"` → ("2024-01", None); the config's own parser, as 'YYYY-MM' text."""
    try:
        (y1, m1), end = parse_months(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return f"{y1:04d}-{m1:02d}", None if end is None else f"{end[0]:04d}-{end[1]:02d}"


class BlestaFetcher:
    def __init__(self, job: SyncJob, client: BlestaClient, *, current_month: str = ""):
        self.job, self.client = job, client
        self.current_month = current_month  # 'YYYY-MM', for a report job without `months`
        self._walk = WalkReport()
        self._months_done = False
        self._periods: list[str] = []

    async def pages(self, cursor: str | None) -> AsyncIterator[Page]:
        job = self.job
        if job.report:
            start, end = month_range(job.months or f"{self.current_month}..current")
            series = self.client.report_series(job.report, start, end)
            async with aclosing(series) as stream:
                async for period, rows in stream:
                    pairs = [(f"{period}:{i:06d}", dict(r)) for i, r in enumerate(rows)]
                    self._periods.append(period)
                    yield Page(pairs, period=period)
            self._months_done = True
            return
        args = dict(job.params)
        if job.mode == "incremental" and job.cursor_field:
            args.setdefault("order_by", {job.cursor_field: "ASC"})
        walk = self.client.iter_pages(
            job.resource or "", job.method or "getList", args,
            max_pages=job.max_pages, report=self._walk,
        )  # fmt: skip
        async with aclosing(walk) as stream:
            async for _, rows in stream:
                yield Page(as_pairs(rows))

    def completeness(self) -> Completeness:
        if self.job.report:
            # Each month is one request answered whole (a CSV file) or not at all.
            if not self._months_done:
                return Completeness(False, "months")
            return Completeness(True, periods=tuple(dict.fromkeys(self._periods)))
        return Completeness.of(self._walk)


class ResellerFetcher:
    """Reseller jobs by method: getcredit, getpackages, getpackagepricing (every package's
    pricing rows, with `package_id`) and search (all pages; `params.search` narrows it)."""

    def __init__(self, job: SyncJob, client: ResellerClient):
        self.job, self.client = job, client
        self._verdict = Completeness(False, "the fetch did not finish")

    async def pages(self, cursor: str | None) -> AsyncIterator[Page]:
        resource = RESELLER_ALIASES.get(self.job.resource or "", self.job.resource)
        if resource == "getcredit":
            yield Page([("credit", {"credit": await self.client.getcredit()})])
            self._verdict = Completeness(True, expected=1)
        elif resource == "getpackages":
            pairs = as_pairs(await self.client.getpackages())
            yield Page(pairs)
            self._verdict = Completeness(True, expected=len({rid for rid, _ in pairs}))
        elif resource == "getpackagepricing":
            for package in await self.client.getpackages():
                pid = package.get("id") if isinstance(package, dict) else None
                if pid in (None, ""):
                    raise MalformedResponse(
                        "getpackages returned a package without an id", upstream=self.client.name
                    )
                rows = await self.client.getpackagepricing(str(pid))
                yield Page(as_pairs([{**r, "package_id": pid} for r in rows]))
            self._verdict = Completeness(True)
        elif resource == "search":
            walk = WalkReport()
            term = str(self.job.params.get("search", ""))
            stream = self.client.search_pages(term, max_pages=self.job.max_pages, report=walk)
            async with aclosing(stream) as pages:
                async for _, rows in pages:
                    yield Page([(self._license_id(r), r) for r in rows])
            self._verdict = Completeness.of(walk)
        else:
            raise ConfigError(
                f"sync job {self.job.name!r}: reseller resource must be one of "
                f"{', '.join(RESELLER_RESOURCES)}"
            )

    def completeness(self) -> Completeness:
        return self._verdict

    @staticmethod
    def _license_id(row: Any) -> str:
        fields = row.get("fields") if isinstance(row, dict) else None
        if isinstance(fields, dict) and fields.get("license_module_key"):
            return str(fields["license_module_key"])
        return record_id(row, "license")


class ResourceFetcher(ABC):
    """Billomat and Halo: a named resource whose client pages it (concurrently once the total
    is known). Subclasses say how the API spells "in cursor order" and "modified since"."""

    upstream_label = ""
    default_page_size = 50

    def __init__(self, job: SyncJob):
        self.job = job
        self._walk = WalkReport()

    @abstractmethod
    def incremental_params(self, params: dict[str, Any], cursor: str | None) -> None:
        """Add the API's ordering / since filter for an incremental job (in place)."""

    @abstractmethod
    def walk(self, params: dict[str, Any]) -> AsyncIterator[list[Any]]:
        """The records of each page of the job's resource, walked into `self._walk`."""

    def _unknown(self) -> ConfigError:
        return ConfigError(
            f"sync job {self.job.name!r}: {self.upstream_label} has no {self.job.resource!r}"
        )

    async def pages(self, cursor: str | None) -> AsyncIterator[Page]:
        params = dict(self.job.params)
        if self.job.mode == "incremental" and self.job.cursor_field:
            self.incremental_params(params, cursor)
        async for records in self.walk(params):
            if records:
                yield Page(as_pairs(records))

    def completeness(self) -> Completeness:
        return Completeness.of(self._walk)

    @property
    def page_size(self) -> int:
        return self.job.page_size or self.default_page_size


class BillomatFetcher(ResourceFetcher):
    upstream_label = "Billomat"
    default_page_size = 1000  # Billomat's maximum

    def __init__(self, job: SyncJob, client: BillomatClient):
        super().__init__(job)
        self.client = client

    def incremental_params(self, params: dict[str, Any], cursor: str | None) -> None:
        params.setdefault("order_by", f"{self.job.cursor_field} ASC")

    async def walk(self, params: dict[str, Any]) -> AsyncIterator[list[Any]]:
        try:
            resource: BillomatResource = self.client.resource(self.job.resource or "")
        except KeyError:
            raise self._unknown() from None
        stream = resource.iter_pages(
            self.page_size, max_pages=self.job.max_pages, report=self._walk, **params
        )
        async with aclosing(stream) as pages:
            async for page in pages:
                yield page.items


# Halo list filters that mean "modified since" (upstream-apis.md §4 names only this one).
HALO_SINCE_FILTERS = {"assets": "lastupdatefromdate"}


class HaloFetcher(ResourceFetcher):
    upstream_label = "Halo"
    default_page_size = 50  # safe across Halo versions (upstream-apis.md §4)

    def __init__(self, job: SyncJob, client: HaloClient):
        super().__init__(job)
        self.client = client

    def incremental_params(self, params: dict[str, Any], cursor: str | None) -> None:
        params.setdefault("order", self.job.cursor_field)
        since = HALO_SINCE_FILTERS.get(self.job.resource or "")
        if since and cursor:
            params.setdefault(since, cursor)

    async def walk(self, params: dict[str, Any]) -> AsyncIterator[list[Any]]:
        try:
            resource: HaloResource = self.client.resource(self.job.resource or "")
        except KeyError:
            raise self._unknown() from None
        stream = resource.iter_pages(
            self.page_size, max_pages=self.job.max_pages, report=self._walk, **params
        )
        async with aclosing(stream) as pages:
            async for page in pages:
                yield page.records


def build_fetcher(
    job: SyncJob, client: SyncClient | NetsapiensClient, kind: str, *, now: datetime
) -> Fetcher:
    """The fetcher for `job` on an upstream of `kind`; `now` dates report series. Only that
    kind's client module is imported (`run-once` of one job loads one client)."""
    if kind == "blesta":
        from daemon.clients.blesta import BlestaClient

        if isinstance(client, BlestaClient):
            return BlestaFetcher(job, client, current_month=f"{now:%Y-%m}")
    elif kind == "blesta_reseller":
        from daemon.clients.blesta_reseller import ResellerClient

        if isinstance(client, ResellerClient):
            return ResellerFetcher(job, client)
    elif kind == "billomat":
        from daemon.clients.billomat import BillomatClient

        if isinstance(client, BillomatClient):
            return BillomatFetcher(job, client)
    elif kind == "halo":
        from daemon.clients.halo import HaloClient

        if isinstance(client, HaloClient):
            return HaloFetcher(job, client)
    raise ConfigError(f"sync job {job.name!r}: upstream kind {kind!r} has no sync")
