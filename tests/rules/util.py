"""Builders for rule tests: rules, events and contacts written as compactly as a table row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daemon.config.dispatch import BusinessHours
from daemon.config.models import Rule
from daemon.rules.engine import RuleSet
from daemon.store.contacts import Contact
from daemon.webhooks.event import Event

# A Monday, 15:00 UTC = 10:00 in New York.
NOW = datetime(2025, 1, 6, 15, 0, tzinfo=UTC)
SENDER = "+15551230000"
OURS = "+15559870000"
RAW = {
    "id": "a1",
    "direction": "orig",
    "from-number": "15551230000",
    "dialed": "15559870000",
    "terminating-number": "5559870000",
    "text": "balance?",
    "messagesession-id": "sess-1",
    "domain": "acme",
}


def rule(name: str = "r", **fields: Any) -> Rule:
    data: dict[str, Any] = {"name": name, "on": "message.received", "action": "ignore"}
    data.update(fields)
    if data["action"] == "sms_reply":
        data.setdefault("text", "hi")
    if data["action"] == "halo_ticket":
        data.setdefault("ticket", {"summary": "SMS from {{ event.from }}"})
    return Rule.model_validate(data)


def sms(name: str = "r", text: str = "hi", **fields: Any) -> Rule:
    return rule(name, action="sms_reply", text=text, **fields)


def ticket(name: str = "r", ticket: dict[str, Any] | None = None, **fields: Any) -> Rule:
    body = ticket if ticket is not None else {"summary": "SMS from {{ event.from }}"}
    return rule(name, action="halo_ticket", ticket=body, **fields)


def event(**fields: Any) -> Event:
    values: dict[str, Any] = {
        "source": "netsapiens",
        "kind": "message.received",
        "from_number": SENDER,
        "to_number": OURS,
        "body": "balance?",
        "direction": "inbound",
        "session_id": "sess-1",
        "domain": "acme",
        "user": "101",
        "occurred_at": datetime(2025, 1, 6, 14, 59, tzinfo=UTC),
        "duration": None,
        "dedupe_key": "netsapiens:message:a1",
        "raw": dict(RAW),
    }
    values.update(fields)
    return Event(**values)


def contact(table: str = "blesta_clients", **data: Any) -> Contact:
    record = {"id": "17", "first_name": "Ada", "balance": "12.50", **data}
    return Contact(phone=SENDER, table=table, record_id="17", name="Ada Lovelace", data=record)


def ruleset(
    *rules: Rule, timezone: str = "America/New_York", hours: BusinessHours | None = None
) -> RuleSet:
    return RuleSet.compile(list(rules), timezone=timezone, business_hours=hours)
