"""What the reliability tests share: a real `daemon run` subprocess against the sandbox's
simulators (which run in the test's own event loop), and the invariants checked afterwards
against its database and the simulators' records.

The sandbox's demo rules drive the event path: a synced client's "hello" is answered by SMS in
the message's session (`hello`); any other text becomes a Halo ticket, and later messages from
the same number notes on it (`sms-to-ticket`, `thread = true`).

One tweak to the sandbox config: the dispatcher polls every 0.5 s instead of 5 s. Events the
gap filler inserts after a restart do not wake the dispatcher (only the listener's do), so
they wait for its next poll; the default would add 5 s to every case that relies on them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from daemon.clock import SystemClock
from daemon.config import load_settings
from daemon.crashpoints import ENV as CRASH_ENV
from daemon.rules.actions import REF_PREFIX
from daemon.sandbox.halo_sim import HaloState
from daemon.sandbox.netsapiens_state import NetsapiensState
from daemon.sandbox.orchestra import OWN_NUMBER, WEBHOOK_SECRET, Sandbox, run_sandbox
from daemon.sync.batch import burst
from tests.daemon_proc import TIMEOUT, Daemon, spawn
from tests.localnet import NotifySocket, free_port

OURS = OWN_NUMBER.lstrip("+")  # the DID the PBX delivers to, as the PBX spells it
FINAL_EVENTS = ("done", "ignored", "dead")
FINAL_ACTIONS = ("sent", "dead")


@dataclass
class World:
    """A sandbox whose config runs the listener on `port`, with contacts already synced."""

    sb: Sandbox
    port: int
    tmp: Path
    client_phone: str  # a synced Blesta client's number, as the PBX spells it (no +)
    client_name: str
    starts: int = 0
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def ns(self) -> NetsapiensState:
        return self.sb.netsapiens

    @property
    def halo(self) -> HaloState:
        return self.sb.halo

    @property
    def db(self) -> Path:
        return self.sb.directory / "state.db"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/netsapiens/message/{WEBHOOK_SECRET}"

    async def start(self, crash_at: str | None = None, *, ready: bool = True) -> Daemon:
        """`daemon run` on this world's config; with `crash_at`, armed to SIGKILL itself there."""
        self.starts += 1
        path = self.tmp / f"notify-{self.starts}.sock"
        notify = NotifySocket(path)
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", CRASH_ENV)}
        env.update(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="2000000")
        if crash_at is not None:
            env[CRASH_ENV] = crash_at
        d = await spawn(self.sb.config_path, notify, env)
        self.daemons.append(d)
        if ready:
            await notify.expect("READY")
            await self.subscribed()
        return d

    async def subscribed(self) -> None:
        """The keeper has subscribed the listener for messages at the PBX."""
        async with asyncio.timeout(TIMEOUT):
            while not self.ns.live_subscriptions("message"):
                await asyncio.sleep(0.02)

    def close(self) -> None:
        for d in self.daemons:
            d.kill()
            d.notify.close()

    # -- the database, read from outside ------------------------------------------------------

    def q(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return list(conn.execute(sql, params))
        finally:
            conn.close()

    def integrity(self) -> str:
        return str(self.q("PRAGMA integrity_check")[0][0])

    def open_work(self) -> tuple[int, int]:
        """(events, actions) not yet final."""
        (events,) = self.q("SELECT COUNT(*) FROM events WHERE status IN ('pending', 'failed')")[0]
        (actions,) = self.q("SELECT COUNT(*) FROM actions WHERE status IN ('pending', 'failed')")[0]
        return int(events), int(actions)

    async def settled(self, d: Daemon) -> None:
        """The restarted daemon's gap filler has run and every event and action is final."""
        await d.wait_for("backfill.finished")
        try:
            async with asyncio.timeout(TIMEOUT):
                while self.open_work() != (0, 0):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"not settled: {self.describe_open()}") from None

    def describe_open(self) -> dict[str, Any]:
        return {
            "events": self.q(
                "SELECT id, kind, status, attempts, next_attempt_at, lease_until, last_error, "
                "sender FROM events WHERE status IN ('pending', 'failed') LIMIT 20"
            ),
            "actions": self.q(
                "SELECT id, event_id, kind, status, attempts, next_attempt_at, last_error "
                "FROM actions WHERE status IN ('pending', 'failed') LIMIT 20"
            ),
        }

    def event_of(self, message_id: str) -> tuple[int, str, str] | None:
        """(id, status, via) of the inbox row for a PBX message id."""
        rows = self.q(
            "SELECT id, status, via FROM events WHERE dedupe_key = ?",
            f"netsapiens:message:{message_id}",
        )
        return None if not rows else (int(rows[0][0]), str(rows[0][1]), str(rows[0][2]))

    def actions(self, event_id: int) -> list[dict[str, Any]]:
        cols = ("id", "kind", "status", "attempts", "attempt_started_at", "idempotency_key",
                "upstream_ref", "phone")  # fmt: skip
        rows = self.q(
            f"SELECT {', '.join(cols)} FROM actions WHERE event_id = ? ORDER BY id", event_id
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # -- what the upstreams did ---------------------------------------------------------------

    def sms_to(self, number: str) -> list[str]:
        return [str(m.get("message")) for m in self.ns.sent if str(m.get("destination")) == number]

    def tickets_from(self, number: str) -> list[dict[str, Any]]:
        return [t for t in self.halo.table("Tickets") if number in str(t.get("summary", ""))]

    def refs(self) -> Counter[str]:
        return refs(self.halo)

    def assert_invariants(self, acked: Iterable[str]) -> None:
        """Every acknowledged message is in the inbox and final, so is every other event and
        action, no attempt is left open, no ticket or note was created twice for one action,
        no SMS went out more often than its actions were sent, and the file is sound."""
        assert self.integrity() == "ok"
        for message_id in acked:
            row = self.event_of(message_id)
            assert row is not None, f"acknowledged message {message_id} is not in the inbox"
            assert row[1] in FINAL_EVENTS, row
        assert self.open_work() == (0, 0)
        assert not self.q("SELECT id FROM actions WHERE attempt_started_at IS NOT NULL")
        assert not self.q("SELECT id FROM sync_runs WHERE status = 'running'")
        doubled = {k: n for k, n in self.refs().items() if n > 1}
        assert not doubled, f"created more than once: {doubled}"
        sent_sms = Counter(
            str(phone)
            for (phone,) in self.q(
                "SELECT phone FROM actions WHERE kind = 'sms_reply' AND status = 'sent'"
            )
        )
        texted = Counter("+" + str(m.get("destination")) for m in self.ns.sent)
        assert texted == sent_sms, f"SMS sent {dict(texted)} vs actions sent {dict(sent_sms)}"


def refs(halo: HaloState) -> Counter[str]:
    """How many tickets and notes carry each action's `[ref: key]` line."""
    seen: Counter[str] = Counter()
    texts = [str(t.get("details", "")) for t in halo.table("Tickets")]
    texts += [str(a.get("note", "")) for a in halo.table("Actions")]
    for text in texts:
        start = text.find(REF_PREFIX)
        if start >= 0:
            seen[text[start + len(REF_PREFIX) : text.index("]", start)]] += 1
    return seen


def strip_syncs(text: str) -> str:
    """The config without its `[[sync]]` jobs: the contacts are synced once beforehand, and a
    crash case should not race nine sync jobs."""
    start, end = text.index("\n[[sync]]"), text.index("\n# Demo rules")
    return text[:start] + "\n" + text[end:]


@asynccontextmanager
async def world(
    tmp: Path, *, syncs: bool = False, halo_budget: bool = True, daemon_extra: str = ""
) -> AsyncIterator[World]:
    """The sandbox, its config tweaked: `syncs=False` leaves the sync jobs out (run once
    before, for the contacts); `halo_budget=False` leaves out hosted Halo's 300 requests per
    5 minutes: a few hundred tickets and notes in a few seconds would spend it, and the rest
    would be deferred to the next window, past the test's end."""
    port = free_port()
    async with run_sandbox(tmp, now=datetime.now(UTC), listen=f"127.0.0.1:{port}") as sb:
        text = sb.config_path.read_text()
        text = text.replace(
            "[daemon]\n",
            f'[daemon]\nshutdown_timeout = "2s"\ndispatch.poll = "0.5s"\n{daemon_extra}',
            1,
        )
        if not halo_budget:
            text = text.replace('\nrate_limit = "300/5m"\n', "\n", 1)
        sb.config_path.write_text(text)
        settings = load_settings(sb.config_path)
        results = await burst(settings, ["blesta-clients"], clock=SystemClock())
        assert [r.status for r in results] == ["ok"]
        if syncs:  # every job starts at once (and is killed mid-page in the first rounds)
            sb.config_path.write_text(text.replace('\nevery = "', '\njitter = 0\nevery = "'))
        else:
            sb.config_path.write_text(strip_syncs(text))
        conn = sqlite3.connect(sb.directory / "state.db")
        try:
            phone, name = conn.execute(
                "SELECT phone, name FROM contacts WHERE table_name = 'blesta_clients' "
                "ORDER BY record_id LIMIT 1"
            ).fetchone()
        finally:
            conn.close()
        w = World(sb, port, tmp, str(phone).lstrip("+"), str(name))
        try:
            yield w
        finally:
            w.close()


async def post(url: str, body: Any) -> int | None:
    """POST as the PBX does; the status, or None when the connection died without one."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.post(url, data=json.dumps(body),
                                 headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
                await resp.read()
                return resp.status
    except (aiohttp.ClientError, OSError):
        return None
