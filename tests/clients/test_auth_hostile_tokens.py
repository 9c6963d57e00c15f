"""Token endpoints that answer oddly — found by probing: a lifetime under the early-refresh
margin, an infinite one, an HTML page or a 403 for a token, a token in a body cut short. One
token request a burst, fail fast on a final answer, no crash, no token in an error."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
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


# A lifetime under the early-refresh margin: still one token request a burst.
async def test_a_lifetime_under_the_refresh_margin_keeps_one_token_request_a_burst() -> None:
    calls: list[int] = []
    app = halo_app({"access_token": "tok-abcdefgh12345", "expires_in": 30}, calls)
    async with serve(app) as url:
        async with build_client(upstream("halo", url), clock=FakeClock()) as client:
            results = await _burst(client, 10)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert len(calls) == 1, f"10 concurrent callers caused {len(calls)} token requests"


# An infinite lifetime (1e999 in JSON) counts as the default hour, no OverflowError.
async def test_infinite_expires_in_does_not_crash() -> None:
    calls: list[int] = []
    raw = '{"access_token": "tok-abcdefgh12345", "expires_in": 1e999}'
    app = halo_app(None, calls, raw=raw)
    async with serve(app) as url:
        async with build_client(upstream("halo", url), clock=FakeClock()) as client:
            first = await _burst(client, 1)
    assert not isinstance(first[0], BaseException), repr(first[0])


# A final answer that is no token — a login page with a 200, a 403 from a disabled API
# application — is a refused grant: one token request, then fail fast for the back-off.
@pytest.mark.parametrize(
    "answer",
    [
        {"token_body": None, "raw": "<html>Sign in</html>", "ctype": "text/html"},
        {"token_body": {"error": "access_denied"}, "status": 403},
    ],
    ids=["html page, 200", "403"],
)
async def test_a_final_answer_that_is_no_token_fails_fast_in_one_request(
    answer: dict[str, Any],
) -> None:
    calls: list[int] = []
    async with serve(halo_app(calls=calls, **answer)) as url:
        async with build_client(upstream("halo", url), clock=FakeClock()) as client:
            results = await _burst(client, 10)  # at once
            for _ in range(5):  # and one after another
                results += await _burst(client, 1)
            auth = client.session.auth
    assert all(isinstance(r, UpstreamError) for r in results), results
    assert len(calls) == 1, f"15 callers caused {len(calls)} token requests"
    assert not auth.healthy


# A token answer cut short keeps its token out of the error's excerpt.
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
