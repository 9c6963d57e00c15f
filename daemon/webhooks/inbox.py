"""Events → inbox rows: the one place that decides what an inbox row says about an event.

The listener (`via="webhook"`) and the gap filler (`via="backfill"`) both insert through
`new_event`, so a message that arrives both ways is described identically (same dedupe key,
sender, occurred_at, body_hash) and only `via` tells them apart — the dispatcher never
auto-replies to a backfilled event, which may be hours old.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol, get_args

from daemon.store import InsertedEvent, NewEvent
from daemon.webhooks.event import Event, body_hash

__all__ = ["VIAS", "InboxWriter", "Via", "new_event"]

Via = Literal["webhook", "backfill"]
VIAS: tuple[str, ...] = get_args(Via)


class InboxWriter(Protocol):
    """The slice of `daemon.store.Store` that puts events in the inbox: durable when it
    returns (group-committed), duplicates by dedupe key flagged rather than inserted."""

    async def insert_events(self, events: Sequence[NewEvent]) -> Sequence[InsertedEvent]: ...


def new_event(event: Event, *, via: Via, received_at: datetime) -> NewEvent:
    """The inbox row for `event`: its canonical JSON as payload, the sender (E.164, as parsing
    normalised it) that orders one correspondent's events, when it happened at the PBX, and
    the hash of its text for the loop guard."""
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, not {via!r}")
    return NewEvent(
        source=event.source,
        kind=event.kind,
        dedupe_key=event.dedupe_key,
        payload=event.to_json(),
        received_at=received_at,
        sender=event.from_number,
        via=via,
        occurred_at=event.occurred_at,
        body_hash=body_hash(event.body),
    )
