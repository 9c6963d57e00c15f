"""NetSapiens tokens — found by probing: an odd `expires_in` in `daemon api netsapiens token`,
a refresh refused inside a 200 (fall back to the password grant), and a token still in use
kept masked while other upstreams refresh theirs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from daemon.clients.factory import build_client
from daemon.clock import FakeClock
from daemon.config.upstreams import NetsapiensUpstream
from daemon.errors import UpstreamError
from daemon.logs import clear_secrets, redact_text
from tests.hostile.servers import _json, serve


def ns_cfg(url: str) -> Any:
    return NetsapiensUpstream.model_validate(
        {
            "name": "ns",
            "kind": "netsapiens",
            "api_url": url,
            "client_id": "c",
            "client_secret": "hostile-secret-0123456789",
            "username": "u",
            "password": "hostile-secret-0123456789",
            "max_retries": 0,
        }
    )


def ns_app(
    grants: list[str], *, refresh_answer: Any = None, expires_in: Any = 3600
) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        body = await request.json()
        grants.append(body["grant_type"])
        if body["grant_type"] == "refresh_token" and refresh_answer is not None:
            return _json(refresh_answer)
        return _json(
            {
                "access_token": f"acc-{len(grants)}-abcdefgh",
                "refresh_token": f"ref-{len(grants)}-abcdefgh",
                "expires_in": expires_in,
                "token_type": "Bearer",
                "user": "101",
                "domain": "acme",
            }
        )

    async def domains(request: web.Request) -> web.Response:
        return _json([{"domain": "acme"}])

    app = web.Application()
    app.router.add_post("/ns-api/v2/tokens", token)
    app.router.add_get("/ns-api/v2/domains", domains)
    return app


# `daemon api netsapiens token` reads the lifetime as the token's state read it.
async def test_token_info_with_odd_expires_in() -> None:
    grants: list[str] = []
    async with serve(ns_app(grants, expires_in="3600s")) as url:
        async with build_client(ns_cfg(url), clock=FakeClock()) as client:
            info = await client.token_info()
    assert info["user"] == "101"


@pytest.mark.parametrize(
    "refusal",
    [
        {"code": 401, "message": "Refresh token revoked"},
        # Found by probing: refused OAuth-style (no access_token), the dead refresh token was
        # kept and retried after every back-off, for ever.
        {"error": "invalid_grant", "error_description": "refresh token expired"},
    ],
    ids=["code 401", "oauth error"],
)
async def test_a_refresh_refused_inside_a_200_falls_back_to_the_password(
    refusal: dict[str, Any],
) -> None:
    grants: list[str] = []
    clock = FakeClock(autojump=True)
    outcomes = []
    async with serve(ns_app(grants, refresh_answer=refusal)) as url:
        async with build_client(ns_cfg(url), clock=clock) as client:
            await client.request("GET", "domains")
            for _ in range(3):
                clock.advance(4000)  # the access token has expired
                try:
                    await client.request("GET", "domains")
                    outcomes.append("ok")
                except UpstreamError as exc:
                    outcomes.append(type(exc).__name__)
    assert outcomes == ["ok", "ok", "ok"], (grants, outcomes)
    assert grants[:3] == ["password", "refresh_token", "password"], grants


# An upstream's current token stays masked while another upstream's short tokens churn.
async def test_current_token_stays_masked_after_other_refreshes() -> None:
    from tests.hostile.conftest import upstream

    clear_secrets()
    grants: list[str] = []
    halo_calls = []

    async def halo_token(request: web.Request) -> web.Response:
        halo_calls.append(1)
        return _json({"access_token": f"halo-{len(halo_calls):04d}-abcdefghij", "expires_in": 30})

    async def halo_list(request: web.Request) -> web.Response:
        return _json({"tickets": [], "record_count": 0})

    halo = web.Application()
    halo.router.add_post("/auth/token", halo_token)
    halo.router.add_get("/api/{resource}", halo_list)
    try:
        async with serve(ns_app(grants)) as ns_url, serve(halo) as halo_url:
            clock = FakeClock()
            async with (
                build_client(ns_cfg(ns_url), clock=clock) as ns,
                build_client(upstream("halo", halo_url), clock=clock) as hc,
            ):
                await ns.request("GET", "domains")
                ns_token = ns.auth.state.access_token
                for _ in range(64):
                    await hc.tickets.list(20, 1)
                assert await ns.request("GET", "domains")  # same NS token, still in use
                assert ns.auth.state.access_token == ns_token and len(grants) == 1
                assert ns_token not in redact_text(f"echo: {ns_token}")
    finally:
        clear_secrets()


# A caller cancelled while it holds the refresh does not break the others.
async def test_cancelled_refresher_leaves_working_state() -> None:
    grants: list[str] = []
    gate = asyncio.Event()

    async def token(request: web.Request) -> web.Response:
        body = await request.json()
        grants.append(body["grant_type"])
        if len(grants) == 1:
            await gate.wait()
        return _json(
            {
                "access_token": f"acc-{len(grants)}-abcdefgh",
                "refresh_token": f"ref-{len(grants)}-abcdefgh",
                "expires_in": 3600,
            }
        )

    async def domains(request: web.Request) -> web.Response:
        return _json([{"domain": "acme"}])

    app = web.Application()
    app.router.add_post("/ns-api/v2/tokens", token)
    app.router.add_get("/ns-api/v2/domains", domains)
    async with serve(app) as url:
        async with build_client(ns_cfg(url), clock=FakeClock()) as client:
            first = asyncio.create_task(client.request("GET", "domains"))
            await asyncio.sleep(0.05)
            others = [asyncio.create_task(client.request("GET", "domains")) for _ in range(5)]
            await asyncio.sleep(0.05)
            first.cancel()
            gate.set()
            res = await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 5)
            assert all(r == [{"domain": "acme"}] for r in res), res
            assert not client.auth._lock.locked()
    assert len(grants) == 2, grants  # the cancelled grant + exactly one more
