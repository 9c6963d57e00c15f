"""The rendered requests: SMS numbers in the PBX's spelling, tickets, and the plan's JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.rules.plan import Plan, PlannedAction, SmsRequest
from daemon.store.contacts import Contact
from daemon.webhooks.events import parse_payload
from tests.rules.util import NOW, RAW, SENDER, contact, event, rule, ruleset, sms, ticket


@pytest.mark.parametrize(
    ("raw", "changes", "from_number", "to_number"),
    [
        (RAW, {}, "15559870000", "15551230000"),  # `dialed` first
        ({**RAW, "dialed": None}, {}, "5559870000", "15551230000"),  # then terminating-number
        ({**RAW, "dialed": " "}, {}, "5559870000", "15551230000"),  # blank is absent
        ({"id": "x"}, {}, "+15559870000", "+15551230000"),  # else the E.164 numbers, unchanged
        ({**RAW, "from-number": 15551230000}, {}, "15559870000", "15551230000"),  # JSON number
        (RAW, {"to_number": None}, "15559870000", "15551230000"),
    ],
)
def test_sms_numbers_in_the_pbx_spelling(
    raw: dict[str, Any], changes: dict[str, Any], from_number: str, to_number: str
) -> None:
    (action,) = ruleset(sms("a")).evaluate(event(raw=raw, **changes), contact=None, now=NOW).actions
    assert action.sms == SmsRequest(
        from_number=from_number,
        to_number=to_number,
        text="hi",
        session_id="sess-1",
        domain="acme",
        user="101",
    )


def test_sms_from_a_real_payload() -> None:
    payload = {**RAW, "text": "Balance please", "terminating-user-id": "101"}
    (ev,) = parse_payload("message", [payload]).events
    rules = ruleset(
        sms("balance", match={"body": "(?i)^balance"}, text="Hi {{ client.first_name }}")
    )
    (action,) = rules.evaluate(ev, contact=contact(), now=NOW).actions
    assert action.sms is not None
    assert (action.sms.from_number, action.sms.to_number) == ("15559870000", "15551230000")
    assert action.sms.text == "Hi Ada" and action.sms.session_id == "sess-1"
    assert action.phone == "+15551230000" and action.key == "netsapiens:message:a1:balance"


TICKETS: list[tuple[str, dict[str, Any], str, Any, dict[str, Any], str]] = [
    (
        "rendered recursively, other values kept",
        {
            "summary": "SMS from {{ event.from }}",
            "details": "{{ event.body }}",
            "tickettype_id": 1,
            "urgent": False,
            "customfields": [{"id": 7, "value": "{{ event.domain }}"}],
        },
        "blesta_clients",
        None,
        {
            "summary": "SMS from +15551230000",
            "details": "balance?",
            "tickettype_id": 1,
            "urgent": False,
            "customfields": [{"id": 7, "value": "acme"}],
        },
        "balance?",
    ),
    (
        "note taken out of the ticket",
        {"summary": "s", "details": "d", "note": "Again: {{ event.body }}"},
        "blesta_clients",
        None,
        {"summary": "s", "details": "d"},
        "Again: balance?",
    ),
    (
        "no note, no details: the event's body",
        {"summary": "s"},
        "blesta_clients",
        None,
        {"summary": "s"},
        "balance?",
    ),
    (
        "a halo client: its id",
        {"summary": "s"},
        "halo_clients",
        {"id": 42},
        {"summary": "s", "client_id": 42},
        "balance?",
    ),
    (
        "a halo user: its client_id",
        {"summary": "s"},
        "halo_users",
        {"id": 9, "client_id": 42},
        {"summary": "s", "client_id": 42},
        "balance?",
    ),
    (
        "the rule's client_id wins",
        {"summary": "s", "client_id": "{{ 7 }}"},
        "halo_clients",
        {"id": 42},
        {"summary": "s", "client_id": "7"},
        "balance?",
    ),
    (
        "not a halo table: no client_id",
        {"summary": "s"},
        "blesta_clients",
        {"id": 42},
        {"summary": "s"},
        "balance?",
    ),
    (
        "names passed through for the dispatcher to resolve",
        {"summary": "s", "tickettype": "Incident", "team": "{{ 'Service' }} Desk", "priority": 3},
        "blesta_clients",
        None,
        {"summary": "s", "tickettype": "Incident", "team": "Service Desk", "priority": 3},
        "balance?",
    ),
]


@pytest.mark.parametrize(
    ("body", "table", "data", "expected", "note"),
    [t[1:] for t in TICKETS],
    ids=[t[0] for t in TICKETS],
)
def test_ticket_request(
    body: dict[str, Any],
    table: str,
    data: dict[str, Any] | None,
    expected: dict[str, Any],
    note: str,
) -> None:
    who = None if data is None else Contact(SENDER, table, "17", "Ada", data)
    rules = ruleset(ticket("t", body, thread=True, max_notes=5))
    (action,) = rules.evaluate(event(), contact=who, now=NOW).actions
    assert action.error is None, action.error
    assert action.kind == "halo_ticket" and not action.auto_reply
    assert action.ticket is not None
    assert action.ticket.ticket == expected
    assert action.ticket.note == note
    assert (action.ticket.thread, action.ticket.max_notes) == (True, 5)


def test_a_missed_call_ticket_has_an_empty_note() -> None:
    rules = ruleset(ticket("t", {"summary": "Missed call from {{ event.from }}"}, on="call.missed"))
    ev = event(kind="call.missed", body=None, session_id=None, raw={})
    (action,) = rules.evaluate(ev, contact=None, now=NOW).actions
    assert action.ticket is not None and action.ticket.note == ""
    assert action.ticket.ticket == {"summary": "Missed call from +15551230000"}


def test_plan_json_round_trip() -> None:
    rules = ruleset(
        sms("reply", text="Hi {{ client.first_name }} ☎", **{"continue": True}),
        ticket(
            "tk",
            {"summary": "SMS", "nested": {"list": [1, "{{ event.user }}"]}, "flag": True},
            **{"continue": True},
        ),
        sms("broken", text="{{ nope }}", **{"continue": True}),
        rule("log"),
    )
    plan = rules.evaluate(event(), contact=contact("halo_clients"), now=NOW)
    assert plan.matched == ["reply", "tk", "broken", "log"]
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert [a.request_json() for a in again.actions] == [a.request_json() for a in plan.actions]
    assert isinstance(again.actions[0], PlannedAction)
    assert again.actions[1].ticket is not None
    assert again.actions[1].ticket.ticket["client_id"] == "17"


def test_evaluation_is_pure() -> None:
    rules = ruleset(sms("a", text="{{ now.isoformat() }} {{ client.first_name }}"))
    ev, who = event(), contact()
    first = rules.evaluate(ev, contact=who, now=NOW)
    assert rules.evaluate(ev, contact=who, now=NOW) == first
    later = rules.evaluate(ev, contact=who, now=datetime(2025, 1, 6, 16, tzinfo=UTC))
    assert later != first
