"""What the loop guard (DESIGN §5) asks of the store: indexed questions about recent actions,
the numbers we send from (`own_numbers`), and the breaker's state (`guard_state`).

Each question is one query on the read connection and uses an index of migration 3 (a unary
`+` keeps SQLite from choosing the far less selective `auto_reply` index instead):
`actions_phone_rule (phone, rule, created_at)` for the cooldown and repeats,
`actions_conversation (conversation, created_at)` for the per-conversation cap and
`actions_auto_reply (auto_reply, created_at)` for the breaker's rate and echoes.

An action counts as a reply when it went out or may have: not `dead`, or `dead` with its doubt
on record — an attempt whose outcome was never written (`attempt_started_at`), or whose last
outcome was uncertain (a look-up that could not finish leaves the action dead rather than risk
a second SMS; found by probing: such a reply, echoed back, was answered). A `dead` action
refused for certain never went out and counts for nothing.
"""

from __future__ import annotations

from datetime import datetime

import aiosqlite

from daemon.store.db import Database, execute
from daemon.store.util import from_db, from_db_req, to_db

# The action's (alias `a`) last recorded outcome was uncertain: it may have gone out.
_UNCERTAIN = (
    "(CASE WHEN json_valid(a.response) THEN json_extract(a.response, '$.uncertain') END) = 1"
)
# The action went out or may have (see the module docstring).
_MAY_HAVE_GONE = f"(a.status != 'dead' OR a.attempt_started_at IS NOT NULL OR {_UNCERTAIN})"


class GuardRepo(Database):
    # -- questions about recent actions -------------------------------------------------------

    async def last_auto_action_at(self, phone: str, rule: str) -> datetime | None:
        """When the newest not-dead action of `rule` for `phone` was created (cooldown, which
        holds for every action kind, not only auto-replies, despite the name)."""
        row = await self.fetchone(
            "SELECT created_at FROM actions AS a WHERE phone = ? AND rule = ? "
            f"AND {_MAY_HAVE_GONE} ORDER BY created_at DESC LIMIT 1",
            (phone, rule),
        )
        return None if row is None else from_db(row["created_at"])

    async def count_auto_replies(self, *, since: datetime, conversation: str | None = None) -> int:
        """Auto-replies not dead created since `since`: in one conversation (its hourly cap) or,
        without one, all of them (the breaker's rate)."""
        if conversation is not None:
            row = await self.fetchone(
                "SELECT COUNT(*) AS n FROM actions AS a WHERE conversation = ? "
                f"AND created_at >= ? AND +auto_reply = 1 AND {_MAY_HAVE_GONE}",
                (conversation, to_db(since)),
            )
        else:
            row = await self.fetchone(
                "SELECT COUNT(*) AS n FROM actions AS a WHERE auto_reply = 1 AND created_at >= ? "
                f"AND {_MAY_HAVE_GONE}",
                (to_db(since),),
            )
        return int(row["n"]) if row else 0

    async def recent_reply_hashes(self, *, since: datetime) -> set[str]:
        """Hashes of the texts of auto-replies created since `since` that went out or may have:
        sent, in flight (an attempt started), failed after an attempt, or dead after an
        uncertain one (echo detection)."""
        rows = await self.fetchall(
            "SELECT DISTINCT body_hash FROM actions AS a WHERE auto_reply = 1 "
            "AND created_at >= ? AND body_hash IS NOT NULL AND (status = 'sent' "
            "OR attempt_started_at IS NOT NULL "
            f"OR (attempts > 0 AND (status = 'failed' OR {_UNCERTAIN})))",
            (to_db(since),),
        )
        return {str(r["body_hash"]) for r in rows}

    async def answered_before(
        self, phone: str, body_hash: str, *, since: datetime, exclude_event: int
    ) -> bool:
        """Whether another event from `phone` with this body hash, received since `since`, has
        an auto-reply that is not dead (an identical message is answered once)."""
        cutoff = to_db(since)
        row = await self.fetchone(
            "SELECT 1 FROM actions AS a JOIN events AS e ON e.id = a.event_id "
            "WHERE a.phone = ? AND a.created_at >= ? AND +a.auto_reply = 1 "
            f"AND {_MAY_HAVE_GONE} AND e.body_hash = ? AND e.received_at >= ? AND e.id != ? "
            "LIMIT 1",
            (phone, cutoff, body_hash, cutoff, exclude_event),
        )
        return row is not None

    # -- our numbers ---------------------------------------------------------------------------

    async def record_own_number(self, phone: str) -> None:
        """Remember a number we sent from (never auto-replied to)."""
        now = to_db(self.clock.now())

        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "INSERT INTO own_numbers (phone, first_used_at, last_used_at) VALUES (?, ?, ?) "
                "ON CONFLICT (phone) DO UPDATE SET last_used_at = excluded.last_used_at",
                (phone, now, now),
            )

        await self.write(fn)

    async def own_numbers(self) -> set[str]:
        rows = await self.fetchall("SELECT phone FROM own_numbers")
        return {str(r["phone"]) for r in rows}

    # -- the breaker ---------------------------------------------------------------------------

    async def get_guard_state(self, name: str) -> tuple[str, datetime] | None:
        """(value, updated_at) of a named guard state, or None when unset."""
        row = await self.fetchone(
            "SELECT value, updated_at FROM guard_state WHERE name = ?", (name,)
        )
        return None if row is None else (str(row["value"]), from_db_req(row["updated_at"]))

    async def set_guard_state(self, name: str, value: str) -> None:
        now = to_db(self.clock.now())

        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "INSERT INTO guard_state (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (name, value, now),
            )

        await self.write(fn)

    async def clear_guard_state(self, name: str) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(conn, "DELETE FROM guard_state WHERE name = ?", (name,))

        await self.write(fn)
