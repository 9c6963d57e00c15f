"""The dispatcher: works the inbox — plan each event once, then carry out its actions.

Why this shape (DESIGN §5, issue 16):
- Events are claimed with a lease, oldest first, with bounded concurrency; the store's claim
  skips an event whose sender has an earlier unfinished one, so one phone number's events are
  handled strictly in order while other senders proceed. The lease alone does not keep an event
  from being handled twice — it can run out mid-handling (a slow upstream, the clock stepping
  forward) — so the ids being handled are kept in `handling` and excluded from every claim.
- Rules are evaluated once per event; the plan — every rendered request — is stored with the
  event and its action rows in one transaction before anything is sent. A retry, a restart or a
  reload carries out what was decided, never a re-evaluation.
- The action row is the unit of retry, keyed `<dedupe_key>:<rule>`. A template or rule error is
  recorded `dead` at once; a stored request without its body (`sms`/`ticket`) is such an
  error too (`RuleError`, dead), never a crash. The dispatcher owns retries (the HTTP core
  does not retry an action): backoff with full jitter, `dead` after `max_attempts`; final
  answers (400, 404) die at once.
- Before each upstream call the attempt's start is committed (`attempt_started_at`). If the
  process dies before the outcome is written, or the call ended without a certain answer, the
  next attempt (or a replay) first looks whether it already happened. Certain means a clear
  rejection (a 4xx other than 408/429) or a connection never made; anything else after the
  request left — a timeout, a 5xx, a 2xx whose body is unusable, a store error after the
  create — may hide an upstream that acted.
- The listener wakes the dispatcher with the ids it just committed, so a new event is handled at
  once; a slow poll finds retries that became due.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.clients.priority import ActionScope, action_requests
from daemon.clock import Clock
from daemon.config.dispatch import DispatchSettings
from daemon.crashpoints import crashpoint
from daemon.errors import (
    AuthError,
    BudgetExhausted,
    ConnectError,
    DaemonError,
    RuleError,
    StoreError,
    UpstreamError,
    UpstreamUnavailable,
)
from daemon.logs import redact_text
from daemon.phones import to_e164
from daemon.rules.actions import HaloActions, Outcome, SmsActions
from daemon.rules.engine import RuleSet
from daemon.rules.guard import EventFacts, LoopGuard, delivery_delay
from daemon.rules.plan import Plan, PlannedAction, Skipped, SmsRequest, TicketRequest
from daemon.store import ActionRow, EventRow, NewAction, Store
from daemon.webhooks.event import Event, body_hash

log = structlog.get_logger(__name__)

FINAL = ("sent", "dead")


@dataclass(frozen=True)
class Executors:
    """Where actions go: the SMS and Halo executors by upstream name, and the defaults."""

    sms: Mapping[str, SmsActions]
    halo: Mapping[str, HaloActions]
    default_sms: str | None = None
    default_halo: str | None = None

    def sms_for(self, req: SmsRequest) -> SmsActions:
        name = req.upstream or self.default_sms
        if name is None or name not in self.sms:
            raise DaemonError(f"no NetSapiens upstream {name!r} to send the SMS through")
        return self.sms[name]

    def halo_for(self, req: TicketRequest) -> HaloActions:
        name = req.upstream or self.default_halo
        if name is None or name not in self.halo:
            raise DaemonError(f"no Halo upstream {name!r} for the ticket")
        return self.halo[name]


@dataclass(frozen=True)
class RuleRoutes:
    """Per rule: the upstream its actions use (`sms_upstream`, `halo_upstream`)."""

    sms: Mapping[str, str | None]
    halo: Mapping[str, str | None]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        *,
        rules: Callable[[], RuleSet],
        routes: Callable[[], RuleRoutes],
        executors: Executors,
        guard: LoopGuard,
        clock: Clock,
        settings: DispatchSettings,
        region: str = "US",
        rng: random.Random | None = None,
    ):
        self.store = store
        self._rules = rules
        self._routes = routes
        self.executors = executors
        self.guard = guard
        self.clock = clock
        self.settings = settings
        self.region = region
        self._rng = rng or random.Random()
        self._wake = anyio.Event()
        self._slot_free = anyio.Event()
        # The guard's decisions and the plan they let through are one step (see `_plan`).
        self._planning = anyio.Lock()
        self._waiting = False  # in `_idle`: waiting for work, not stuck
        self._stopping = False
        self.in_flight = 0
        self.handling: set[int] = set()  # ids of the events being handled now: never re-claimed
        self.heartbeat = clock.monotonic()
        self.processed = 0

    # -- the loop ------------------------------------------------------------------------------

    def wake(self, event_ids: Sequence[int] = ()) -> None:
        """New events are committed (called by the listener, in the same event loop)."""
        self._wake.set()

    def fresh(self, max_age: float) -> bool:
        """Whether the loop turned within `max_age` seconds, or is waiting for work (for the
        systemd watchdog). Waiting is not being stuck: with `poll` longer than the watchdog's
        age an idle dispatcher was taken for a wedged one, and systemd killed the service
        every couple of minutes (found by probing)."""
        return self._waiting or self.clock.monotonic() - self.heartbeat <= max_age

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Work the inbox until cancelled. Leases left by a previous process are released
        first, so a crash never hides in-flight events for a lease's length."""
        released = await self.store.release_leases()
        if released:
            log.info("dispatch.leases_released", events=released)
        task_status.started()
        async with anyio.create_task_group() as tg:
            while not self._stopping:
                self.heartbeat = self.clock.monotonic()
                # Armed before the claim: a wake-up that lands while the claim runs is kept.
                self._wake = anyio.Event()
                self._slot_free = anyio.Event()
                claimed = await self._claim_into(tg)
                if not claimed:
                    await self._idle()

    async def drain(self, grace: float) -> bool:
        """Stop claiming new events and give those in flight `grace` seconds (of the clock)
        to finish; True if they did. Events cut short keep their lease until the next start
        releases it."""
        self._stopping = True
        self._wake.set()
        done = False
        async with anyio.create_task_group() as tg:

            async def idle() -> None:
                nonlocal done
                while self.in_flight:
                    self._slot_free = anyio.Event()
                    await self._slot_free.wait()
                done = True
                tg.cancel_scope.cancel()

            async def deadline() -> None:
                await self.clock.sleep(grace)
                tg.cancel_scope.cancel()

            tg.start_soon(idle)
            tg.start_soon(deadline)
        if not done:
            log.warning("dispatch.drain_timeout", in_flight=self.in_flight, grace_s=grace)
        return done

    async def run_until_idle(self) -> int:
        """Handle every event that is due now, then return how many were handled (tests,
        `daemon sandbox --run-once`). Retries scheduled for later are left for later."""
        handled = 0
        while True:
            async with anyio.create_task_group() as tg:
                claimed = await self._claim_into(tg)
            handled += claimed
            if not claimed:
                return handled

    async def _claim_into(self, tg: anyio.abc.TaskGroup) -> int:
        free = self.settings.concurrency - self.in_flight
        if free <= 0:
            return 0
        rows = await self.store.claim_events(
            free,
            self.clock.now(),
            lease=timedelta(seconds=self.settings.lease),
            exclude=frozenset(self.handling),
        )
        for row in rows:
            self.in_flight += 1
            self.handling.add(row.id)
            tg.start_soon(self._guarded, row, name=f"event:{row.id}")
        return len(rows)

    async def _idle(self) -> None:
        """Wait for a wake-up, a freed slot or the poll interval, whichever is first."""
        self._waiting = True
        try:
            await self._wait_for_work()
        finally:
            self._waiting = False  # the loop's next turn, at once, moves the heartbeat

    async def _wait_for_work(self) -> None:
        async with anyio.create_task_group() as tg:

            async def timer() -> None:
                await self.clock.sleep(self.settings.poll)
                tg.cancel_scope.cancel()

            async def woken(event: anyio.Event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(timer)
            tg.start_soon(woken, self._wake)
            if self.in_flight >= self.settings.concurrency:
                tg.start_soon(woken, self._slot_free)

    async def _guarded(self, row: EventRow) -> None:
        try:
            await self.handle(row)
        except Exception as exc:  # supervision boundary: one event never stops the loop
            if isinstance(exc, StoreError):  # the database refused (disk full): not a bug
                log.error("dispatch.store_failed", event_id=row.id, error=str(exc))
            else:
                log.exception("dispatch.crashed", event_id=row.id)
            attempts = row.attempts + 1
            status = "dead" if attempts >= self.settings.max_attempts else "failed"
            try:
                await self.store.finish_event(
                    row.id,
                    status,
                    error=redact_text(f"{type(exc).__name__}: {exc}"),
                    next_attempt_at=self._next_at(attempts) if status == "failed" else None,
                )
            except Exception:
                log.exception("dispatch.record_failed", event_id=row.id)
        finally:
            self.handling.discard(row.id)
            self.in_flight -= 1
            self.processed += 1
            self._slot_free.set()
            # Finishing an event may unblock its sender's next one: look again at once rather
            # than after the poll interval.
            self._wake.set()

    # -- one event -----------------------------------------------------------------------------

    async def handle(self, row: EventRow) -> None:
        event = Event.from_json(row.payload)
        actions = (
            await self.store.actions_for_event(row.id)
            if row.plan is not None
            else await self._plan(row, event)
        )
        for action in actions:
            if action.status in FINAL:
                continue
            if action.next_attempt_at is not None and action.next_attempt_at > self.clock.now():
                continue
            await self._attempt(row, action)
        await self._finish(row, await self.store.actions_for_event(row.id))

    async def _plan(self, row: EventRow, event: Event) -> list[ActionRow]:
        now = self.clock.now()
        ruleset = self._rules()
        contact = await self.store.lookup_contact(event.from_number) if event.from_number else None
        plan = self._routed(ruleset.evaluate(event, contact=contact, now=now))
        facts = EventFacts(
            event_id=row.id,
            direction=event.direction,
            sender=row.sender or event.from_number,
            via=row.via,
            occurred_at=row.occurred_at or event.occurred_at,
            received_at=row.received_at,
            body_hash=row.body_hash or body_hash(event.body),
        )
        # One event at a time from the guard's first question to its plan stored: events handled
        # at once (other senders) each counted the replies stored before any of theirs, so the
        # breaker let up to `concurrency - 1` more through (found by probing). The lock holds
        # only database questions and one write, not the sending.
        async with self._planning:
            kept: list[PlannedAction] = []
            skipped = list(plan.skipped)
            for action in plan.actions:
                reason = None
                if action.error is None:
                    cooldown = ruleset.cooldown(action.rule)
                    reason = await self.guard.refuse(facts, action, cooldown, planned=kept)
                if reason is not None:
                    skipped.append(Skipped(action.rule, reason))
                    log.info("rule.skipped", event_id=row.id, rule=action.rule, reason=reason)
                    continue
                kept.append(action)
                log.info("rule.matched", event_id=row.id, rule=action.rule, action=action.kind)
            plan = replace(plan, actions=kept, skipped=skipped)
            rows = await self.store.record_plan(row.id, plan.to_json(), [_new(a) for a in kept])
            crashpoint("after_plan")
            if any(a.auto_reply for a in kept):
                await self.guard.after_reply()
        return rows

    def _routed(self, plan: Plan) -> Plan:
        """Fix each request's upstream now, from the rule's `sms_upstream`/`halo_upstream`."""
        routes = self._routes()
        out: list[PlannedAction] = []
        for a in plan.actions:
            if a.sms is not None and a.sms.upstream is None:
                a = replace(a, sms=replace(a.sms, upstream=routes.sms.get(a.rule)))
            if a.ticket is not None and a.ticket.upstream is None:
                a = replace(a, ticket=replace(a.ticket, upstream=routes.halo.get(a.rule)))
            out.append(a)
        return replace(plan, actions=out)

    async def _finish(self, row: EventRow, actions: list[ActionRow]) -> None:
        open_ = [a for a in actions if a.status not in FINAL]
        dead = [a for a in actions if a.status == "dead"]
        if open_:
            due = min((a.next_attempt_at or self.clock.now()) for a in open_)
            await self.store.finish_event(row.id, "failed", next_attempt_at=due)
        elif dead:
            await self.store.finish_event(row.id, "dead", error=dead[0].last_error)
        elif not any(a.kind != "ignore" for a in actions):
            await self.store.finish_event(row.id, "ignored")
        else:
            await self.store.finish_event(row.id, "done")

    # -- one action ----------------------------------------------------------------------------

    async def _attempt(self, row: EventRow, action: ActionRow) -> None:
        if action.kind == "ignore":
            await self.store.finish_action(action.id, "sent", response='{"ignored": true}')
            return
        uncertain = action.attempt_started_at is not None or _was_uncertain(action)
        try:
            request = _request(action)
        except RuleError as exc:
            # Nothing was sent now; an earlier attempt's doubt is kept for a later replay.
            await self._failed(row, action, exc, uncertain=uncertain)
            return
        if uncertain:
            try:
                with action_requests() as scope:
                    since = await self._since(action, row)
                    found = await self._find_done(action, request, since)
            except DaemonError as exc:
                if _nothing_sent(exc, scope):
                    await self._defer(row, action, exc, in_doubt=True)
                    return
                # Not knowing is not "not sent": resending could double the ticket or SMS.
                # The attempt fails, stays uncertain, and the next one looks again.
                await self._failed(row, action, exc, uncertain=True, stage="look-up")
                return
            if found is not None:
                log.info(
                    "action.found",
                    event_id=row.id,
                    rule=action.rule,
                    found_in=found.response.get("found_in"),
                )
                await self._sent(row, action, request, found)
                return
            log.info("action.not_found", event_id=row.id, rule=action.rule, kind=action.kind)
        try:
            with action_requests() as scope:
                await self.store.start_attempt(action.id)
                crashpoint("before_call")
                outcome = await self._run(action, request)
                crashpoint("after_call")
        except DaemonError as exc:
            if _nothing_sent(exc, scope):
                await self._defer(row, action, exc)
                return
            await self._failed(row, action, exc, uncertain=_is_uncertain(exc))
            return
        if uncertain:  # the record says this send came after a look-up that found nothing
            outcome = replace(outcome, response={**outcome.response, "looked_first": "not found"})
        await self._sent(row, action, request, outcome)

    async def _run(self, action: ActionRow, request: dict[str, Any]) -> Outcome:
        if action.kind == "sms_reply":
            sms = SmsRequest(**request["sms"])
            return await self.executors.sms_for(sms).run(sms, action.idempotency_key)
        if action.kind == "halo_ticket":
            ticket = TicketRequest(**request["ticket"])
            return await self.executors.halo_for(ticket).run(
                ticket, action.idempotency_key, phone=action.phone, rule=action.rule
            )
        raise DaemonError(f"unknown action kind {action.kind!r}")

    async def _since(self, action: ActionRow, row: EventRow) -> datetime:
        """How far back an uncertain action's look-up reaches: the earliest this attempt can have
        acted, less a clock-skew allowance — and, for an SMS reply, less how far the PBX's
        clock ran behind ours as this event showed it, since the look-up compares the PBX's
        timestamps with our time — but never so far back that it reaches an earlier identical
        reply to the same phone (it would be taken for this one and this reply never
        delivered): the look-up then starts halfway between the two."""
        start = action.attempt_started_at or action.created_at
        since = start - _LOOK_BACK
        if action.kind == "sms_reply":
            since -= min(delivery_delay(row), _MAX_PBX_LAG)
        if action.kind == "sms_reply" and action.phone:
            before = await self.store.last_reply_sent(
                action.phone, action.body_hash, other_than=action.id
            )
            if before is not None and since <= before < start:
                since = before + (start - before) / 2
        return since

    async def _find_done(
        self, action: ActionRow, request: dict[str, Any], since: datetime
    ) -> Outcome | None:
        if action.kind == "sms_reply":
            sms = SmsRequest(**request["sms"])
            return await self.executors.sms_for(sms).find_done(sms, since)
        if action.kind == "halo_ticket":
            ticket = TicketRequest(**request["ticket"])
            return await self.executors.halo_for(ticket).find_done(
                ticket, action.idempotency_key, phone=action.phone, rule=action.rule
            )
        return None

    async def _sent(
        self, row: EventRow, action: ActionRow, request: dict[str, Any], outcome: Outcome
    ) -> None:
        await self.store.finish_action(
            action.id,
            "sent",
            upstream_ref=outcome.upstream_ref,
            # An answer is upstream text like an error body: one that echoes our credentials
            # (a debugging proxy, an API that reflects headers) must not store them.
            response=redact_text(json.dumps(outcome.response, default=str, ensure_ascii=False)),
        )
        if action.kind == "sms_reply":
            ours = to_e164(str(request["sms"].get("from_number") or ""), self.region)
            if ours:
                await self.store.record_own_number(ours)
        log.info(
            "action.sent",
            event_id=row.id,
            rule=action.rule,
            kind=action.kind,
            upstream_ref=outcome.upstream_ref,
        )

    async def _failed(
        self,
        row: EventRow,
        action: ActionRow,
        exc: Exception,
        *,
        uncertain: bool,
        stage: str | None = None,
    ) -> None:
        """Record a failed attempt: retried with backoff, or dead when final or out of attempts.
        `uncertain` (the upstream may have acted) makes the next attempt, or a replay, look
        before it sends again."""
        attempts = action.attempts + 1
        final = _is_final(exc)
        dead = final or attempts >= self.settings.max_attempts
        error = redact_text(f"{stage + ': ' if stage else ''}{type(exc).__name__}: {exc}")
        status = "dead" if dead else "failed"
        next_at = None if dead else self._next_at(attempts)
        await self.store.finish_action(
            action.id,
            status,
            error=error,
            next_attempt_at=next_at,
            response=json.dumps({"uncertain": uncertain}),
        )
        fields: dict[str, Any] = {
            "event_id": row.id,
            "rule": action.rule,
            "kind": action.kind,
            "attempt": attempts,
            "error": error,
        }
        if dead:
            log.error("action.dead", **fields)
        else:
            assert next_at is not None
            retry_in = (next_at - self.clock.now()).total_seconds()
            log.warning("action.failed", **fields, retry_in_s=round(retry_in, 1))

    async def _defer(
        self, row: EventRow, action: ActionRow, exc: BudgetExhausted, *, in_doubt: bool = False
    ) -> None:
        """The upstream's rate budget had no room and nothing of this attempt left: put the
        action back until there is room, its slot free for other senders' replies. Not an
        attempt (the budget refills every window, so this cannot go on for ever, and counting
        it would make a burst kill actions the upstream never saw); a little jitter, so the
        deferred do not all come back at the same moment."""
        delay = max(1.0, exc.retry_in) * self._rng.uniform(1.0, 1.2)
        await self.store.defer_action(
            action.id,
            next_attempt_at=self.clock.now() + timedelta(seconds=delay),
            error=redact_text(f"deferred: {exc}"),
            in_doubt=in_doubt,  # a look-up put off: the earlier attempt's mark must stay
        )
        log.info(
            "action.deferred",
            event_id=row.id,
            rule=action.rule,
            kind=action.kind,
            retry_in_s=round(delay, 1),
        )

    def _next_at(self, attempts: int) -> datetime:
        """Full jitter: uniform in [backoff/2, min(cap, backoff * 2**(n-1))]."""
        s = self.settings
        ceiling = min(s.backoff_cap, s.backoff * 2.0 ** max(0, attempts - 1))
        delay = self._rng.uniform(min(s.backoff, ceiling) / 2, ceiling)
        return self.clock.now() + timedelta(seconds=delay)


_LOOK_BACK = timedelta(minutes=2)
# The most the PBX's clock may be taken to run behind ours (its lag as an event shows it:
# received_at − occurred_at, the delivery delay included). An auto-reply's event was
# delivered within the loop guard's max_event_age (15 min by default) by that same measure.
_MAX_PBX_LAG = timedelta(hours=1)


def _is_final(exc: Exception) -> bool:
    """An answer that will not change by asking again — a 400, 404 or 403, a malformed answer,
    an unknown Halo name, no upstream to send through: dead at once. Transient failures and
    refused credentials (an operator may fix them meanwhile) are retried."""
    if isinstance(exc, UpstreamUnavailable | AuthError):
        return False
    return isinstance(exc, DaemonError)


def _nothing_sent(exc: Exception, scope: ActionScope) -> TypeGuard[BudgetExhausted]:
    """Whether `exc` is the rate budget refusing before any request of the block left (a
    token request counts as one: then the attempt is an ordinary, uncertain failure)."""
    return isinstance(exc, BudgetExhausted) and scope.sent == 0


def _is_uncertain(exc: Exception) -> bool:
    """Whether the upstream may have acted although the attempt failed.

    Only two failures are certain: a connection never made (the request never left) and a
    clear rejection (a 4xx other than 408/429). Anything else may come after the upstream acted
    — a timeout, a 5xx, a 2xx whose body was unusable (malformed, too large, a ticket without
    an id), a store error after the create — so the next attempt, or a replay, looks first.
    Looking when nothing happened costs one read; not looking may double a ticket or an SMS."""
    if isinstance(exc, ConnectError):
        return False
    if isinstance(exc, UpstreamError) and exc.status is not None:
        return not (400 <= exc.status < 500 and exc.status not in (408, 429))
    return True


def _was_uncertain(action: ActionRow) -> bool:
    """Whether the last recorded attempt ended uncertain (kept across a replay)."""
    try:
        previous = json.loads(action.response) if action.response else {}
    except ValueError:
        return False
    return isinstance(previous, dict) and bool(previous.get("uncertain"))


_BODIES: dict[str, tuple[str, type[Any]]] = {
    "sms_reply": ("sms", SmsRequest),
    "halo_ticket": ("ticket", TicketRequest),
}


def _request(action: ActionRow) -> dict[str, Any]:
    """The stored request, checked to hold the body its kind needs.

    A request without one — an action that failed at planning (its request holds the `error`),
    or a row written by hand — can never be carried out: a `RuleError` (final, so the action
    ends dead with the reason), never a KeyError that would crash the event on every try."""
    try:
        request = json.loads(action.request or "{}")
    except ValueError as exc:
        raise RuleError(f"the stored request is not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise RuleError("the stored request is not a JSON object")
    found = _BODIES.get(action.kind)
    if found is None:
        raise RuleError(f"unknown action kind {action.kind!r}")
    key, cls = found
    body = request.get(key)
    if not isinstance(body, dict):
        raise RuleError(str(request.get("error") or f"the stored request has no {key!r}"))
    try:
        cls(**body)
    except TypeError as exc:
        raise RuleError(f"the stored {key!r} request does not fit: {exc}") from exc
    return request


def _new(a: PlannedAction) -> NewAction:
    text = a.sms.text if a.sms is not None else None
    return NewAction(
        rule=a.rule,
        kind=a.kind,
        idempotency_key=a.key,
        request_json=a.request_json(),
        phone=a.phone,
        conversation=a.conversation,
        body_hash=body_hash(text),
        auto_reply=a.auto_reply,
        error=a.error,
    )
