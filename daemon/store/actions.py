"""`actions` (what a rule did about an event) and `halo_threads` (open ticket per sender).

The UNIQUE idempotency key makes a retried event find its earlier action instead of creating a
second SMS or ticket: `create_action` returns the existing row's id with `created=False`, and
the dispatcher looks at its status before sending again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from daemon.errors import StoreError
from daemon.store.db import Database, execute, query
from daemon.store.util import from_db, from_db_req, to_db

ACTION_STATUSES = ("pending", "sent", "failed", "dead")


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


@dataclass(frozen=True)
class HaloThread:
    phone: str
    rule: str
    ticket_id: str
    updated_at: datetime


_COLS = (
    "id, event_id, rule, kind, idempotency_key, status, attempts, request, response, "
    "created_at, done_at, upstream_ref, next_attempt_at, last_error"
)


def _action(r: Any) -> ActionRow:
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
        if status not in ACTION_STATUSES:
            raise StoreError(f"unknown action status {status!r}")
        nxt = None if next_attempt_at is None else to_db(next_attempt_at)

        async def fn(conn: aiosqlite.Connection) -> None:
            now = to_db(self.clock.now())
            done = now if status in ("sent", "dead") else None
            changed = await execute(
                conn,
                "UPDATE actions SET status = ?, attempts = attempts + ?, "
                "response = COALESCE(?, response), upstream_ref = COALESCE(?, upstream_ref), "
                "last_error = ?, next_attempt_at = ?, done_at = ? WHERE id = ?",
                (status, int(count_attempt), response, upstream_ref, error, nxt, done, action_id),
            )
            if changed == 0:
                raise StoreError(f"no action with id {action_id}")

        await self.write(fn)

    async def get_action(self, action_id: int) -> ActionRow | None:
        row = await self.fetchone(f"SELECT {_COLS} FROM actions WHERE id = ?", (action_id,))
        return None if row is None else _action(row)

    async def get_action_by_key(self, idempotency_key: str) -> ActionRow | None:
        row = await self.fetchone(
            f"SELECT {_COLS} FROM actions WHERE idempotency_key = ?", (idempotency_key,)
        )
        return None if row is None else _action(row)

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
        return [_action(r) for r in rows]

    async def count_actions_by_status(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT status, COUNT(*) AS n FROM actions GROUP BY status")
        counts = dict.fromkeys(ACTION_STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in rows})
        return counts

    async def get_halo_thread(self, phone: str, rule: str) -> HaloThread | None:
        row = await self.fetchone(
            "SELECT phone, rule, ticket_id, updated_at FROM halo_threads "
            "WHERE phone = ? AND rule = ?",
            (phone, rule),
        )
        if row is None:
            return None
        return HaloThread(
            row["phone"], row["rule"], row["ticket_id"], from_db_req(row["updated_at"])
        )

    async def set_halo_thread(self, phone: str, rule: str, ticket_id: str) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "INSERT INTO halo_threads (phone, rule, ticket_id, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (phone, rule) DO UPDATE SET ticket_id = excluded.ticket_id, "
                "updated_at = excluded.updated_at",
                (phone, rule, str(ticket_id), to_db(self.clock.now())),
            )

        await self.write(fn)

    async def clear_halo_thread(self, phone: str, rule: str) -> bool:
        """Forget the open ticket (it was closed upstream); True if there was one."""

        async def fn(conn: aiosqlite.Connection) -> int:
            return await execute(
                conn, "DELETE FROM halo_threads WHERE phone = ? AND rule = ?", (phone, rule)
            )

        return bool(await self.write(fn))
