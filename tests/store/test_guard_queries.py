"""Attempts, the loop guard's questions, own numbers, the breaker state and Halo thread notes."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import ActionRow, NewAction, NewEvent, Store

A, B = "+15550000001", "+15550000002"
HOUR = timedelta(hours=1)


async def plan(
    store: Store,
    clock: FakeClock,
    key: str,
    *,
    phone: str | None = A,
    rule: str = "balance",
    conversation: str | None = "conv-a",
    in_hash: str | None = "in",
    out_hash: str | None = "out",
    auto_reply: bool = True,
) -> ActionRow:
    """One event from `phone` and its one planned action."""
    event = NewEvent("ns", "message.received", key, "{}", clock.now(), sender=phone,
                     body_hash=in_hash)  # fmt: skip
    [res] = await store.insert_events([event])
    action = NewAction(rule, "sms_reply", f"{key}:{rule}", "{}", phone, conversation, out_hash,
                       auto_reply)  # fmt: skip
    [row] = await store.record_plan(res.id, "{}", [action])
    return row


async def test_start_and_finish_attempts(store: Store, clock: FakeClock) -> None:
    row = await plan(store, clock, "k")
    clock.advance(1)
    started = await store.start_attempt(row.id)
    assert started == clock.now()
    got = await store.get_action(row.id)
    assert got is not None and got.attempt_started_at == started and got.attempts == 0
    clock.advance(1)
    await store.finish_action(row.id, "failed", error="timeout", next_attempt_at=clock.now())
    got = await store.get_action(row.id)
    assert got is not None
    assert (got.status, got.attempts, got.attempt_started_at, got.last_error, got.done_at) == (
        "failed", 1, None, "timeout", None)  # fmt: skip
    assert got.next_attempt_at == clock.now()
    await store.start_attempt(row.id)
    await store.finish_action(row.id, "sent", response='{"id": "m1"}', upstream_ref="m1")
    await store.finish_action(row.id, "sent")  # None keeps what is stored
    got = await store.get_action(row.id)
    assert got is not None and got.status == "sent" and got.attempts == 3
    assert got.response == '{"id": "m1"}' and got.upstream_ref == "m1"
    assert got.done_at == clock.now() and got.next_attempt_at is None and got.last_error is None
    for bad in (store.start_attempt(999), store.finish_action(999, "sent")):
        with pytest.raises(StoreError, match="no action"):
            await bad
    with pytest.raises(StoreError, match="status"):
        await store.finish_action(row.id, "bogus")


async def test_cooldown_asks_for_the_newest_not_dead_action(store: Store, clock: FakeClock) -> None:
    assert await store.last_auto_action_at(A, "balance") is None
    first = await plan(store, clock, "k1")
    t1 = clock.now()
    clock.advance(60)
    second = await plan(store, clock, "k2")
    await plan(store, clock, "k3", rule="other")
    await plan(store, clock, "k4", phone=B)
    assert await store.last_auto_action_at(A, "balance") == clock.now()
    await store.finish_action(second.id, "dead", error="400")  # never went out
    assert await store.last_auto_action_at(A, "balance") == t1
    await store.finish_action(first.id, "sent")
    assert await store.last_auto_action_at(A, "balance") == t1


async def test_count_auto_replies(store: Store, clock: FakeClock) -> None:
    start = clock.now()
    a1 = await plan(store, clock, "k1")
    await plan(store, clock, "k2", conversation="conv-b", phone=B)
    await plan(store, clock, "k3", auto_reply=False)  # a ticket, say: not an auto-reply
    dead = await plan(store, clock, "k4")
    await store.finish_action(dead.id, "dead", error="400")
    await store.finish_action(a1.id, "sent")
    assert await store.count_auto_replies(since=start, conversation="conv-a") == 1
    assert await store.count_auto_replies(since=start, conversation="conv-b") == 1
    assert await store.count_auto_replies(since=start, conversation="nope") == 0
    assert await store.count_auto_replies(since=start) == 2
    clock.advance(HOUR.total_seconds())
    await plan(store, clock, "k5")
    assert await store.count_auto_replies(since=clock.now() - HOUR / 2) == 1
    assert await store.count_auto_replies(since=start, conversation="conv-a") == 2


async def test_recent_reply_hashes(store: Store, clock: FakeClock) -> None:
    start = clock.now()
    queued = await plan(store, clock, "queued", out_hash="h-queued")
    in_flight = await plan(store, clock, "flight", out_hash="h-flight")
    sent = await plan(store, clock, "sent", out_hash="h-sent")
    failed = await plan(store, clock, "failed", out_hash="h-failed")
    dead = await plan(store, clock, "dead", out_hash="h-dead")
    await plan(store, clock, "ticket", out_hash="h-ticket", auto_reply=False)
    await plan(store, clock, "nohash", out_hash=None)
    await store.start_attempt(in_flight.id)
    for row, status in ((sent, "sent"), (failed, "failed"), (dead, "dead")):
        await store.start_attempt(row.id)
        await store.finish_action(row.id, status)
    assert queued.status == "pending"
    # Sent, in flight, or failed after an attempt (it may have gone out): an echo of any of
    # them is ours. Not yet attempted, dead, not an auto-reply: not.
    assert await store.recent_reply_hashes(since=start) == {"h-flight", "h-sent", "h-failed"}
    clock.advance(60)
    assert await store.recent_reply_hashes(since=clock.now()) == set()


async def test_answered_before(store: Store, clock: FakeClock) -> None:
    since = clock.now()
    first = await plan(store, clock, "k1", in_hash="same")
    clock.advance(10)
    [repeat] = await store.insert_events(
        [NewEvent("ns", "message.received", "k2", "{}", clock.now(), sender=A, body_hash="same")]
    )
    assert await store.answered_before(A, "same", since=since, exclude_event=repeat.id)
    assert first.event_id is not None
    # The answered event itself does not count, nor another sender, text or time window.
    assert not await store.answered_before(A, "same", since=since, exclude_event=first.event_id)
    assert not await store.answered_before(B, "same", since=since, exclude_event=repeat.id)
    assert not await store.answered_before(A, "other", since=since, exclude_event=repeat.id)
    assert not await store.answered_before(A, "same", since=clock.now(), exclude_event=repeat.id)
    # Not when the earlier answer died (it never went out), nor for an action not auto-reply.
    await store.finish_action(first.id, "dead", error="400")
    assert not await store.answered_before(A, "same", since=since, exclude_event=repeat.id)
    await plan(store, clock, "k3", in_hash="same", auto_reply=False)
    assert not await store.answered_before(A, "same", since=since, exclude_event=repeat.id)


async def test_guard_queries_use_indexes(store: Store, clock: FakeClock, db_path: Path) -> None:
    """Each question is answered from an index, not a scan of `actions`."""
    await plan(store, clock, "k")
    seen: list[str] = []
    assert store._reader is not None
    await store._reader.set_trace_callback(seen.append)
    try:
        since = clock.now() - HOUR
        await store.last_auto_action_at(A, "balance")
        await store.count_auto_replies(since=since, conversation="conv-a")
        await store.count_auto_replies(since=since)
        await store.recent_reply_hashes(since=since)
        await store.answered_before(A, "in", since=since, exclude_event=0)
    finally:
        await store._reader.set_trace_callback(None)
    queries = [q for q in seen if "actions" in q]
    expected = ["actions_phone_rule", "actions_conversation", "actions_auto_reply",
                "actions_auto_reply", "actions_phone_rule"]  # fmt: skip
    assert len(queries) == len(expected)
    with sqlite3.connect(db_path) as conn:
        for sql, index in zip(queries, expected, strict=True):
            detail = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
            assert detail.startswith("SEARCH") and f"INDEX {index} " in detail, (sql, detail)


async def test_own_numbers(store: Store, clock: FakeClock) -> None:
    assert await store.own_numbers() == set()
    await store.record_own_number(A)
    clock.advance(60)
    await store.record_own_number(A)
    await store.record_own_number(B)
    assert await store.own_numbers() == {A, B}
    row = await store.fetchone(
        "SELECT first_used_at, last_used_at FROM own_numbers WHERE phone = ?", (A,)
    )
    assert row is not None and row["first_used_at"] < row["last_used_at"]


async def test_guard_state(store: Store, clock: FakeClock) -> None:
    assert await store.get_guard_state("breaker") is None
    value = json.dumps({"open_until": "2025-01-02T04:00:00.000000Z", "reason": "too many"})
    await store.set_guard_state("breaker", value)
    assert await store.get_guard_state("breaker") == (value, clock.now())
    clock.advance(5)
    await store.set_guard_state("breaker", "{}")
    assert await store.get_guard_state("breaker") == ("{}", clock.now())
    await store.clear_guard_state("breaker")
    await store.clear_guard_state("breaker")  # clearing twice is fine
    assert await store.get_guard_state("breaker") is None


async def test_halo_thread_notes(store: Store, clock: FakeClock) -> None:
    assert await store.add_thread_note(A, "sms-to-ticket") == 0  # no thread: nothing counted
    await store.set_halo_thread(A, "sms-to-ticket", "T-1")
    thread = await store.get_halo_thread(A, "sms-to-ticket")
    assert thread is not None and thread.notes == 0
    clock.advance(30)
    assert await store.add_thread_note(A, "sms-to-ticket") == 1
    assert await store.add_thread_note(A, "sms-to-ticket") == 2
    thread = await store.get_halo_thread(A, "sms-to-ticket")
    assert thread is not None and thread.notes == 2 and thread.updated_at == clock.now()
    await store.set_halo_thread(A, "sms-to-ticket", "T-2")  # a new ticket starts at 0
    thread = await store.get_halo_thread(A, "sms-to-ticket")
    assert thread is not None and (thread.ticket_id, thread.notes) == ("T-2", 0)
