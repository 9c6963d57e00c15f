"""Backfill: pull the NetSapiens messages (and CDRs) the webhook path missed into the inbox.

NetSapiens does not promise redelivery: while the listener is down, a subscription is in
`error`, or posts silently stop, events are simply lost. The backfiller reads the same objects
through the API and runs them through the same `parse_payload`, so each gets the dedupe key the
webhook path would have given it; the inbox's UNIQUE `dedupe_key` then makes overlap with live
deliveries harmless. Hence the window may start generously early (`overlap`).

When to run is a pure decision (`should_backfill`): after a restart, when the keeper saw a
subscription vanish or fail, or when the inbox has been silent longer than usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from daemon.clients.netsapiens import parse_ns_datetime
from daemon.clock import Clock
from daemon.store import NewEvent
from daemon.webhooks.events import SOURCE, Event, parse_payload

log = structlog.get_logger(__name__)

__all__ = ["JOB", "BackfillReport", "Backfiller", "InboxStore", "should_backfill"]

JOB = "netsapiens-backfill"  # sync_state key holding the last backfilled-until time


class InboxStore(Protocol):
    """The slice of `daemon.store.Store` the backfiller uses."""

    async def insert_events(self, events: Sequence[NewEvent]) -> Sequence[Any]: ...

    async def last_event_time(self, source: str, kind_prefix: str = "") -> datetime | None: ...

    async def get_sync_state(self, job: str) -> Any: ...

    async def set_sync_state(
        self, job: str, *, cursor: Any = ..., last_success_at: Any = ...
    ) -> None: ...


class BackfillClient(Protocol):
    async def get_messages(
        self,
        domain: str = "~",
        user: str | None = None,
        session_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...

    async def list_cdrs(
        self,
        domain: str = "~",
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 500,
        offset: int = 0,
    ) -> list[dict[str, Any]]: ...


@dataclass
class BackfillReport:
    since: datetime
    until: datetime
    fetched: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "fetched": self.fetched,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
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
        first_lookback: timedelta = timedelta(hours=24),
        max_lookback: timedelta = timedelta(days=7),
        include_cdrs: bool = True,
        session_limit: int = 1000,
        message_limit: int = 1000,
    ):
        self.client = client
        self.store = store
        self.clock = clock
        self.default_region = default_region
        # The session list endpoint needs a concrete domain or `~`; `*` is a subscription idea.
        self.domain = "~" if domain in ("", "*") else domain
        self.overlap = overlap
        self.first_lookback = first_lookback
        self.max_lookback = max_lookback
        self.include_cdrs = include_cdrs
        self.session_limit = session_limit
        self.message_limit = message_limit

    async def default_since(self) -> datetime:
        """The newest inbox event (or the last backfill) minus `overlap`, capped at
        `max_lookback`; `first_lookback` ago when the inbox knows nothing."""
        now = self.clock.now()
        last = await self.store.last_event_time(SOURCE, "")
        if last is None:
            state = await self.store.get_sync_state(JOB)
            last = parse_ns_datetime(getattr(state, "cursor", None)) if state else None
        if last is None:
            return now - self.first_lookback
        return max(last - self.overlap, now - self.max_lookback)

    async def backfill(self, since: datetime | None = None) -> BackfillReport:
        since = since if since is not None else await self.default_since()
        until = self.clock.now()
        report = BackfillReport(since=since, until=until)
        messages = await self._messages(since)
        await self._ingest("message", messages, since, report)
        if self.include_cdrs:
            cdrs = await self.client.list_cdrs(self.domain, start=since, end=until)
            await self._ingest("cdr", cdrs, since, report)
        await self.store.set_sync_state(JOB, cursor=until.isoformat(), last_success_at=until)
        log.info("backfill.finished", **report.as_dict())
        return report

    async def _messages(self, since: datetime) -> list[dict[str, Any]]:
        sessions = await self.client.get_messages(self.domain, limit=self.session_limit)
        out: list[dict[str, Any]] = []
        for session in sessions:
            last = parse_ns_datetime(session.get("messagesession-last-datetime"))
            sid, user = session.get("messagesession-id"), session.get("user")
            if (last is not None and last < since) or not sid or not user:
                continue
            try:
                out.extend(
                    await self.client.get_messages(
                        self.domain, str(user), str(sid), limit=self.message_limit
                    )
                )
            except ValueError:  # a session id we could not even ask about
                log.warning("backfill.bad_session_id", session_id=str(sid)[:40])
        return out

    async def _ingest(
        self, model: str, objects: list[dict[str, Any]], since: datetime, report: BackfillReport
    ) -> None:
        parsed = parse_payload(model, objects, default_region=self.default_region)
        report.rejected += len(parsed.rejected)
        events = [e for e in parsed.events if e.occurred_at is None or e.occurred_at >= since]
        report.fetched += len(events)
        if not events:
            return
        results = await self.store.insert_events([self._new_event(e) for e in events])
        dup = sum(1 for r in results if r.duplicate)
        report.duplicates += dup
        report.inserted += len(results) - dup

    def _new_event(self, event: Event) -> NewEvent:
        return NewEvent(
            source=event.source,
            kind=event.kind,
            dedupe_key=event.dedupe_key,
            payload=event.to_json(),
            received_at=self.clock.now(),
        )
