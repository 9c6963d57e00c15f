"""The event path end to end: the NetSapiens and Halo simulators, the real listener, a real
SQLite store, the keeper's real subscriptions and the real dispatcher — built from a real config
file through the same wiring the service uses.

`Path_` exposes what a test drives (`sms()` makes an SMS arrive at the PBX, which posts it to
our listener) and looks at (what the simulators were asked to send, the store).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.clock import FakeClock
from daemon.config import Settings, load_settings
from daemon.errors import StoreError
from daemon.rules.dispatcher import Dispatcher
from daemon.rules.wiring import RulesHolder
from daemon.sandbox.halo_sim import HaloState, serve_halo
from daemon.sandbox.netsapiens_sim import serve_netsapiens
from daemon.sandbox.netsapiens_state import NetsapiensState
from daemon.store import ContactEntry, EventRow, Store
from tests.eventwiring import wire_event_path
from tests.localnet import free_port

T0 = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)  # a Tuesday, 15:00 UTC
SECRET = "events-webhook-secret-0123456789"
OUR_NUMBER = "15559870000"  # the DID the PBX delivers to; we reply from it
ANN = "15551230001"  # a known client
BOB = "15551230002"  # unknown

RULES = """
[[rules]]
name = "balance"
on = "message.received"
match = { body = "(?i)^\\\\s*balance\\\\b" }
action = "sms_reply"
text = "Hi {{ client.first_name | default('there') }}, your balance is {{ client.balance }}."
cooldown = "10m"

[[rules]]
name = "echo-bot"
on = "message.received"
match = { body = "(?i)^ping" }
action = "sms_reply"
text = "pong: {{ event.body }}"

[[rules]]
name = "sms-to-ticket"
on = "message.received"
action = "halo_ticket"
thread = true
max_notes = 3
ticket = { summary = "SMS from {{ event.from }}", details = "{{ event.body }}", tickettype_id = 1 }
"""


def write_config(tmp: Path, ns_url: str, halo_url: str, listen_port: int, extra: str) -> Path:
    path = tmp / "daemon.toml"
    path.write_text(
        f"""
[daemon]
database = "{tmp / "state.db"}"
timezone = "UTC"

[daemon.dispatch]
max_attempts = 3
backoff = "10s"

[http]
listen = "127.0.0.1:{listen_port}"

[upstreams.netsapiens]
api_url = "{ns_url}"
client_id = "ns-client"
client_secret = "ns-secret"
username = "api@demo"
password = "demo-password"

[upstreams.halo]
tenant_url = "{halo_url}"
client_id = "halo-client"
client_secret = "halo-secret"

[webhooks.netsapiens]
secret = "{SECRET}"
public_url = "http://127.0.0.1:{listen_port}/webhooks/netsapiens"
subscribe = ["message"]
own_numbers = ["+1{OUR_NUMBER[1:]}"]
{extra}
"""
    )
    path.chmod(0o600)
    return path


@dataclass
class EventPath:
    settings: Settings
    store: Store
    clock: FakeClock
    ns: NetsapiensState
    halo: HaloState
    dispatcher: Dispatcher
    holder: RulesHolder
    listener_url: str
    config: Path

    async def sms(self, sender: str, text: str, to: str = OUR_NUMBER) -> dict[str, Any]:
        """An SMS arrives at the PBX, which posts it to our listener (awaited: committed)."""
        return await self.ns.inbound_sms(sender, to, text)

    def sent_to(self, number: str) -> list[str]:
        return [m["message"] for m in self.ns.sent if str(m.get("destination")) == number]

    def tickets(self) -> list[dict[str, Any]]:
        tickets = self.halo.table("Tickets")
        return [t for t in tickets if str(t.get("summary", "")).startswith("SMS")]

    def notes(self, ticket_id: int) -> list[dict[str, Any]]:
        return [a for a in self.halo.table("Actions") if a.get("ticket_id") == ticket_id]

    async def events(self) -> list[EventRow]:
        return list(reversed(await self.store.list_events(limit=1000)))

    async def skipped(self) -> list[str]:
        """Every rule skip reason in the stored plans (the loop guard's `too old`, ...)."""
        reasons = []
        for e in await self.events():
            plan = json.loads(e.plan or "{}")
            reasons += [s["reason"] for s in plan.get("skipped", [])]
        return reasons


async def add_client(store: Store, clock: FakeClock, phone: str, **data: Any) -> None:
    """A synced record with a phone, and its contacts entry, as a sync would leave them."""
    await store.ensure_record_table("blesta_clients")
    record = {"id": data.get("id", "7"), "phone": phone, **data}
    await store.upsert_page("blesta_clients", [(record["id"], record)], run_started_at=clock.now())
    await store.replace_contacts(
        "blesta_clients", [ContactEntry("+" + phone, record["id"], data.get("first_name"))]
    )


@pytest.fixture
def extra_config() -> str:
    return RULES


@asynccontextmanager
async def open_event_path(
    tmp_path: Path, extra_config: str, *, edit: Callable[[str], str] | None = None
) -> AsyncIterator[EventPath]:
    """The event path on the simulators; `edit` may rewrite the config text before it loads."""
    clock = FakeClock(T0)
    ns = NetsapiensState(wall=clock.now)
    halo = HaloState(demo_size=5)
    async with AsyncExitStack() as stack:
        ns_url = await stack.enter_async_context(serve_netsapiens(ns))
        halo_url = await stack.enter_async_context(serve_halo(halo))
        port = free_port()
        config = write_config(tmp_path, ns_url, halo_url, port, extra_config)
        if edit is not None:
            config.write_text(edit(config.read_text()))
        settings = load_settings(config)
        holder = RulesHolder.from_settings(settings)
        wired = await wire_event_path(settings, stack, clock=clock, port=port, holder=holder)
        assert ns.live_subscriptions("message")
        yield EventPath(
            settings,
            wired.store,
            clock,
            ns,
            halo,
            wired.dispatcher,
            holder,
            wired.listener_url,
            config,
        )


@pytest.fixture
async def event_path(tmp_path: Path, extra_config: str) -> AsyncIterator[EventPath]:
    async with open_event_path(tmp_path, extra_config) as path:
        yield path


def fail_the_record_of_the_next_send(p: EventPath) -> None:
    """The next `sent` outcome cannot be written (a full disk): the upstream acted, and only the
    action's `attempt_started_at` says so — the state a SIGKILL between call and record leaves.
    A store method made to refuse: a full disk cannot be made here."""
    real = p.store.finish_action

    async def refuse_once(action_id: int, status: str, **kw: Any) -> None:
        if status == "sent":
            p.store.finish_action = real  # type: ignore[method-assign]
            raise StoreError("database write failed: database or disk is full")
        await real(action_id, status, **kw)

    p.store.finish_action = refuse_once  # type: ignore[method-assign]
