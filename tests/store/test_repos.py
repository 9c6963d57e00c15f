"""Runs, sync state, contacts, inbox, actions, subscriptions, retention."""

import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import ContactEntry, NewEvent, Store


async def test_runs_lifecycle(store: Store, clock: FakeClock) -> None:
    a1 = await store.start_run("a")
    clock.advance(5)
    await store.finish_run(a1, "ok", pages=2, fetched=10, inserted=3, updated=1, unchanged=6)
    a2 = await store.start_run("a")
    b1 = await store.start_run("b")
    await store.update_run_progress(b1, pages=1, fetched=5, inserted=5, updated=0, unchanged=0)
    latest = {r.job: r for r in await store.last_runs()}
    assert latest["a"].id == a2 and latest["a"].status == "running"
    assert latest["b"].fetched == 5
    finished = {r.job: r for r in await store.last_runs(finished_only=True)}
    assert finished["a"].id == a1 and finished["a"].duration == 5.0
    assert finished["a"].inserted == 3 and "b" not in finished
    with pytest.raises(StoreError):
        await store.finish_run(a2, "running")


async def test_mark_stale_runs_failed(store: Store, clock: FakeClock, db_path: Path) -> None:
    """Only runs whose process is gone are marked: this process's own run (as a live service's
    would be) and a run on another host are left alone."""
    ok = await store.start_run("a")
    await store.finish_run(ok, "ok")
    live = await store.start_run("live")
    dead = await store.start_run("dead")
    legacy = await store.start_run("legacy")
    elsewhere = await store.start_run("elsewhere")
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone_pid = int(finished.stdout)
    host = socket.gethostname()

    async def set_owner(run_id: int, owner: str | None) -> None:
        async def fn(conn: Any) -> None:
            await conn.execute("UPDATE sync_runs SET owner = ? WHERE id = ?", (owner, run_id))

        await store.write(fn)

    await set_owner(dead, f"{host}:{gone_pid}:1")
    await set_owner(legacy, None)
    await set_owner(elsewhere, f"not-{host}:1:1")
    assert await store.mark_stale_runs_failed() == 2
    for run_id in (dead, legacy):
        row = await store.get_run(run_id)
        assert row is not None and row.status == "failed" and row.error == "interrupted"
        assert row.finished_at == clock.now()
    for run_id in (live, elsewhere):
        assert (await store.get_run(run_id)).status == "running"  # type: ignore[union-attr]
    assert (await store.get_run(ok)).status == "ok"  # type: ignore[union-attr]
    assert await store.mark_stale_runs_failed() == 0


async def test_a_job_running_in_another_live_process_does_not_start_twice(
    store: Store, clock: FakeClock
) -> None:
    """Found by probing: the service and `run-once` walked one job at once, both runs counted as
    complete, and together they tombstoned a record that still existed upstream."""
    from daemon.errors import JobBusy
    from daemon.store.runs import _start_ticks

    host = socket.gethostname()
    other = f"{host}:1:{_start_ticks(1)}"  # init: alive, and not us

    async def owned_by(run_id: int, owner: str) -> None:
        async def fn(conn: Any) -> None:
            await conn.execute("UPDATE sync_runs SET owner = ? WHERE id = ?", (owner, run_id))

        await store.write(fn)

    theirs = await store.start_run("clients")
    await owned_by(theirs, other)
    with pytest.raises(JobBusy, match=r"job 'clients' is running in another process"):
        await store.start_run("clients", max_duration=3600)
    assert len([r for r in await store.last_runs() if r.job == "clients"]) == 1
    ours = await store.start_run("other-job")  # other jobs are not held up
    await store.finish_run(ours, "ok")
    # A run older than max_duration (plus a minute) is not in progress, whoever wrote it:
    # every run ends by then, and an owner on another host cannot be asked.
    clock.advance(3600 + 61)
    assert await store.start_run("clients", max_duration=3600) > theirs
    elsewhere = await store.start_run("remote")
    await owned_by(elsewhere, f"not-{host}:1:1")
    with pytest.raises(JobBusy):
        await store.start_run("remote", max_duration=60)
    clock.advance(121)
    await store.start_run("remote", max_duration=60)
    # This process's own running row (the scheduler never overlaps a job with itself) and a
    # dead process's do not hold a job.
    await store.start_run("mine")
    await store.start_run("mine")


async def test_a_run_cut_short_does_not_count_for_the_schedule(
    store: Store, clock: FakeClock
) -> None:
    """Found by probing: the scheduler counted the next tick from the last run whatever its
    end, so a daily job cancelled by a deploy's stop waited a whole day to run again."""
    done = await store.start_run("daily-ok")
    await store.finish_run(done, "ok")
    failed = await store.start_run("daily-failed")
    await store.finish_run(failed, "failed", error="HTTP 500")
    cancelled = await store.start_run("daily-cancelled")
    await store.finish_run(cancelled, "cancelled", error="cancelled")
    crashed = await store.start_run("daily-crashed")

    async def fn(conn: Any) -> None:  # what mark_stale_runs_failed leaves after a crash
        await conn.execute(
            "UPDATE sync_runs SET status = 'failed', error = 'interrupted' WHERE id = ?",
            (crashed,),
        )

    await store.write(fn)
    assert await store.schedule_seeds() == {
        "daily-ok": clock.now(),
        "daily-failed": clock.now(),  # a real failure waits its interval, as before
        "daily-cancelled": None,
        "daily-crashed": None,
    }


