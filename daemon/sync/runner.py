"""Runs one sync job: fetch pages, upsert each in its own transaction, then tombstone.

Why this shape (DESIGN §5 Sync):
- one transaction per page, so a crash loses at most the page in flight and the next run heals
  it (unchanged rows are skipped by hash, so re-reading is cheap);
- tombstones only after a *complete* full run: a failed or cancelled run deletes nothing;
- the incremental cursor is stored after each committed page (fetchers ask the upstream for
  records in cursor order), so it only ever points at data that is in the database;
- every outcome — ok, failed, cancelled — is written to `sync_runs` and logged as one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import structlog

from daemon.clock import Clock
from daemon.errors import DaemonError, UpstreamError
from daemon.sync.contacts import display_name, record_phones
from daemon.sync.fetch import Fetcher, max_cursor

log = structlog.get_logger(__name__)


class JobSpec(Protocol):
    """The fields of a `[[sync]]` entry the runner needs (daemon.config.SyncJob)."""

    @property
    def name(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def cursor_field(self) -> str | None: ...
    @property
    def phone_fields(self) -> list[str]: ...
    @property
    def report(self) -> str | None: ...


@dataclass
class RunResult:
    """What one run did; also the row written to `sync_runs`."""

    job: str
    run_id: int = 0
    status: str = "running"
    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    contacts: int = 0
    duration: float = 0.0
    error: str | None = None
    error_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def counters(self) -> dict[str, int]:
        return {
            "pages": self.pages,
            "fetched": self.fetched,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
        }


Progress = Callable[[RunResult], None]


class JobRunner:
    """Runs jobs against one store; fetchers are built per job by the caller."""

    def __init__(self, store: Any, *, clock: Clock, default_region: str = "US"):
        self._store = store
        self._clock = clock
        self._region = default_region

    async def run(
        self, job: JobSpec, fetcher: Fetcher, *, progress: Progress | None = None
    ) -> RunResult:
        store = self._store
        result = RunResult(job=job.name)
        await store.ensure_record_table(job.table, report=job.report is not None)
        run_started_at = self._clock.now()
        started_mono = self._clock.monotonic()
        result.run_id = await store.start_run(job.name)
        log.info("sync.started", job=job.name, run_id=result.run_id, mode=job.mode)
        state = await store.get_sync_state(job.name)
        cursor = state.cursor if (state is not None and job.mode == "incremental") else None
        try:
            async for page in fetcher.pages(cursor):
                written = await store.upsert_page(
                    job.table,
                    page.records,
                    run_started_at=run_started_at,
                    period=page.period,
                    insert_only=job.mode == "append",
                )
                result.pages += 1
                result.fetched += len(page.records)
                result.inserted += written.inserted
                result.updated += written.updated
                result.unchanged += written.unchanged
                if job.mode == "incremental" and job.cursor_field:
                    new_cursor = page.cursor or max_cursor(cursor, page.records, job.cursor_field)
                    if new_cursor is not None and new_cursor != cursor:
                        cursor = new_cursor
                        await store.set_sync_state(job.name, cursor=cursor)
                if progress is not None:
                    progress(result)
            if job.mode == "full":
                result.deleted = await store.mark_tombstones(
                    job.table, run_started_at=run_started_at
                )
            if job.phone_fields:
                result.contacts = await self._rebuild_contacts(job)
        except anyio.get_cancelled_exc_class():
            result.status = "cancelled"
            result.duration = self._clock.monotonic() - started_mono
            with anyio.CancelScope(shield=True):
                await store.finish_run(
                    result.run_id, "cancelled", error="cancelled", **result.counters()
                )
            log.warning("sync.cancelled", job=job.name, run_id=result.run_id, **result.counters())
            raise
        except (DaemonError, OSError) as exc:
            result.status = "failed"
            result.error = str(exc)
            result.error_type = type(exc).__name__
            result.duration = self._clock.monotonic() - started_mono
            await store.finish_run(result.run_id, "failed", error=result.error, **result.counters())
            fields: dict[str, Any] = {"error": result.error, "error_type": result.error_type}
            if isinstance(exc, UpstreamError):
                fields.update(upstream=exc.upstream, status=exc.status)
            log.error(
                "sync.failed", job=job.name, run_id=result.run_id, **fields, **result.counters()
            )
            return result
        result.status = "ok"
        result.duration = self._clock.monotonic() - started_mono
        await store.set_sync_state(job.name, last_success_at=run_started_at)
        await store.finish_run(result.run_id, "ok", **result.counters())
        log.info(
            "sync.finished",
            job=job.name,
            run_id=result.run_id,
            duration_s=round(result.duration, 3),
            contacts=result.contacts,
            **result.counters(),
        )
        return result

    async def _rebuild_contacts(self, job: JobSpec) -> int:
        """Rebuild this table's rows of the `contacts` index from its live records."""
        from daemon.store import ContactEntry  # store owns the row type

        entries: list[Any] = []
        async for record_id, data in self._store.iter_records(job.table):
            phones = record_phones(data, job.phone_fields, self._region)
            if not phones:
                continue
            name = display_name(data)
            entries.extend(ContactEntry(phone, record_id, name) for phone in phones)
        await self._store.replace_contacts(job.table, entries)
        return len(entries)
