"""Issue 16: actions that fail are retried then dead, replay really resends, an uncertain
outcome is looked up before a resend, one sender's events stay in order, restarts resume."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta

import anyio
import pytest
from structlog.testing import capture_logs

from daemon.errors import StoreError
from daemon.rules.plan import TicketRequest
from daemon.rules.wiring import build_dispatcher
from daemon.webhooks.event import Event
from tests.events.conftest import (
    ANN,
    BOB,
    EventPath,
    add_client,
    fail_the_record_of_the_next_send,
)


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_failing_action_is_retried_then_dead_and_replay_resends_it(
    event_path: EventPath,
) -> None:
    p = event_path
    p.halo.faults.update({"fail_next": 100, "fail_status": 500, "path_filter": "/api/Tickets"})
    await p.sms(BOB, "please call me")
    await p.dispatcher.run_until_idle()
    (event,) = await p.events()
    assert event.status == "failed" and event.next_attempt_at is not None
    (action,) = await p.store.actions_for_event(event.id)
    assert (action.status, action.attempts) == ("failed", 1)
    for _ in range(2):  # max_attempts = 3
        p.clock.advance(3600)
        await p.dispatcher.run_until_idle()
    (event,) = await p.events()
    (action,) = await p.store.actions_for_event(event.id)
    assert event.status == "dead" and (action.status, action.attempts) == ("dead", 3)
    assert "ServerError" in (action.last_error or "") and not p.tickets()

    p.halo.faults.update({"fail_next": 0})
    code, out, err = await _cli("--config", str(p.config), "events", "replay", "--dead")
    assert code == 0, err
    assert '"replayed": 1' in out or "replayed" in out
    await p.dispatcher.run_until_idle()
    (event,) = await p.events()
    assert event.status == "done" and len(p.tickets()) == 1


async def test_a_final_answer_is_dead_at_once(event_path: EventPath) -> None:
    p = event_path
    p.halo.faults.update({"fail_next": 1, "fail_status": 400, "path_filter": "/api/Tickets"})
    await p.sms(BOB, "hello")
    await p.dispatcher.run_until_idle()
    (event,) = await p.events()
    (action,) = await p.store.actions_for_event(event.id)
    assert event.status == "dead" and action.attempts == 1


async def test_a_ticket_created_but_answered_502_is_found_not_created_twice(
    event_path: EventPath,
) -> None:
    p = event_path
    p.halo.faults.update({"lose_answer_next": 1, "path_filter": "/api/Tickets"})
    await p.sms(BOB, "the line is dead")
    await p.dispatcher.run_until_idle()
    assert len(p.tickets()) == 1  # the upstream did create it
    (event,) = await p.events()
    assert event.status == "failed"
    p.clock.advance(3600)
    await p.dispatcher.run_until_idle()
    assert len(p.tickets()) == 1  # looked before resending: still one
    (event,) = await p.events()
    (action,) = await p.store.actions_for_event(event.id)
    assert event.status == "done" and action.upstream_ref == str(p.tickets()[0]["id"])
    # The operator sees how it was settled, in `events show` and its JSON.
    await p.store.close()
    code, out, err = await _cli("--config", str(p.config), "events", "show", str(event.id))
    assert code == 0, err
    assert "found in the ticket: an earlier attempt had done it, not sent again" in out
    code, out, err = await _cli(
        "--config", str(p.config), "events", "show", str(event.id), "--json"
    )  # fmt: skip
    assert code == 0, err
    (shown,) = json.loads(out)["actions"]
    assert shown["response"]["found_in"] == "ticket" and shown["attempt_started_at"] is None


async def test_a_note_added_but_answered_502_on_a_busy_ticket_is_not_added_twice(
    event_path: EventPath,
) -> None:
    """Found by probing: the look-up read only the first page (50) of the ticket's actions, so
    on a ticket agents had worked, our note on page 2 was not found and was added again."""
    p = event_path
    await p.sms(BOB, "first")
    await p.dispatcher.run_until_idle()
    (ticket,) = p.tickets()
    actions = p.halo.table("Actions")
    for i in range(120):  # the agents' replies and e-mails on it: three pages before ours
        actions.add({"id": actions.next_id(), "ticket_id": ticket["id"], "note": f"reply {i}"})
    p.halo.faults.update({"lose_answer_next": 1, "path_filter": "/api/Actions"})
    await p.sms(BOB, "second")
    await p.dispatcher.run_until_idle()
    p.clock.advance(3600)
    await p.dispatcher.run_until_idle()
    ours = [n for n in p.notes(ticket["id"]) if str(n.get("note", "")).startswith("second")]
    assert len(ours) == 1
    second = (await p.events())[-1]
    (action,) = await p.store.actions_for_event(second.id)
    assert (second.status, action.status) == ("done", "sent")
    assert json.loads(action.response or "{}")["found_in"] == "note"


async def test_an_sms_sent_but_answered_502_is_found_not_sent_twice(event_path: EventPath) -> None:
    p = event_path
    await add_client(p.store, p.clock, ANN, first_name="Ann", balance="1")
    p.ns.faults.update({"lose_answer_next": 1, "path_filter": "/messages"})
    await p.sms(ANN, "balance")
    await p.dispatcher.run_until_idle()
    assert len(p.sent_to(ANN)) == 1
    p.clock.advance(3600)
    await p.dispatcher.run_until_idle()
    assert len(p.sent_to(ANN)) == 1
    (event,) = await p.events()
    assert event.status == "done"


async def test_a_replay_looks_before_resending_a_send_whose_record_failed(
    event_path: EventPath,
) -> None:
    """Found by probing: replay cleared `attempt_started_at`, the one mark of a send whose
    outcome was never recorded; after an earlier certain failure the stored response said
    "not uncertain", and the replayed attempt sent the reply a second time."""
    p = event_path
    p.ns.faults.update({"fail_next": 2, "fail_status": 401, "path_filter": "/messages"})
    await p.sms(ANN, "ping")
    await p.dispatcher.run_until_idle()  # attempt 1: refused (certain), retried later
    p.ns.faults.update({"fail_next": 0, "path_filter": None})
    fail_the_record_of_the_next_send(p)
    p.clock.advance(120)
    await p.dispatcher.run_until_idle()  # attempt 2: sent, not recorded
    assert p.sent_to(ANN) == ["pong: ping"]
    (action,) = await p.store.list_actions()
    assert action.status == "failed" and action.attempt_started_at is not None
    (event,) = await p.events()
    assert await p.store.reset_events([event.id]) == 1  # `daemon events replay ID`
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]  # looked, found, not sent again
    (action,) = await p.store.list_actions()
    assert action.status == "sent" and json.loads(action.response or "{}")["found"] is True


async def test_a_crash_between_call_and_record_is_looked_up_after_restart(
    event_path: EventPath,
) -> None:
    """The attempt's start is committed before the call: a process that dies after the ticket
    was created but before the outcome was written leaves `attempt_started_at` behind, and the
    next process looks for the ticket instead of creating a second."""
    p = event_path
    await p.sms(BOB, "crash test")
    (event,) = await p.events()
    claimed = await p.store.claim_events(1, p.clock.now(), lease=timedelta(minutes=5))
    assert [e.id for e in claimed] == [event.id]
    # What the dead process had done: planned, started the attempt, and the ticket exists.
    await p.dispatcher._plan(claimed[0], Event.from_json(claimed[0].payload))
    (action,) = await p.store.actions_for_event(event.id)
    await p.store.start_attempt(action.id)
    ticket = TicketRequest(**json.loads(action.request or "{}")["ticket"])
    await p.dispatcher.executors.halo_for(ticket).run(
        ticket, action.idempotency_key, phone=action.phone, rule=action.rule
    )
    assert len(p.tickets()) == 1
    # A new process over the same database: leases released, the event handled once.
    restarted = build_dispatcher(
        p.settings,
        p.store,
        {
            "halo": p.dispatcher.executors.halo["halo"].client,
            "netsapiens": p.dispatcher.executors.sms["netsapiens"].client,
        },
        clock=p.clock,
    )
    assert await p.store.release_leases() >= 1
    await restarted.run_until_idle()
    assert len(p.tickets()) == 1
    (event,) = await p.events()
    assert event.status == "done"


async def test_one_senders_events_stay_in_order_while_others_proceed(
    event_path: EventPath,
) -> None:
    p = event_path
    p.halo.faults.update({"fail_next": 1, "fail_status": 503, "path_filter": "/api/Tickets"})
    await p.sms(BOB, "first")  # its ticket fails once
    await p.sms(BOB, "second")  # must wait for "first"
    await p.sms(ANN, "other sender")
    await p.dispatcher.run_until_idle()
    by_body = {json.loads(e.payload)["body"]: e for e in await p.events()}
    assert by_body["first"].status == "failed"
    assert by_body["second"].status == "pending"  # not even planned: its sender is blocked
    assert by_body["other sender"].status == "done"
    p.clock.advance(3600)
    await p.dispatcher.run_until_idle()
    await p.dispatcher.run_until_idle()
    statuses = {json.loads(e.payload)["body"]: e.status for e in await p.events()}
    assert statuses == {"first": "done", "second": "done", "other sender": "done"}
    bob = [t for t in p.tickets() if t["summary"].endswith(BOB)]
    assert len(bob) == 1 and p.notes(bob[0]["id"])[0]["note"].startswith("second")


async def test_a_store_that_refuses_a_write_is_logged_as_such_not_as_a_bug(
    event_path: EventPath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by probing (a full disk): a StoreError while handling an event was logged as
    `dispatch.crashed`, "a bug", with a traceback. (A full disk cannot be made here; the store
    method is made to refuse as it then does.)"""
    p = event_path

    async def refuse(*args: object, **kwargs: object) -> None:
        raise StoreError("database write failed: database or disk is full")

    monkeypatch.setattr(p.store, "record_plan", refuse)
    await p.sms(BOB, "disk full?")
    with capture_logs() as logs:
        await p.dispatcher.run_until_idle()
    (line,) = [e for e in logs if e["event"] == "dispatch.store_failed"]
    assert "disk is full" in line["error"] and "exc_info" not in line
    assert not [e for e in logs if e["event"] == "dispatch.crashed"]
    monkeypatch.undo()
    p.clock.advance(3600)
    await p.dispatcher.run_until_idle()  # the store takes writes again: handled
    assert [e.status for e in await p.events()] == ["done"]


async def test_a_dispatcher_waiting_for_work_is_fresh_for_the_watchdog(
    event_path: EventPath,
) -> None:
    """Found by probing: with `poll` longer than the watchdog's age (any `poll` over 45 s is
    valid) an idle dispatcher's loop had not turned, the watchdog was withheld, and systemd
    killed an idle service every couple of minutes."""
    p = event_path
    async with anyio.create_task_group() as tg:
        await tg.start(p.dispatcher.run)
        with anyio.fail_after(5):
            while p.clock.sleepers == 0:  # its poll's sleep: waiting for work
                await anyio.sleep(0)
        p.dispatcher.heartbeat -= 3600  # no loop turn for an hour, as with `poll = "2h"`
        assert p.dispatcher.fresh(45)
        tg.cancel_scope.cancel()
