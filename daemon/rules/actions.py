"""Doing what a plan says: SMS replies through NetSapiens, tickets and notes in Halo.

Each executor has two halves: `run` sends, and `find_done` looks whether an earlier attempt
whose outcome we never learned (a timeout or 5xx after a POST, or a crash between the call and
its record) has in fact already happened — so the dispatcher looks before it resends. What
remains is the window between the upstream acting and our being able to see it (documented in
README, "Guarantees").

- SMS: sent from the number that received the message, to the sender, into the same message
  session; when the PBX refuses the session id, a new session is started. Looking means reading
  the session's messages for ours (same text, sent after the attempt started).
- Halo: a ticket from the rendered `ticket`, its details ending in a reference line carrying the
  action's idempotency key (`[ref: <key>]`), which is how an uncertain create is found again
  (`Tickets?search=`). With `thread = true`, a later message from the same number becomes a note
  (a Halo Action) on the open ticket, until the ticket is closed or has `max_notes` notes, when a
  new ticket starts. Type, team, status and priority given by name are resolved to ids, once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from daemon.clients.halo import HaloClient
from daemon.clients.netsapiens import NetsapiensClient, parse_ns_datetime
from daemon.errors import NotFoundError, RuleError, ValidationError
from daemon.rules.plan import SmsRequest, TicketRequest

log = structlog.get_logger(__name__)

REF_PREFIX = "[ref: "
NAMED_FIELDS = {  # ticket key → (id key, Halo resource that lists the names)
    "tickettype": ("tickettype_id", "ticket_types"),
    "team": ("team_id", "teams"),
    "status": ("status_id", "statuses"),
    "priority": ("priority_id", "priorities"),
}
_CLOSED = re.compile(r"closed|resolved|cancel", re.I)
LOOK_BACK = timedelta(minutes=2)  # clock skew allowance when looking for an earlier send


@dataclass(frozen=True)
class Outcome:
    upstream_ref: str | None
    response: dict[str, Any] = field(default_factory=dict)


def ref_line(key: str) -> str:
    return f"{REF_PREFIX}{key}]"


class ThreadStore(Protocol):
    """The store's `halo_threads` methods (daemon.store.Store)."""

    async def get_halo_thread(self, phone: str, rule: str) -> Any: ...

    async def set_halo_thread(self, phone: str, rule: str, ticket_id: str) -> None: ...

    async def add_thread_note(self, phone: str, rule: str) -> int: ...

    async def clear_halo_thread(self, phone: str, rule: str) -> bool: ...


class SmsActions:
    """SMS replies through one NetSapiens upstream."""

    def __init__(self, client: NetsapiensClient):
        self.client = client

    async def run(self, req: SmsRequest, key: str) -> Outcome:
        domain, user = req.domain or "~", req.user or "~"
        if req.session_id:
            try:
                answer = await self.client.send_message(
                    domain, user, message=req.text, destination=req.to_number,
                    from_number=req.from_number, session_id=req.session_id,
                )  # fmt: skip
                return Outcome(req.session_id, {"session_id": req.session_id, "answer": answer})
            except (NotFoundError, ValidationError, ValueError) as exc:
                # The PBX does not know (or refuses) the session: start a new one.
                log.info("action.new_session", key=key, reason=type(exc).__name__)
        answer = await self.client.send_message(
            domain, user, message=req.text, destination=req.to_number,
            from_number=req.from_number,
        )  # fmt: skip
        sid = answer.get("messagesession-id") if isinstance(answer, dict) else None
        ref = answer.get("id") if isinstance(answer, dict) else None
        return Outcome(str(ref or sid or "") or None, {"session_id": sid, "answer": answer})

    async def find_done(self, req: SmsRequest, since: datetime) -> Outcome | None:
        """Our text, sent into the session after `since`: the earlier attempt did happen.

        A read that fails raises (the dispatcher retries the look-up, never the send)."""
        if not req.session_id:
            return None  # a new session's id was never learned: nothing to look in
        try:
            messages = await self.client.get_messages(
                req.domain or "~", req.user or "~", req.session_id, limit=100, max_pages=20
            )
        except (NotFoundError, ValueError):
            # The PBX does not know the session, so the earlier attempt started a new one,
            # whose id it never told us: nothing to look in (README, "Guarantees").
            return None
        for msg in reversed(messages):
            when = parse_ns_datetime(msg.get("timestamp"))
            outbound = str(msg.get("direction", "")).lower() in ("term", "outbound")
            if outbound and msg.get("text") == req.text and (when is None or when >= since):
                return Outcome(str(msg.get("id") or req.session_id), {"found": True})
        return None


