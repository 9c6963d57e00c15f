"""Backfill: pull the NetSapiens messages (and CDRs) the webhook path missed into the inbox.

NetSapiens does not promise redelivery: while the listener is down, a subscription is in
`error`, or posts silently stop, events are simply lost. The backfiller reads the same objects
through the API and runs them through the same `parse_payload` and `new_event` (with
`via="backfill"`, so the dispatcher knows not to auto-reply to something hours old), so each gets
the dedupe key, sender and body hash the webhook path would have given it; the inbox's UNIQUE
`dedupe_key` then makes overlap with live deliveries harmless. Hence the window may start
generously early (`overlap`).

When to run is a pure decision (`should_backfill`): after a restart, when the keeper saw a
subscription vanish or fail, or when the inbox has been silent longer than usual.

Reading: the session list and each session's messages are read page by page to the end
through the client (`limit` is the page size, `max_pages` the bound; a page that repeats raises
`MalformedResponse`); CDRs are read with the window as a server-side filter.

The cursor (`sync_state` key `netsapiens-backfill`) says "everything before this time is in the
inbox". It moves to `until` only when one backfill read everything in its window, and only if
that window reached back to the cursor (a later explicit `since` leaves a gap it does not
vouch for; the default window, cut at `max_lookback` after a long downtime, gives the older
gap up, logged `backfill.gap_abandoned`). A first backfill pins the cursor at its window's
start before it reads. When reading fails part-way (one session's messages, the session list,
the CDR call), whatever was read is still inserted, the failure is logged
(`backfill.incomplete`) and raised, and the cursor stays where it was, so the next backfill
reads that window again; dedupe keys make the overlap free. A cursor later than now (a clock
that ran fast, then stepped back) is no cursor: `first_lookback` is read again. CDRs are read
from `cdr_reach` (4 h) before the window, since a call's record appears when it ends but is
dated by its start.
Once a cursor exists it, not the newest inbox event, decides the next window: events are no
proof of coverage (a partial backfill inserts recent events while older ones are still
missing, and one model's deliveries can go on while another's subscription is failing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from daemon.clients.ns_wire import parse_ns_datetime
from daemon.clients.paging import DEFAULT_MAX_PAGES
from daemon.clock import Clock
from daemon.errors import LimitExceeded, UpstreamError, UpstreamResponseError
from daemon.store import SyncState
from daemon.webhooks.event import SOURCE
from daemon.webhooks.events import parse_payload
from daemon.webhooks.inbox import InboxWriter, new_event

log = structlog.get_logger(__name__)

__all__ = ["JOB", "BackfillReport", "Backfiller", "InboxStore", "should_backfill"]

JOB = "netsapiens-backfill"  # sync_state key holding the last backfilled-until time
INSERT_BATCH = 500  # messages are inserted in batches as sessions are read
READ_ERRORS = (UpstreamError, LimitExceeded)  # a read that failed: the window is incomplete


class InboxStore(InboxWriter, Protocol):
    """The slice of `daemon.store.Store` the backfiller uses: the inbox, and its cursor in
    `sync_state` (a keyword left out leaves that field as it was)."""

    async def last_event_time(self, source: str, kind_prefix: str = "") -> datetime | None: ...

    async def get_sync_state(self, job: str) -> SyncState | None: ...

    async def set_sync_state(
        self, job: str, *, cursor: str | None = ..., last_success_at: datetime | None = ...
    ) -> None: ...


class BackfillClient(Protocol):
    """The slice of `NetsapiensClient` the backfiller uses; both read every page."""

    async def get_messages(
        self,
        domain: str = "~",
        user: str | None = None,
        session_id: str | None = None,
        limit: int = 100,
        *,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> list[dict[str, Any]]: ...

    async def list_cdrs(
        self,
        domain: str = "~",
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 500,
        *,
        user: str | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> list[dict[str, Any]]: ...


@dataclass
class BackfillReport:
    since: datetime
    until: datetime
    fetched: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    sessions: int = 0  # sessions whose messages were read
    errors: list[str] = field(default_factory=list)  # reads that failed, in order

    @property
    def complete(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "fetched": self.fetched,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "sessions": self.sessions,
            "complete": self.complete,
            "errors": list(self.errors),
        }


def should_backfill(
    now: datetime, last_event_at: datetime | None, silence_threshold: timedelta
) -> bool:
    """True when nothing is known (first start) or the inbox has been quiet too long."""
    return last_event_at is None or now - last_event_at >= silence_threshold


class Backfiller:
    def __init__(
        self,
        client: BackfillClient,
        store: InboxStore,
        *,
        clock: Clock,
        default_region: str = "US",
        domain: str = "~",
        overlap: timedelta = timedelta(minutes=10),
        cdr_reach: timedelta = timedelta(hours=4),
        first_lookback: timedelta = timedelta(hours=24),
        max_lookback: timedelta = timedelta(days=7),
        include_cdrs: bool = True,
        page_size: int = 500,
        max_pages: int = DEFAULT_MAX_PAGES,
        on_events: Callable[[Sequence[int]], None] | None = None,
    ):
        self.client = client
        # Told the ids of the events a backfill inserted, as the listener tells the dispatcher,
        # so a recovered message is handled now rather than at the dispatcher's next poll.
        self.on_events = on_events
        self.store = store
        self.clock = clock
        self.default_region = default_region
        # The session list endpoint needs a concrete domain or `~`; `*` is a subscription idea.
        self.domain = "~" if domain in ("", "*") else domain
        self.overlap = overlap
        # A CDR exists once its call has ended, and is dated by the call's start: a call longer
        # than `overlap` started before the window of the backfill that followed it (found by
        # probing: a caller abandoned in a queue for 39 minutes, a missed call, never read).
        # CDRs are therefore read from this much before the window; dedupe keys make it free.
        self.cdr_reach = cdr_reach
        self.first_lookback = first_lookback
        self.max_lookback = max_lookback
        self.include_cdrs = include_cdrs
        self.page_size = page_size  # per request; every page is read
        self.max_pages = max_pages  # per list, so a server that never stops cannot hold us

    async def default_since(self) -> datetime:
        """The backfill cursor minus `overlap`; before the first backfill, the newest inbox event
        minus `overlap`, or `first_lookback` ago when the inbox knows nothing. Never more than
        `max_lookback` ago."""
        now = self.clock.now()
        state = await self.store.get_sync_state(JOB)
        last = parse_ns_datetime(state.cursor) if state else None
        if last is None:
            last = await self.store.last_event_time(SOURCE, "")
        if last is not None and last > now:
            # Written by a clock that ran fast and has since been stepped back: it says nothing
            # of what was read (found by probing: the next window was inverted, and what it
            # should have read, lost). Read as if nothing were known.
            log.warning("backfill.cursor_in_future", cursor=last.isoformat(), now=now.isoformat())
            last = None
        if last is None:
            return max(now - self.first_lookback, now - self.max_lookback)
        return max(last - self.overlap, now - self.max_lookback)

    async def backfill(self, since: datetime | None = None) -> BackfillReport:
        """Read the window `since` (default: `default_since()`) .. now into the inbox.

        Raises the first read failure after inserting what was read and logging the rest; the
        cursor then stays put (see the module docstring)."""
        state = await self.store.get_sync_state(JOB)
        cursor = parse_ns_datetime(state.cursor) if state else None
        explicit = since is not None
        since = since if since is not None else await self.default_since()
        until = self.clock.now()
        if cursor is None:
            # A first backfill pins the cursor at its window's start before reading: the events
            # it inserts would otherwise make the next window start after them, whether it
            # fails, is cancelled at a shutdown or is killed (found by probing: a cancelled
            # first backfill lost the sessions it had not read yet).
            await self.store.set_sync_state(JOB, cursor=since.isoformat())
        report = BackfillReport(since=since, until=until)
        failures: list[Exception] = []
        await self._messages(since, report, failures)
        if self.include_cdrs:
            reach = since - self.cdr_reach
            try:
                cdrs = await self.client.list_cdrs(
                    self.domain,
                    start=reach,
                    end=until,
                    limit=self.page_size,
                    max_pages=self.max_pages,
                )
            except READ_ERRORS as exc:
                self._failed(report, failures, exc, "cdrs")
            else:
                await self._ingest("cdr", cdrs, reach, report)
        if failures:
            await self.store.set_sync_state(JOB)  # the cursor stays; records the attempt
            log.warning("backfill.incomplete", **report.as_dict())
            raise failures[0]
        # The window reached back to the cursor — or was the default one, which starts at the
        # cursor unless `max_lookback` cut it, and past that the older gap is given up by design
        # (found by probing: after a downtime longer than it, the cursor never moved again).
        contiguous = cursor is None or since <= cursor or not explicit
        if cursor is not None and since > cursor:
            log.warning(
                "backfill.gap_abandoned" if not explicit else "backfill.window_after_cursor",
                cursor=cursor.isoformat(),
                since=since.isoformat(),
            )
        if contiguous:
            await self.store.set_sync_state(JOB, last_success_at=until, cursor=until.isoformat())
        else:
            await self.store.set_sync_state(JOB, last_success_at=until)
        log.info("backfill.finished", **report.as_dict())
        return report

    def _failed(
        self, report: BackfillReport, failures: list[Exception], exc: Exception, what: str
    ) -> None:
        failures.append(exc)
        report.errors.append(f"{what}: {exc}")
        log.warning("backfill.read_failed", what=what, error=str(exc))

    async def _messages(
        self, since: datetime, report: BackfillReport, failures: list[Exception]
    ) -> None:
        """Every session active since `since`, every message of each, inserted in batches."""
        try:
            sessions = await self.client.get_messages(
                self.domain, limit=self.page_size, max_pages=self.max_pages
            )
        except READ_ERRORS as exc:
            self._failed(report, failures, exc, "message sessions")
            return
        batch: list[dict[str, Any]] = []
        for session in sessions:
            last = parse_ns_datetime(session.get("messagesession-last-datetime"))
            sid, user = session.get("messagesession-id"), session.get("user")
            if (last is not None and last < since) or not sid or not user:
                continue
            try:
                batch.extend(
                    await self.client.get_messages(
                        self.domain,
                        str(user),
                        str(sid),
                        limit=self.page_size,
                        max_pages=self.max_pages,
                    )
                )
            except ValueError:  # a session id we could not even ask about
                log.warning("backfill.bad_session_id", session_id=str(sid)[:40])
                continue
            except UpstreamResponseError as exc:  # a final answer about this session only
                self._failed(report, failures, exc, f"session {str(sid)[:40]}")
                continue
            except READ_ERRORS as exc:  # the upstream is unwell: stop asking it
                self._failed(report, failures, exc, f"session {str(sid)[:40]}")
                break
            report.sessions += 1
            if len(batch) >= INSERT_BATCH:
                await self._ingest("message", batch, since, report)
                batch = []
        await self._ingest("message", batch, since, report)

    async def _ingest(
        self, model: str, objects: list[dict[str, Any]], since: datetime, report: BackfillReport
    ) -> None:
        if not objects:
            return
        parsed = parse_payload(model, objects, default_region=self.default_region)
        report.rejected += len(parsed.rejected)
        events = [e for e in parsed.events if e.occurred_at is None or e.occurred_at >= since]
        report.fetched += len(events)
        if not events:
            return
        received_at = self.clock.now()
        results = await self.store.insert_events(
            [new_event(e, via="backfill", received_at=received_at) for e in events]
        )
        new_ids = [r.id for r in results if not r.duplicate]
        report.duplicates += len(results) - len(new_ids)
        report.inserted += len(new_ids)
        if new_ids and self.on_events is not None:
            self.on_events(new_ids)
