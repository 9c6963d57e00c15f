"""Doing what a plan says: SMS replies through NetSapiens, tickets and notes in Halo.

Each executor has two halves: `run` sends, and `find_done` looks whether an earlier attempt
whose outcome we never learned (a timeout or 5xx after a POST, or a crash between the call and
its record) has in fact already happened — so the dispatcher looks before it resends. What
remains is the window between the upstream acting and our being able to see it (documented in
README, "Guarantees").

- SMS: sent from the number that received the message, to the sender, into the same message
  session; when the message carried no session id, or the PBX refuses it, a new session is
  started. Looking means finding ours (same text, outbound, sent after the attempt started):
  first in the message's session, then in the sessions the PBX lists for the sending user with
  the recipient that were active since then — where a new session our lost answer would have
  named shows up (upstream-apis §5, "List sessions").
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
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import structlog

from daemon.clients.halo import HaloClient
from daemon.clients.netsapiens import NetsapiensClient, parse_ns_datetime
from daemon.errors import (
    ForbiddenError,
    MalformedResponse,
    NotFoundError,
    RuleError,
    ValidationError,
)
from daemon.phones import to_e164
from daemon.rules.plan import SmsRequest, TicketRequest

if TYPE_CHECKING:
    from daemon.store import HaloThread

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
SESSION_PAGE = 100
# How many of a user's sessions a look-up may read (newest first, it normally stops at the
# first page): past this the look-up fails — the action ends dead, never sent twice.
MAX_SESSION_PAGES = 50
# A session's messages are read in the largest pages the PBX gives (its `limit` goes to 1000),
# oldest first, to the end: the PBX keeps one session per correspondent, so a regular
# customer's grows for years and our reply is at its far end. Past this many pages (200,000
# messages) the look-up fails, as above.
MESSAGE_PAGE = 1000
MAX_MESSAGE_PAGES = 200
# A thread ticket's actions (agents' replies, e-mails, system entries and our notes), likewise
# read to the end, in pages of 50 (a size every Halo client uses): at most 10,000 of them.
NOTE_PAGE = 50
MAX_NOTE_PAGES = 200
FOUND_IN_SESSION = "event session"  # the reply was found in the message's own session
FOUND_IN_NEW_SESSION = "new session"  # ... in a session our earlier attempt started


@dataclass(frozen=True)
class Outcome:
    upstream_ref: str | None
    response: dict[str, Any] = field(default_factory=dict)


def ref_line(key: str) -> str:
    return f"{REF_PREFIX}{key}]"


class ThreadStore(Protocol):
    """The store's `halo_threads` methods (daemon.store.Store)."""

    async def get_halo_thread(self, phone: str, rule: str) -> HaloThread | None: ...

    async def set_halo_thread(self, phone: str, rule: str, ticket_id: str) -> None: ...

    async def add_thread_note(self, phone: str, rule: str) -> int: ...

    async def clear_halo_thread(self, phone: str, rule: str) -> bool: ...


