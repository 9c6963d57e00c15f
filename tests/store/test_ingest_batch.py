"""Webhook ingest: concurrent callers share a commit *and* a statement, and still each get
their own result or error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite
import anyio
import pytest

from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import NewEvent, Store, ingest


def ev(
    key: str, clock: FakeClock, sender: str | None = None, source: Any = "netsapiens"
) -> NewEvent:
    payload = f'{{"k": "{key}"}}'
    return NewEvent(source, "message.received", key, payload, clock.now(), sender=sender)


@asynccontextmanager
async def traced(store: Store) -> Any:
    """Every statement the writer connection runs, as SQLite reports it."""
    seen: list[str] = []
    assert store._writer is not None
    await store._writer.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        await store._writer.set_trace_callback(None)


def starting(statements: list[str], prefix: str) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith(prefix)]


class Gate:
    """Holds the writer so that the next callers queue up together."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, conn: aiosqlite.Connection) -> None:
        self.entered.set()
        await self.release.wait()


def keys(n: int) -> Iterator[str]:
    return (f"k{i}" for i in range(n))


async def test_64_callers_one_statement_per_group(store: Store, clock: FakeClock) -> None:
    before = (store.stats.commits, store.stats.batches)
    async with traced(store) as statements:
        with anyio.fail_after(30):
            results = await asyncio.gather(
                *(store.insert_events([ev(k, clock, sender=f"+1555000{i % 7}")])
                  for i, k in enumerate(keys(64)))
            )  # fmt: skip
    commits = store.stats.commits - before[0]
    batches = store.stats.batches - before[1]
    assert [r[0].duplicate for r in results] == [False] * 64
    ids = [r[0].id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 64  # ids follow the queue
    inserts = starting(statements, "INSERT INTO EVENTS")
    assert 1 <= commits <= 4, commits
    assert len(inserts) == batches == commits  # one INSERT per group, whatever its size
    assert not starting(statements, "SAVEPOINT")  # nor a savepoint per caller
    assert len(starting(statements, "COMMIT")) == commits
    assert store.stats.largest_batch >= 16


async def test_duplicates_within_and_across_callers(store: Store, clock: FakeClock) -> None:
    [first] = await store.insert_events([ev("old", clock)])
    gate = Gate()
    held = asyncio.ensure_future(store.write(gate))
    await asyncio.wait_for(gate.entered.wait(), 10)
    calls = [
        asyncio.ensure_future(store.insert_events([ev("a", clock), ev("a", clock)])),
        asyncio.ensure_future(store.insert_events([ev("b", clock), ev("old", clock)])),
        asyncio.ensure_future(store.insert_events([ev("a", clock), ev("b", clock)])),
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    batches = store.stats.batches
    gate.release.set()
    with anyio.fail_after(30):
        r1, r2, r3 = await asyncio.gather(*calls)
        await held
    assert store.stats.batches == batches + 1  # the three callers shared one call
    assert [(e.dedupe_key, e.duplicate) for e in r1] == [("a", False), ("a", True)]
    assert [(e.dedupe_key, e.duplicate) for e in r2] == [("b", False), ("old", True)]
    assert [(e.dedupe_key, e.duplicate) for e in r3] == [("a", True), ("b", True)]
    assert r1[0].id == r1[1].id == r3[0].id and r2[0].id == r3[1].id
    assert r2[1].id == first.id
    assert r1[0].id < r2[0].id  # arrival order
    assert (await store.count_events_by_status())["pending"] == 3


async def test_a_bad_caller_fails_alone(store: Store, clock: FakeClock) -> None:
    """A row SQLite refuses fails the batch statement; the writer then tries each caller alone,
    so only the bad one gets the error and the others' events are committed."""
    gate = Gate()
    held = asyncio.ensure_future(store.write(gate))
    await asyncio.wait_for(gate.entered.wait(), 10)
    calls = [
        asyncio.ensure_future(
            store.insert_events([ev(f"g{i}", clock, source=None if i == 3 else "ns")])
        )
        for i in range(8)
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    gate.release.set()
    with anyio.fail_after(30):
        results = await asyncio.gather(*calls, return_exceptions=True)
        await held
    assert isinstance(results[3], StoreError) and "NOT NULL" in str(results[3])
    assert all(isinstance(r, list) and not r[0].duplicate for i, r in enumerate(results) if i != 3)
    assert (await store.count_events_by_status())["pending"] == 7
    assert store.stats.failed_jobs == 1
    # A caller alone in its group fails the same way and leaves the writer healthy.
    with pytest.raises(StoreError, match="NOT NULL"):
        await store.insert_events([ev("alone", clock, source=None)])
    assert store.healthy
    assert [r.duplicate for r in await store.insert_events([ev("after", clock)])] == [False]


async def test_other_group_members_keep_their_savepoints(store: Store, clock: FakeClock) -> None:
    """A group that mixes ingest with another groupable write: each segment is isolated."""
    gate = Gate()
    held = asyncio.ensure_future(store.write(gate))
    await asyncio.wait_for(gate.entered.wait(), 10)

    async def boom(conn: aiosqlite.Connection) -> None:
        await conn.execute("UPDATE events SET status = 'dead'")
        raise RuntimeError("boom")

    calls = [
        asyncio.ensure_future(store.insert_events([ev("x1", clock)])),
        asyncio.ensure_future(store.insert_events([ev("x2", clock)])),
        asyncio.ensure_future(store.write(boom, groupable=True)),
        asyncio.ensure_future(store.insert_events([ev("x3", clock)])),
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    async with traced(store) as statements:
        gate.release.set()
        with anyio.fail_after(30):
            results = await asyncio.gather(*calls, return_exceptions=True)
            await held
    assert isinstance(results[2], RuntimeError)
    assert len(starting(statements, "INSERT INTO EVENTS")) == 2  # [x1, x2] and [x3]
    assert (await store.count_events_by_status())["pending"] == 3  # boom was rolled back


async def test_large_payloads_are_split_across_statements(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of big bodies is written in parts of about STATEMENT_BYTES each: memory stays
    bounded and the results are the same."""
    monkeypatch.setattr(ingest, "STATEMENT_BYTES", 1000)
    big = "x" * 400

    def event(key: str) -> NewEvent:
        return NewEvent("ns", "message.received", key, json.dumps({"b": big}), clock.now())

    gate = Gate()
    held = asyncio.ensure_future(store.write(gate))
    await asyncio.wait_for(gate.entered.wait(), 10)
    calls = [
        asyncio.ensure_future(store.insert_events([event(f"b{i}"), event(f"b{i + 1}")]))
        for i in range(0, 10, 2)
    ] + [asyncio.ensure_future(store.insert_events([event("b3"), event("fresh")]))]
    for _ in range(5):
        await asyncio.sleep(0)
    async with traced(store) as statements:
        gate.release.set()
        with anyio.fail_after(30):
            results = await asyncio.gather(*calls)
            await held
    # Two 400-byte bodies a part, six parts; the part holding a stored key is tried as a plain
    # INSERT first, which the UNIQUE index refuses (nothing written), then with RETURNING.
    inserts = starting(statements, "INSERT INTO EVENTS")
    assert len(inserts) == 7
    assert len([s for s in inserts if "RETURNING" in s.upper()]) == 1
    flat = [e for r in results for e in r]
    assert [e.duplicate for e in flat] == [False] * 10 + [True, False]
    assert flat[10].id == flat[3].id
    assert [e.id for e in flat[:10]] == sorted(e.id for e in flat[:10])


async def test_new_events_go_in_without_returning(store: Store, clock: FakeClock) -> None:
    """The common case is a plain INSERT (one step, so one GIL round trip on the writer
    thread, not one per row); a group holding a stored key falls back to RETURNING."""
    async with traced(store) as statements:
        fresh = await asyncio.gather(*(store.insert_events([ev(k, clock)]) for k in keys(8)))
    inserts = starting(statements, "INSERT INTO EVENTS")
    assert inserts and not [s for s in inserts if "RETURNING" in s.upper()]
    async with traced(store) as statements:
        again = await store.insert_events([ev("k3", clock), ev("new", clock)])
    assert [s for s in starting(statements, "INSERT INTO EVENTS") if "RETURNING" in s.upper()]
    assert (again[0].id, again[0].duplicate) == (fresh[3][0].id, True)
    assert again[1].duplicate is False
    assert not starting(statements, "SELECT COUNT")  # no question asked before the INSERT
    assert store.stats.rollbacks == 0  # the refused plain INSERT undid itself, not the group


async def test_a_refused_plain_insert_leaves_the_group_intact(
    store: Store, clock: FakeClock
) -> None:
    """A group of new keys and one stored key: the plain INSERT is refused by the UNIQUE
    index and undoes only itself (no rollback of the group); every new row is then written
    once, in order, and the stored one is reported as a duplicate."""
    (old,) = await store.insert_events([ev("old", clock)])
    gate = Gate()
    held = asyncio.ensure_future(store.write(gate))
    await asyncio.wait_for(gate.entered.wait(), 10)
    calls = [
        asyncio.ensure_future(store.insert_events([ev("a", clock), ev("old", clock)])),
        asyncio.ensure_future(store.insert_events([ev("b", clock)])),
    ]
    for _ in range(5):
        await asyncio.sleep(0)
    rollbacks = store.stats.rollbacks
    async with traced(store) as statements:
        gate.release.set()
        with anyio.fail_after(30):
            (first, second) = await asyncio.gather(*calls)
            await held
    inserts = starting(statements, "INSERT INTO EVENTS")
    assert ["RETURNING" in s.upper() for s in inserts] == [False, True]
    assert store.stats.rollbacks == rollbacks
    assert [(e.dedupe_key, e.duplicate) for e in first + second] == [
        ("a", False), ("old", True), ("b", False)
    ]  # fmt: skip
    assert first[1].id == old.id and first[0].id < second[0].id
    rows = await store.fetchall("SELECT dedupe_key FROM events ORDER BY id")
    assert [r[0] for r in rows] == ["old", "a", "b"]
