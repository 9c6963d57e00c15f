"""`subscriptions`: the NetSapiens event subscriptions the keeper created or adopted.

Stored so a restart knows what exists and when it expires without asking NetSapiens first, and
so `daemon status` can show expiry. The post URL is stored masked: its last path segment is the
webhook secret (`<public_url>/<model>/<secret>`), which the database never holds; nothing decides
anything from the stored URL (the keeper compares the PBX's own list with the URL it builds).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import aiosqlite

from daemon.logs import mask_webhook_url
from daemon.store.db import Database, execute
from daemon.store.util import from_db, from_db_req, to_db


@dataclass(frozen=True)
class SubscriptionRow:
    id: str
    model: str
    post_url: str
    expires_at: datetime | None
    status: str
    updated_at: datetime


class SubscriptionsRepo(Database):
    async def upsert_subscription(
        self,
        subscription_id: str,
        model: str,
        post_url: str,
        expires_at: datetime | None,
        status: str,
    ) -> None:
        params = (
            subscription_id,
            model,
            mask_webhook_url(post_url),
            None if expires_at is None else to_db(expires_at),
            status,
        )

        async def fn(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "INSERT INTO subscriptions (id, model, post_url, expires_at, status, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "model = excluded.model, post_url = excluded.post_url, "
                "expires_at = excluded.expires_at, status = excluded.status, "
                "updated_at = excluded.updated_at",
                (*params, to_db(self.clock.now())),
            )

        await self.write(fn)

    async def list_subscriptions(self) -> list[SubscriptionRow]:
        rows = await self.fetchall(
            "SELECT id, model, post_url, expires_at, status, updated_at FROM subscriptions "
            "ORDER BY model, id"
        )
        return [
            SubscriptionRow(
                id=r["id"],
                model=r["model"],
                post_url=r["post_url"],
                expires_at=from_db(r["expires_at"]),
                status=r["status"],
                updated_at=from_db_req(r["updated_at"]),
            )
            for r in rows
        ]

    async def delete_subscription(self, subscription_id: str) -> bool:
        async def fn(conn: aiosqlite.Connection) -> int:
            return await execute(conn, "DELETE FROM subscriptions WHERE id = ?", (subscription_id,))

        return bool(await self.write(fn))
