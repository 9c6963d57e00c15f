"""Token endpoints that answer oddly — found by probing: a lifetime under the early-refresh
margin, an infinite one, an HTML page or a 403 for a token, a token in a body cut short. One
token request a burst, fail fast on a final answer, no crash, no token in an error."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from daemon.clients.factory import build_client
from daemon.clock import FakeClock
from daemon.errors import UpstreamError
from tests.hostile.conftest import upstream
from tests.hostile.servers import serve


def halo_app(
    token_body: Any,
    calls: list[int],
    *,
    status: int = 200,
    raw: str | None = None,
    ctype: str = "application/json",
) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        calls.append(1)
        await asyncio.sleep(0.01)  # keep the grant in flight while the others pile up
        text = raw if raw is not None else json.dumps(token_body)
        return web.Response(text=text, status=status, content_type=ctype)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"tickets": [], "record_count": 0})

    app = web.Application()
    app.router.add_post("/auth/token", token)
    app.router.add_get("/api/{resource}", listing)
    return app


async def _burst(client: Any, n: int) -> list[Any]:
    return await asyncio.gather(
        *(client.tickets.list(20, 1) for _ in range(n)), return_exceptions=True
    )


# expires_in shorter than the leeway (0, 30, negative): single flight is lost --------------
async def test_a_lifetime_under_the_refresh_margin_keeps_one_token_request_a_burst() -> None:
    calls: list[int] = []
    app = halo_app({"access_token": "tok-abcdefgh12345", "expires_in": 30}, calls)
    async with serve(app) as url:
        async with build_client(upstream("halo", url), clock=FakeClock()) as client:
            results = await _burst(client, 10)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert len(calls) == 1, f"10 concurrent callers caused {len(calls)} token requests"


# expires_in huge (1e999 -> inf in JSON, or "inf"): OverflowError from the refresh log line --
async def test_infinite_expires_in_does_not_crash() -> None:
    calls: list[int] = []
    raw = '{"access_token": "tok-abcdefgh12345", "expires_in": 1e999}'
    app = halo_app(None, calls, raw=raw)
    async with serve(app) as url:
        async with build_client(upstream("halo", url), clock=FakeClock()) as client:
            first = await _burst(client, 1)
    assert not isinstance(first[0], BaseException), repr(first[0])


# token endpoint answers a 200 that is not JSON (a login page): no backoff, one token
#    request per caller (no single flight, no fail-fast) ------------------------------------
async def test_non_json_token_answer_fails_fast_and_single_flight() -> None:
    calls: list[int] = []
    app = halo_app(None, calls, raw="<html>Sign in</html>", ctype="text/html")
    async with serve(app) as url:
        async with build_client(upstream("halo", url), clock=FakeClock()) as client:
            results = await _burst(client, 10)
            results += await _burst(client, 10)
            auth = client.session.auth
    assert all(isinstance(r, UpstreamError) for r in results), results
    assert len(calls) == 1, f"20 callers caused {len(calls)} token requests; healthy={auth.healthy}"


# 3b. token endpoint answers 403 (a disabled API application): same hammering ----------------
async def test_token_403_fails_fast() -> None:
    calls: list[int] = []
    app = halo_app({"error": "access_denied"}, calls, status=403)
    async with serve(app) as url:
        async with build_client(upstream("halo", url), clock=FakeClock()) as client:
            results = []
            for _ in range(5):
                results += await _burst(client, 1)
            auth = client.session.auth
    assert all(isinstance(r, UpstreamError) for r in results), results
    assert len(calls) == 1, f"5 calls caused {len(calls)} token requests; healthy={auth.healthy}"


# a token answer that is not valid JSON (truncated) puts the issued token in the error -------
async def test_truncated_token_answer_does_not_leak_token() -> None:
    calls: list[int] = []
    tok = "LEAKED-ACCESS-TOKEN-0123456789"
    raw = f'{{"access_token": "{tok}", "token_type": "Bearer", "expires_in": 3600'
    app = halo_app(None, calls, raw=raw)
    async with serve(app) as url:
        async with build_client(upstream("halo", url), clock=FakeClock()) as client:
            (err,) = await _burst(client, 1)
    assert isinstance(err, UpstreamError), err
    assert tok not in str(err) and tok not in (err.excerpt or ""), str(err)