async def test_sync_state(store: Store, clock: FakeClock) -> None:
    assert await store.get_sync_state("j") is None
    await store.set_sync_state("j", cursor="c1")
    clock.advance(10)
    await store.set_sync_state("j", last_success_at=clock.now())
    state = await store.get_sync_state("j")
    assert state is not None and state.cursor == "c1"
    assert state.last_success_at == clock.now() and state.last_run_at == clock.now()
    await store.set_sync_state("j", cursor=None)
    state = await store.get_sync_state("j")
    assert state is not None and state.cursor is None and state.last_success_at is not None


async def test_contacts(store: Store, clock: FakeClock) -> None:
    t = clock.now()
    await store.ensure_record_table("clients")
    await store.ensure_record_table("halo_users")
    await store.upsert_page(
        "clients", [("7", {"first_name": "Ann"}), ("8", {"first_name": "Bo"})], run_started_at=t
    )
    await store.upsert_page("halo_users", [("u1", {"name": "Ann H"})], run_started_at=t)
    n = await store.replace_contacts(
        "clients",
        [
            ContactEntry("+15551230000", "7", "Ann"),
            ContactEntry("+15551230000", "7", "Ann"),  # duplicates collapse
            ContactEntry("+15559990000", "8", "Bo"),
        ],
    )
    assert n == 2
    await store.replace_contacts("halo_users", [ContactEntry("+15551230000", "u1", "Ann H")])
    found = await store.lookup_contact("+15551230000")
    assert found is not None
    assert (found.table, found.record_id, found.name) == ("clients", "7", "Ann")
    assert found.data == {"first_name": "Ann"}
    assert [c.table for c in await store.contacts_for("+15551230000")] == ["clients", "halo_users"]
    # Rebuild replaces the table's entries only.
    await store.replace_contacts("clients", [ContactEntry("+15559990000", "8", "Bo")])
    assert [c.table for c in await store.contacts_for("+15551230000")] == ["halo_users"]
    assert await store.lookup_contact("+10000000000") is None
    # A tombstoned record is not served.
    clock.advance(60)
    for _ in range(2):  # missed by two consecutive complete runs
        clock.advance(60)
        await store.mark_tombstones("halo_users", run_started_at=clock.now())
    assert await store.lookup_contact("+15551230000") is None


async def test_inbox_claim_and_status(store: Store, clock: FakeClock) -> None:
    evs = [NewEvent("netsapiens", "message.received", f"k{i}", "{}", clock.now()) for i in range(3)]
    ids = [e.id for e in await store.insert_events(evs)]
    lease = timedelta(minutes=5)
    claimed = await store.claim_events(2, clock.now(), lease=lease)
    assert [e.id for e in claimed] == ids[:2] and claimed[0].attempts == 0
    assert claimed[0].lease_until == clock.now() + lease
    # Leased: not claimed again until the lease runs out.
    assert [e.id for e in await store.claim_events(10, clock.now(), lease=lease)] == [ids[2]]
    assert await store.claim_events(10, clock.now(), lease=lease) == []
    await store.finish_event(ids[0], "done")
    await store.finish_event(
        ids[1], "failed", error="timeout", next_attempt_at=clock.now() + timedelta(seconds=30)
    )
    await store.finish_event(ids[2], "dead", error="gave up")
    clock.advance(31)
    again = await store.claim_events(10, clock.now(), lease=lease)
    assert [e.id for e in again] == [ids[1]] and again[0].attempts == 1
    assert again[0].last_error == "timeout"
    counts = await store.count_events_by_status()
    assert counts == {"pending": 0, "done": 1, "ignored": 0, "failed": 1, "dead": 1}
    assert [e.id for e in await store.list_events("dead")] == [ids[2]]
    assert [e.id for e in await store.list_events(limit=2)] == [ids[2], ids[1]]
    assert await store.reset_dead() == 1
    ev = await store.get_event(ids[2])
    assert ev is not None and ev.status == "pending" and ev.attempts == 0
    assert await store.reset_events([ids[0], 999]) == 1
    assert await store.get_event(999) is None
    for bad in (store.finish_event(999, "done"), store.set_event_status(999, "done")):
        with pytest.raises(StoreError):
            await bad
    with pytest.raises(StoreError):
        await store.finish_event(ids[0], "bogus")
    await store.set_event_status(ids[0], "ignored")  # no attempt counted
    ev = await store.get_event(ids[0])
    assert ev is not None and ev.status == "ignored" and ev.attempts == 0


