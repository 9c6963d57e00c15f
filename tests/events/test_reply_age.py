"""The loop guard's age layers: "too old" is how late the PBX delivered an event (received_at −
occurred_at), not how long it then waited in our own inbox; a second, larger bound on that wait
(`max_inbox_wait`) keeps a restart after a long outage from answering stale conversations.

Real listener, real SQLite store, the NetSapiens and Halo simulators; the clock is injected, so
"20 minutes of Halo outage" is the clock moving, never a sleep.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.sandbox.netsapiens_state import iso
from tests.events.conftest import ANN, OUR_NUMBER, RULES, EventPath, open_event_path


def _patient(text: str) -> str:
    patient = 'max_attempts = 30\nbackoff = "30s"\nbackoff_cap = "2m"'
    out = text.replace('max_attempts = 3\nbackoff = "10s"', patient)
    assert "max_attempts = 30" in out
    return out


@pytest.fixture
async def patient_path(tmp_path: Path) -> AsyncIterator[EventPath]:
    """The event path with enough attempts that a 20-minute Halo outage is retried through
    (the shared fixture's three attempts would give up within a minute)."""
    async with open_event_path(tmp_path, RULES, edit=_patient) as path:
        yield path


async def test_a_prompt_message_queued_behind_a_blocked_one_is_still_answered(
    patient_path: EventPath,
) -> None:
    """Ann's first message becomes a ticket while Halo is down for 20 minutes; her "ping" a
    second later arrived promptly and waits behind it (one sender, strictly in order). When it
    is finally planned it is 20 minutes in our inbox, but it was not delivered late: answered."""
    p = patient_path
    p.halo.faults.update({"fail_next": 10_000, "fail_status": 503, "path_filter": "/api/Tickets"})
    await p.sms(ANN, "my line is dead")
    p.clock.advance(1)
    await p.sms(ANN, "ping")
    await p.dispatcher.run_until_idle()
    for _ in range(20):  # Halo stays down; the ticket is retried, the ping waits
        p.clock.advance(60)
        await p.dispatcher.run_until_idle()
    by_body = {json.loads(e.payload)["body"]: e for e in await p.events()}
    assert by_body["my line is dead"].status == "failed"
    assert by_body["ping"].status == "pending" and by_body["ping"].plan is None
    assert p.sent_to(ANN) == []

    p.halo.faults.update({"fail_next": 0})  # Halo is back
    p.clock.advance(150)  # the ticket's next retry is due
    await p.dispatcher.run_until_idle()
    await p.dispatcher.run_until_idle()
    statuses = {json.loads(e.payload)["body"]: e.status for e in await p.events()}
    assert statuses == {"my line is dead": "done", "ping": "done"}
    assert p.sent_to(ANN) == ["pong: ping"]
    assert "too old" not in await p.skipped()


async def test_a_message_the_pbx_delivered_late_is_too_old(event_path: EventPath) -> None:
    p = event_path
    message = p.ns.record_inbound_sms(ANN, OUR_NUMBER, "ping")
    p.clock.advance(16 * 60)  # the PBX posts it 16 minutes after it happened (limit 15m)
    await p.ns.emit("message", [message])
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == [] and await p.skipped() == ["too old"]


async def test_a_delivery_within_max_event_age_is_answered(event_path: EventPath) -> None:
    p = event_path
    message = p.ns.record_inbound_sms(ANN, OUR_NUMBER, "ping")
    p.clock.advance(14 * 60)
    await p.ns.emit("message", [message])
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]


async def test_a_pbx_clock_ahead_of_ours_is_not_a_late_delivery(event_path: EventPath) -> None:
    """An occurred_at in the future (the PBX's clock runs ahead) counts as delivered at once."""
    p = event_path
    message = p.ns.record_inbound_sms(ANN, OUR_NUMBER, "ping")
    message["timestamp"] = iso(p.clock.now() + timedelta(hours=3))
    await p.ns.emit("message", [message])
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]
    (event,) = await p.events()
    assert event.occurred_at is not None and event.occurred_at > event.received_at


async def test_without_occurred_at_delivery_counts_as_prompt(event_path: EventPath) -> None:
    """No timestamp in the payload: how late it came cannot be known, so it is taken as prompt
    (only the inbox bound applies)."""
    p = event_path
    message = p.ns.record_inbound_sms(ANN, OUR_NUMBER, "ping")
    message.pop("timestamp")
    p.clock.advance(3 * 3600)  # whatever happened at the PBX meanwhile is not visible to us
    p.ns.live_subscriptions()  # (still subscribed: 24 h lifetime)
    await p.ns.emit("message", [message])
    await p.dispatcher.run_until_idle()
    (event,) = await p.events()
    assert event.occurred_at is None
    assert p.sent_to(ANN) == ["pong: ping"]


async def test_an_event_left_in_the_inbox_through_a_long_outage_gets_no_reply(
    event_path: EventPath,
) -> None:
    """Acknowledged just before the service went down for two days: on restart its ticket is
    still opened, but nobody is texted about a two-day-old conversation."""
    p = event_path
    await p.sms(ANN, "ping")
    await p.sms("15551230009", "my line is dead")
    p.clock.advance(2 * 86400)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == []
    assert await p.skipped() == ["waited too long"]
    assert len(p.tickets()) == 1


async def test_the_inbox_bound_is_max_inbox_wait(event_path: EventPath) -> None:
    """Default one hour: 59 minutes in the inbox is still answered."""
    p = event_path
    await p.sms(ANN, "ping")
    p.clock.advance(59 * 60)
    await p.dispatcher.run_until_idle()
    assert p.sent_to(ANN) == ["pong: ping"]
