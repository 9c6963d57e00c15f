"""Credentials: static headers, the pure TokenState, and TokenAuth's single-flight refresh
against a tiny token-protected aiohttp app on loopback."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from daemon.clients.auth import BasicAuth, StaticHeaders, TokenAuth, TokenState
from daemon.clients.http import HttpOptions, UpstreamSession
from daemon.clock import FakeClock
from daemon.errors import AuthError, UpstreamResponseError
from daemon.sandbox.server import serve_app

# -- TokenState: pure ---------------------------------------------------------------------------


def test_token_state_starts_stale() -> None:
    st = TokenState()
    assert st.needs_refresh(0.0)
    with pytest.raises(RuntimeError):
        st.authorization()


def test_token_state_update_and_leeway() -> None:
    st = TokenState(leeway=60.0)
    st.update({"access_token": "a1", "refresh_token": "r1", "expires_in": 3600}, now=100.0)
    assert st.expires_at == 3700.0
    assert st.generation == 1
    assert st.authorization() == {"Authorization": "Bearer a1"}
    assert not st.needs_refresh(3639.9)
    assert st.needs_refresh(3640.0)  # refreshed a minute early, never in flight


def test_token_state_keeps_refresh_token_when_not_rotated() -> None:
    st = TokenState()
    st.update({"access_token": "a1", "refresh_token": "r1"}, now=0)
    st.update({"access_token": "a2", "expires_in": "120"}, now=10)
    assert st.refresh_token == "r1"
    assert st.access_token == "a2"
    assert st.expires_at == 130.0
    assert st.generation == 2


def test_token_state_bad_expires_in_defaults_to_an_hour() -> None:
    st = TokenState()
    st.update({"access_token": "a", "expires_in": "soon"}, now=0)
    assert st.expires_at == 3600.0


@pytest.mark.parametrize("payload", [{}, {"access_token": ""}, {"access_token": 5}])
def test_token_state_rejects_payload_without_token(payload: dict[str, Any]) -> None:
    st = TokenState()
    with pytest.raises(ValueError):
        st.update(payload, now=0)
    assert st.generation == 0


def test_token_state_invalidate() -> None:
    st = TokenState()
    st.update({"access_token": "a"}, now=0)
    st.invalidate()
    assert st.needs_refresh(0)


async def test_static_and_basic_headers() -> None:
    basic = BasicAuth("user", "p:ss")
    headers = await basic.headers(None)  # type: ignore[arg-type]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"user:p:ss").decode()
    assert await basic.unauthorized(None, headers) is False  # type: ignore[arg-type]
    static = StaticHeaders({"X-Key": "k"})
    assert await static.headers(None) == {"X-Key": "k"}  # type: ignore[arg-type]


# -- TokenAuth against a token-protected app ------------------------------------------------------


@dataclass
class TokenServer:
    """Issues tokens at POST /token, protects GET /data; counts token requests."""

    token_requests: int = 0
    refuse: bool = False
    always_401: bool = False
    valid: set[str] = field(default_factory=set)
    token_delay: float = 0.0
    fail_token_next: int = 0

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            self.token_requests += 1
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if self.fail_token_next > 0:
                self.fail_token_next -= 1
                return web.json_response({"error": "busy"}, status=503)
            if self.refuse:
                return web.json_response({"error": "invalid_grant"}, status=400)
            tok = f"tok-{self.token_requests}"
            self.valid = {tok}  # a new token revokes the old one
            return web.json_response({"access_token": tok, "expires_in": 3600})

        async def data(request: web.Request) -> web.Response:
            auth = request.headers.get("Authorization", "")
            if self.always_401 or auth.removeprefix("Bearer ") not in self.valid:
                return web.json_response({"error": "invalid_token"}, status=401)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/token", token)
        app.router.add_get("/data", data)
        return app


class DemoAuth(TokenAuth):
    async def obtain(self, session: UpstreamSession) -> Mapping[str, Any]:
        try:
            resp = await session.request("POST", "token", use_auth=False)
        except UpstreamResponseError as exc:  # 400 invalid_grant: a verdict, not a glitch
            raise AuthError(
                "token grant refused", upstream=session.name, status=exc.status
            ) from exc
        payload: Mapping[str, Any] = resp.json()
        return payload


@pytest.fixture
def token_server() -> TokenServer:
    return TokenServer()


@pytest.fixture
async def token_session(
    token_server: TokenServer, fake_clock: FakeClock
) -> AsyncIterator[tuple[UpstreamSession, DemoAuth]]:
    auth = DemoAuth(failure_backoff=60.0)
    async with serve_app(token_server.app()) as url:
        session = UpstreamSession(
            "tokened",
            url,
            HttpOptions(timeout=5.0, max_retries=2, max_concurrency=20),
            clock=fake_clock,
            auth=auth,
        )
        async with session:
            yield session, auth


async def test_first_request_fetches_a_token(
    token_session: tuple[UpstreamSession, DemoAuth], token_server: TokenServer
) -> None:
    session, auth = token_session
    assert (await session.request("GET", "data")).json() == {"ok": True}
    await session.request("GET", "data")
    assert token_server.token_requests == 1
    assert auth.refreshes == 1 and auth.healthy
    assert "tok-1" in session.secrets  # tokens are redacted from excerpts


async def test_expired_token_single_flight_200_callers(
    token_session: tuple[UpstreamSession, DemoAuth],
    token_server: TokenServer,
    fake_clock: FakeClock,
) -> None:
    session, _auth = token_session
    await session.request("GET", "data")
    fake_clock.advance(4000)  # past expiry
    token_server.token_delay = 0.02  # keep the refresh in flight while the others pile up
    results = await asyncio.gather(*(session.request("GET", "data") for _ in range(200)))
    assert all(r.status == 200 for r in results)
    assert token_server.token_requests == 2  # the first token + exactly one refresh


async def test_revoked_token_401_refreshes_once_for_many_callers(
    token_session: tuple[UpstreamSession, DemoAuth], token_server: TokenServer
) -> None:
    session, _auth = token_session
    await session.request("GET", "data")
    token_server.valid = set()  # revoked upstream
    token_server.token_delay = 0.02
    results = await asyncio.gather(*(session.request("GET", "data") for _ in range(50)))
    assert all(r.status == 200 for r in results)
    assert token_server.token_requests == 2


async def test_401_retried_only_once(
    token_session: tuple[UpstreamSession, DemoAuth], token_server: TokenServer
) -> None:
    session, _ = token_session
    token_server.always_401 = True
    with pytest.raises(AuthError) as info:
        await session.request("GET", "data")
    assert info.value.status == 401
    assert token_server.token_requests == 2  # initial + one refresh after the 401, no loop


async def test_refused_grant_is_auth_error_and_fails_fast(
    token_session: tuple[UpstreamSession, DemoAuth],
    token_server: TokenServer,
    fake_clock: FakeClock,
) -> None:
    session, auth = token_session
    token_server.refuse = True
    with pytest.raises(AuthError):
        await session.request("GET", "data")
    assert not auth.healthy and auth.last_error
    assert token_server.token_requests == 1
    # no storm: concurrent callers within the backoff fail fast without a token request
    results = await asyncio.gather(
        *(session.request("GET", "data") for _ in range(30)), return_exceptions=True
    )
    assert all(isinstance(r, AuthError) for r in results)
    assert token_server.token_requests == 1
    # after the backoff the grant is tried again, and recovery clears the unhealthy mark
    token_server.refuse = False
    fake_clock.advance(61)
    assert (await session.request("GET", "data")).status == 200
    assert token_server.token_requests == 2
    assert auth.healthy and auth.last_error is None


async def test_token_endpoint_5xx_is_retried_and_not_an_auth_verdict(
    token_session: tuple[UpstreamSession, DemoAuth],
    token_server: TokenServer,
    fake_clock: FakeClock,
) -> None:
    session, auth = token_session
    token_server.fail_token_next = 1
    assert (await session.request("GET", "data")).status == 200
    assert token_server.token_requests == 2  # the 503, then the retried grant
    assert auth.healthy
    assert len(fake_clock.sleeps) == 1
