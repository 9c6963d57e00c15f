"""Runs one sync job: fetch pages, upsert each in its own transaction, then (maybe) tombstone.

Why this shape (DESIGN §5 Sync):
- one transaction per page, so a crash loses at most the page in flight and the next run heals
  it (unchanged rows are skipped by hash, so re-reading is cheap);
- tombstones only after a *complete* full run — every page answered, the walk ended where the
  total said, the total did not move and the distinct ids stored agree with it — and then only
  for rows missed by two consecutive complete runs, never more than `max_tombstone_fraction` of
  the table (docs/database.md, "What the sync trusts");
- every run ends: `max_pages` and `max_duration` stop it as `failed`, and each request is itself
  bounded by its timeout, retries and `max_retry_wait`;
- any exception ends *this job* `failed` — recorded from a shielded `finally`, so neither an
  error nor a cancellation leaves a `running` row behind — and never reaches the other jobs;
- the incremental cursor is stored after each committed page (fetchers ask the upstream for
  records in cursor order), so it only ever points at data that is in the database;
- every outcome — ok, failed, cancelled — is written to `sync_runs` and logged as one line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import structlog

from daemon.clock import Clock
from daemon.config.models import SyncJob
from daemon.errors import LimitExceeded, UpstreamError, shorten
from daemon.logs import redact_text
from daemon.store import ContactEntry, Store, TombstoneResult, UpsertResult
from daemon.sync.fetch import Completeness, Fetcher, Page, max_cursor

log = structlog.get_logger(__name__)

MAX_ERROR_CHARS = 2_000  # of a failed run's error text


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
    missing: int = 0  # live rows this complete run did not see (marked, or tombstoned)
    contacts: int = 0
    duration: float = 0.0
    error: str | None = None
    error_type: str | None = None
    incomplete: str | None = None  # why a full run could not vouch for completeness
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

    def fail(self, exc: BaseException) -> None:
        self.status = "failed"
        # Masked before it is cut (a cut cannot leave half a secret), and cut: the text can
        # carry what an upstream sent, and it goes to the log and `sync_runs.error`.
        self.error = shorten(redact_text(str(exc) or type(exc).__name__), MAX_ERROR_CHARS)
        self.error_type = type(exc).__name__


Progress = Callable[[RunResult], None]


class JobRunner:
    """Runs jobs against one store; fetchers are built per job by the caller."""

    def __init__(self, store: Store, *, clock: Clock, default_region: str = "US"):
        self._store = store
        self._clock = clock
        self._region = default_region

    async def run(
        self,
        job: SyncJob,
        fetcher: Fetcher,
        *,
        progress: Progress | None = None,
        result: RunResult | None = None,
    ) -> RunResult:
        """Run `job` once. Returns its result whatever happened; raises only cancellation
        (after recording the run as `cancelled` — pass `result` to keep hold of it then)."""
        result = result if result is not None else RunResult(job=job.name)
        started_mono = self._clock.monotonic()
        run_started_at = self._clock.now()
        failure: BaseException | None = None
        try:
            result.run_id = await self._store.start_run(job.name, max_duration=job.max_duration)
            log.info("sync.started", job=job.name, run_id=result.run_id, mode=job.mode)
            await self._store.ensure_record_table(job.table, report=job.report is not None)
            cursors = await self._fetch(
                job, fetcher, result, run_started_at, started_mono, progress
            )
            if job.mode == "full":
                await self._tombstones(job, fetcher, result, run_started_at)
            elif job.mode == "incremental" and job.cursor_field:
                await self._advance_cursor(job, fetcher, result, run_started_at, cursors)
            await self._refresh_contacts(job, result)
            if result.status == "running":
                result.status = "ok"
        except anyio.get_cancelled_exc_class():
            result.status, result.error = "cancelled", "cancelled"
            raise
        except Exception as exc:  # supervision boundary: this job fails, the others go on
            result.fail(exc)
            failure = exc
            if result.run_id:  # it started: pages it committed are in the table
                await self._refresh_contacts(job, result)
        finally:
            result.duration = self._clock.monotonic() - started_mono
            with anyio.CancelScope(shield=True):
                await self._record(job, result, run_started_at, failure)
        return result

    async def _fetch(
        self,
        job: SyncJob,
        fetcher: Fetcher,
        result: RunResult,
        run_started_at: datetime,
        started_mono: float,
        progress: Progress | None,
    ) -> tuple[str | None, str | None]:
        """Write the pages as they come, one transaction each, in order. A page's write is
        submitted before the previous page's has been confirmed, so this task encodes and
        hashes page k while the writer commits page k-1 (the writer runs jobs in order, each in
        its own transaction); at most one page is ever waiting for its commit. Counters and
        progress follow the confirmed writes, in page order. Returns the stored cursor and the
        high-water mark of what was written (incremental jobs; stored only by the caller,
        after a complete walk)."""
        store = self._store
        state = await store.get_sync_state(job.name)
        cursor = state.cursor if (state is not None and job.mode == "incremental") else None
        start = cursor
        submitted = 0
        pending: tuple[asyncio.Future[UpsertResult], Page] | None = None
        try:
            async for page in fetcher.pages(cursor):
                if submitted >= job.max_pages:
                    raise LimitExceeded(f"more than max_pages ({job.max_pages}) pages; stopped")
                elapsed = self._clock.monotonic() - started_mono
                if elapsed > job.max_duration:
                    raise LimitExceeded(
                        f"still running after {elapsed:.0f}s, past max_duration "
                        f"({job.max_duration:g}s); stopped"
                    )
                write = asyncio.ensure_future(
                    store.upsert_page(
                        job.table,
                        page.records,
                        run_started_at=run_started_at,
                        period=page.period,
                        insert_only=job.mode == "append",
                    )
                )
                submitted += 1
                previous, pending = pending, (write, page)
                if previous is not None:
                    cursor = await self._confirmed(job, result, previous, cursor, progress)
            if pending is not None:
                last, pending = pending, None
                cursor = await self._confirmed(job, result, last, cursor, progress)
        finally:
            if pending is not None:  # failed or cancelled with a write queued: it still happens,
                with anyio.CancelScope(shield=True):  # and once committed it counts as ever
                    await asyncio.gather(pending[0], return_exceptions=True)
                    if not pending[0].cancelled() and pending[0].exception() is None:
                        try:
                            await self._confirmed(job, result, pending, cursor, None)
                        except Exception as exc:  # the error under way is the one to raise
                            log.error("sync.record_failed", job=job.name,
                                      run_id=result.run_id, error=repr(exc))  # fmt: skip
        return start, cursor

    @staticmethod
    def _count(result: RunResult, page: Page, written: UpsertResult) -> None:
        result.pages += 1
        result.fetched += len(page.records)
        result.inserted += written.inserted
        result.updated += written.updated
        result.unchanged += written.unchanged

    async def _confirmed(
        self,
        job: SyncJob,
        result: RunResult,
        pending: tuple[asyncio.Future[UpsertResult], Page],
        cursor: str | None,
        progress: Progress | None,
    ) -> str | None:
        """Wait for one page's commit, then count it; the high-water mark after it."""
        write, page = pending
        self._count(result, page, await write)
        if job.mode == "incremental" and job.cursor_field:
            cursor = page.cursor or max_cursor(cursor, page.records, job.cursor_field) or cursor
        if progress is not None:
            progress(result)
        return cursor

    async def _vouched(
        self, job: SyncJob, fetcher: Fetcher, result: RunResult, run_started_at: datetime
    ) -> Completeness | None:
        """The fetcher's verdict when the run saw the whole list (its total checked against
        the distinct ids stored); None, with the reason recorded and logged, when it did not."""
        verdict = fetcher.completeness()
        reason = verdict.reason if not verdict.complete else None
        if verdict.complete and verdict.expected is not None:
            seen = await self._store.count_seen(job.table, run_started_at=run_started_at)
            if seen != verdict.expected:
                reason = f"{seen} distinct ids stored, the upstream's total is {verdict.expected}"
        if reason is None:
            return verdict
        result.incomplete = reason
        log.warning("sync.incomplete", job=job.name, run_id=result.run_id, reason=reason)
        return None

    async def _advance_cursor(
        self,
        job: SyncJob,
        fetcher: Fetcher,
        result: RunResult,
        run_started_at: datetime,
        cursors: tuple[str | None, str | None],
    ) -> None:
        """Store the new high-water mark only after a walk that saw every record the filter
        matched. After a partial one (a failed page, a record that moved onto a page already
        read while the walk went on, an upstream that ignores the order asked for) the next
        run asks again from the old mark: rereading is free (the hash check), skipping a
        record past the mark would be for ever."""
        start, reached = cursors
        if reached is None or reached == start:
            return
        if await self._vouched(job, fetcher, result, run_started_at) is None:
            return
        await self._store.set_sync_state(job.name, cursor=reached)

    async def _tombstones(
        self, job: SyncJob, fetcher: Fetcher, result: RunResult, run_started_at: datetime
    ) -> None:
        verdict = await self._vouched(job, fetcher, result, run_started_at)
        if verdict is None:
            return
        # A report job answers for the months it read this run, each on its own; any other job
        # for its whole table.
        scopes: tuple[str | None, ...] = (None,) if verdict.periods is None else verdict.periods
        # Once asked for, a pass commits whatever its caller does (the writer runs a queued job
        # to its end), so it is awaited to its end and counted: a stop arriving meanwhile takes
        # effect after it, and the run is recorded `cancelled` with what it deleted — not with
        # nothing, as happened (found by probing). It was decided on a complete run.
        with anyio.CancelScope(shield=True):
            for period in scopes:
                outcome = await self._store.mark_tombstones(
                    job.table,
                    run_started_at=run_started_at,
                    period=period,
                    max_fraction=job.max_tombstone_fraction,
                )
                result.missing += outcome.missing
                if outcome.refused:
                    self._refused(job, result, outcome, period)
                    continue
                result.deleted += outcome.deleted

    @staticmethod
    def _refused(
        job: SyncJob, result: RunResult, outcome: TombstoneResult, period: str | None
    ) -> None:
        share = outcome.missing / outcome.live if outcome.live else 1.0
        log.error(
            "sync.tombstones_refused",
            job=job.name,
            run_id=result.run_id,
            missing=outcome.missing,
            live=outcome.live,
            period=period,
            max_tombstone_fraction=job.max_tombstone_fraction,
        )
        where = f" of {period}" if period is not None else ""
        result.status = "failed"
        result.error_type = "TombstonesRefused"
        result.error = (
            f"the run would tombstone {outcome.missing} of {outcome.live} live rows{where} "
            f"({share:.0%}), more than max_tombstone_fraction "
            f"({job.max_tombstone_fraction:g}); nothing{where} was tombstoned"
        )

    async def _record(
        self,
        job: SyncJob,
        result: RunResult,
        run_started_at: datetime,
        failure: BaseException | None,
    ) -> None:
        """Write the run's row and its one log line; never raises (the database may be the
        thing that failed)."""
        counters = result.counters()
        try:
            if result.run_id:
                await self._store.finish_run(
                    result.run_id,
                    result.status,
                    error=result.error,
                    incomplete=result.incomplete,
                    **counters,
                )
            if result.status == "ok":
                await self._store.set_sync_state(job.name, last_success_at=run_started_at)
        except Exception as exc:
            log.error("sync.record_failed", job=job.name, run_id=result.run_id, error=repr(exc))
        base = {"job": job.name, "run_id": result.run_id, **counters}
        if result.status == "ok":
            log.info(
                "sync.finished",
                **base,
                duration_s=round(result.duration, 3),
                contacts=result.contacts,
                missing=result.missing,
                incomplete=result.incomplete,
            )
        elif result.status == "cancelled":
            log.warning("sync.cancelled", **base)
        else:
            fields: dict[str, Any] = {"error": result.error, "error_type": result.error_type}
            if isinstance(failure, UpstreamError):
                fields.update(upstream=failure.upstream, status=failure.status)
            log.error("sync.failed", **base, **fields)

    async def _refresh_contacts(self, job: SyncJob, result: RunResult) -> None:
        """Make the `contacts` index say what the table holds now, after any run that got to
        write — a failed or refused run's committed pages included: a client's new number is in
        the table, and the index must not keep matching the old one (found by probing). A job
        without `phone_fields` (any more) has no entries. Never raises: the run's own outcome
        is what gets recorded."""
        try:
            if job.phone_fields:
                result.contacts = await self._rebuild_contacts(job)
            elif await self._store.count_contacts(job.table):
                await self._store.replace_contacts(job.table, [])
        except Exception as exc:
            log.error("sync.contacts_failed", job=job.name, error=redact_text(repr(exc)))

    async def _rebuild_contacts(self, job: SyncJob) -> int:
        """Rebuild this table's rows of the `contacts` index from its live records."""
        # Imported here: phonenumbers' metadata is a sixth of a sync-only run's imports.
        from daemon.sync.contacts import display_name, record_phones

        entries: list[ContactEntry] = []
        async for record_id, data in self._store.iter_records(job.table):
            phones = record_phones(data, job.phone_fields, self._region)
            if not phones:
                continue
            name = display_name(data)
            entries.extend(ContactEntry(phone, record_id, name) for phone in phones)
        await self._store.replace_contacts(job.table, entries)
        return len(entries)

    async def record_failure(self, job: SyncJob, exc: BaseException) -> RunResult:
        """A job that failed before it could run (its fetcher could not be built): recorded
        like any failed run, so `daemon status` shows it."""
        result = RunResult(job=job.name)
        result.fail(exc)
        with anyio.CancelScope(shield=True):
            try:
                result.run_id = await self._store.start_run(job.name)
            except Exception as store_exc:
                log.error("sync.record_failed", job=job.name, error=repr(store_exc))
            await self._record(job, result, self._clock.now(), exc)
        return result
