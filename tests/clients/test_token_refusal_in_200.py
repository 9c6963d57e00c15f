"""OAuth refusals sent with a 200: still refusals.

Halo's token endpoint answering `200 {"error": "invalid_client"}` must mark the upstream
unhealthy and back off (DESIGN §5), not count as a transient malformed answer that asks for a
token on every call; a NetSapiens refresh grant refused as `200 {"code": 401}` must fall back
to the password grant, not fail every call until a restart."""

from __future__ import annotations

from aiohttp import web

from daemon.clients.factory import build_client
from daemon.clock import FakeClock
from daemon.errors import UpstreamError
from tests.hostile.conftest import upstream
from tests.hostile.servers import _json, serve


async def test_oauth_error_in_a_200_is_an_auth_failure() -> None:
    token_calls = []

    async def token(request: web.Request) -> web.Response:
        token_calls.append(1)
        return _json({"error": "invalid_client", "error_description": "client secret revoked"})

    async def listing(request: web.Request) -> web.Response:
        return _json({"tickets": [], "record_count": 0})

    app = web.Application()
    app.router.add_post("/auth/token", token)
    app.router.add_get("/api/{resource}", listing)
    clock = FakeClock(autojump=True)
    errors = []
    async with serve(app) as url:
        async with build_client(upstream("halo", url), clock=clock) as client:
            for _ in range(5):
                try:
                    await client.tickets.list(20, 1)
                except UpstreamError as exc:
                    errors.append(type(exc).__name__)
            auth = client.session.auth
    assert errors[0] == "AuthError", errors
    assert not auth.healthy
    assert len(token_calls) == 1  # the next four fail fast inside failure_backoff
