"""The shared HTTP core (daemon.clients.http) against the Blesta simulator over loopback.

A FakeClock with autojump makes every backoff instant and records it, so the tests assert the
exact waits the policy chose without sleeping.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web

from daemon.clients.auth import BasicAuth
from daemon.clients.http import HttpOptions, UpstreamSession
from daemon.clients.ratelimit import RateLimit
from daemon.clients.response import parse_retry_after
from daemon.clock import FakeClock
from daemon.errors import (
    AuthError,
    ConnectError,
    ForbiddenError,
    NetworkError,
    NotFoundError,
    RateLimited,
    ServerError,
    UpstreamTimeout,
    ValidationError,
)
from daemon.sandbox.blesta_sim import BlestaState
from daemon.sandbox.server import serve_app
from tests.clients.blesta_fixtures import BLESTA_KEY, BLESTA_USER

PATH = "clients/getList.json"


def make_session(url: str, clock: FakeClock, **opts: Any) -> UpstreamSession:
    values: dict[str, Any] = {"timeout": 5.0, "max_retries": 3}
    values.update(opts)
    return UpstreamSession(
        "blesta",
        url,
        HttpOptions(**values),
        clock=clock,
        auth=BasicAuth(BLESTA_USER, BLESTA_KEY),
        secrets=[BLESTA_KEY],
        rng=random.Random(42),
    )


@pytest.fixture
async def session(blesta_sim: str, fake_clock: FakeClock) -> AsyncIterator[UpstreamSession]:
    async with make_session(blesta_sim, fake_clock) as s:
        yield s


def requests_to(state: BlestaState, path: str = "/api/" + PATH) -> int:
    return state.stats.requests[path]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_burst_is_retried_then_succeeds(
    session: UpstreamSession, blesta_state: BlestaState, fake_clock: FakeClock, status: int
) -> None:
    blesta_state.faults.update({"fail_next": 2, "fail_status": status})
    resp = await session.request("GET", PATH)
    assert resp.status == 200
    assert requests_to(blesta_state) == 3
    assert len(fake_clock.sleeps) == 2
    # full jitter: each wait within [0, base * 2**attempt]
    assert 0 <= fake_clock.sleeps[0] <= 0.5 and 0 <= fake_clock.sleeps[1] <= 1.0


async def test_5xx_gives_up_after_max_retries(
    session: UpstreamSession, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"fail_next": 10, "fail_status": 500})
    with pytest.raises(ServerError) as info:
        await session.request("GET", PATH)
    assert info.value.status == 500 and info.value.upstream == "blesta"
    assert requests_to(blesta_state) == 4  # 1 + max_retries
    assert len(fake_clock.sleeps) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, ValidationError), (401, AuthError), (403, ForbiddenError), (404, NotFoundError)],
)
async def test_final_4xx_is_not_retried(
    session: UpstreamSession,
    blesta_state: BlestaState,
    fake_clock: FakeClock,
    status: int,
    error: type[Exception],
) -> None:
    blesta_state.faults.update({"fail_next": 5, "fail_status": status})
    with pytest.raises(error):
        await session.request("GET", PATH)
    assert requests_to(blesta_state) == 1
    assert fake_clock.sleeps == []


async def test_429_retry_after_seconds_is_honoured(
    session: UpstreamSession, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"rate_limit_next": 2, "retry_after": "7"})
    resp = await session.request("GET", PATH)
    assert resp.status == 200
    assert fake_clock.sleeps == [7.0, 7.0]


async def test_429_retry_after_http_date_is_honoured(
    session: UpstreamSession, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    when = fake_clock.now() + timedelta(seconds=30)
    blesta_state.faults.update(
        {"rate_limit_next": 1, "retry_after": format_datetime(when, usegmt=True)}
    )
    await session.request("GET", PATH)
    assert fake_clock.sleeps == [30.0]


async def test_429_without_retry_after_backs_off(
    session: UpstreamSession, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"rate_limit_next": 1, "retry_after": None})
    await session.request("GET", PATH)
    assert len(fake_clock.sleeps) == 1 and 0 <= fake_clock.sleeps[0] <= 0.5


async def test_retry_after_over_the_cap_gives_up(
    session: UpstreamSession, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"rate_limit_next": 1, "retry_after": "100000"})
    with pytest.raises(RateLimited) as info:
        await session.request("GET", PATH)
    assert info.value.retry_after == 100000.0
    assert fake_clock.sleeps == []
    assert requests_to(blesta_state) == 1


def test_parse_retry_after() -> None:
    assert parse_retry_after("5", 0) == 5.0
    assert parse_retry_after(" 2.5 ", 0) == 2.5
    assert parse_retry_after("-3", 0) == 0.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 40.0) == 0.0  # in the past
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after(None, 0) is None
    assert parse_retry_after("", 0) is None


async def test_timeout_is_retried(
    blesta_sim: str, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"slow_next": 1, "slow_seconds": 2.0})
    async with make_session(blesta_sim, fake_clock, timeout=0.2) as s:
        resp = await s.request("GET", PATH)
    assert resp.status == 200
    assert requests_to(blesta_state) == 2
    assert len(fake_clock.sleeps) == 1


async def test_timeout_after_retries_raises_upstream_timeout(
    blesta_sim: str, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"slow_next": 5, "slow_seconds": 2.0})
    async with make_session(blesta_sim, fake_clock, timeout=0.1, max_retries=1) as s:
        with pytest.raises(UpstreamTimeout) as info:
            await s.request("GET", PATH)
    assert isinstance(info.value, TimeoutError)
    assert info.value.status is None
    assert len(fake_clock.sleeps) == 1


async def test_dropped_connections_end_in_network_error(
    blesta_sim: str, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    # aiohttp re-sends an idempotent request once by itself on a dropped keep-alive connection,
    # so every attempt of ours may consume two drops.
    blesta_state.faults.update({"drop_next": 20})
    async with make_session(blesta_sim, fake_clock, max_retries=2) as s:
        with pytest.raises(NetworkError) as info:
            await s.request("GET", PATH)
    assert not isinstance(info.value, ConnectError)
    assert len(fake_clock.sleeps) == 2


async def test_dropped_connection_then_success(
    session: UpstreamSession, blesta_state: BlestaState
) -> None:
    blesta_state.faults.update({"drop_next": 2})
    resp = await session.request("GET", PATH)
    assert resp.status == 200


async def test_html_502_is_a_server_error_with_excerpt(
    blesta_sim: str, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"html_next": 10})
    async with make_session(blesta_sim, fake_clock, max_retries=1) as s:
        with pytest.raises(ServerError) as info:
            await s.request("GET", PATH)
    assert info.value.status == 502
    assert "Bad Gateway" in info.value.excerpt
    assert requests_to(blesta_state) == 2


async def test_post_not_retried_on_500(
    session: UpstreamSession, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"fail_next": 1, "fail_status": 500})
    with pytest.raises(ServerError):
        await session.request("POST", "clients/add.json", data={"vars[first_name]": "x"})
    assert requests_to(blesta_state, "/api/clients/add.json") == 1
    assert fake_clock.sleeps == []


@pytest.mark.parametrize("fault", [{"rate_limit_next": 1}, {"fail_next": 1, "fail_status": 503}])
async def test_post_retried_on_429_and_503(
    session: UpstreamSession, blesta_state: BlestaState, fault: dict[str, Any]
) -> None:
    blesta_state.faults.update(fault)
    resp = await session.request("POST", "clients/getList.json")
    assert resp.status == 200
    assert requests_to(blesta_state) == 2


async def test_post_not_retried_on_dropped_connection(
    session: UpstreamSession, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    # The upstream may have acted on a POST whose answer was lost: never resend it.
    blesta_state.faults.update({"drop_next": 5})
    with pytest.raises(NetworkError):
        await session.request("POST", PATH)
    assert fake_clock.sleeps == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_connect_error(fake_clock: FakeClock) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/api"
    async with make_session(url, fake_clock, max_retries=2) as s:
        with pytest.raises(ConnectError) as info:
            await s.request("POST", PATH)  # never connected: even a POST is retried
    assert info.value.status is None
    assert len(fake_clock.sleeps) == 2


async def test_rate_budget_waits_on_the_clock(blesta_sim: str, fake_clock: FakeClock) -> None:
    async with make_session(blesta_sim, fake_clock, rate_limit=RateLimit(3, 60.0)) as s:
        for _ in range(4):
            await s.request("GET", PATH)
        assert s.budget is not None
        # the window is counted 2% wider than the upstream's, for requests delayed in transit
        assert s.budget.waited == pytest.approx(60.0 * 1.02)
    assert fake_clock.sleeps == [pytest.approx(60.0 * 1.02)]


async def test_rate_budget_after_429_holds_everyone_back(
    blesta_sim: str, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"rate_limit_next": 1, "retry_after": "10"})
    async with make_session(blesta_sim, fake_clock, rate_limit=RateLimit(5, 60.0)) as s:
        await s.request("GET", PATH)
        assert s.budget is not None
        # the 429's wait; the penalised window ends exactly then, so no second wait
        assert fake_clock.sleeps == [10.0]
        await s.request("GET", PATH)
        assert s.budget.waited == 0.0


async def test_max_concurrency_is_respected(
    blesta_sim: str, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    blesta_state.faults.update({"latency": 0.03})
    async with make_session(blesta_sim, fake_clock, max_concurrency=2) as s:
        await asyncio.gather(*(s.request("GET", PATH) for _ in range(8)))
    assert blesta_state.max_in_flight == 2


async def test_error_excerpt_never_contains_the_key(fake_clock: FakeClock) -> None:
    async def leaky(request: web.Request) -> web.Response:
        return web.Response(status=400, text=f"bad credentials: {BLESTA_KEY} for {BLESTA_USER}")

    app = web.Application()
    app.router.add_get("/api/leak", leaky)
    async with serve_app(app) as url, make_session(url + "/api", fake_clock) as s:
        with pytest.raises(ValidationError) as info:
            await s.request("GET", "leak")
    assert BLESTA_KEY not in str(info.value)
    assert BLESTA_KEY not in info.value.excerpt
    assert "[REDACTED]" in info.value.excerpt
    assert BLESTA_KEY not in str(info.value.as_dict())


async def test_closed_session_refuses_requests(blesta_sim: str, fake_clock: FakeClock) -> None:
    s = make_session(blesta_sim, fake_clock)
    with pytest.raises(RuntimeError):
        await s.request("GET", PATH)


def test_url_joins_relative_paths_and_never_leaves_the_upstream(fake_clock: FakeClock) -> None:
    """Found by probing: an absolute URL passed through, so `daemon api blesta <URL> ...` sent
    Blesta's credentials to the host it named (and `HTTP://` was absolute to the join)."""
    s = make_session("http://h/api", fake_clock)
    assert str(s.url("clients/getList.json")) == "http://h/api/clients/getList.json"
    assert str(s.url("/clients/get.json")) == "http://h/api/clients/get.json"
    assert str(s.url("http://h/api/x")) == "http://h/api/x"  # the same origin is fine
    assert str(s.url("//other/x")) == "http://h/api/other/x"  # a path, once its slashes go
    for away in ("https://other/x", "HTTP://other/x", "http://h:81/api", "https://h/"):
        with pytest.raises(ValueError, match="leaves the upstream"):
            s.url(away)


def test_backoff_is_full_jitter_and_capped(fake_clock: FakeClock) -> None:
    s = make_session("http://h/api", fake_clock, backoff_base=1.0, backoff_cap=8.0)
    for attempt in range(10):
        assert 0 <= s.backoff(attempt) <= min(8.0, 2**attempt)


async def test_queueing_for_a_connection_does_not_count_against_the_timeout(
    blesta_sim: str, blesta_state: BlestaState, fake_clock: FakeClock
) -> None:
    """Regression: aiohttp's total timeout includes the wait for a pooled connection, so six
    requests through one connection with 0.05 s latency each timed out at 0.2 s."""
    blesta_state.faults.update({"latency": 0.05})
    async with make_session(blesta_sim, fake_clock, timeout=0.2, max_concurrency=1) as s:
        results = await asyncio.gather(*(s.request("GET", PATH) for _ in range(6)))
    assert all(r.status == 200 for r in results)
    assert blesta_state.max_in_flight == 1
    assert fake_clock.sleeps == []  # no retries were needed
