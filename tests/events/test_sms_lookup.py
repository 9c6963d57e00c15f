"""An SMS reply whose outcome is unknown is looked up before it is sent again — also when it
had to start a new message session (the inbound message carried no session id, or the PBX
refused the one it carried), whose id only the lost answer knew: the look-up then reads the
PBX user's session list for sessions with the recipient, active since the attempt started.

Real listener, real SQLite store, the NetSapiens and Halo simulators; the clock is injected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.events.conftest import ANN, OUR_NUMBER, EventPath

SESSION_LIST = "/users/101/messagesessions"


def lose_the_next_answer(p: EventPath) -> None:
    """The PBX sends the next SMS, then fails to answer (a 500 after acting): the client cannot
    know it went. (A path filter cannot tell `.../users/101/messages`, which starts a session,
    from `.../users/101/messagesessions/<id>/messages`, so the simulator's send hook does it.)"""

    def hook(message: dict[str, Any]) -> None:
        p.ns.on_sent.remove(hook)
        raise RuntimeError("the answer is lost")

    p.ns.on_sent.append(hook)


async def _arrive(p: EventPath, how: str) -> None:
    """Ann's "ping" arrives by webhook, without a usable session id."""
    message = p.ns.record_inbound_sms(ANN, OUR_NUMBER, "ping")
    if how == "no session id":
        message.pop("messagesession-id")
    else:
        p.ns.reject_unknown_sessions = True
        message["messagesession-id"] = "0" * 32  # a session the PBX does not know
    await p.ns.emit("message", [message])


async def _action(p: EventPath) -> tuple[Any, Any]:
    (event,) = await p.events()
    (action,) = await p.store.actions_for_event(event.id)
    return event, action


@pytest.mark.parametrize("how", ["no session id", "session refused"])
async def test_a_new_session_reply_whose_answer_was_lost_is_found_not_sent_twice(
    event_path: EventPath, how: str
) -> None:
    p = event_path
    lose_the_next_answer(p)
    await _arrive(p, how)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]  # the PBX sent it; its answer never came back
    event, action = await _action(p)
    assert (event.status, action.status) == ("failed", "failed")
    assert json.loads(action.response) == {"uncertain": True}

    p.clock.advance(600)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]  # looked, found: not sent again
    event, action = await _action(p)
    assert (event.status, action.status) == ("done", "sent")
    response = json.loads(action.response)
    assert response["found"] is True and response["found_in"] == "new session"
    (sent,) = [m for m in p.ns.sent if m["message"] == "pong: ping"]
    assert response["session_id"] == sent["messagesession-id"]
    assert action.upstream_ref == sent["id"]


@pytest.mark.parametrize("how", ["no session id", "session refused"])
async def test_a_new_session_reply_that_never_left_is_sent_once_after_looking(
    event_path: EventPath, how: str
) -> None:
    """A 502 from a proxy before the PBX saw the send: uncertain, so the retry looks, finds
    nothing and sends — once — and the action says it looked first."""
    p = event_path
    p.ns.faults.update({"html_next": 1, "path_filter": "/users/101/"})
    await _arrive(p, how)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == []
    _, action = await _action(p)
    assert json.loads(action.response) == {"uncertain": True}

    p.clock.advance(600)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]
    event, action = await _action(p)
    assert (event.status, action.status) == ("done", "sent")
    response = json.loads(action.response)
    assert response["looked_first"] == "not found"
    assert response["new_session"] == how


async def test_a_failed_session_list_is_retried_never_taken_for_not_sent(
    event_path: EventPath,
) -> None:
    p = event_path
    lose_the_next_answer(p)
    await _arrive(p, "no session id")
    await p.dispatcher.run_until_idle()
    p.ns.faults.update({"fail_next": 1, "fail_status": 503, "path_filter": SESSION_LIST})
    p.clock.advance(600)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]
    event, action = await _action(p)
    assert action.status == "failed" and (action.last_error or "").startswith("look-up:")
    assert json.loads(action.response) == {"uncertain": True}

    p.clock.advance(3600)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]
    event, action = await _action(p)
    assert (event.status, action.status) == ("done", "sent")
    assert json.loads(action.response)["found_in"] == "new session"


def _years_of_messages(p: EventPath) -> None:
    """A regular customer's session: the PBX keeps one per correspondent, and the look-up
    gave up after 2,000 messages read oldest first (found by probing: the reply that went ended
    dead)."""
    for i in range(2500):
        p.ns.record_inbound_sms(ANN, OUR_NUMBER, f"old message {i}")


def _a_message_from_the_year_one(p: EventPath) -> None:
    """`0001-01-01T00:00:00+01:00` raised OverflowError out of the look-up, past the
    dispatcher's typed errors (found by probing): such a time is unknown."""
    odd = p.ns.record_inbound_sms(ANN, OUR_NUMBER, "from the year one")
    odd["timestamp"] = "0001-01-01T00:00:00+01:00"


@pytest.mark.parametrize(
    "history",
    [None, _years_of_messages, _a_message_from_the_year_one],
    ids=["a new session", "years of messages", "a message from the year one"],
)
async def test_a_reply_into_the_messages_own_session_is_found_there(
    event_path: EventPath, history: Callable[[EventPath], None] | None
) -> None:
    p = event_path
    if history is not None:
        history(p)
    lose_the_next_answer(p)
    await p.sms(ANN, "ping")
    await p.dispatcher.run_until_idle()
    p.clock.advance(600)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]
    event, action = await _action(p)
    assert (event.status, action.status) == ("done", "sent")
    response = json.loads(action.response)
    assert response["found"] is True and response["found_in"] == "event session"


@pytest.mark.parametrize("how", ["no session id", "session refused"])
async def test_a_lost_reply_is_found_when_the_pbx_clock_runs_behind_ours(
    event_path: EventPath, how: str
) -> None:
    """The PBX's clock runs 10 minutes behind ours (within `max_event_age`, so Ann is still
    answered), so its timestamps on our lost reply are 10 minutes older than the attempt by our
    clock — past the 2-minute skew allowance. The look-up also reaches back by the lag this
    event showed (received_at − occurred_at), and finds it."""
    p = event_path
    p.ns.wall = lambda: p.clock.now() - timedelta(minutes=10)
    lose_the_next_answer(p)
    await _arrive(p, how)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]
    p.clock.advance(600)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]  # found, not sent twice
    event, action = await _action(p)
    assert (event.status, action.status) == ("done", "sent")
    assert json.loads(action.response)["found_in"] == "new session"