class SmsActions:
    """SMS replies through one NetSapiens upstream."""

    def __init__(self, client: NetsapiensClient, *, region: str = "US"):
        self.client = client
        self.region = region  # for comparing the PBX's spelling of numbers

    async def run(self, req: SmsRequest, key: str) -> Outcome:
        domain, user = req.domain or "~", req.user or "~"
        why = "no session id"
        if req.session_id:
            try:
                answer = await self.client.send_message(
                    domain, user, message=req.text, destination=req.to_number,
                    from_number=req.from_number, session_id=req.session_id,
                )  # fmt: skip
                return Outcome(req.session_id, {"session_id": req.session_id, "answer": answer})
            except (NotFoundError, ValidationError, ValueError) as exc:
                # The PBX does not know (or refuses) the session: start a new one.
                log.info("action.new_session", action_key=key, reason=type(exc).__name__)
                why = "session refused"
        answer = await self.client.send_message(
            domain, user, message=req.text, destination=req.to_number,
            from_number=req.from_number,
        )  # fmt: skip
        sid = answer.get("messagesession-id") if isinstance(answer, dict) else None
        ref = answer.get("id") if isinstance(answer, dict) else None
        response = {"session_id": sid, "new_session": why, "answer": answer}
        return Outcome(str(ref or sid or "") or None, response)

    async def find_done(self, req: SmsRequest, since: datetime) -> Outcome | None:
        """Our text, sent after `since`: the earlier attempt did happen.

        Looked for in the message's session, then in every session the PBX lists for the
        sending user with the recipient and activity since `since` — an earlier attempt that
        had to start a new session (no session id, or the PBX refused it) sent into one of
        those, and only its lost answer carried the id. A read that fails raises (the
        dispatcher retries the look-up, never the send)."""
        if req.session_id:
            found = await self._in_session(req, req.session_id, since)
            if found is not None:
                return self._found(found, req.session_id, FOUND_IN_SESSION)
        for sid in await self._sessions_with_recipient(req, since):
            if sid == req.session_id:
                continue
            found = await self._in_session(req, sid, since)
            if found is not None:
                return self._found(found, sid, FOUND_IN_NEW_SESSION)
        return None

    @staticmethod
    def _found(message: Mapping[str, Any], sid: str, where: str) -> Outcome:
        response = {"found": True, "found_in": where, "session_id": sid}
        return Outcome(str(message.get("id") or sid), response)

    async def _in_session(
        self, req: SmsRequest, sid: str, since: datetime
    ) -> Mapping[str, Any] | None:
        """Our message in session `sid`, or None (also when the PBX does not know the session:
        nothing can have been sent into it). Read as a stream, the session's length does not
        reach memory."""
        try:
            path = self.client.session_messages_path(req.domain or "~", req.user or "~", sid)
        except ValueError:  # not a session id the PBX could have: nothing went into it
            return None
        walk = self.client.paged(path, limit=MESSAGE_PAGE, max_pages=MAX_MESSAGE_PAGES)
        try:
            async for msg in walk:
                if not isinstance(msg, dict):
                    continue
                when = parse_ns_datetime(msg.get("timestamp"))
                outbound = str(msg.get("direction", "")).lower() in ("term", "outbound")
                if outbound and msg.get("text") == req.text and (when is None or when >= since):
                    return msg
        except NotFoundError:
            return None
        finally:
            await walk.aclose()  # the page walk stops here, not at garbage collection
        return None

    async def _sessions_with_recipient(self, req: SmsRequest, since: datetime) -> list[str]:
        """Ids of the user's sessions with `req.to_number` last active at or after `since`
        (or of unknown activity).

        A list newest first (as the simulator gives it; upstream-apis does not promise an
        order) stops, once a full page has shown that order, at the first session idle since
        before `since`: every later one is older. A list in any other order is read to the
        end — at most `MAX_SESSION_PAGES` pages, past which `LimitExceeded` fails the look-up
        (the action ends dead) rather than guess."""
        domain, user = quote(req.domain or "~", safe="~*@"), quote(req.user or "~", safe="~*@")
        path = f"domains/{domain}/users/{user}/messagesessions"
        found: list[str] = []
        read, newest_first, previous = 0, True, None
        walk = self.client.paged(path, limit=SESSION_PAGE, max_pages=MAX_SESSION_PAGES)
        try:
            async for session in walk:
                read += 1
                last = parse_ns_datetime(session.get("messagesession-last-datetime"))
                if last is not None:
                    if previous is not None and last > previous:
                        newest_first = False
                    previous = last
                    if last < since:
                        if newest_first and read >= SESSION_PAGE:
                            break
                        continue
                sid = session.get("messagesession-id")
                if isinstance(sid, str) and sid and self._with(session, req.to_number):
                    found.append(sid)
        finally:
            await walk.aclose()  # the page walk stops here, not at garbage collection
        return found

    def _with(self, session: Mapping[str, Any], number: str) -> bool:
        """Whether the session is with `number` (its remote party, or among its participants),
        however either spells it."""
        parties = session.get("messagesession-participants")
        names = [session.get("messagesession-remote")]
        names += parties if isinstance(parties, list) else [parties]
        wanted = to_e164(number, self.region)
        for name in names:
            if name is None or name == "":
                continue
            if str(name) == number or (wanted is not None and to_e164(name, self.region) == wanted):
                return True
        return False


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
            found = self._ids.get(name, {}).get(str(value).strip().casefold())
            if found is None:
                raise RuleError(self.unknown(name, value) or f"ticket.{name}: unknown")
            out[id_key] = found
        return out

    def unknown(self, name: str, value: object) -> str | None:
        """Why `value` is no `name` (a NAMED_FIELDS key) in this Halo, with the names it has;
        None when it is one. Call `load()` first."""
        ids = self._ids.get(name, {})
        if str(value).strip().casefold() in ids:
            return None
        have = ", ".join(sorted(ids)) or "none"
        return f"ticket.{name}: Halo has no {name} named {value!r} (has: {have})"


