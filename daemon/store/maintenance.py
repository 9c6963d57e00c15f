"""Retention: prune finished history so the file does not grow without bound (DESIGN §5).

Only final states are pruned; pending and failed work is never dropped by age. Actions go
first because they reference events, and an event still referenced by a kept action stays.
The latest run of each job is always kept, so `daemon status` still has something to show for
a job that runs less often than the retention period.

In chunks: a prune after a long downtime can have hundreds of thousands of rows to delete, and
the dispatcher's writes must not wait for all of it. Each table is walked in id order (ids
follow time: events arrive, actions and runs are created, in id order), `PRUNE_CHUNK` rows per
transaction: a window of rows is examined, the expired ones in it deleted, and the next window
queued behind whatever other writes arrived meanwhile. The walk ends with the window that
reaches a row newer than the cutoff. Each transaction touches at most `PRUNE_CHUNK` rows,
however large the table or the backlog. (A row whose time is out of step with its id, after
the wall clock was set back, is pruned by a later run, once the walk passes it.)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import aiosqlite

from daemon.store.db import Database, execute, query
from daemon.store.util import to_db

PRUNE_CHUNK = 500  # rows examined per transaction

_ChunkFn = Callable[[aiosqlite.Connection], Awaitable[tuple[int, int, bool]]]


def _chunk(
    table: str, time_col: str, condition: str, params: Sequence[Any], after: int, cutoff: str
) -> _ChunkFn:
    """One transaction: the next window of ids after `after`; returns (deleted, last id seen,
    finished)."""

    async def fn(conn: aiosqlite.Connection) -> tuple[int, int, bool]:
        window = await query(
            conn,
            f"SELECT id, {time_col} FROM {table} WHERE id > ? ORDER BY id LIMIT ?",
            (after, PRUNE_CHUNK),
        )
        if not window:
            return 0, after, True
        last = int(window[-1][0])
        deleted = await execute(
            conn,
            f"DELETE FROM {table} WHERE id > ? AND id <= ? AND {time_col} < ? AND {condition}",
            (after, last, cutoff, *params),
        )
        # Ids follow time: once the walk meets a row newer than the cutoff, the rest are too.
        finished = len(window) < PRUNE_CHUNK or max(str(r[1]) for r in window) >= cutoff
        return deleted, last, finished

    return fn


class MaintenanceRepo(Database):
    async def prune(self, older_than: datetime) -> dict[str, int]:
        """Delete final-state rows older than `older_than`, in short transactions; returns
        counts per table."""
        cutoff = to_db(older_than)
        actions = await self._prune_table(
            "actions", "created_at", "status IN ('sent', 'dead')", (), cutoff
        )
        events = await self._prune_table(
            "events",
            "received_at",
            "status IN ('done', 'ignored', 'dead') AND NOT EXISTS "
            "(SELECT 1 FROM actions WHERE actions.event_id = events.id)",
            (),
            cutoff,
        )
        # Each job's latest run, as of now; runs started later are newer than the cutoff.
        latest = [int(r[0]) for r in await self.fetchall(
            "SELECT MAX(id) FROM sync_runs GROUP BY job"
        )]  # fmt: skip
        runs = await self._prune_table(
            "sync_runs",
            "started_at",
            "status != 'running' AND id NOT IN (SELECT value FROM json_each(?))",
            (json.dumps(latest),),
            cutoff,
        )
        return {"actions": actions, "events": events, "sync_runs": runs}

    async def _prune_table(
        self, table: str, time_col: str, condition: str, params: Sequence[Any], cutoff: str
    ) -> int:
        total, after, finished = 0, 0, False
        while not finished:
            deleted, after, finished = await self.write(
                _chunk(table, time_col, condition, params, after, cutoff)
            )
            total += deleted
        return total
