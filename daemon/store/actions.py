"""`actions` (what a rule did about an event) and `halo_threads` (open ticket per sender).

Action rows are created with the event's plan (`InboxRepo.record_plan`), one per planned action,
under a UNIQUE idempotency key: a retried event finds its earlier action instead of creating a
second SMS or ticket. Each attempt is bracketed: `start_attempt` commits `attempt_started_at`
before the upstream call, `finish_action` records the outcome (and counts the attempt), so a
row with `attempt_started_at` set after a restart is an attempt whose outcome is unknown.

`create_action`/`set_action_status` are the older one-row-at-a-time API, kept for tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from daemon.crashpoints import crashpoint
from daemon.errors import StoreError
from daemon.store.db import Database, execute, query
from daemon.store.util import from_db, from_db_req, to_db

ACTION_STATUSES = ("pending", "sent", "failed", "dead")


@dataclass(frozen=True)
class NewAction:
    """One planned action as `record_plan` creates it."""

    rule: str
    kind: str
    idempotency_key: str
    request_json: str | None
    phone: str | None = None  # the correspondent (E.164)
    conversation: str | None = None  # session id, else "<our number>|<their number>"
    body_hash: str | None = None  # of the text we would send (echo detection)
    auto_reply: bool = False  # an SMS sent unasked: the loop guard counts these
    error: str | None = None  # a template or rule error: created `dead` at once


@dataclass(frozen=True)
class ActionRow:
    id: int
    event_id: int | None
    rule: str
    kind: str
    idempotency_key: str
    status: str
    attempts: int
    request: str | None
    response: str | None
    created_at: datetime
    done_at: datetime | None
    upstream_ref: str | None
    next_attempt_at: datetime | None
    last_error: str | None
    phone: str | None = None
    conversation: str | None = None
    body_hash: str | None = None
    attempt_started_at: datetime | None = None  # an attempt whose outcome is not recorded yet
    auto_reply: bool = False


@dataclass(frozen=True)
class HaloThread:
    phone: str
    rule: str
    ticket_id: str
    updated_at: datetime
    notes: int = 0  # notes added to this ticket since it was opened


ACTION_COLUMNS = (
    "id, event_id, rule, kind, idempotency_key, status, attempts, request, response, "
    "created_at, done_at, upstream_ref, next_attempt_at, last_error, phone, conversation, "
    "body_hash, attempt_started_at, auto_reply"
)
_COLS = ACTION_COLUMNS


def _check_status(status: str) -> None:
    if status not in ACTION_STATUSES:
        raise StoreError(f"unknown action status {status!r}")


def action_row(r: Any) -> ActionRow:
    """From a read-connection Row or a writer tuple, selected as `ACTION_COLUMNS`."""
    return ActionRow(
        id=int(r[0]),
        event_id=r[1],
        rule=r[2],
        kind=r[3],
        idempotency_key=r[4],
        status=r[5],
        attempts=int(r[6]),
        request=r[7],
        response=r[8],
        created_at=from_db_req(r[9]),
        done_at=from_db(r[10]),
        upstream_ref=r[11],
        next_attempt_at=from_db(r[12]),
        last_error=r[13],
        phone=r[14],
        conversation=r[15],
        body_hash=r[16],
        attempt_started_at=from_db(r[17]),
        auto_reply=bool(r[18]),
    )


class ActionsRepo(Database):
    async def create_action(
        self,
        event_id: int | None,
        rule: str,
        kind: str,
        idempotency_key: str,
        request_json: str | None,
    ) -> tuple[int, bool]:
        """Insert a pending action unless its key exists; returns (id, created)."""

        async def fn(conn: aiosqlite.Connection) -> tuple[int, bool]:
            async with conn.execute(
                "INSERT INTO actions (event_id, rule, kind, idempotency_key, status, attempts, "
                "request, created_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                (event_id, rule, kind, idempotency_key, request_json, to_db(self.clock.now())),
            ) as cur:
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    return int(cur.lastrowid), True
            rows = await query(
                conn, "SELECT id FROM actions WHERE idempotency_key = ?", (idempotency_key,)
            )
            return int(rows[0][0]), False

        return await self.write(fn)

    async def set_action_status(
        self,
        action_id: int,
        status: str,
        *,
        response: str | None = None,
        upstream_ref: str | None = None,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
        count_attempt: bool = True,
    ) -> None:
        """Record an attempt's outcome.

        `attempts` grows by one per call unless `count_attempt=False` (e.g. re-queueing);
        `done_at` is set when the status is final (sent or dead). `response`/`upstream_ref`
        given as None keep what is stored.
        """
        await self._record_outcome(
            action_id, status, response, upstream_ref, error, next_attempt_at,
            count_attempt=count_attempt, clear_started=False,
        )  # fmt: skip

    async def start_attempt(self, action_id: int) -> datetime:
        """Commit `attempt_started_at = now` before the upstream call; returns that time."""
        now = self.clock.now()

        async def fn(conn: aiosqlite.Connection) -> None:
            changed = await execute(
                conn,
                "UPDATE actions SET attempt_started_at = ? WHERE id = ?",
                (to_db(now), action_id),
            )
            if changed == 0:
                raise StoreError(f"no action with id {action_id}")

        await self.write(fn)
        return now

    async def finish_action(
        self,
        action_id: int,
        status: str,
        *,
        response: str | None = None,
        upstream_ref: str | None = None,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Record an attempt's outcome: `attempts` + 1, `attempt_started_at` cleared, `done_at`
        set when final (sent or dead); `response`/`upstream_ref` given as None keep what is
        stored."""
        crashpoint("before_outcome")
        await self._record_outcome(
            action_id, status, response, upstream_ref, error, next_attempt_at,
            count_attempt=True, clear_started=True,
        )  # fmt: skip

    async def defer_action(
        self, action_id: int, *, next_attempt_at: datetime, error: str, in_doubt: bool = False
    ) -> None:
        """Put an action back for `next_attempt_at` without counting an attempt: none of its
        requests left (the rate budget had no room). The stored response, and with it an
        earlier attempt's recorded doubt, is kept. `attempt_started_at` is cleared — unless
        `in_doubt`: the deferral came while looking whether an earlier attempt, whose outcome
        was never recorded (a crash), had sent; that mark is then all that says so (found by
        probing: cleared, the next attempt sent a second ticket without looking)."""
        await self._record_outcome(
            action_id, "failed", None, None, error, next_attempt_at,
            count_attempt=False, clear_started=not in_doubt,
        )  # fmt: skip

    async def _record_outcome(
        self,
        action_id: int,
        status: str,
        response: str | None,
        upstream_ref: str | None,
        error: str | None,
        next_attempt_at: datetime | None,
        *,
        count_attempt: bool,
        clear_started: bool,
    ) -> None:
        _check_status(status)
        nxt = None if next_attempt_at is None else to_db(next_attempt_at)

        async def fn(conn: aiosqlite.Connection) -> None:
            done = to_db(self.clock.now()) if status in ("sent", "dead") else None
            changed = await execute(
                conn,
                "UPDATE actions SET status = ?, attempts = attempts + ?, "
                "response = COALESCE(?, response), upstream_ref = COALESCE(?, upstream_ref), "
                "last_error = ?, next_attempt_at = ?, done_at = ?, "
                "attempt_started_at = CASE WHEN ? THEN NULL ELSE attempt_started_at END "
                "WHERE id = ?",
                (status, int(count_attempt), response, upstream_ref, error, nxt, done,
                 int(clear_started), action_id),
            )  # fmt: skip
            if changed == 0:
                raise StoreError(f"no action with id {action_id}")

        await self.write(fn)

    async def actions_for_event(self, event_id: int) -> list[ActionRow]:
        """The event's actions in id order (the order its plan listed them)."""
        rows = await self.fetchall(
            f"SELECT {_COLS} FROM actions WHERE event_id = ? ORDER BY id", (event_id,)
        )
        return [action_row(r) for r in rows]

    async def get_action(self, action_id: int) -> ActionRow | None:
        row = await self.fetchone(f"SELECT {_COLS} FROM actions WHERE id = ?", (action_id,))
        return None if row is None else action_row(row)

    async def get_action_by_key(self, idempotency_key: str) -> ActionRow | None:
        row = await self.fetchone(
            f"SELECT {_COLS} FROM actions WHERE idempotency_key = ?", (idempotency_key,)
        )
        return None if row is None else action_row(row)

    async def list_actions(
        self,
        *,
        event_id: int | None = None,
        status: str | None = None,
        rule: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[ActionRow]:
        """Newest first; filters combine (used by `events show` and by rate/cooldown checks)."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("event_id", event_id), ("status", status), ("rule", rule)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("created_at >= ?")
            params.append(to_db(since))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self.fetchall(
            f"SELECT {_COLS} FROM actions {clause} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [action_row(r) for r in rows]

    async def last_reply_sent(
        self, phone: str, body_hash: str | None, *, other_than: int
    ) -> datetime | None:
        """When the latest other SMS reply with this text to this phone was recorded sent: the
        floor below which an uncertain reply's look-up must not look, or it would take that
        earlier, identical reply for this one."""
        row = await self.fetchone(
            "SELECT MAX(done_at) FROM actions WHERE phone = ? AND kind = 'sms_reply' "
            "AND status = 'sent' AND body_hash IS ? AND id != ?",
            (phone, body_hash, other_than),
        )
        return None if row is None or row[0] is None else from_db(row[0])

    async def count_actions_by_status(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT status, COUNT(*) AS n FROM actions GROUP BY status")
        counts = dict.fromkeys(ACTION_STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in rows})
        return counts

    async def get_halo_thread(self, phone: str, rule: str) -> HaloThread | None:
        row = await self.fetchone(
            "SELECT phone, rule, ticket_id, updated_at, notes FROM halo_threads "
            "WHERE phone = ? AND rule = ?",
            (phone, rule),
        )
        if row is None:
            return None
        return HaloThread(
            row["phone"],
            row["rule"],
            row["ticket_id"],
            from_db_req(row["updated_at"]),
            int(row["notes"]),
        )

    async def set_halo_thread(self, phone: str, rule: str, ticket_id: str) -> None:
        """Remember a newly opened ticket; its note count starts at 0."""

        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "INSERT INTO halo_threads (phone, rule, ticket_id, updated_at, notes) "
                "VALUES (?, ?, ?, ?, 0) "
                "ON CONFLICT (phone, rule) DO UPDATE SET ticket_id = excluded.ticket_id, "
                "updated_at = excluded.updated_at, notes = 0",
                (phone, rule, str(ticket_id), to_db(self.clock.now())),
            )

        await self.write(fn)

    async def add_thread_note(self, phone: str, rule: str) -> int:
        """Count a note added to the open ticket; returns the new count (0 when there is no
        thread any more: it was cleared meanwhile)."""

        async def fn(conn: aiosqlite.Connection) -> int:
            rows = await conn.execute_fetchall(
                "UPDATE halo_threads SET notes = notes + 1, updated_at = ? "
                "WHERE phone = ? AND rule = ? RETURNING notes",
                (to_db(self.clock.now()), phone, rule),
            )
            found = list(rows)
            return int(found[0][0]) if found else 0

        return await self.write(fn)

    async def clear_halo_thread(self, phone: str, rule: str) -> bool:
        """Forget the open ticket (it was closed upstream); True if there was one."""

        async def fn(conn: aiosqlite.Connection) -> int:
            return await execute(
                conn, "DELETE FROM halo_threads WHERE phone = ? AND rule = ?", (phone, rule)
            )

        return bool(await self.write(fn))
