"""Upkeep in short transactions: a write queued behind a long prune or a contacts rebuild waits
for one chunk, not for the whole of it; and neither changes what it deletes or keeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import pytest

from daemon.clock import FakeClock
from daemon.store import ContactEntry, NewAction, NewEvent, Store, maintenance, to_db
from daemon.store.contacts import REBUILD_CHUNK

DAY = timedelta(days=1)


async def bulk_events(store: Store, n: int, status: str, when: str, prefix: str = "old") -> None:
    async def fn(conn: aiosqlite.Connection) -> None:
        await conn.executemany(
            "INSERT INTO events (source, kind, dedupe_key, received_at, payload, status) "
            "VALUES ('ns', 'message.received', ?, ?, '{}', ?)",
            ((f"{prefix}{i}", when, status) for i in range(n)),
        )

    await store.write(fn)


async def noop(conn: aiosqlite.Connection) -> None:
    await conn.execute("SELECT 1")


@pytest.mark.timeout(120)
async def test_a_write_queued_during_a_long_prune_does_not_wait_for_it(
    store: Store, clock: FakeClock
) -> None:
    await bulk_events(store, 50_000, "done", to_db(clock.now()))
    clock.advance((100 * DAY).total_seconds())
    commits = store.stats.commits
    prune = asyncio.ensure_future(store.prune(clock.now() - 90 * DAY))
    await asyncio.sleep(0)  # the prune queues its first chunk
    with anyio.fail_after(60):
        [new] = await store.insert_events(
            [NewEvent("ns", "message.received", "new", "{}", clock.now())]
        )
        claimed = await store.claim_events(1, clock.now(), lease=timedelta(minutes=1))
        assert not prune.done()  # both writes went through while the prune had more to do
        counts = await prune
    assert [e.id for e in claimed] == [new.id]
    assert counts == {"actions": 0, "events": 50_000, "sync_runs": 0}
    assert store.stats.commits - commits >= 50_000 // maintenance.PRUNE_CHUNK
    assert await store.get_event(new.id) is not None


async def test_prune_in_small_chunks_deletes_exactly_the_expired(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "PRUNE_CHUNK", 7)
    old = to_db(clock.now())
    await bulk_events(store, 20, "done", old, "done")
    await bulk_events(store, 5, "failed", old, "failed")  # unfinished: never pruned by age
    await bulk_events(store, 5, "dead", old, "dead")
    await bulk_events(store, 5, "ignored", old, "ignored")
    # A dead event whose action is still failing stays, and so does its action.
    [kept_event] = await store.insert_events([NewEvent("ns", "m", "kept", "{}", clock.now())])
    await store.set_event_status(kept_event.id, "dead")
    [failing] = await store.record_plan(kept_event.id, "{}", [_action("kept:r")])
    await store.finish_action(failing.id, "failed")
    # A done event with a sent action: both go.
    [gone_event] = await store.insert_events([NewEvent("ns", "m", "gone", "{}", clock.now())])
    await store.set_event_status(gone_event.id, "done")
    [sent] = await store.record_plan(gone_event.id, "{}", [_action("gone:r")])
    await store.finish_action(sent.id, "sent")
    runs = []
    for job in ("a", "a", "a", "b"):
        runs.append(await store.start_run(job))
        await store.finish_run(runs[-1], "ok")
    running = await store.start_run("c")
    clock.advance((100 * DAY).total_seconds())
    recent = to_db(clock.now())
    await bulk_events(store, 10, "done", recent, "recent")

    await bulk_events(store, 200, "done", recent, "later")  # never read: the walk stops
    commits = store.stats.commits
    counts = await store.prune(clock.now() - 90 * DAY)
    assert counts == {"actions": 1, "events": 31, "sync_runs": 2}
    # One window of actions, 37 old events in windows of 7 (the 6th reaches the recent ones),
    # one of runs: the 210 recent events cost part of one window, not thirty.
    assert store.stats.commits - commits == 1 + 6 + 1
    left = {r["dedupe_key"][:4] for r in await store.fetchall("SELECT dedupe_key FROM events")}
    assert left == {"fail", "kept", "rece", "late"}
    assert await store.get_action(failing.id) is not None
    assert await store.get_action(sent.id) is None
    remaining = sorted(r.id for r in await store.last_runs())
    assert remaining == [runs[2], runs[3], running]  # each job's latest, and the running one
    assert await store.prune(clock.now() - 90 * DAY) == {"actions": 0, "events": 0,
                                                         "sync_runs": 0}  # fmt: skip


def _action(key: str) -> NewAction:
    return NewAction("r", "sms_reply", key, "{}")


def phone(i: int) -> str:
    return f"+1555{i:07d}"


async def test_contacts_rebuild_in_chunks_never_hides_an_entry(
    store: Store, clock: FakeClock
) -> None:
    await store.ensure_record_table("clients")
    await store.upsert_page(
        "clients", [(str(i), {"n": i}) for i in range(3000)], run_started_at=clock.now()
    )
    assert (
        await store.replace_contacts(
            "clients", [ContactEntry(phone(i), str(i), f"old {i}") for i in range(2000)]
        )
        == 2000
    )
    rebuild = asyncio.ensure_future(
        store.replace_contacts(
            "clients", [ContactEntry(phone(i), str(i), f"new {i}") for i in range(1000, 3000)]
        )
    )
    turns = 0
    with anyio.fail_after(60):
        while not rebuild.done():
            await store.write(noop)  # a dispatcher write gets in between chunks
            turns += 1
            found = await store.lookup_contact(phone(1500))  # in the old and the new index
            assert found is not None and found.record_id == "1500"
        kept = await rebuild
    assert turns >= 3
    assert kept == 2000
    assert await store.lookup_contact(phone(500)) is None
    found = await store.lookup_contact(phone(2500))
    assert found is not None and found.name == "new 2500"
    renamed = await store.lookup_contact(phone(1500))
    assert renamed is not None and renamed.name == "new 1500"


async def test_contacts_rebuild_removes_what_an_interrupted_one_left(
    store: Store, clock: FakeClock
) -> None:
    await store.ensure_record_table("clients")
    await store.upsert_page("clients", [("1", {}), ("2", {})], run_started_at=clock.now())
    await store.replace_contacts("clients", [ContactEntry(phone(1), "1")])

    async def leftover(conn: aiosqlite.Connection) -> None:  # a rebuild that died half-way
        await conn.execute(
            "INSERT INTO contacts (phone, table_name, record_id, gen) "
            "VALUES (?, 'clients', '2', 7)",
            (phone(2),),
        )

    await store.write(leftover)
    assert await store.replace_contacts("clients", [ContactEntry(phone(1), "1", "Ann")]) == 1
    assert await store.lookup_contact(phone(2)) is None
    assert await store.replace_contacts("clients", []) == 0
    assert await store.count_contacts() == 0


async def test_overlapping_rebuilds_of_one_table_keep_every_contact(tmp_path: Path) -> None:
    """Found by probing: an older rebuild's later chunks set `gen` back to its own number on
    rows a newer rebuild had just written, and the newer one's delete of older generations then
    removed them (2,500 of 3,000 live entries, until the next rebuild). Two stores on one file,
    interleaved as two processes can be."""
    n = 3000
    t0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    clock = FakeClock(t0)
    entries = [ContactEntry(phone(i), str(i), f"n{i}") for i in range(n)]
    db = tmp_path / "state.db"
    # two Store objects on one file: the service and `run-once`, as two processes would be
    async with Store.open(db, clock=clock) as service, Store.open(db, clock=clock) as once:
        await service.ensure_record_table("clients")
        await service.upsert_page(
            "clients", [(str(i), {"phone": phone(i)}) for i in range(n)], run_started_at=t0
        )
        await service.replace_contacts("clients", entries)
        assert await service.count_contacts() == n

        # Interleave as two processes sharing the file may: A takes generation g and writes
        # its first chunk; B takes g+1 and writes all its chunks; A writes its second chunk
        # (rows B has just written); B deletes the generations older than g+1.
        a_second, a_go, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        steps = {"a": 0, "b": 0}
        b_delete = 2 + -(-n // REBUILD_CHUNK)  # B's next_gen, its chunks, then its delete

        def gated(store: Store, who: str) -> None:
            real = store.write

            async def write(fn: Any, **kw: Any) -> Any:
                steps[who] += 1
                if who == "a" and steps["a"] == 3:  # A's second chunk waits for B's upserts
                    a_second.set()
                    await a_go.wait()
                if who == "b" and steps["b"] == b_delete:  # B's delete waits for A's chunk
                    a_go.set()
                    await a_done.wait()
                result = await real(fn, **kw)
                if who == "a" and steps["a"] == 3:
                    a_done.set()
                return result

            store.write = write  # type: ignore[method-assign]

        gated(service, "a")
        gated(once, "b")
        a = asyncio.ensure_future(service.replace_contacts("clients", entries))
        await a_second.wait()
        await once.replace_contacts("clients", entries)
        await a
        missing = [i for i in range(n) if await service.lookup_contact(phone(i)) is None]
        assert missing == []
