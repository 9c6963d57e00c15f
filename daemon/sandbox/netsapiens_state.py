"""The state of a simulated NetSapiens PBX (API v2): tokens, messages, CDRs, subscriptions.

Kept apart from the HTTP handlers (`netsapiens_sim`) so tests and `daemon sandbox` can drive the
PBX directly: `inbound_sms()` makes an SMS arrive, `add_cdr()` records a call, `revoke()` and
`expire_tokens()` play the admin, and `emit()` delivers like the PBX does — one POST of a JSON
array per live subscription of the model, counting a status > 302 or an unreachable URL as an
error. Times come from injectable `now` (monotonic seconds, token expiry) and `wall` (aware UTC
datetime) so tests share a `FakeClock`.

CDRs and message sessions are `Table`s (`daemon.sandbox.listing`), so their listings are indexed
and a 100k-CDR demo pages as fast as a small one. The subscribable models are the simulator's
own list (upstream-apis §5: ns-aio's VALID_MODELS plus `contacts` from the OpenAPI enum), not
the config's, so a mistake in either shows.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from daemon.sandbox import demo_data as dd
from daemon.sandbox.faults import Faults, SimStats
from daemon.sandbox.listing import Table

Record = dict[str, Any]
MODELS = frozenset(
    {
        "agent",
        "auditlog",
        "auditlog_lite",
        "call",
        "call_origid",
        "cdr",
        "message",
        "messagesession",
        "subscriber",
        "presence",
        "voicemail",
        "contacts",
    }
)


def _wall_now() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


def ns_dt(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_dt(value: str | None) -> datetime | None:
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@dataclass
class Delivery:
    """One POST the emitter made."""

    subscription_id: str
    model: str
    url: str
    status: int | None  # None: could not connect
    count: int


@dataclass
class NetsapiensState:
    client_id: str = "ns-client"
    client_secret: str = "ns-secret"  # noqa: S105 - simulator demo credential
    username: str = "api@demo"
    password: str = "demo-password"  # noqa: S105 - simulator demo credential
    domain: str = "demo"
    user: str = "101"
    territory: str = "demo-territory"
    scope: str = "Super User"
    token_ttl: float = 3600.0
    refresh_refused_status: int = 400  # the status of a refused refresh token is unknown [U]
    error_after: int = 3  # consecutive failed posts before a subscription shows `error`
    now: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = _wall_now
    faults: Faults = field(default_factory=Faults)
    stats: SimStats = field(default_factory=SimStats)
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry (now())
    refresh_tokens: set[str] = field(default_factory=set)
    grants: list[str] = field(default_factory=list)  # grant types asked for, in order
    sent: list[Record] = field(default_factory=list)  # messages the API was asked to send
    sessions: dict[str, Record] = field(default_factory=dict)  # by messagesession-id
    session_list: Table = field(default_factory=Table)  # the same sessions, for listings
    messages: dict[str, list[Record]] = field(default_factory=dict)  # session id -> messages
    cdrs: Table = field(default_factory=Table)  # in order of arrival
    subscriptions: dict[str, Record] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    # Called with every message the API sends (the scripted auto-responder peer listens here).
    on_sent: list[Callable[[Record], None]] = field(default_factory=list)
    reject_unknown_sessions: bool = False  # answer 404 to a send into a session it never made
    _failures: dict[str, int] = field(default_factory=dict)
    _token_expiry_wall: dict[str, datetime] = field(default_factory=dict)
    _session_of: dict[tuple[str, str], str] = field(default_factory=dict)  # (user, remote)

    @classmethod
    def demo(cls, size: int, *, seed: int = 0, **kw: Any) -> NetsapiensState:
        """`size` deterministic CDRs and `size // 20` SMS conversations (two messages each)."""
        state = cls(**kw)
        user, number = state.user, "15559870000"
        for i in range(1, size + 1):
            r = dd.rng(i, seed, "cdr")
            began = dd.timestamp(i, seed)
            caller = dd.phone(i, seed)[1:]
            state.add_cdr(caller, number, duration=r.choice((0, 30, 95, 300)), start=began)
            state.cdrs[-1].update(  # deterministic ids, so two demos are identical
                {
                    "cdr-id": f"{r.getrandbits(128):032x}",
                    "call-orig-call-id": f"{i:016x}",
                    "call-term-call-id": f"{i + 10**9:016x}",
                }
            )
        for i in range(1, size // 20 + 1):
            person = dd.fake_person(i, seed)
            remote = person.phone[1:]
            sid = f"{dd.rng(i, seed, 'sid').getrandbits(128):032x}"
            sid = state.open_session(user, remote, number, sid)
            when = dd.timestamp(i, seed)
            for n, (sender, direction, text) in enumerate(
                ((remote, "orig", "balance?"), (number, "term", f"Hi {person.first_name}"))
            ):
                state.store_message(
                    sid,
                    {
                        "id": f"{dd.rng(i * 2 + n, seed, 'msg').getrandbits(128):032x}",
                        "timestamp": iso(when + timedelta(minutes=n)),
                        "type": "sms",
                        "domain": state.domain,
                        "direction": direction,
                        "from-number": sender,
                        "text": text,
                        "messagesession-id": sid,
                    },
                )
        return state

    # -- tokens -------------------------------------------------------------------------------

    def revoke(self) -> None:
        """Every access and refresh token stops working (a password change, an admin action)."""
        self.tokens.clear()
        self.refresh_tokens.clear()

    def expire_tokens(self) -> None:
        """Access tokens expire server-side now; refresh tokens stay valid."""
        for tok in self.tokens:
            self.tokens[tok] = self.now() - 1

    def issue(self) -> Record:
        access, refresh = secrets.token_hex(20), secrets.token_hex(20)
        self.tokens[access] = self.now() + self.token_ttl
        self._token_expiry_wall[access] = self.wall() + timedelta(seconds=self.token_ttl)
        self.refresh_tokens.add(refresh)
        return {
            "username": self.username,
            "user": self.user,
            "territory": self.territory,
            "domain": self.domain,
            "site": "",
            "group": "",
            "department": "",
            "uid": f"{self.user}@{self.domain}",
            "login": f"{self.user}@{self.domain}",
            "scope": self.scope,
            "user_email": self.username,
            "displayName": "API User",
            "access_token": access,
            "expires_in": int(self.token_ttl),
            "token_type": "Bearer",
            "refresh_token": refresh,
            "client_id": self.client_id,
            "apiversion": "Version: 44.1.2",
        }

    # -- data ---------------------------------------------------------------------------------

    def live_subscriptions(self, model: str | None = None) -> list[Record]:
        """Expired subscriptions vanish once `wall()` passes their expiry."""
        now = self.wall()
        for sid in [
            s["id"]
            for s in self.subscriptions.values()
            if (parse_dt(s["subscription-expires-datetime"]) or now) <= now
        ]:
            del self.subscriptions[sid]
        return [s for s in self.subscriptions.values() if model is None or s["model"] == model]

    def open_session(self, user: str, remote: str, number: str, sid: str | None = None) -> str:
        """The session of `user` with `remote` (created when new); returns its id."""
        known = self._session_of.get((user, remote))
        if known is not None and known in self.sessions:
            return known
        sid = sid or secrets.token_hex(16)
        session: Record = {
            "user": user,
            "domain": self.domain,
            "messagesession-id": sid,
            "messagesession-remote": remote,
            "messagesession-sms-number": number,
            "messagesession-type": "sms",
            "messagesession-participants": [remote],
        }
        self.add_session(session)
        self._session_of[(user, remote)] = sid
        return sid

    def add_session(self, session: Record) -> None:
        self.sessions[session["messagesession-id"]] = session
        self.session_list.add(session)
        self.messages.setdefault(session["messagesession-id"], [])

    def store_message(self, sid: str, msg: Record) -> None:
        self.messages.setdefault(sid, []).append(msg)
        s = self.sessions[sid]
        s["messagesession-last-datetime"] = msg["timestamp"]
        s["messagesession-last-message"] = msg.get("text", "")
        s["messagesession-last-sender"] = msg.get("from-number", "")
        self.session_list.reindex(s)  # its place in the newest-first listing moves

    def record_inbound_sms(
        self, from_number: str, to_number: str, text: str, *, user: str | None = None
    ) -> Record:
        """Store a realistic inbound Message (as the PBX would on receipt) without posting it."""
        user = user or self.user
        sid = self.open_session(user, from_number, to_number)
        msg: Record = {
            "id": secrets.token_hex(16),
            "timestamp": iso(self.wall()),
            "type": "sms",
            "domain": self.domain,
            "direction": "orig",
            "from-number": from_number,
            "from-user-id": "",
            "dialed": to_number,
            "text": text,
            "terminating-user-id": user,
            "terminating-number": to_number,
            "status": "received",
            "media-type": "",
            "media-size": 0,
            "messagesession-id": sid,
            "messagesession-participants": [from_number],
            "messagesession-reciever-hostname": "core1.demo",
        }
        self.store_message(sid, msg)
        return msg

    async def inbound_sms(
        self, from_number: str, to_number: str, text: str, *, user: str | None = None
    ) -> Record:
        """An SMS arrives: stored (so the API can list it) and posted to `message` subscribers."""
        msg = self.record_inbound_sms(from_number, to_number, text, user=user)
        await self.emit("message", [msg])
        return msg

    def add_cdr(
        self,
        caller: str,
        callee: str,
        *,
        duration: int = 60,
        user: str | None = None,
        start: datetime | None = None,
    ) -> Record:
        """Store a completed (or, with duration 0, missed) call in v2 `call-*` form."""
        begin = start or self.wall()
        answered = ns_dt(begin + timedelta(seconds=5)) if duration else ""
        cdr: Record = {
            "cdr-id": secrets.token_hex(16),
            "domain": self.domain,
            "call-orig-call-id": secrets.token_hex(8),
            "call-term-call-id": secrets.token_hex(8),
            "call-orig-caller-id": caller,
            "call-orig-user": caller,
            "call-dialed-number": callee,
            "call-term-user": user or self.user,
            "call-direction": "inbound",
            "call-start-datetime": ns_dt(begin),
            "call-answer-datetime": answered,
            "call-disconnect-datetime": ns_dt(begin + timedelta(seconds=duration + 5)),
            "call-total-duration-seconds": duration + 5,
            "call-talking-duration-seconds": duration,
            "call-disposition": "Answered" if duration else "Missed",
        }
        self.cdrs.append(cdr)
        return cdr

    async def emit(self, model: str, payloads: list[Record]) -> list[Delivery]:
        """POST `payloads` (one JSON array) to every live subscription of `model`."""
        made: list[Delivery] = []
        targets = self.live_subscriptions(model)
        if not targets:
            return made
        body = json.dumps(payloads)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for sub in targets:
                status: int | None
                try:
                    async with http.post(
                        sub["post-url"],
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Correlation-ID": sub["id"],
                        },
                    ) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, OSError, TimeoutError):
                    status = None
                self._record(sub, status)
                made.append(Delivery(sub["id"], model, sub["post-url"], status, len(payloads)))
        self.deliveries.extend(made)
        return made

    def _record(self, sub: Record, status: int | None) -> None:
        sid = sub["id"]
        if status is not None and status <= 302:
            sub["posts-count"] += 1
            sub["status"] = "active"
            self._failures[sid] = 0
            return
        sub["error-count"] += 1
        self._failures[sid] = self._failures.get(sid, 0) + 1
        if self._failures[sid] >= self.error_after:
            sub["status"] = "error"
