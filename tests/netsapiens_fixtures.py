"""Fixtures for the NetSapiens client, payload, keeper and backfill tests.

The simulator runs on loopback and shares a `FakeClock` with the client (token expiry) and the
keeper (subscription expiry), so time moves only when a test says so. `WebhookListener` is a
tiny stand-in for the real listener: it parses deliveries with `parse_payload` and inserts them
into the real `Store` exactly as the backfill does, so dedupe keys can be compared end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.clients.netsapiens import NetsapiensClient
from daemon.clock import FakeClock
from daemon.config import NetsapiensUpstream
from daemon.sandbox.netsapiens_sim import NetsapiensState, serve_netsapiens
from daemon.sandbox.server import serve_app
from daemon.store import NewEvent, Store
from daemon.webhooks.event import PayloadError
from daemon.webhooks.events import parse_payload

T0 = datetime(2025, 1, 2, 15, 0, 0, tzinfo=UTC)
SECRET = "hook-secret-0123456789"


def ns_settings(url: str, **overrides: Any) -> NetsapiensUpstream:
    """An `[upstreams.netsapiens]` table pointing at the simulator."""
    values: dict[str, Any] = {
        "name": "netsapiens",
        "kind": "netsapiens",
        "api_url": url,
        "client_id": "ns-client",
        "client_secret": "ns-secret",
        "username": "api@demo",
        "password": "demo-password",
        "timeout": 10.0,
        "max_retries": 2,
        "max_concurrency": 8,
        "rate_limit": None,
    }
    values.update(overrides)
    return NetsapiensUpstream.model_validate(values)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition with a bounded wait (the loop yields; no fixed sleeps)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
def ns_clock() -> FakeClock:
    """Autojump: a retry backoff moves time instead of hanging; tests advance it otherwise."""
    return FakeClock(T0, autojump=True)


@pytest.fixture
def ns_state(ns_clock: FakeClock) -> NetsapiensState:
    return NetsapiensState(now=ns_clock.monotonic, wall=ns_clock.now)


@pytest.fixture
async def ns_sim(ns_state: NetsapiensState) -> AsyncIterator[str]:
    async with serve_netsapiens(ns_state) as url:
        yield url


@pytest.fixture
async def ns_client(ns_sim: str, ns_clock: FakeClock) -> AsyncIterator[NetsapiensClient]:
    async with NetsapiensClient.from_settings(ns_settings(ns_sim), clock=ns_clock) as client:
        yield client


@pytest.fixture
async def ns_store(tmp_path: Path, ns_clock: FakeClock) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "state.db", clock=ns_clock) as store:
        yield store


class WebhookListener:
    """`POST /webhooks/netsapiens/<model>/<secret>` → parse → inbox, then 200."""

    def __init__(self, store: Store, clock: FakeClock, secret: str = SECRET):
        self.store = store
        self.clock = clock
        self.secret = secret
        self.deliveries = 0
        self.url = ""  # set while serving
        self._stop: Callable[[], Awaitable[None]] | None = None

    @property
    def public_url(self) -> str:
        return f"{self.url}/webhooks/netsapiens"

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["secret"] != self.secret:
            raise web.HTTPNotFound()
        try:
            parsed = parse_payload(request.match_info["model"], await request.read())
        except PayloadError:
            raise web.HTTPBadRequest() from None
        self.deliveries += 1
        await self.store.insert_events(
            [
                NewEvent(e.source, e.kind, e.dedupe_key, e.to_json(), self.clock.now())
                for e in parsed.events
            ]
        )
        return web.json_response({"accepted": len(parsed.events)})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/webhooks/netsapiens/{model}/{secret}", self.handle)
        return app


@pytest.fixture
async def listener(ns_store: Store, ns_clock: FakeClock) -> AsyncIterator[WebhookListener]:
    hook = WebhookListener(ns_store, ns_clock)
    async with serve_app(hook.app()) as url:
        hook.url = url
        yield hook
