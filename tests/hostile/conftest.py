"""A harness that runs one real sync job (real client, runner, store) against a hostile server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.clients.factory import build_client
from daemon.clock import FakeClock
from daemon.config import SyncJob, UpstreamSettings
from daemon.config.upstreams import UPSTREAM_KINDS
from daemon.store import Store
from daemon.sync.runner import JobRunner, RunResult
from daemon.sync.strategies import build_fetcher
from tests.hostile.servers import (
    Script,
    billomat_app,
    blesta_app,
    halo_app,
    reseller_app,
    serve,
)

SECRET = "hostile-secret-0123456789"

APPS: dict[str, Callable[[Script], web.Application]] = {
    "blesta": blesta_app,
    "halo": halo_app,
    "billomat": billomat_app,
    "blesta_reseller": reseller_app,
}
RESOURCES = {
    "blesta": "clients",
    "halo": "tickets",
    "billomat": "clients",
    "blesta_reseller": "search",
}


def upstream(kind: str, url: str, **extra: Any) -> UpstreamSettings:
    """A real `[upstreams.<kind>]` model pointing at `url`."""
    tables: dict[str, dict[str, Any]] = {
        "blesta": {"url": url + "/api", "user": "sync", "key": SECRET},
        "halo": {"tenant_url": url, "client_id": "c", "client_secret": SECRET},
        "billomat": {"billomat_id": "demo", "url": url + "/api", "api_key": SECRET},
        "blesta_reseller": {"url": url, "user": "r", "password": SECRET},
    }
    values = {"name": kind, "kind": kind, "max_retries": 1, "timeout": 5, **tables[kind], **extra}
    model = UPSTREAM_KINDS[kind].model_validate(values)
    return model  # type: ignore[return-value]


def job(kind: str, **kw: Any) -> SyncJob:
    values: dict[str, Any] = {
        "name": "hostile",
        "table": "hostile",
        "upstream": kind,
        "resource": RESOURCES[kind],
        "every": "1h",
        **({"page_size": 20} if kind in ("halo", "billomat") else {}),
    }
    values.update(kw)
    return SyncJob.model_validate(values)


@dataclass
class Harness:
    store: Store
    clock: FakeClock
    path: Path

    async def run(
        self,
        kind: str,
        script: Script,
        *,
        upstream_extra: dict[str, Any] | None = None,
        app: web.Application | None = None,
        **job_kw: Any,
    ) -> RunResult:
        """One run of a job of `kind` against `script` served by that API's hostile app."""
        self.clock.advance(60)  # each run starts after the previous one's writes
        async with serve(app or APPS[kind](script)) as url:
            settings = upstream(kind, url, **(upstream_extra or {}))
            async with build_client(settings, clock=self.clock) as client:
                j = job(kind, **job_kw)
                fetcher = build_fetcher(j, client, kind, now=self.clock.now())
                runner = JobRunner(self.store, clock=self.clock)
                return await runner.run(j, fetcher)

    async def live_ids(self, table: str = "hostile") -> list[str]:
        return [rid async for rid, _ in self.store.iter_records(table)]

    async def tombstoned(self, table: str = "hostile") -> int:
        row = await self.store.fetchone(
            f'SELECT COUNT(*) AS n FROM "{table}" WHERE deleted_at IS NOT NULL'
        )
        return int(row["n"]) if row is not None else 0


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    clock = FakeClock(autojump=True)
    async with Store.open(tmp_path / "state.db", clock=clock) as store:
        yield Harness(store, clock, tmp_path / "state.db")
