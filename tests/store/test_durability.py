"""What a commit survives: `synchronous = FULL` unless asked otherwise (docs/database.md)."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import Store
from daemon.store.db import query


async def writer_synchronous(store: Store) -> int:
    async def fn(conn: aiosqlite.Connection) -> int:
        return int((await query(conn, "PRAGMA synchronous"))[0][0])

    return await store.write(fn, transactional=False)


async def test_full_by_default(store: Store) -> None:
    assert store.synchronous == "FULL"
    assert await writer_synchronous(store) == 2  # FULL


async def test_normal_on_request(db_path: Path, clock: FakeClock) -> None:
    async with Store.open(db_path, clock=clock, synchronous="NORMAL") as store:
        assert await writer_synchronous(store) == 1  # NORMAL


async def test_anything_else_is_refused(db_path: Path, clock: FakeClock) -> None:
    with pytest.raises(StoreError, match="synchronous"):
        await Store.connect(db_path, clock=clock, synchronous="OFF")  # type: ignore[arg-type]
    assert not db_path.exists()
