"""Retention: prune finished history so the file does not grow without bound (DESIGN §5).

Only final states are pruned; pending and failed work is never dropped by age. Actions go
first because they reference events, and an event still referenced by a kept action stays.
The latest run of each job is always kept, so `daemon status` still has something to show for
a job that runs less often than the retention period.
"""

from __future__ import annotations

from datetime import datetime

import aiosqlite

from daemon.store.db import Database, execute
from daemon.store.util import to_db


class MaintenanceRepo(Database):
    async def prune(self, older_than: datetime) -> dict[str, int]:
        """Delete final-state rows older than `older_than`; returns counts per table."""
        cutoff = to_db(older_than)

        async def fn(conn: aiosqlite.Connection) -> dict[str, int]:
            actions = await execute(
                conn,
                "DELETE FROM actions WHERE status IN ('sent', 'dead') AND created_at < ?",
                (cutoff,),
            )
            events = await execute(
                conn,
                "DELETE FROM events WHERE status IN ('done', 'ignored', 'dead') "
                "AND received_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM actions WHERE actions.event_id = events.id)",
                (cutoff,),
            )
            runs = await execute(
                conn,
                "DELETE FROM sync_runs WHERE status != 'running' AND started_at < ? "
                "AND id NOT IN (SELECT MAX(id) FROM sync_runs GROUP BY job)",
                (cutoff,),
            )
            return {"actions": actions, "events": events, "sync_runs": runs}

        return await self.write(fn)
