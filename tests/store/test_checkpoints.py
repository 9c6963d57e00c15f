"""WAL checkpoints run beside the writer, not inside its commits (daemon/store/checkpoints.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiosqlite

from daemon.clock import FakeClock
from daemon.store import NewEvent, Store
from daemon.store.checkpoints import EVERY_COMMITS, SAFETY_PAGES
from daemon.store.db import query


async def test_background_checkpoints_follow_commits(store: Store, clock: FakeClock) -> None:
    checkpoints = store._checkpoints
    assert checkpoints is not None
    checkpoints.ran.clear()
    for i in range(EVERY_COMMITS):
        body = '{"text": "' + "x" * 2000 + '"}'
        await store.insert_events([NewEvent("ns", "message.received", f"k{i}", body, clock.now())])
    await asyncio.wait_for(checkpoints.ran.wait(), timeout=10)
    assert checkpoints.runs >= 1
    busy, frames, done = await checkpoints.run("PASSIVE")
    assert busy == 0 and frames > 0 and done == frames  # caught up with the writer

    async def autocheckpoint(conn: aiosqlite.Connection) -> int:
        return int((await query(conn, "PRAGMA wal_autocheckpoint"))[0][0])

    # The writer checkpoints itself only past the safety net.
    assert await store.write(autocheckpoint, transactional=False) == SAFETY_PAGES


async def test_upkeep_checkpoint_truncates_the_wal(
    store: Store, clock: FakeClock, db_path: Path
) -> None:
    await store.insert_events([NewEvent("ns", "m", "k", "{}", clock.now())])
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size > 0
    busy, _, _ = await store.checkpoint()
    assert busy == 0 and os.path.getsize(wal) == 0
    assert len(await store.list_events()) == 1


async def test_read_only_store_has_no_checkpointer(db_path: Path, clock: FakeClock) -> None:
    async with Store.open(db_path, clock=clock):
        pass
    async with Store.open(db_path, clock=clock, read_only=True) as ro:
        assert ro._checkpoints is None