async def test_last_event_time(store: Store, clock: FakeClock) -> None:
    assert await store.last_event_time("netsapiens", "message") is None
    await store.insert_events([NewEvent("netsapiens", "message.received", "a", "{}", clock.now())])
    clock.advance(5)
    await store.insert_events([NewEvent("netsapiens", "cdr.created", "b", "{}", clock.now())])
    t_msg = await store.last_event_time("netsapiens", "message")
    assert t_msg is not None and clock.now() - t_msg == timedelta(seconds=5)
    assert await store.last_event_time("netsapiens") == clock.now()
    assert await store.last_event_time("netsapiens", "m%") is None  # LIKE is escaped


async def test_actions_and_threads(store: Store, clock: FakeClock) -> None:
    [ev] = await store.insert_events([NewEvent("ns", "message.received", "k", "{}", clock.now())])
    aid, created = await store.create_action(ev.id, "balance", "sms_reply", "balance:k", '{"a":1}')
    assert created
    assert await store.create_action(ev.id, "balance", "sms_reply", "balance:k", "{}") == (
        aid,
        False,
    )
    await store.set_action_status(aid, "failed", error="503", next_attempt_at=clock.now())
    await store.set_action_status(aid, "sent", response='{"id":"m1"}', upstream_ref="m1")
    row = await store.get_action(aid)
    assert row is not None and row.status == "sent" and row.attempts == 2
    assert row.upstream_ref == "m1" and row.done_at == clock.now() and row.request == '{"a":1}'
    assert (await store.get_action_by_key("balance:k")) == row
    assert [a.id for a in await store.list_actions(rule="balance", since=clock.now())] == [aid]
    assert (await store.count_actions_by_status())["sent"] == 1
    with pytest.raises(StoreError):
        await store.create_action(12345, "r", "k", "fk-violation", None)  # FK enforced

    assert await store.get_halo_thread("+1555", "sms") is None
    await store.set_halo_thread("+1555", "sms", "T-1")
    await store.set_halo_thread("+1555", "sms", "T-2")
    thread = await store.get_halo_thread("+1555", "sms")
    assert thread is not None and thread.ticket_id == "T-2"
    assert await store.clear_halo_thread("+1555", "sms")
    assert not await store.clear_halo_thread("+1555", "sms")


async def test_a_deferred_action_keeps_its_attempts_and_its_doubt(
    store: Store, clock: FakeClock
) -> None:
    [ev] = await store.insert_events([NewEvent("ns", "message.received", "k", "{}", clock.now())])
    aid, _ = await store.create_action(ev.id, "ticket", "halo_ticket", "ticket:k", "{}")
    await store.start_attempt(aid)
    await store.finish_action(aid, "failed", response='{"uncertain": true}', error="timeout")
    await store.start_attempt(aid)
    later = clock.now() + timedelta(minutes=5)
    await store.defer_action(aid, next_attempt_at=later, error="deferred: budget spent")
    row = await store.get_action(aid)
    assert row is not None and (row.status, row.attempts) == ("failed", 1)
    assert row.attempt_started_at is None and row.next_attempt_at == later
    assert row.response == '{"uncertain": true}' and row.last_error == "deferred: budget spent"


async def test_subscriptions(store: Store, clock: FakeClock) -> None:
    exp = clock.now() + timedelta(hours=1)
    await store.upsert_subscription("s1", "message", "https://h/x", exp, "active")
    await store.upsert_subscription("s1", "message", "https://h/x", exp + timedelta(hours=1), "ok")
    subs = await store.list_subscriptions()
    assert (
        len(subs) == 1 and subs[0].status == "ok" and subs[0].expires_at == exp + timedelta(hours=1)
    )
    assert await store.delete_subscription("s1")
    assert not await store.delete_subscription("s1")


async def test_prune(store: Store, clock: FakeClock) -> None:
    old = [NewEvent("ns", "m", f"old{i}", "{}", clock.now()) for i in range(3)]
    ids = [e.id for e in await store.insert_events(old)]
    await store.set_event_status(ids[0], "done")
    await store.set_event_status(ids[1], "dead")
    aid, _ = await store.create_action(ids[1], "r", "sms", "key", None)
    await store.set_action_status(aid, "failed")  # unfinished: kept, and keeps its event
    r1 = await store.start_run("j")
    await store.finish_run(r1, "ok")
    r2 = await store.start_run("j")
    await store.finish_run(r2, "ok")
    clock.advance(timedelta(days=100).total_seconds())
    counts = await store.prune(clock.now() - timedelta(days=90))
    assert counts == {"actions": 0, "events": 1, "sync_runs": 1}
    assert await store.get_event(ids[0]) is None
    assert await store.get_event(ids[1]) is not None
    assert await store.get_event(ids[2]) is not None  # pending is never pruned
    assert [r.id for r in await store.last_runs()] == [r2]
