"""The real listener app on loopback with a real Store on a tmp SQLite file.

`Hook` bundles what a listener test looks at: the base URL, the store, the injected clock, the
ids `on_events` was woken with, and every NewEvent the inbox was handed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from daemon.clock import FakeClock
from daemon.store import InsertedEvent, NewEvent, Store
from daemon.webhooks.access import listener_runner
from daemon.webhooks.app import ListenerDeps, make_app
from daemon.webhooks.inbox import InboxWriter
from daemon.webhooks.secrets import WebhookSecrets
from tests.netsapiens_fixtures import T0

SECRET = "listener-secret-0123456789"
OLD_SECRET = "previous-secret-9876543210"

MESSAGE: dict[str, Any] = {
    "id": "m-0001",
    "timestamp": "2025-01-02T14:59:00+00:00",
    "type": "sms",
    "domain": "acme",
    "direction": "orig",
    "from-number": "15551230000",
    "dialed": "15559870000",
    "text": "  Balance?  ",
    "terminating-user-id": "101",
    "messagesession-id": "s" * 40,
}


def message(ident: str, **fields: Any) -> dict[str, Any]:
    return {**MESSAGE, "id": ident, **fields}


def batch(*items: Any) -> bytes:
    return json.dumps(list(items)).encode()


class RecordingInbox:
    """Delegates to the real store and keeps every NewEvent it was handed."""

    def __init__(self, store: Store):
        self.store = store
        self.handed: list[NewEvent] = []

    async def insert_events(self, events: Sequence[NewEvent]) -> Sequence[InsertedEvent]:
        self.handed.extend(events)
        return await self.store.insert_events(events)


@dataclass
class Hook:
    url: str
    store: Store
    clock: FakeClock
    inbox: RecordingInbox
    deps: ListenerDeps
    app: web.Application
    woken: list[list[int]] = field(default_factory=list)

    def path(self, model: str = "message", secret: str = SECRET) -> str:
        return f"{self.url}/webhooks/netsapiens/{model}/{secret}"

    async def count(self) -> int:
        return len(await self.store.list_events(limit=1_000_000))


@asynccontextmanager
async def serve_listener(app: web.Application) -> AsyncIterator[str]:
    """Serve with the runner the service uses (route-only access log) on 127.0.0.1:0."""
    runner = listener_runner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_hook(
    tmp_path: Path,
    *,
    inbox: Callable[[Store], InboxWriter] | None = None,
    **overrides: Any,
) -> AsyncIterator[Hook]:
    """A listener over a fresh store; `overrides` replace ListenerDeps fields."""
    clock = FakeClock(T0)
    async with Store.open(tmp_path / "listener.db", clock=clock) as store:
        recording = RecordingInbox(store)
        woken: list[list[int]] = []
        deps = ListenerDeps(
            inbox=inbox(store) if inbox is not None else recording,
            secrets=WebhookSecrets(SECRET),
            clock=clock,
            on_events=lambda ids: woken.append(list(ids)),
        )
        deps = replace(deps, **overrides)
        app = make_app(deps)
        async with serve_listener(app) as url:
            yield Hook(url, store, clock, recording, deps, app, woken)


@pytest.fixture
async def hook(tmp_path: Path) -> AsyncIterator[Hook]:
    async with running_hook(tmp_path) as h:
        yield h


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session