def ticket_id_of(saved: Mapping[str, Any]) -> str:
    """The id of the ticket Halo says it created: a positive whole number (Halo's ids are), as
    text. Anything else is refused here, before it becomes the action's reference and the
    sender's thread, whose later notes would all fail on it. The create may have happened, so
    the dispatcher's next attempt looks for the ticket first."""
    value = saved.get("id")
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return str(text)
    if isinstance(text, str) and _is_ticket_id(text):
        return str(int(text))
    raise RuleError("Halo answered without a usable ticket id")


def _is_ticket_id(text: str) -> bool:
    return text.isascii() and text.isdecimal() and int(text) > 0


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
        ticket_id = ticket_id_of(saved)
        if req.thread and phone:
            await self.threads.set_halo_thread(phone, rule, ticket_id)
        return Outcome(ticket_id, {"ticket_id": saved["id"]})

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
        """Whether the thread's ticket takes notes. Not when it is closed or gone, nor when it
        can no longer be read — a 403 (moved where our agent cannot see it), an answer that is
        not a ticket, an id an older version stored unchecked: a new ticket starts, rather than
        every later message of the sender failing on this one. A transient failure raises, and
        the attempt is retried."""
        if not _is_ticket_id(ticket_id):
            log.warning("halo.thread_unreadable", error="not a ticket id")
            return False
        try:
            ticket = await self.client.tickets.get(ticket_id)
        except NotFoundError:
            return False
        except (ForbiddenError, MalformedResponse) as exc:
            log.warning("halo.thread_unreadable", ticket_id=ticket_id, error=type(exc).__name__)
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
                ticket_id = ticket_id_of(ticket)
                if req.thread and phone:
                    await self.threads.set_halo_thread(phone, rule, ticket_id)
                response = {"ticket_id": ticket["id"], "found": True, "found_in": "ticket"}
                return Outcome(ticket_id, response)
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
        found = await self._note_with(marker, ticket_id)
        if found is None:
            return None
        count = await self.threads.add_thread_note(phone, rule)
        ref = f"{ticket_id}/action/{found.get('id', '')}"
        response = {"ticket_id": ticket_id, "note": found.get("id"), "notes": count}
        return Outcome(ref, {**response, "found": True, "found_in": "note"})

    async def _note_with(self, marker: str, ticket_id: str) -> Mapping[str, Any] | None:
        """The ticket's action whose note carries `marker`, every page of them read: a ticket
        agents have worked holds far more than one page, ours among the newest."""
        pages = self.client.actions.iter_pages(
            NOTE_PAGE, max_pages=MAX_NOTE_PAGES, ticket_id=ticket_id
        )
        try:
            async for page in pages:
                for action in page.records:
                    if marker in str(action.get("note", "")):
                        return action
        except NotFoundError:
            return None  # the thread's ticket is gone: no note can be on it
        finally:
            await pages.aclose()
        return None
