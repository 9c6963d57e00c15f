"""WAL checkpoints off the writer's path.

SQLite's automatic checkpoint runs inside the COMMIT that crosses `wal_autocheckpoint` pages:
that commit copies the WAL into the database file and syncs it before it returns, so every few
thousand webhook events one group of callers waited tens to hundreds of milliseconds for it
(bench/store_ingest.py: it was the whole of the p99 and the max). Instead a third connection,
on its own thread, runs `wal_checkpoint(PASSIVE)` in the background every few commits:
PASSIVE takes no lock the writer needs, so commits go on while it copies, and once it has
caught up the writer starts the WAL from the beginning again, keeping the file small.

The writer connection keeps a high `wal_autocheckpoint` (`SAFETY_PAGES`) as a safety net, for
when the background checkpoints cannot keep up or fail. The scheduled upkeep checkpoint
(`Database.checkpoint`, TRUNCATE) runs on this connection too, so the two never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import aiosqlite
import structlog

log = structlog.get_logger(__name__)

EVERY_COMMITS = 8  # small and often: 8 beat 32 and 256 on p99 in bench/store_ingest.py
SAFETY_PAGES = 10_000  # the writer checkpoints itself past ~40 MB of WAL


class Checkpointer:
    """Owns the checkpoint connection's background task; the connection's owner closes it."""

    def __init__(self, conn: aiosqlite.Connection, *, every: int = EVERY_COMMITS) -> None:
        self.conn = conn
        self.every = every
        self.runs = 0  # background checkpoints done, for tests and /metrics
        self.ran = asyncio.Event()  # set after each background checkpoint (tests clear it)
        self._commits = 0
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="store-checkpointer")

    def committed(self) -> None:
        """Called by the writer after each commit; cheap (no I/O)."""
        self._commits += 1
        if self._commits >= self.every:
            self._commits = 0
            self._wanted.set()

    async def run(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """One checkpoint now: SQLite's (busy, WAL frames, frames checkpointed)."""
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")
        # One hop (execute + fetch in the connection's thread), so a background run and an
        # upkeep run cannot interleave their steps on this connection.
        rows = list(await self.conn.execute_fetchall(f"PRAGMA wal_checkpoint({mode})"))
        busy, frames, done = rows[0]
        return int(busy), int(frames), int(done)

    async def _loop(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.run("PASSIVE")
            except sqlite3.Error as exc:  # the writer's safety net still checkpoints
                log.warning("store.checkpoint_failed", error=repr(exc))
            except ValueError as exc:  # aiosqlite: the connection is closed
                log.warning("store.checkpoint_failed", error=repr(exc))
                return
            self.runs += 1
            self.ran.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
