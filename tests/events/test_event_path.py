"""Issue 16: SMS in, replies and tickets out, nothing lost, nothing sent twice."""

from __future__ import annotations

import json

import aiohttp
import anyio

from daemon.logs import REDACTED
from tests.events.conftest import ANN, BOB, OUR_NUMBER, SECRET, EventPath, add_client


async def test_balance_from_a_known_client_gets_a_reply_with_their_data(
    event_path: EventPath,
) -> None:
    p = event_path
    await add_client(p.store, p.clock, ANN, first_name="Ann", balance="12.50")
    await p.sms(ANN, "Balance please")
    assert await p.dispatcher.run_until_idle() == 1
    assert p.sent_to(ANN) == ["Hi Ann, your balance is 12.50."]
    sent = p.ns.sent[-1]
    assert sent["from-number"] == OUR_NUMBER  # from the number that received it, PBX spelling
    (event,) = await p.events()
    assert event.status == "done" and event.sender == "+" + ANN and event.via == "webhook"
    (action,) = await p.store.actions_for_event(event.id)
    assert action.status == "sent" and action.rule == "balance"
    assert action.idempotency_key == f"{event.dedupe_key}:balance"
    assert action.upstream_ref  # the session the reply went into


async def test_an_unknown_sender_gets_a_dead_action_not_a_broken_sms(
    event_path: EventPath,
) -> None:
    """`{{ client.balance }}` with no client is a template error: the action is dead at once,
    with the reason — never an SMS saying "your balance is ."."""
    p = event_path
    await p.sms(BOB, "balance")
    await p.dispatcher.run_until_idle()
    assert p.sent_to(BOB) == []
    (event,) = await p.events()
    assert event.status == "dead"
    (action,) = await p.store.actions_for_event(event.id)
    assert action.status == "dead" and action.attempts == 0 and action.last_error


async def test_an_sms_becomes_a_ticket_and_the_next_one_a_note(event_path: EventPath) -> None:
    p = event_path
    await p.sms(BOB, "My phone is broken")
    await p.dispatcher.run_until_idle()
    (ticket,) = p.tickets()
    assert ticket["summary"] == "SMS from +" + BOB
    assert ticket["details"].startswith("My phone is broken")
    await p.sms(BOB, "Still broken!")
    await p.dispatcher.run_until_idle()
    assert len(p.tickets()) == 1
    (note,) = p.notes(ticket["id"])
    assert note["note"].startswith("Still broken!")
    thread = await p.store.get_halo_thread("+" + BOB, "sms-to-ticket")
    assert thread is not None and thread.ticket_id == str(ticket["id"]) and thread.notes == 1


async def test_a_thread_at_its_note_cap_starts_a_new_ticket(event_path: EventPath) -> None:
    p = event_path
    for i in range(5):  # 1 ticket + 3 notes (max_notes = 3), then a new ticket
        await p.sms(BOB, f"message {i}")
        await p.dispatcher.run_until_idle()
    tickets = p.tickets()
    assert len(tickets) == 2
    assert len(p.notes(tickets[0]["id"])) == 3


async def test_a_thread_ticket_halo_no_longer_shows_us_starts_a_new_ticket(
    event_path: EventPath,
) -> None:
    """Found by probing: Halo answering 403 for the thread's ticket (moved where our agent
    cannot see it) left the thread in place, so every later message of the sender was dead."""
    p = event_path
    await p.sms(BOB, "My phone is broken")
    await p.dispatcher.run_until_idle()
    (first,) = p.tickets()
    p.halo.faults.update(
        {"fail_next": 10**6, "fail_status": 403, "path_filter": f"/api/Tickets/{first['id']}"}
    )
    await p.sms(BOB, "Still broken!")
    await p.dispatcher.run_until_idle()
    await p.sms(BOB, "Hello?")
    await p.dispatcher.run_until_idle()
    assert [e.status for e in await p.events()] == ["done", "done", "done"]
    _, second = p.tickets()
    assert second["details"].startswith("Still broken!") and p.notes(first["id"]) == []
    (note,) = p.notes(second["id"])  # the new ticket is the sender's thread now
    assert note["note"].startswith("Hello?")


async def test_an_answer_echoing_our_token_is_stored_without_it(event_path: EventPath) -> None:
    """Found by probing: a send's answer was stored as the PBX gave it, so one that reflected
    the request's Authorization header put the access token in `actions.response`."""
    p = event_path
    p.ns.on_sent.append(lambda msg: msg.update(echo={"authorization": f"Bearer {token()}"}))

    def token() -> str:
        (live,) = p.ns.tokens
        return live

    message = p.ns.record_inbound_sms(ANN, OUR_NUMBER, "ping")
    message.pop("messagesession-id")  # a new session: the PBX answers with the Message
    await p.ns.emit("message", [message])
    await p.dispatcher.run_until_idle()
    (event,) = await p.events()
    (action,) = await p.store.actions_for_event(event.id)
    assert action.status == "sent"
    assert token() not in (action.response or "")
    assert (
        json.loads(action.response or "{}")["answer"]["echo"]["authorization"]
        == f"Bearer {REDACTED}"
    )


async def test_a_redelivery_is_acknowledged_and_does_nothing_new(event_path: EventPath) -> None:
    p = event_path
    msg = await p.sms(BOB, "hello there")
    await p.dispatcher.run_until_idle()
    url = f"{p.listener_url}/webhooks/netsapiens/message/{SECRET}"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=json.dumps([msg])) as resp:
            assert resp.status == 200
            assert (await resp.json())["duplicates"] == 1
    assert await p.dispatcher.run_until_idle() == 0
    assert len(p.tickets()) == 1 and len(await p.events()) == 1


async def test_the_listener_wakes_the_dispatcher_without_polling(event_path: EventPath) -> None:
    """The clock never moves: the reply can only come from the listener's wake-up."""
    p = event_path
    await add_client(p.store, p.clock, ANN, first_name="Ann", balance="3")
    async with anyio.create_task_group() as tg:
        await tg.start(p.dispatcher.run)
        await p.sms(ANN, "balance")
        with anyio.fail_after(5):
            while not p.sent_to(ANN):
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert p.sent_to(ANN) == ["Hi Ann, your balance is 3."]
