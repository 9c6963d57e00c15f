"""The webhook inbox (`events`): durable first, processed later, each delivery at most once.

`insert_events` is group-committed: concurrent webhook requests queue their inserts and the
writer commits them together, so the listener can answer 2xx only after its events are on disk
without paying one fsync per request. Redeliveries hit the UNIQUE `dedupe_key` and are
reported back as duplicates, which the listener acknowledges without reprocessing.

`claim_due_events` leases what it returns (attempts + 1, next_attempt_at = now + lease), so a
dispatcher loop that polls again while work is in flight does not pick the same event twice,
and a crash only delays an event until its lease runs out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiosqlite

from daemon.errors import StoreError
from daemon.store.db import Database, execute, query
from daemon.store.util import chunked, from_db, from_db_req, placeholders, to_db

EVENT_STATUSES = ("pending", "done", "ignored", "failed", "dead")
DEFAULT_LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class NewEvent:
    source: str
    kind: str
    dedupe_key: str
    payload: str
    received_at: datetime
    sender: str | None = None  # E.164 of who sent it: one sender's events are handled in order
    via: str = "webhook"  # or "backfill" (pulled through the API after a gap: never auto-replied)
    occurred_at: datetime | None = None  # when it happened at the PBX, if it said
    body_hash: str | None = None  # of the normalised message text (repeat and echo detection)


@dataclass(frozen=True)
class InsertedEvent:
    id: int
    dedupe_key: str
    duplicate: bool


@dataclass(frozen=True)
class EventRow:
    id: int
    source: str
    kind: str
    dedupe_key: str
    received_at: datetime
    payload: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None


_COLS = (
    "id, source, kind, dedupe_key, received_at, payload, status, attempts, next_attempt_at, "
    "last_error"
)


def _event(row: Any) -> EventRow:
    """From a read-connection Row or a writer tuple (both index by position)."""
    return EventRow(
        id=int(row[0]),
        source=row[1],
        kind=row[2],
        dedupe_key=row[3],
        received_at=from_db_req(row[4]),
        payload=row[5],
        status=row[6],
        attempts=int(row[7]),
        next_attempt_at=from_db(row[8]),
        last_error=row[9],
    )


def _check_status(status: str) -> None:
    if status not in EVENT_STATUSES:
        raise StoreError(f"unknown event status {status!r}")


class InboxRepo(Database):
    async def insert_events(self, events: Sequence[NewEvent]) -> list[InsertedEvent]:
        """Insert new events (duplicates by dedupe_key are skipped and flagged), durably."""
        rows = [
            (e.source, e.kind, e.dedupe_key, to_db(e.received_at), e.payload, to_db(e.received_at))
            for e in events
        ]

        async def fn(conn: aiosqlite.Connection) -> list[InsertedEvent]:
            out: list[InsertedEvent] = []
            for row in rows:
                async with conn.execute(
                    "INSERT INTO events (source, kind, dedupe_key, received_at, payload, status, "
                    "attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?) "
                    "ON CONFLICT (dedupe_key) DO NOTHING",
                    row,
                ) as cur:
                    created = cur.rowcount == 1
                    new_id = cur.lastrowid
                if created and new_id is not None:
                    out.append(InsertedEvent(int(new_id), row[2], duplicate=False))
                    continue
                found = await query(conn, "SELECT id FROM events WHERE dedupe_key = ?", (row[2],))
                out.append(InsertedEvent(int(found[0][0]), row[2], duplicate=True))
            return out

        if not rows:
            return []
        return await self.write(fn, groupable=True)

    async def claim_due_events(
        self, limit: int, now: datetime, *, lease: timedelta = DEFAULT_LEASE
    ) -> list[EventRow]:
        """Lease up to `limit` due events (pending, or failed and due), oldest arrival first.

        The returned rows already carry the incremented `attempts`.
        """
        now_s, until = to_db(now), to_db(now + lease)

        async def fn(conn: aiosqlite.Connection) -> list[EventRow]:
            ids = [
                r[0]
                for r in await query(
                    conn,
                    "SELECT id FROM events WHERE status IN ('pending', 'failed') "
                    "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id LIMIT ?",
                    (now_s, limit),
                )
            ]
            if not ids:
                return []
            marks = placeholders(len(ids))
            await execute(
                conn,
                "UPDATE events SET attempts = attempts + 1, next_attempt_at = ? "
                f"WHERE id IN ({marks})",
                (until, *ids),
            )
            rows = await query(
                conn, f"SELECT {_COLS} FROM events WHERE id IN ({marks}) ORDER BY id", ids
            )
            return [_event(r) for r in rows]

        return await self.write(fn)

    async def set_event_status(
        self,
        event_id: int,
        status: str,
        *,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Record an outcome; `failed` with `next_attempt_at` schedules a retry."""
        _check_status(status)
        params = (status, error, None if next_attempt_at is None else to_db(next_attempt_at))

        async def fn(conn: aiosqlite.Connection) -> None:
            changed = await execute(
                conn,
                "UPDATE events SET status = ?, last_error = ?, next_attempt_at = ? WHERE id = ?",
                (*params, event_id),
            )
            if changed == 0:
                raise StoreError(f"no event with id {event_id}")

        await self.write(fn)

    async def get_event(self, event_id: int) -> EventRow | None:
        row = await self.fetchone(f"SELECT {_COLS} FROM events WHERE id = ?", (event_id,))
        return None if row is None else _event(row)

    async def list_events(self, status: str | None = None, limit: int = 100) -> list[EventRow]:
        """Newest first, as an operator looking at the inbox expects."""
        if status is not None:
            _check_status(status)
            rows = await self.fetchall(
                f"SELECT {_COLS} FROM events WHERE status = ? ORDER BY id DESC LIMIT ?",
                (status, limit),
            )
        else:
            rows = await self.fetchall(
                f"SELECT {_COLS} FROM events ORDER BY id DESC LIMIT ?", (limit,)
            )
        return [_event(r) for r in rows]

    async def reset_events(self, ids: Iterable[int]) -> int:
        """Make events due again from scratch (replay); returns how many exist."""
        wanted = sorted({int(i) for i in ids})

        async def fn(conn: aiosqlite.Connection) -> int:
            total = 0
            for chunk in chunked(wanted):
                total += await execute(
                    conn,
                    "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = NULL, "
                    f"last_error = NULL WHERE id IN ({placeholders(len(chunk))})",
                    chunk,
                )
            return total

        return await self.write(fn) if wanted else 0

    async def reset_dead(self) -> int:
        """Replay every dead letter."""

        async def fn(conn: aiosqlite.Connection) -> int:
            return await execute(
                conn,
                "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = NULL, "
                "last_error = NULL WHERE status = 'dead'",
            )

        return await self.write(fn)

    async def count_events_by_status(self) -> dict[str, int]:
        """Every status is present, zero when empty, so dashboards see stable keys."""
        rows = await self.fetchall("SELECT status, COUNT(*) AS n FROM events GROUP BY status")
        counts = dict.fromkeys(EVENT_STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in rows})
        return counts

    async def last_event_time(self, source: str, kind_prefix: str = "") -> datetime | None:
        """When the newest event of this source (and kind prefix) arrived; drives backfill."""
        escaped = kind_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        row = await self.fetchone(
            "SELECT MAX(received_at) AS t FROM events WHERE source = ? AND kind LIKE ? ESCAPE '\\'",
            (source, escaped + "%"),
        )
        return None if row is None else from_db(row["t"])
