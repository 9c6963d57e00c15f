"""Review of the event path: replay of planning errors, leases that run out mid-handling, threads
found by look-up, successes whose answer was unusable, and `cooldown` on every rule kind.

Real listener, real SQLite store, the NetSapiens and Halo simulators (the `event_path` fixture);
time moves only by the injected clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest

from daemon.clients import halo_resources
from daemon.errors import (
    ConnectError,
    MalformedResponse,
    NotFoundError,
    RateLimited,
    RuleError,
    ServerError,
    StoreError,
    UpstreamTimeout,
    ValidationError,
)
from daemon.rules.dispatcher import _is_uncertain
from tests.events.conftest import ANN, BOB, EventPath

TICKET_COOLDOWN = """
[[rules]]
name = "sms-to-ticket"
on = "message.received"
action = "halo_ticket"
cooldown = "1h"
ticket = { summary = "SMS from {{ event.from }}", details = "{{ event.body }}", tickettype_id = 1 }
"""


async def _only_action(p: EventPath) -> tuple[Any, Any]:
    (event,) = await p.events()
    (action,) = await p.store.actions_for_event(event.id)
    return event, action


async def _until_idle(p: EventPath) -> None:
    """Wait (real time, bounded) until the running dispatcher has nothing in hand."""
    with anyio.fail_after(10):
        while p.dispatcher.in_flight:
            await anyio.sleep(0.02)


# -- E1: an action that failed at planning ----------------------------------------------------


async def test_replay_leaves_a_planning_error_dead_with_its_reason(event_path: EventPath) -> None:
    p = event_path
    await p.sms(BOB, "balance")  # unknown client: {{ client.balance }} fails at planning
    await p.dispatcher.run_until_idle()
    event, action = await _only_action(p)
    assert (event.status, action.status, action.attempts) == ("dead", "dead", 0)
    reason = action.last_error
    assert reason and "undefined" in reason

    assert await p.store.reset_dead() == 1  # `daemon events replay --dead`
    for _ in range(5):  # well past max_attempts (3)
        await p.dispatcher.run_until_idle()
        p.clock.advance(3600)
    event, action = await _only_action(p)
    assert (action.status, action.attempts, action.last_error) == ("dead", 0, reason)
    assert event.status == "dead" and event.last_error == reason
    assert "KeyError" not in (event.last_error or "")
    assert p.ns.sent == []


async def test_a_request_without_its_body_is_a_rule_error_not_a_crash(
    event_path: EventPath,
) -> None:
    """A row re-armed by hand (or by an older replay) whose request holds only the error."""
    p = event_path
    await p.sms(BOB, "balance")
    await p.dispatcher.run_until_idle()
    event, action = await _only_action(p)
    await p.store.set_action_status(action.id, "pending", count_attempt=False)
    await p.store.reset_events([event.id])  # the event is pending again; the action stays so
    await p.dispatcher.run_until_idle()
    event, action = await _only_action(p)
    assert action.status == "dead" and "undefined" in (action.last_error or "")
    assert event.status == "dead" and "KeyError" not in (event.last_error or "")
    assert await p.store.count_auto_replies(since=p.clock.now() - timedelta(hours=1)) == 0


# -- E2: an event is never handled twice at once ----------------------------------------------


async def test_a_lease_that_runs_out_mid_handling_does_not_send_twice(
    event_path: EventPath,
) -> None:
    p = event_path
    p.ns.faults.update({"slow_next": 1, "slow_seconds": 1.0, "path_filter": "/messages"})
    async with anyio.create_task_group() as tg:
        await tg.start(p.dispatcher.run)
        await p.sms(ANN, "ping")  # echo-bot: "pong: ping"
        with anyio.fail_after(10):
            while p.ns.faults.slow_next:  # until the slow send is under way
                await anyio.sleep(0.02)
        assert p.dispatcher.handling
        p.clock.advance(p.settings.daemon.dispatch.lease + 1)  # the lease has run out
        p.dispatcher.wake()
        await anyio.sleep(0.1)  # the loop turns (and must not claim the event again)
        assert p.dispatcher.in_flight == 1
        await _until_idle(p)
        tg.cancel_scope.cancel()
    assert p.sent_to(ANN) == ["pong: ping"]
    ((event, action),) = [(e, await p.store.actions_for_event(e.id)) for e in await p.events()]
    assert event.status == "done" and [a.attempts for a in action] == [1]
    assert not p.dispatcher.handling


async def test_claim_skips_excluded_ids_whatever_their_lease(event_path: EventPath) -> None:
    p = event_path
    await p.sms(BOB, "one")
    await p.sms(ANN, "two")
    first, second = await p.events()
    lease = timedelta(minutes=5)
    claimed = await p.store.claim_events(5, p.clock.now(), lease=lease, exclude={first.id})
    assert [e.id for e in claimed] == [second.id]
    p.clock.advance(lease.total_seconds() + 1)
    claimed = await p.store.claim_events(5, p.clock.now(), lease=lease, exclude={second.id})
    assert [e.id for e in claimed] == [first.id]


async def test_replay_refuses_an_event_being_handled(event_path: EventPath) -> None:
    p = event_path
    await p.sms(BOB, "hello")
    (event,) = await p.events()
    claimed = await p.store.claim_events(1, p.clock.now(), lease=timedelta(minutes=5))
    assert [e.id for e in claimed] == [event.id]
    with pytest.raises(StoreError, match=f"event {event.id} is being handled"):
        await p.store.reset_events([event.id])
    (after,) = await p.events()
    assert after.lease_until == claimed[0].lease_until  # nothing changed

    p.clock.advance(301)  # the lease ran out (the process that held it is gone)
    assert await p.store.reset_events([event.id]) == 1
    await p.dispatcher.run_until_idle()
    assert len(p.tickets()) == 1


async def test_replay_of_an_in_flight_event_does_not_send_twice(event_path: EventPath) -> None:
    p = event_path
    p.ns.faults.update({"slow_next": 1, "slow_seconds": 1.0, "path_filter": "/messages"})
    async with anyio.create_task_group() as tg:
        await tg.start(p.dispatcher.run)
        await p.sms(ANN, "ping")
        with anyio.fail_after(10):
            while p.ns.faults.slow_next:
                await anyio.sleep(0.02)
        (event,) = await p.events()
        with pytest.raises(StoreError, match="being handled"):
            await p.store.reset_events([event.id])  # what `events replay ID` does
        assert await p.store.reset_dead() == 0
        p.dispatcher.wake()
        await _until_idle(p)
        tg.cancel_scope.cancel()
    assert p.sent_to(ANN) == ["pong: ping"]


# -- E3: a threaded ticket or note found by look-up --------------------------------------------


async def test_a_threaded_ticket_found_by_look_up_becomes_the_thread(
    event_path: EventPath,
) -> None:
    p = event_path
    p.halo.faults.update({"lose_answer_next": 1, "path_filter": "/api/Tickets"})
    await p.sms(BOB, "the line is dead")
    await p.dispatcher.run_until_idle()
    p.clock.advance(3600)
    await p.dispatcher.run_until_idle()  # looked up: found, not created twice
    (ticket,) = p.tickets()
    thread = await p.store.get_halo_thread("+" + BOB, "sms-to-ticket")
    assert thread is not None and thread.ticket_id == str(ticket["id"]) and thread.notes == 0

    await p.sms(BOB, "still dead")  # thread = true: a note on that ticket
    await p.dispatcher.run_until_idle()
    assert len(p.tickets()) == 1
    assert [n["note"].splitlines()[0] for n in p.notes(ticket["id"])] == ["still dead"]


async def test_a_note_found_by_look_up_is_counted(event_path: EventPath) -> None:
    p = event_path
    await p.sms(BOB, "first")
    await p.dispatcher.run_until_idle()
    (ticket,) = p.tickets()
    p.halo.faults.update({"lose_answer_next": 1, "path_filter": "/api/Actions"})
    await p.sms(BOB, "second")  # the note is added, its answer lost
    await p.dispatcher.run_until_idle()
    p.clock.advance(3600)
    await p.dispatcher.run_until_idle()  # found by look-up
    assert len(p.notes(ticket["id"])) == 1
    thread = await p.store.get_halo_thread("+" + BOB, "sms-to-ticket")
    assert thread is not None and thread.notes == 1
    _, second = await p.events()
    (action,) = await p.store.actions_for_event(second.id)
    assert action.status == "sent" and json.loads(action.response or "{}")["notes"] == 1


# -- E4: the upstream acted, the answer was unusable -------------------------------------------


def _lose_first_answer(monkeypatch: pytest.MonkeyPatch, fail: Exception | None) -> dict[str, int]:
    """Halo creates the first ticket, but its answer is empty (`fail` None) or raises `fail`."""
    original = halo_resources.HaloResource.batch_create
    calls = {"n": 0}

    async def once(self: Any, objs: Sequence[Mapping[str, Any]]) -> Any:
        saved = await original(self, objs)
        calls["n"] += 1
        if calls["n"] > 1:
            return saved
        if fail is not None:
            raise fail
        return []

    monkeypatch.setattr(halo_resources.HaloResource, "batch_create", once)
    return calls


@pytest.mark.parametrize(
    "fail",
    [None, MalformedResponse("not JSON", upstream="halo", status=201)],
    ids=["answer-without-id", "malformed-2xx"],
)
async def test_replay_looks_before_recreating_a_ticket_whose_answer_was_unusable(
    event_path: EventPath, monkeypatch: pytest.MonkeyPatch, fail: Exception | None
) -> None:
    p = event_path
    _lose_first_answer(monkeypatch, fail)
    await p.sms(BOB, "my internet is down")
    await p.dispatcher.run_until_idle()
    event, action = await _only_action(p)
    assert (event.status, action.status) == ("dead", "dead")  # a final answer: dead at once
    assert json.loads(action.response or "{}") == {"uncertain": True}
    assert len(p.tickets()) == 1

    assert await p.store.reset_dead() == 1  # `daemon events replay --dead`
    await p.dispatcher.run_until_idle()
    event, action = await _only_action(p)
    (ticket,) = p.tickets()  # looked up, found: not created twice
    assert event.status == "done" and action.upstream_ref == str(ticket["id"])
    thread = await p.store.get_halo_thread("+" + BOB, "sms-to-ticket")
    assert thread is not None and thread.ticket_id == str(ticket["id"])


def test_only_a_clear_rejection_or_no_connection_is_certain() -> None:
    up = "halo"
    certain = [
        ConnectError("refused", upstream=up),
        ValidationError("bad", status=400, upstream=up),
        NotFoundError("gone", status=404, upstream=up),
    ]
    uncertain = [
        UpstreamTimeout("slow", upstream=up),
        ServerError("oops", status=502, upstream=up),
        RateLimited("busy", status=429, upstream=up),
        ServerError("timeout", status=408, upstream=up),
        MalformedResponse("not JSON", status=200, upstream=up),
        RuleError("Halo answered the ticket create without an id"),
        StoreError("disk full"),
    ]
    assert [_is_uncertain(e) for e in certain] == [False] * len(certain)
    assert [_is_uncertain(e) for e in uncertain] == [True] * len(uncertain)


# -- E6: cooldown on a rule that is not an SMS reply -------------------------------------------


@pytest.mark.parametrize("extra_config", [TICKET_COOLDOWN])
async def test_cooldown_applies_to_a_ticket_rule(event_path: EventPath) -> None:
    p = event_path
    await p.sms(BOB, "first")
    await p.dispatcher.run_until_idle()
    p.clock.advance(60)  # inside the 1h cooldown
    await p.sms(BOB, "second")
    await p.dispatcher.run_until_idle()
    assert len(p.tickets()) == 1
    _, second = await p.events()
    assert second.status == "ignored"
    assert [s["reason"] for s in json.loads(second.plan or "{}")["skipped"]] == ["cooldown"]

    await p.sms(ANN, "another sender")  # per sender: not cooling
    await p.dispatcher.run_until_idle()
    assert len(p.tickets()) == 2

    p.clock.advance(3600)  # the cooldown has passed
    await p.sms(BOB, "third")
    await p.dispatcher.run_until_idle()
    assert len(p.tickets()) == 3
