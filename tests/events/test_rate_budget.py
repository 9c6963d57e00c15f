"""An upstream's spent rate budget defers actions; it does not hold the dispatcher's slots.

Halo's budget (here 3 requests per 5 minutes, for a short test) spent by a burst of tickets
used to make every further action wait inside the budget, up to the whole window, each holding
a dispatcher slot — and SMS replies to other senders waited behind them. Now an action that
would wait longer than ACTION_BUDGET_WAIT is put back, without counting an attempt, for when
the budget has room.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from tests.events.conftest import (
    ANN,
    T0,
    add_client,
    fail_the_record_of_the_next_send,
    open_event_path,
)

SENDERS = [f"155512399{i:02d}" for i in range(5)]  # unknown numbers: a ticket each


def _budget(text: str) -> str:
    return text.replace(
        'client_secret = "halo-secret"\n', 'client_secret = "halo-secret"\nrate_limit = "3/5m"\n'
    )


async def test_a_spent_budget_defers_tickets_and_replies_go_on(
    tmp_path: Path, extra_config: str
) -> None:
    async with open_event_path(tmp_path, extra_config, edit=_budget) as p:
        await add_client(p.store, p.clock, ANN, first_name="Ann", balance="12.00")
        for sender in SENDERS:
            await p.sms(sender, "help please")
        await p.sms(ANN, "balance")
        with anyio.fail_after(30):  # a slot held for the budget's window would hang here
            await p.dispatcher.run_until_idle()

        assert p.sent_to(ANN) == ["Hi Ann, your balance is 12.00."]
        made = len(p.tickets())
        assert 0 < made < len(SENDERS)
        deferred = []
        for event in await p.events():
            for action in await p.store.actions_for_event(event.id):
                if action.kind == "halo_ticket" and action.status != "sent":
                    deferred.append(action)
        assert len(deferred) == len(SENDERS) - made
        for action in deferred:
            assert (action.status, action.attempts) == ("failed", 0)  # not an attempt
            assert action.attempt_started_at is None  # nothing of it left
            assert "deferred" in (action.last_error or "") and "rate budget" in action.last_error
            assert action.next_attempt_at is not None
            assert (action.next_attempt_at - T0).total_seconds() > 60  # when there is room

        for _ in range(len(SENDERS)):  # each window lets a few more through
            p.clock.advance(6 * 60)
            with anyio.fail_after(30):
                await p.dispatcher.run_until_idle()
        tickets = p.tickets()
        assert sorted(t["summary"] for t in tickets) == sorted(f"SMS from +{s}" for s in SENDERS)
        for event in await p.events():
            assert event.status == "done", (event.id, event.status, event.last_error)
            for action in await p.store.actions_for_event(event.id):
                assert action.status == "sent" and action.attempts == 1


TICKET = """
[[rules]]
name = "sms-to-ticket"
on = "message.received"
action = "halo_ticket"
ticket = { summary = "SMS from {{ event.from }}", details = "{{ event.body }}", tickettype_id = 1 }
"""


async def test_a_look_up_put_off_by_the_budget_keeps_the_doubt(tmp_path: Path) -> None:
    """Found by probing: an attempt whose record failed after Halo created the ticket left its
    doubt only in `attempt_started_at`; the deferral of the next attempt's look-up cleared it,
    and the attempt after that created the ticket again without looking."""
    a = "15551239001"
    async with open_event_path(tmp_path, TICKET, edit=_budget) as p:
        fail_the_record_of_the_next_send(p)
        await p.sms(a, "help please")
        await p.dispatcher.run_until_idle()
        (action,) = await p.store.list_actions()
        assert action.attempt_started_at is not None and len(p.tickets()) == 1
        for sender in SENDERS:  # other senders spend Halo's budget meanwhile
            await p.sms(sender, "help please")
        await p.dispatcher.run_until_idle()
        p.clock.advance(30)  # A's retry is due: its look-up is put off
        await p.dispatcher.run_until_idle()
        deferred = await p.store.get_action(action.id)
        assert deferred is not None and (deferred.last_error or "").startswith("deferred:")
        assert deferred.attempt_started_at is not None
        for _ in range(4):  # later windows have room
            p.clock.advance(6 * 60)
            await p.dispatcher.run_until_idle()
        assert [t["summary"] for t in p.tickets()].count(f"SMS from +{a}") == 1
        settled = await p.store.get_action(action.id)
        assert settled is not None and settled.status == "sent"