class HaloNames:
    """Type, team, status and priority by name → id, loaded once per upstream."""

    def __init__(self, client: HaloClient):
        self.client = client
        self._ids: dict[str, dict[str, int]] = {}
        self.closed_statuses: set[int] = set()

    async def load(self) -> None:
        for field_name, (_, resource) in NAMED_FIELDS.items():
            if field_name in self._ids:
                continue
            records = [r async for r in self.client.resource(resource).list_all()]
            self._ids[field_name] = {
                str(r.get("name", "")).strip().casefold(): int(r["id"])
                for r in records
                if r.get("id") is not None
            }
            if resource == "statuses":
                self.closed_statuses = {
                    int(r["id"])
                    for r in records
                    if r.get("id") is not None
                    and (r.get("type") == 2 or _CLOSED.search(str(r.get("name", ""))))
                }

    async def resolve(self, ticket: Mapping[str, Any]) -> dict[str, Any]:
        """The ticket with every named field replaced by its id; an unknown name is a
        `RuleError` naming the field and what Halo has."""
        out = dict(ticket)
        if any(isinstance(out.get(name), str) for name in NAMED_FIELDS):
            await self.load()
        for name, (id_key, _) in NAMED_FIELDS.items():
            value = out.pop(name, None)
            if value is None or id_key in out:
                continue
            ids = self._ids.get(name, {})
            found = ids.get(str(value).strip().casefold())
            if found is None:
                have = ", ".join(sorted(ids)) or "none"
                raise RuleError(f"ticket.{name}: Halo has no {name} named {value!r} (has: {have})")
            out[id_key] = found
        return out


class HaloActions:
    """Tickets and threaded notes in one Halo upstream."""

    def __init__(self, client: HaloClient, threads: ThreadStore):
        self.client = client
        self.threads = threads
        self.names = HaloNames(client)

    async def run(self, req: TicketRequest, key: str, *, phone: str | None, rule: str) -> Outcome:
        if req.thread and phone:
            note = await self._note_on_open_ticket(req, key, phone, rule)
            if note is not None:
                return note
        body = await self.names.resolve(req.ticket)
        details = str(body.get("details") or "")
        body["details"] = f"{details}\n\n{ref_line(key)}" if details else ref_line(key)
        saved = await self.client.tickets.create(body)
        ticket_id = saved.get("id")
        if ticket_id in (None, ""):
            raise RuleError("Halo answered the ticket create without an id")
        if req.thread and phone:
            await self.threads.set_halo_thread(phone, rule, str(ticket_id))
        return Outcome(str(ticket_id), {"ticket_id": ticket_id})

    async def _note_on_open_ticket(
        self, req: TicketRequest, key: str, phone: str, rule: str
    ) -> Outcome | None:
        thread = await self.threads.get_halo_thread(phone, rule)
        if thread is None:
            return None
        if getattr(thread, "notes", 0) >= req.max_notes or not await self._is_open(
            thread.ticket_id
        ):
            await self.threads.clear_halo_thread(phone, rule)
            return None
        note = f"{req.note}\n\n{ref_line(key)}"
        saved = await self.client.actions.create(
            {"ticket_id": int(thread.ticket_id), "note": note, "outcome": "Note"}
        )
        count = await self.threads.add_thread_note(phone, rule)
        ref = f"{thread.ticket_id}/action/{saved.get('id', '')}"
        response = {"ticket_id": thread.ticket_id, "note": saved.get("id"), "notes": count}
        return Outcome(ref, response)

    async def _is_open(self, ticket_id: str) -> bool:
        try:
            ticket = await self.client.tickets.get(ticket_id)
        except NotFoundError:
            return False
        await self.names.load()
        status = ticket.get("status_id")
        return not (isinstance(status, int) and status in self.names.closed_statuses)

    async def find_done(
        self, req: TicketRequest, key: str, *, phone: str | None, rule: str
    ) -> Outcome | None:
        """A ticket (or a note on the thread's ticket) carrying this action's reference.

        Found is as good as done, so it leaves what `run` would have left: a threaded ticket
        becomes the sender's open thread (else their next message would open a second ticket
        instead of a note), and a found note is counted towards `max_notes`. The sender's later
        events wait for this one, so no newer thread can have been recorded meanwhile.

        A look-up that fails raises: the dispatcher must not take "could not look" for "not
        there" and create the ticket twice."""
        marker = ref_line(key)
        page = await self.client.tickets.list(page_size=5, search=marker)
        for ticket in page.records:
            if marker in str(ticket.get("details", "")):
                if req.thread and phone:
                    await self.threads.set_halo_thread(phone, rule, str(ticket["id"]))
                return Outcome(str(ticket["id"]), {"ticket_id": ticket["id"], "found": True})
        thread = await self.threads.get_halo_thread(phone, rule) if phone else None
        if thread is not None and phone:
            return await self._find_note(marker, thread.ticket_id, phone, rule)
        return None

    async def _find_note(
        self, marker: str, ticket_id: str, phone: str, rule: str
    ) -> Outcome | None:
        """Our note on the thread's ticket, counted as `run` counts the notes it adds. (After a
        crash between `run`'s count and its record the note is counted twice: the thread then
        moves to a new ticket one note early — the safe side of `max_notes`.)"""
        try:
            notes = await self.client.actions.list(page_size=50, ticket_id=ticket_id)
        except NotFoundError:
            return None  # the thread's ticket is gone: no note can be on it
        for action in notes.records:
            if marker in str(action.get("note", "")):
                count = await self.threads.add_thread_note(phone, rule)
                ref = f"{ticket_id}/action/{action.get('id', '')}"
                response = {"ticket_id": ticket_id, "note": action.get("id"), "notes": count}
                return Outcome(ref, {**response, "found": True})
        return None
