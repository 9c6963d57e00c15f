"""The inbox of issue 16: per-sender order, leases, attempts as outcomes, stored plans, replay."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.errors import StoreError
from daemon.store import NewAction, NewEvent, Store

LEASE = timedelta(minutes=2)
A, B = "+15550000001", "+15550000002"


def ev(key: str, clock: FakeClock, sender: str | None = None, **kw: object) -> NewEvent:
    return NewEvent("netsapiens", "message.received", key, "{}", clock.now(), sender=sender, **kw)  # type: ignore[arg-type]


async def claim(store: Store, clock: FakeClock, limit: int = 10) -> list[str]:
    return [e.dedupe_key for e in await store.claim_events(limit, clock.now(), lease=LEASE)]


async def test_new_columns_are_written_and_read(store: Store, clock: FakeClock) -> None:
    when = clock.now() - timedelta(seconds=3)
    [res] = await store.insert_events(
        [ev("k", clock, A, via="backfill", occurred_at=when, body_hash="h1")]
    )
    row = await store.get_event(res.id)
    assert row is not None
    assert (row.sender, row.via, row.occurred_at, row.body_hash) == (A, "backfill", when, "h1")
    assert row.lease_until is None and row.plan is None and row.attempts == 0
    with pytest.raises(StoreError, match="via"):
        await store.insert_events([ev("k2", clock, A, via="carrier-pigeon")])
    assert await store.insert_events([]) == []


@pytest.mark.parametrize("outcome", ["done", "dead", "ignored"])
async def test_one_senders_events_are_claimed_in_order(
    store: Store, clock: FakeClock, outcome: str
) -> None:
    events = [ev("A1", clock, A), ev("B1", clock, B), ev("A2", clock, A), ev("N1", clock),
              ev("N2", clock)]  # fmt: skip
    ids = {r.dedupe_key: r.id for r in await store.insert_events(events)}
    # A2 waits for A1; B1 and events without a sender proceed.
    assert await claim(store, clock) == ["A1", "B1", "N1", "N2"]
    assert await claim(store, clock) == []  # A1 leased: A2 still blocked
    for key in ("B1", "N1", "N2"):
        await store.finish_event(ids[key], "done")
    # A1 failed and not yet due: A2 stays blocked.
    await store.finish_event(ids["A1"], "failed", next_attempt_at=clock.now() + LEASE * 2)
    clock.advance(LEASE.total_seconds() + 1)
    assert await claim(store, clock) == []
    clock.advance(LEASE.total_seconds())
    assert await claim(store, clock) == ["A1"]  # due again; A2 still behind it
    await store.finish_event(ids["A1"], outcome)
    assert await claim(store, clock) == ["A2"]


async def test_a_pending_earlier_event_blocks_even_when_a_later_one_is_older_to_the_limit(
    store: Store, clock: FakeClock
) -> None:
    """The limit counts claimable events only: blocked ones do not use it up."""
    await store.insert_events([ev(f"A{i}", clock, A) for i in range(5)] + [ev("B1", clock, B)])
    assert await claim(store, clock, limit=2) == ["A0", "B1"]


async def test_leases(store: Store, clock: FakeClock) -> None:
    await store.insert_events([ev("k1", clock), ev("k2", clock)])
    assert await claim(store, clock) == ["k1", "k2"]
    clock.advance(LEASE.total_seconds() - 1)
    assert await claim(store, clock) == []
    clock.advance(1)  # the lease has run out (a dispatcher that died without releasing)
    assert await claim(store, clock) == ["k1", "k2"]
    assert await store.release_leases() == 2  # service start: every lease freed at once
    assert await store.release_leases() == 0
    rows = await store.claim_events(1, clock.now(), lease=LEASE)
    assert [r.dedupe_key for r in rows] == ["k1"] and rows[0].lease_until == clock.now() + LEASE
    assert await store.claim_events(0, clock.now(), lease=LEASE) == []


async def test_attempts_count_outcomes_not_claims(store: Store, clock: FakeClock) -> None:
    [res] = await store.insert_events([ev("k", clock, A)])
    for _ in range(10):  # a crash loop: claimed, never finished, released at each start
        assert await claim(store, clock) == ["k"]
        await store.release_leases()
    row = await store.get_event(res.id)
    assert row is not None and row.attempts == 0 and row.status == "pending"
    await store.finish_event(res.id, "failed", error="503", next_attempt_at=clock.now())
    row = await store.get_event(res.id)
    assert row is not None and row.attempts == 1 and row.lease_until is None
    assert row.last_error == "503" and row.next_attempt_at == clock.now()


def planned(key: str, rule: str, **kw: object) -> NewAction:
    return NewAction(rule, "sms_reply", f"{key}:{rule}", json.dumps({"rule": rule}), **kw)  # type: ignore[arg-type]


async def test_record_plan_once_with_dead_on_error(store: Store, clock: FakeClock) -> None:
    [res] = await store.insert_events([ev("k", clock, A)])
    actions = [
        planned("k", "balance", phone=A, conversation="s1", body_hash="out", auto_reply=True),
        planned("k", "broken", phone=A, error="template: 'client' is undefined"),
    ]
    rows = await store.record_plan(res.id, '{"actions": 2}', actions)
    assert [r.rule for r in rows] == ["balance", "broken"]
    ok, dead = rows
    assert ok.status == "pending" and ok.attempts == 0 and ok.done_at is None
    assert (ok.phone, ok.conversation, ok.body_hash, ok.auto_reply) == (A, "s1", "out", True)
    assert ok.event_id == res.id and ok.request == '{"rule": "balance"}'
    assert ok.created_at == clock.now()
    assert dead.status == "dead" and dead.done_at == clock.now()
    assert dead.last_error == "template: 'client' is undefined" and dead.auto_reply is False
    event = await store.get_event(res.id)
    assert event is not None and event.plan == '{"actions": 2}'

    # Again (a retry after a crash, or a changed config): nothing changes.
    clock.advance(60)
    again = await store.record_plan(res.id, '{"other": 1}', [planned("k", "new-rule")])
    assert again == rows
    assert await store.actions_for_event(res.id) == rows
    event = await store.get_event(res.id)
    assert event is not None and event.plan == '{"actions": 2}'
    with pytest.raises(StoreError, match="no event"):
        await store.record_plan(999, "{}", [])


async def test_record_plan_with_no_actions(store: Store, clock: FakeClock) -> None:
    [res] = await store.insert_events([ev("k", clock)])
    assert await store.record_plan(res.id, '{"actions": []}', []) == []
    event = await store.get_event(res.id)
    assert event is not None and event.plan == '{"actions": []}'


async def test_replay_keeps_the_plan_and_what_was_sent(store: Store, clock: FakeClock) -> None:
    [res, other] = await store.insert_events([ev("k", clock, A), ev("other", clock, B)])
    rows = await store.record_plan(
        res.id, '{"plan": 1}', [planned("k", r) for r in ("sent", "dead", "failed", "pending")]
    )
    sent, dead, failed, pending = (r.id for r in rows)
    [other_action] = await store.record_plan(other.id, "{}", [planned("other", "r")])
    await store.start_attempt(sent)
    await store.finish_action(sent, "sent", upstream_ref="m1")
    await store.start_attempt(dead)
    await store.finish_action(dead, "dead", error="400")
    await store.start_attempt(failed)
    await store.finish_action(failed, "failed", error="503", next_attempt_at=clock.now())
    await store.start_attempt(pending)  # in flight when the process died
    await store.finish_action(other_action.id, "dead", error="400")
    await store.claim_events(10, clock.now(), lease=LEASE)
    await store.finish_event(res.id, "dead", error="400")
    await store.finish_event(other.id, "dead", error="400")

    assert await store.reset_events([res.id]) == 1
    event = await store.get_event(res.id)
    assert event is not None
    assert (event.status, event.attempts, event.next_attempt_at, event.lease_until,
            event.last_error) == ("pending", 0, None, None, None)  # fmt: skip
    assert event.plan == '{"plan": 1}'
    after = {a.rule: a for a in await store.actions_for_event(res.id)}
    assert after["sent"].status == "sent" and after["sent"].attempts == 1
    assert after["sent"].upstream_ref == "m1"
    for rule in ("dead", "failed"):
        a = after[rule]
        assert (a.status, a.attempts, a.next_attempt_at, a.last_error, a.attempt_started_at,
                a.done_at) == ("pending", 0, None, None, None, None)  # fmt: skip
    assert after["pending"].attempt_started_at is not None  # left for the dispatcher to check
    # Only the replayed event's actions were touched.
    still = await store.get_action(other_action.id)
    assert still is not None and still.status == "dead"

    assert await store.reset_dead() == 1  # the other one
    again = await store.get_action(other_action.id)
    assert again is not None and again.status == "pending"
    assert await store.reset_dead() == 0
    assert await store.reset_events([]) == 0


async def test_the_claim_walks_only_unfinished_events(
    store: Store, clock: FakeClock, db_path: Path
) -> None:
    """The claim reads the partial index of unfinished events in id order (no sort, no scan of
    the history), and no index on the sender is kept for it."""
    await store.insert_events([ev("k", clock, A)])
    seen: list[str] = []
    assert store._writer is not None
    await store._writer.set_trace_callback(seen.append)
    try:
        assert len(await store.claim_events(10, clock.now(), lease=LEASE)) == 1
    finally:
        await store._writer.set_trace_callback(None)
    [walk_sql] = [s for s in seen if s.startswith("SELECT count(*), json_group_array")]
    with sqlite3.connect(db_path) as conn:
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + walk_sql)]
        indexes = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    assert any("USING INDEX events_open" in p for p in plan), plan
    assert not any("TEMP B-TREE" in p for p in plan), plan
    assert "events_sender" not in indexes
