"""What the rules decide about one event: the plan, stored with the event before anything is sent.

Rules are evaluated once per event (`daemon.rules.engine`); the result is a `Plan` of
`PlannedAction`s whose requests are fully rendered, so a retry after a crash or an outage sends
exactly what was decided then — not what a later config or a changed client record would say.
Each planned action becomes one `actions` row keyed `<dedupe_key>:<rule>`: the unit of retry.

Pure data, JSON round-trippable (`to_json`/`from_json`), no I/O.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ActionKind = Literal["sms_reply", "halo_ticket", "ignore"]


def action_key(dedupe_key: str, rule: str) -> str:
    """The idempotency key of the action a rule takes on an event."""
    return f"{dedupe_key}:{rule}"


@dataclass(frozen=True)
class SmsRequest:
    """An SMS reply, in the PBX's own spelling of the numbers (as the event carried them)."""

    from_number: str  # the number that received the message: we answer from it
    to_number: str  # the sender
    text: str
    session_id: str | None  # reply in the same message session when the PBX gave one
    domain: str | None
    user: str | None  # the PBX user that owns the receiving number
    upstream: str | None = None  # the NetSapiens upstream to send through (None: the first)


@dataclass(frozen=True)
class TicketRequest:
    """A Halo ticket (or, when threading finds an open ticket, a note on it)."""

    ticket: dict[str, Any]  # rendered `ticket` table: summary, details, and the *_id fields
    thread: bool  # later messages from the same number become notes on the open ticket
    max_notes: int
    note: str  # the text of the note when this event is added to an open ticket
    upstream: str | None = None  # the Halo upstream (None: the first)


@dataclass(frozen=True)
class PlannedAction:
    rule: str
    kind: ActionKind
    key: str  # action_key(event.dedupe_key, rule)
    phone: str | None  # the correspondent (E.164): the sender of the event
    conversation: str | None  # the message session id, else "<our number>|<their number>"
    auto_reply: bool  # an SMS we send unasked: subject to the loop guard
    sms: SmsRequest | None = None
    ticket: TicketRequest | None = None
    error: str | None = None  # a template or rule error: the action is recorded `dead` at once

    def request_json(self) -> str:
        """The `actions.request` column: what will be sent, as JSON."""
        body: dict[str, Any] = {"kind": self.kind}
        if self.sms is not None:
            body["sms"] = asdict(self.sms)
        if self.ticket is not None:
            body["ticket"] = asdict(self.ticket)
        if self.error is not None:
            body["error"] = self.error
        return json.dumps(body, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Skipped:
    """A rule that matched but did not act, and why (`cooldown`, `own number`, `echo`, ...)."""

    rule: str
    reason: str


@dataclass(frozen=True)
class Plan:
    actions: list[PlannedAction] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)  # rule names that matched, in order
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ignored(self) -> bool:
        """No rule acted: the event ends `ignored`."""
        return not any(a.kind != "ignore" for a in self.actions)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        actions = []
        for a in data.get("actions", []):
            sms = SmsRequest(**a["sms"]) if a.get("sms") else None
            ticket = TicketRequest(**a["ticket"]) if a.get("ticket") else None
            actions.append(PlannedAction(**{**a, "sms": sms, "ticket": ticket}))
        return cls(
            actions=actions,
            matched=list(data.get("matched", [])),
            skipped=[Skipped(**s) for s in data.get("skipped", [])],
        )
