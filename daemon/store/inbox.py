"""The webhook inbox (`events`): durable first, processed later, each delivery at most once.

Ingest (`ingest.py`): `insert_events` is group-committed *and* batched: the writer merges the
events of every request queued together into one multi-row INSERT, so the listener answers 2xx
only after its events are committed without paying a commit, or even a statement, per request.
Redeliveries hit the UNIQUE `dedupe_key` and are reported back as duplicates. Ids are assigned
in queue order, and within a request in list order: `id` is the order of arrival.

Claims: `claim_events` leases what it returns (`lease_until`); the lease is not an attempt, so
`attempts` counts outcomes (`finish_event`) and a crash loop cannot push an event to `dead`.
The service calls `release_leases()` at start: nothing else can hold one then, so a crash does
not hide in-flight events for a lease's length. A lease can run out while its event is still
being handled (a slow upstream, the clock stepping forward), so the dispatcher also passes the
ids it is handling as `exclude`: it never claims an event it is still working on. One sender's
events are handled strictly in order: an event is not claimable while an earlier (smaller id)
event of the same sender is unfinished (pending or failed, leased or not). Events without a
sender are not ordered.

Plans: `record_plan` stores the rules' decision with the event and creates its action rows in
one transaction, once; replay (`reset_events`, `reset_dead`) keeps the plan and re-arms the
actions that did not go out, so a replay carries out what was decided, never more. Two kinds of
action are not re-armed: those `sent`, and those that failed at planning (a template or rule
error; their stored request holds the `error` and no body): replaying cannot fix a template, so
they stay `dead` with their reason and the event ends `dead` again. Replay refuses an event
whose lease has not run out: a dispatcher is handling it right now, and clearing the lease
would let the event be claimed (and its actions sent) a second time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiosqlite

from daemon.errors import StoreError
from daemon.store.actions import ACTION_COLUMNS, ActionRow, NewAction, action_row
from daemon.store.db import Database, execute, query
from daemon.store.handoff import on_thread
from daemon.store.ingest import InsertedEvent, NewEvent, insert_batch, to_row
from daemon.store.util import chunked, from_db, from_db_req, placeholders, to_db

EVENT_STATUSES = ("pending", "done", "ignored", "failed", "dead")
DEFAULT_LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class EventRow:
    id: int
    source: str
    kind: str
    dedupe_key: str
    received_at: datetime
    payload: str
    status: str
    attempts: int  # outcomes recorded so far (finish_event), not claims
    next_attempt_at: datetime | None  # a failed event's retry time
    last_error: str | None
    sender: str | None = None
    via: str = "webhook"
    occurred_at: datetime | None = None
    body_hash: str | None = None
    lease_until: datetime | None = None  # claimed by a dispatcher until then
    plan: str | None = None  # the rules' stored decision (JSON), once planned


_COLS = (
    "id, source, kind, dedupe_key, received_at, payload, status, attempts, next_attempt_at, "
    "last_error, sender, via, occurred_at, body_hash, lease_until, plan"
)
_UNFINISHED = "('pending', 'failed')"


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
        sender=row[10],
        via=row[11],
        occurred_at=from_db(row[12]),
        body_hash=row[13],
        lease_until=from_db(row[14]),
        plan=row[15],
    )


async def _no_events() -> list[InsertedEvent]:
    return []


def _check_status(status: str) -> None:
    if status not in EVENT_STATUSES:
        raise StoreError(f"unknown event status {status!r}")


class InboxRepo(Database):
    def insert_events(self, events: Sequence[NewEvent]) -> Coroutine[Any, Any, list[InsertedEvent]]:
        """Insert new events, durably (committed when the returned coroutine returns); one
        result per event, in order, with duplicates (by dedupe_key) flagged and carrying the
        stored event's id. Returns the writer's submission itself rather than a coroutine
        awaiting it (one level less per webhook request); an event the store cannot take
        raises `StoreError` here, at the call."""
        rows = [to_row(e) for e in events]
        if not rows:
            return _no_events()
        return self.write_batched(insert_batch, rows)

    # -- claims and outcomes -----------------------------------------------------------------

    async def claim_events(
        self,
        limit: int,
        now: datetime,
        *,
        lease: timedelta = DEFAULT_LEASE,
        exclude: Collection[int] = (),
    ) -> list[EventRow]:
        """Lease up to `limit` due events, oldest first, and return them.

        Due: pending or failed, `next_attempt_at` NULL or passed, no lease or an expired one,
        not in `exclude` (what the caller is still handling, whatever its lease says), and no
        earlier unfinished event of the same sender. `attempts` is not changed.
        """
        if limit <= 0:
            return []
        now_s, until = to_db(now), to_db(now + lease)
        skip = frozenset(int(i) for i in exclude)

        async def fn(conn: aiosqlite.Connection) -> list[EventRow]:
            rows = await on_thread(conn, _claim, now_s, until, skip, limit)
            return sorted((_event(r) for r in rows), key=lambda e: e.id)

        return await self.write(fn)

    async def release_leases(self) -> int:
        """Free every lease (at service start, when no dispatcher can hold one); returns how
        many were held."""

        async def fn(conn: aiosqlite.Connection) -> int:
            return await execute(
                conn, "UPDATE events SET lease_until = NULL WHERE lease_until IS NOT NULL"
            )

        return await self.write(fn)

    async def finish_event(
        self,
        event_id: int,
        status: str,
        *,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Record an outcome: `attempts` + 1, the lease freed; `failed` with `next_attempt_at`
        schedules a retry."""
        await self._set_status(event_id, status, error, next_attempt_at, outcome=True)

    async def set_event_status(
        self,
        event_id: int,
        status: str,
        *,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Set the status without counting an attempt or touching the lease (tools, tests);
        the dispatcher records outcomes with `finish_event`."""
        await self._set_status(event_id, status, error, next_attempt_at, outcome=False)

    async def _set_status(
        self,
        event_id: int,
        status: str,
        error: str | None,
        next_attempt_at: datetime | None,
        *,
        outcome: bool,
    ) -> None:
        _check_status(status)
        params = (status, error, None if next_attempt_at is None else to_db(next_attempt_at))
        # An outcome counts the attempt and frees the lease; a plain status change does neither.
        extra = ", attempts = attempts + 1, lease_until = NULL" if outcome else ""

        async def fn(conn: aiosqlite.Connection) -> None:
            changed = await execute(
                conn,
                f"UPDATE events SET status = ?, last_error = ?, next_attempt_at = ?{extra} "
                "WHERE id = ?",
                (*params, event_id),
            )
            if changed == 0:
                raise StoreError(f"no event with id {event_id}")

        await self.write(fn)

    async def record_plan(
        self, event_id: int, plan_json: str, actions: Sequence[NewAction]
    ) -> list[ActionRow]:
        """Store the plan and create its actions in one transaction; returns every action row
        of the event, in id order.

        Once: if the event already has a plan, nothing changes and the existing rows are
        returned. An action with `error` is created `dead` (done_at, last_error) at once.
        """
        now = to_db(self.clock.now())
        rows = [
            (
                event_id, a.rule, a.kind, a.idempotency_key,
                "dead" if a.error is not None else "pending",
                a.request_json, now, now if a.error is not None else None, a.error,
                a.phone, a.conversation, a.body_hash, int(bool(a.auto_reply)),
            )
            for a in actions
        ]  # fmt: skip

        async def fn(conn: aiosqlite.Connection) -> list[ActionRow]:
            found = await query(conn, "SELECT plan FROM events WHERE id = ?", (event_id,))
            if not found:
                raise StoreError(f"no event with id {event_id}")
            if found[0][0] is None:
                await execute(
                    conn, "UPDATE events SET plan = ? WHERE id = ?", (plan_json, event_id)
                )
                await conn.executemany(
                    "INSERT INTO actions (event_id, rule, kind, idempotency_key, status, "
                    "attempts, request, created_at, done_at, last_error, phone, conversation, "
                    "body_hash, auto_reply) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (idempotency_key) DO NOTHING",
                    rows,
                )
            return [
                action_row(r)
                for r in await query(
                    conn,
                    f"SELECT {ACTION_COLUMNS} FROM actions WHERE event_id = ? ORDER BY id",
                    (event_id,),
                )
            ]

        return await self.write(fn)

    # -- replay ------------------------------------------------------------------------------

    async def reset_events(self, ids: Iterable[int]) -> int:
        """Replay: the events are pending again from scratch (plan kept), and their failed or
        dead actions pending with no attempts; sent actions, and actions that failed at
        planning, stay as they are. Returns how many of the ids exist.

        Refused (`StoreError`, nothing changed) when one of them is leased: a dispatcher is
        handling it now, and a replay would let it be claimed and acted on a second time."""
        wanted = sorted({int(i) for i in ids})
        now = to_db(self.clock.now())

        async def fn(conn: aiosqlite.Connection) -> int:
            busy = await _leased(conn, wanted, now)
            if busy:
                raise StoreError(
                    f"event {busy[0][0]} is being handled (leased until {busy[0][1]}); "
                    "replay it once it is finished — a lease left by a stopped service is "
                    "released when the service starts"
                )
            return await _reset(conn, wanted)

        return await self.write(fn) if wanted else 0

    async def reset_dead(self) -> int:
        """Replay every dead letter (as `reset_events`), except one that is leased (a dead event
        is not claimed, so only a concurrent replay can have leased it: it is handled now)."""
        now = to_db(self.clock.now())

        async def fn(conn: aiosqlite.Connection) -> int:
            dead = await query(
                conn,
                "SELECT id FROM events WHERE status = 'dead' "
                "AND (lease_until IS NULL OR lease_until <= ?) ORDER BY id",
                (now,),
            )
            return await _reset(conn, [int(r[0]) for r in dead])

        return await self.write(fn)

    # -- reads -------------------------------------------------------------------------------

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


# The claim walks unfinished events in id order (the partial index `events_open`), a page at a
# time (at most WALK_PAGE), each page one JSON row: one step of SQLite, so the writer thread
# retakes the GIL once per page, not once per event, beside a busy event loop.
WALK_PAGE = 500
_WALK = (
    "SELECT count(*), json_group_array(json_array(id, sender, next_attempt_at, lease_until)) "
    "FROM (SELECT id, sender, next_attempt_at, lease_until FROM events "
    f"WHERE status IN {_UNFINISHED} AND id > ? ORDER BY id LIMIT ?)"
)
_SENDERS_OF = (
    "SELECT DISTINCT sender FROM events WHERE sender IS NOT NULL "
    "AND id IN (SELECT value FROM json_each(?))"
)
_LEASE = (
    "UPDATE events SET lease_until = ? WHERE id IN (SELECT value FROM json_each(?)) "
    f"RETURNING {_COLS}"
)


def _claim(
    raw: sqlite3.Connection,
    now: str,
    until: str,
    exclude: frozenset[int],
    limit: int,
    max_page: int = WALK_PAGE,
) -> list[Any]:
    """Lease and return (as rows) up to `limit` events: each the first unfinished event of its
    sender (or one without a sender), due, unleased and not excluded — on the writer thread.

    Why a walk and not an index on (sender, ...): the first unfinished event of each sender is
    found in one pass over the unfinished events in id order, which the claim walks anyway; a
    sender index cost every webhook insert a page write at a scattered place (a fifth of the
    writer's time per event) to answer a question this pass answers for free. The pass stops
    as soon as it has `limit` events; a sender blocked by a long queue of its own costs reading
    that queue, as the index's plan did.
    """
    # Senders whose first unfinished event has been passed — and, from the start, those with an
    # event in hand: a replayed earlier event of theirs must wait for it too (found by probing:
    # a dead event replayed while its sender's next one was being handled ran beside it).
    blocked: set[str] = set()
    if exclude:
        blocked.update(
            sender
            for (sender,) in raw.execute(_SENDERS_OF, (json.dumps(sorted(exclude)),)).fetchall()
        )
    chosen: list[int] = []
    after = 0
    # The events in hand come first in the walk (and block their senders' next ones): the first
    # page covers them and a few candidates per slot; later pages double, up to max_page.
    page_size = min(max_page, max(16, len(exclude) + 4 * limit))
    while len(chosen) < limit:
        count, page = raw.execute(_WALK, (after, page_size)).fetchone()
        # Sorted here: the order inside an aggregate is not promised before SQLite 3.44.
        rows = sorted(json.loads(page), key=lambda row: row[0]) if count else []
        for event_id, sender, next_at, lease in rows:
            if sender is not None:
                if sender in blocked:
                    continue
                blocked.add(sender)
            if (
                event_id not in exclude
                and (next_at is None or next_at <= now)
                and (lease is None or lease <= now)
            ):
                chosen.append(event_id)
                if len(chosen) == limit:
                    break
        if count < page_size:
            break
        after = event_id
        page_size = min(max_page, page_size * 2)
    if not chosen:
        return []
    return raw.execute(_LEASE, (until, json.dumps(chosen))).fetchall()


async def _leased(conn: aiosqlite.Connection, ids: Sequence[int], now: str) -> list[Any]:
    """(id, lease_until) of those of `ids` whose lease has not run out."""
    found: list[Any] = []
    for chunk in chunked(ids):
        found += await query(
            conn,
            f"SELECT id, lease_until FROM events WHERE id IN ({placeholders(len(chunk))}) "
            "AND lease_until > ? ORDER BY id",
            (*chunk, now),
        )
    return found


# An action whose stored request holds the planning error (a template or rule error) has no
# body to send: replay leaves it dead with its reason.
_PLANNED_OK = "(CASE WHEN json_valid(request) THEN json_extract(request, '$.error') END) IS NULL"


async def _reset(conn: aiosqlite.Connection, ids: Sequence[int]) -> int:
    total = 0
    for chunk in chunked(ids):
        marks = placeholders(len(chunk))
        total += await execute(
            conn,
            "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = NULL, "
            f"lease_until = NULL, last_error = NULL WHERE id IN ({marks})",
            chunk,
        )
        await execute(
            conn,
            # `attempt_started_at` stays: set, it is an attempt whose outcome was never recorded
            # (a crash, a store error after the call), and the replay must look before it sends
            # (found by probing: a reply that had gone out was sent again).
            "UPDATE actions SET status = 'pending', attempts = 0, next_attempt_at = NULL, "
            "last_error = NULL, done_at = NULL "
            f"WHERE event_id IN ({marks}) AND status IN ('failed', 'dead') AND {_PLANNED_OK}",
            chunk,
        )
    return total
