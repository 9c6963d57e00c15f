"""The single writer: nothing lost under concurrency, group commit, failure isolation."""

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import NewEvent, Store


def _event(i: int, clock: FakeClock, key: str | None = None) -> NewEvent:
    return NewEvent(
        source="netsapiens",
        kind="message.received",
        dedupe_key=key or f"k{i}",
        payload=f'{{"i": {i}}}',
        received_at=clock.now(),
    )


async def test_200_concurrent_writers_lose_nothing(store: Store, clock: FakeClock) -> None:
    await store.ensure_record_table("t")
    t = clock.now()

    async def events(i: int) -> None:
        await store.insert_events([_event(i, clock)])

    async def page(i: int) -> None:
        await store.upsert_page("t", [(f"r{i}", {"i": i})], run_started_at=t)

    await asyncio.wait_for(
        asyncio.gather(*(events(i) if i % 2 else page(i) for i in range(200))), timeout=30
    )
    assert (await store.count_events_by_status())["pending"] == 100
    assert len([x async for x in store.iter_records("t")]) == 100


async def test_group_commit_shares_transactions(store: Store, clock: FakeClock) -> None:
    commits_before = store.stats.commits
    results = await asyncio.wait_for(
        asyncio.gather(*(store.insert_events([_event(i, clock)]) for i in range(100))), timeout=30
    )
    assert [r[0].duplicate for r in results] == [False] * 100
    assert len({r[0].id for r in results}) == 100
    commits = store.stats.commits - commits_before
    assert 1 <= commits < 100
    assert store.stats.largest_group > 1
    # Redeliveries (including two copies inside one request) are reported as duplicates.
    again = await asyncio.gather(
        store.insert_events([_event(0, clock), _event(1000, clock)]),
        store.insert_events([_event(1, clock), _event(1001, clock, key="k1000")]),
    )
    assert [e.duplicate for e in again[0]] == [True, False]
    assert [e.duplicate for e in again[1]] == [True, True]
    assert again[0][0].id == results[0][0].id
    assert again[1][1].id == again[0][1].id


async def test_failing_job_does_not_poison_its_group(store: Store, clock: FakeClock) -> None:
    async def boom(conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "INSERT INTO events (source, kind, dedupe_key, received_at, payload) "
            "VALUES ('x', 'y', 'poison', '2025-01-01T00:00:00.000000Z', '{}')"
        )
        raise RuntimeError("boom")

    async def bad_sql(conn: aiosqlite.Connection) -> None:
        await conn.execute("INSERT INTO nowhere VALUES (1)")

    calls = [store.insert_events([_event(i, clock)]) for i in range(20)]
    calls.insert(5, store.write(boom, groupable=True))
    calls.insert(12, store.write(bad_sql, groupable=True))
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=30)
    assert isinstance(results[5], RuntimeError)
    assert isinstance(results[12], StoreError)
    assert isinstance(results[12].__cause__, sqlite3.Error)
    ok = [r for i, r in enumerate(results) if i not in (5, 12)]
    assert all(isinstance(r, list) and not r[0].duplicate for r in ok)
    counts = await store.count_events_by_status()
    assert counts["pending"] == 20  # the poison row was rolled back with its job
    assert store.stats.largest_group > 2
    assert store.stats.failed_jobs == 2


async def test_single_failing_write_rolls_back(store: Store) -> None:
    async def half(conn: aiosqlite.Connection) -> None:
        await conn.execute("INSERT INTO sync_runs (job, started_at) VALUES ('j', 'x')")
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await store.write(half)
    assert await store.last_runs() == []
    # The writer is still healthy.
    assert await store.start_run("j") == 1


async def test_cancelled_caller_still_gets_its_write(store: Store) -> None:
    task = asyncio.ensure_future(store.start_run("j"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.checkpoint()  # a later write is a barrier: the earlier one has run
    assert [r.job for r in await store.last_runs()] == ["j"]


async def test_close_drains_queue(db_path: Path, clock: FakeClock) -> None:
    store = await Store.connect(db_path, clock=clock)
    pending = [asyncio.ensure_future(store.start_run(f"j{i}")) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()
    assert len(await asyncio.gather(*pending)) == 50
    async with Store.open(db_path, clock=clock) as again:
        assert len(await again.last_runs()) == 50


async def test_maintenance(store: Store, clock: FakeClock) -> None:
    await store.insert_events([_event(1, clock)])
    busy, _, _ = await store.checkpoint()
    assert busy == 0
    await store.optimize()
    assert store.stats.commits >= 1
