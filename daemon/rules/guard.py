"""The loop guard: layers that stop two auto-responders texting each other forever (DESIGN §5).

Applied by the dispatcher to each planned action before it is stored, so a refused action is
never carried out and is recorded in the plan's `skipped` with its reason. `cooldown` is the
rule's own promise ("does not act for this number again this soon"), so it holds for every
action kind — a ticket or note rule too. The other layers are for auto-replies (an `sms_reply`)
only: tickets are not auto-replies, and a missed SMS still becomes a ticket. The layers of an
auto-reply, cheapest first:

1. `outbound`  — never answer our own `message.sent` events (or anything not inbound);
2. `own number` — never answer a number we send from: `own_numbers` in the config plus every
   from-number the daemon has used (`own_numbers` table);
3. `backfilled` — never answer an event the gap filler pulled in after downtime;
4. `too old`   — never answer an event the PBX delivered more than `max_event_age` after it
   happened (received_at − occurred_at: how late it reached us, not how long it then waited
   in our inbox behind its sender's earlier events). An occurred_at in the future (the PBX's
   clock ahead of ours) counts as no delay; a missing one as a prompt delivery (the webhook is
   near-real-time, and refusing every event without a timestamp would switch replies off);
   `waited too long` — nor one that waited in our inbox more than `max_inbox_wait` before its
   rules ran (a restart after an outage, a sender held up by a failing action for long): the
   conversation is stale. Both read the stored times, so a retry or restart does not move them;
5. `echo`      — never answer a message that repeats the text of one of our recent replies;
6. `cooldown`  — per sender and rule;
7. `repeat`    — the same text from one sender is answered once per `repeat_window`;
8. `conversation cap` — at most `replies_per_conversation_per_hour` per conversation;
9. `breaker`   — when auto-replies as a whole exceed `breaker_replies` per `breaker_window`,
   all of them pause for `breaker_pause`. Its state is in the database (`guard_state`), so
   `daemon status` and `/healthz` show it, and a restart does not reset it.

The decision is a pure function of the facts the store returns; the queries are per sender
and per conversation and indexed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from daemon.clock import Clock
from daemon.config.dispatch import LoopGuardSettings
from daemon.rules.plan import PlannedAction
from daemon.store.util import from_db, to_db

log = structlog.get_logger(__name__)

BREAKER = "breaker"
HOUR = timedelta(hours=1)


class GuardStore(Protocol):
    """The store queries the guard needs (daemon.store.Store)."""

    async def own_numbers(self) -> set[str]: ...

    async def last_auto_action_at(self, phone: str, rule: str) -> datetime | None: ...

    async def count_auto_replies(
        self, *, since: datetime, conversation: str | None = None
    ) -> int: ...

    async def recent_reply_hashes(self, *, since: datetime) -> set[str]: ...

    async def answered_before(
        self, phone: str, body_hash: str, *, since: datetime, exclude_event: int
    ) -> bool: ...

    async def get_guard_state(self, name: str) -> tuple[str, datetime] | None: ...

    async def set_guard_state(self, name: str, value: str) -> None: ...

    async def clear_guard_state(self, name: str) -> None: ...


@dataclass(frozen=True)
class EventFacts:
    """What the guard needs to know about the event being answered."""

    event_id: int
    direction: str | None
    sender: str | None
    via: str
    occurred_at: datetime | None
    received_at: datetime
    body_hash: str | None


class Delivered(Protocol):
    """An event as stored: when we received it and when the PBX says it happened."""

    @property
    def received_at(self) -> datetime: ...

    @property
    def occurred_at(self) -> datetime | None: ...


def delivery_delay(event: Delivered) -> timedelta:
    """How late the PBX delivered the event: received_at − occurred_at, never negative (a PBX
    clock ahead of ours is not a delay), zero without an occurred_at (nothing to measure)."""
    if event.occurred_at is None:
        return timedelta(0)
    return max(timedelta(0), event.received_at - event.occurred_at)


@dataclass(frozen=True)
class BreakerState:
    open: bool
    until: datetime | None = None
    reason: str | None = None


class LoopGuard:
    def __init__(
        self,
        settings: LoopGuardSettings,
        store: GuardStore,
        *,
        clock: Clock,
        own_numbers: Iterable[str] = (),
    ):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.configured_numbers = frozenset(own_numbers)

    async def refuse(
        self,
        event: EventFacts,
        action: PlannedAction,
        cooldown: float | None,
        *,
        planned: Sequence[PlannedAction] = (),
    ) -> str | None:
        """The reason this action must not be carried out, or None: for an auto-reply every
        layer below, for any other action its rule's cooldown only. `planned`: the actions of
        the same plan already let through, not stored yet — they count towards the
        conversation's cap (found by probing: two reply rules on one event went past it)."""
        if not action.auto_reply:
            phone = event.sender or action.phone
            return await self._cooling(phone, action.rule, cooldown)
        s, now = self.settings, self.clock.now()
        if event.direction != "inbound":
            return "outbound"
        phone = event.sender or action.phone
        if phone is None:
            return "no sender"
        if phone in self.configured_numbers or phone in await self.store.own_numbers():
            return "own number"
        if event.via == "backfill":
            return "backfilled"
        if delivery_delay(event) > timedelta(seconds=s.max_event_age):
            return "too old"
        if now - event.received_at > timedelta(seconds=s.max_inbox_wait):
            return "waited too long"
        if event.body_hash is not None and event.body_hash in await self.store.recent_reply_hashes(
            since=now - timedelta(seconds=s.echo_window)
        ):
            return "echo"
        if reason := await self._cooling(phone, action.rule, cooldown):
            return reason
        if event.body_hash is not None and await self.store.answered_before(
            phone,
            event.body_hash,
            since=now - timedelta(seconds=s.repeat_window),
            exclude_event=event.event_id,
        ):
            return "repeat"
        if action.conversation is not None:
            recent = await self.store.count_auto_replies(
                since=now - HOUR, conversation=action.conversation
            )
            recent += sum(
                1 for a in planned if a.auto_reply and a.conversation == action.conversation
            )
            if recent >= s.replies_per_conversation_per_hour:
                return "conversation cap"
        if (await self.breaker()).open:
            return "breaker"
        return None

    async def _cooling(self, phone: str | None, rule: str, cooldown: float | None) -> str | None:
        """ "cooldown" while the rule's last action for this number (not dead) is that recent."""
        if not cooldown or phone is None:
            return None
        last = await self.store.last_auto_action_at(phone, rule)
        if last is not None and self.clock.now() - last < timedelta(seconds=cooldown):
            return "cooldown"
        return None

    async def breaker(self) -> BreakerState:
        """The breaker as stored; it closes by itself once its pause has passed."""
        found = await self.store.get_guard_state(BREAKER)
        if found is None:
            return BreakerState(False)
        value, _ = found
        try:
            data = json.loads(value)
            until = from_db(data.get("open_until"))
        except (ValueError, TypeError, AttributeError):
            until = None
        if until is None or until <= self.clock.now():
            await self.store.clear_guard_state(BREAKER)
            log.info("guard.breaker_closed")
            return BreakerState(False)
        return BreakerState(True, until, str(data.get("reason") or ""))

    async def after_reply(self) -> None:
        """Called when an auto-reply was planned: trip the breaker when their rate is abnormal."""
        s, now = self.settings, self.clock.now()
        recent = await self.store.count_auto_replies(
            since=now - timedelta(seconds=s.breaker_window)
        )
        if recent < s.breaker_replies or (await self.breaker()).open:
            return
        until = now + timedelta(seconds=s.breaker_pause)
        reason = f"{recent} auto-replies in {s.breaker_window:g}s (limit {s.breaker_replies})"
        await self.store.set_guard_state(
            BREAKER, json.dumps({"open_until": to_db(until), "reason": reason})
        )
        log.error("guard.breaker_opened", reason=reason, until=until.isoformat())
