"""Per-upstream fetch strategies: turn a `[[sync]]` job into a stream of `Page`s.

One small class per upstream kind, each a thin adapter over that client's own paging (the
clients already fetch concurrently when the total is known and stop on repeated pages), so the
runner never knows which API it is talking to.

Incremental mode (`mode = "incremental"`, `cursor_field`): where the upstream has a
"modified since" filter (Halo assets' `lastupdatefromdate`) the stored cursor is sent as that
filter and records are requested in cursor order, so the cursor stored after each committed
page is safe to resume from. Elsewhere the APIs have no such filter (upstream-apis.md), so the
job rescans and the store's hash check makes unchanged rows free; the cursor is still kept as a
high-water mark and no tombstones are written.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from datetime import datetime
from typing import Any

from daemon.config.models import RESELLER_ALIASES, RESELLER_RESOURCES
from daemon.errors import ConfigError
from daemon.sync.fetch import Fetcher, Page

MONTHS = re.compile(r"^(\d{4}-\d{2})\.\.(\d{4}-\d{2}|current)$")


def record_id(record: Any, *keys: str) -> str:
    """The record's own id (first of `keys` present), else a hash of its canonical JSON."""
    if isinstance(record, dict):
        for key in (*keys, "id"):
            value = record.get(key)
            if value not in (None, ""):
                return str(value)
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def as_pairs(rows: Iterable[Any], *keys: str) -> list[tuple[str, dict[str, Any]]]:
    """`(id, record)` pairs; non-object rows are wrapped so nothing is silently dropped."""
    return [(record_id(r, *keys), r if isinstance(r, dict) else {"value": r}) for r in rows]


def month_range(spec: str) -> tuple[str, str | None]:
    """`"2024-01..current"` → ("2024-01", None); `"2024-01..2024-06"` → both."""
    m = MONTHS.match(spec.strip())
    if not m:
        raise ConfigError(f"months must look like 2024-01..current, got {spec!r}")
    end = None if m.group(2) == "current" else m.group(2)
    return m.group(1), end


class BlestaFetcher:
    def __init__(self, job: Any, client: Any, *, current_month: str = ""):
        self.job, self.client = job, client
        self.current_month = current_month  # 'YYYY-MM', for a report job without `months`

    async def pages(self, cursor: str | None) -> AsyncIterator[Page]:
        job = self.job
        if job.report:
            start, end = month_range(job.months or f"{self.current_month}..current")
            series = self.client.report_series(job.report, start, end)
            async with aclosing(series) as stream:
                async for period, rows in stream:
                    pairs = [(f"{period}:{i:06d}", dict(r)) for i, r in enumerate(rows)]
                    yield Page(pairs, period=period)
            return
        args = dict(job.params)
        if job.mode == "incremental" and job.cursor_field:
            args.setdefault("order_by", {job.cursor_field: "ASC"})
        walk = self.client.iter_pages(job.resource, job.method or "getList", args)
        async with aclosing(walk) as stream:
            async for _, rows in stream:
                yield Page(as_pairs(rows))


class ResellerFetcher:
    """Reseller "resources": credit, packages, pricing (per package) and licenses (search)."""

    def __init__(self, job: Any, client: Any):
        self.job, self.client = job, client

    async def pages(self, cursor: str | None) -> AsyncIterator[Page]:
        resource = RESELLER_ALIASES.get(self.job.resource, self.job.resource)
        if resource == "getcredit":
            yield Page([("credit", {"credit": await self.client.getcredit()})])
        elif resource == "getpackages":
            yield Page(as_pairs(await self.client.getpackages()))
        elif resource == "getpackagepricing":
            for package in await self.client.getpackages():
                pid = package.get("id")
                rows = await self.client.getpackagepricing(pid)
                yield Page(as_pairs([{**r, "package_id": pid} for r in rows]))
        elif resource == "search":
            term = str(self.job.params.get("search", ""))
            async with aclosing(self.client.search_pages(term)) as stream:
                async for _, rows in stream:
                    yield Page([(self._license_id(r), r) for r in rows])
        else:
            raise ConfigError(
                f"sync job {self.job.name!r}: reseller resource must be one of "
                f"{', '.join(RESELLER_RESOURCES)}"
            )

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

    def __init__(self, job: Any, client: Any):
        self.job, self.client = job, client

    @abstractmethod
    def incremental_params(self, params: dict[str, Any], cursor: str | None) -> None:
        """Add the API's ordering / since filter for an incremental job (in place)."""

    @abstractmethod
    def page_records(self, page: Any) -> list[Any]:
        """The records of one client page (each client names the field differently)."""

    async def pages(self, cursor: str | None) -> AsyncIterator[Page]:
        job = self.job
        try:
            resource = self.client.resource(job.resource)
        except KeyError:
            raise ConfigError(
                f"sync job {job.name!r}: {self.upstream_label} has no {job.resource!r}"
            ) from None
        params = dict(job.params)
        if job.mode == "incremental" and job.cursor_field:
            self.incremental_params(params, cursor)
        walk = resource.iter_pages(job.page_size or self.default_page_size, **params)
        async with aclosing(walk) as stream:
            async for page in stream:
                records = self.page_records(page)
                if records:
                    yield Page(as_pairs(records))


class BillomatFetcher(ResourceFetcher):
    upstream_label = "Billomat"
    default_page_size = 1000  # Billomat's maximum

    def incremental_params(self, params: dict[str, Any], cursor: str | None) -> None:
        params.setdefault("order_by", f"{self.job.cursor_field} ASC")

    def page_records(self, page: Any) -> list[Any]:
        return list(page.items)


# Halo list filters that mean "modified since" (upstream-apis.md §4 names only this one).
HALO_SINCE_FILTERS = {"assets": "lastupdatefromdate"}


class HaloFetcher(ResourceFetcher):
    upstream_label = "Halo"
    default_page_size = 50  # safe across Halo versions (upstream-apis.md §4)

    def incremental_params(self, params: dict[str, Any], cursor: str | None) -> None:
        params.setdefault("order", self.job.cursor_field)
        since = HALO_SINCE_FILTERS.get(self.job.resource)
        if since and cursor:
            params.setdefault(since, cursor)

    def page_records(self, page: Any) -> list[Any]:
        return list(page.records)


FETCHERS: dict[str, type[BlestaFetcher | ResellerFetcher | BillomatFetcher | HaloFetcher]] = {
    "blesta": BlestaFetcher,
    "blesta_reseller": ResellerFetcher,
    "billomat": BillomatFetcher,
    "halo": HaloFetcher,
}


def build_fetcher(job: Any, client: Any, kind: str, *, now: datetime) -> Fetcher:
    """The fetcher for `job` on an upstream of `kind`; `now` dates report series."""
    if kind == "blesta":
        return BlestaFetcher(job, client, current_month=f"{now:%Y-%m}")
    try:
        return FETCHERS[kind](job, client)
    except KeyError:
        raise ConfigError(f"sync job {job.name!r}: upstream kind {kind!r} has no sync") from None
