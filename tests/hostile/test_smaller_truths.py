"""Issue 14 §7: Halo's bare 429, NetSapiens lists read to the end, pages asked for early."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.clients.factory import build_client
from daemon.clients.netsapiens import NetsapiensClient
from daemon.clock import FakeClock
from daemon.config.upstreams import NetsapiensUpstream
from daemon.sandbox.server import serve_app
from tests.hostile.conftest import SECRET, Harness
from tests.hostile.servers import Script, clients, halo_app


async def test_halo_429_without_retry_after_backs_off_across_the_window(
    harness: Harness,
) -> None:
    """Halo-hosted answers a bare 429 when its 300-per-5-minutes window is spent. Our generic
    backoff (0.5 s, 1 s, ...) would give up within seconds; Halo's waits span the window."""
    script = Script(rows=clients(30))
    app = halo_app(script)
    refusals = {"left": 3}

    @web.middleware
    async def spent(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/") and refusals["left"] > 0:
            refusals["left"] -= 1
            return web.Response(
                status=429, text="Rate Limit Reached - 300 Requests per rolling 5 minute window"
            )
        return await handler(request)

    app.middlewares.append(spent)
    before = len(harness.clock.sleeps)
    result = await harness.run("halo", script, app=app, upstream_extra={"max_retries": 4})
    assert result.status == "ok" and result.fetched == 30, result.error
    assert harness.clock.sleeps[before:] == [15.0, 30.0, 60.0]


SEEN = web.AppKey("seen", list[tuple[int, int]])


def _ns_app(messages: int) -> web.Application:
    rows = [{"id": f"m{i}", "text": f"hello {i}"} for i in range(messages)]
    seen: list[tuple[int, int]] = []

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "refresh_token": "r", "expires_in": 3600})

    async def listing(request: web.Request) -> web.Response:
        start, limit = int(request.query["start"]), int(request.query["limit"])
        seen.append((start, limit))
        return web.json_response(rows[start : start + limit])

    app = web.Application()
    app[SEEN] = seen
    app.router.add_post("/ns-api/v2/tokens", token)
    app.router.add_get("/ns-api/v2/domains/{d}/users/{u}/messagesessions/{s}/messages", listing)
    return app


async def test_netsapiens_messages_are_read_to_the_end() -> None:
    app = _ns_app(250)
    async with serve_app(app) as url:
        settings = NetsapiensUpstream.model_validate({
            "name": "ns", "api_url": url, "client_id": "c", "client_secret": SECRET,
            "username": "u", "password": SECRET,
        })  # fmt: skip
        client = build_client(settings, clock=FakeClock(autojump=True))
        assert isinstance(client, NetsapiensClient)
        async with client:
            got = await client.get_messages(user="100", session_id="s" * 32, limit=100)
    assert [m["id"] for m in got] == [f"m{i}" for i in range(250)]
    assert app[SEEN] == [(0, 100), (100, 100), (200, 100)]
