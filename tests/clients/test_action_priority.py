"""Actions draw on a reserved share of the rate budget and are not retried by the HTTP core."""

from __future__ import annotations

import anyio
import pytest
from aiohttp import web

from daemon.clients.http import HttpOptions, UpstreamSession
from daemon.clients.priority import action_requests, current_action
from daemon.clients.ratelimit import NoRoom, RateBudget, RateLimit
from daemon.clock import FakeClock
from daemon.errors import BudgetExhausted, ServerError
from daemon.sandbox.server import serve_app


async def test_syncs_leave_the_reserved_share_to_actions() -> None:
    clock = FakeClock()
    budget = RateBudget(RateLimit(10, 60.0), clock, reserve=0.2)
    assert budget.reserved == 2
    for _ in range(8):
        await budget.acquire()  # the sync's share: 8 of 10
    blocked = anyio.Event()

    async def ninth_sync() -> None:
        await budget.acquire()
        blocked.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ninth_sync)
        await anyio.sleep(0)
        assert not blocked.is_set()  # the sync waits for the window...
        with anyio.fail_after(1):
            await budget.acquire(priority=True)  # ...while an action starts at once
            await budget.acquire(priority=True)
        clock.advance(61.3)
        with anyio.fail_after(1):
            await blocked.wait()


def test_no_reserve_without_a_share() -> None:
    assert RateBudget(RateLimit(10, 60.0), FakeClock()).reserved == 0
    assert RateBudget(RateLimit(1, 60.0), FakeClock(), reserve=0.5).reserved == 0


async def test_an_action_request_is_not_retried_by_the_core() -> None:
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.json_response({"message": "busy"}, status=503)

    app = web.Application()
    app.router.add_get("/x", flaky)
    options = HttpOptions(max_retries=3)
    async with serve_app(app) as url:
        async with UpstreamSession("t", url, options, clock=FakeClock(autojump=True)) as s:
            with pytest.raises(ServerError):
                await s.request("GET", "/x")
            assert calls["n"] == 4  # a sync's request: retried
            calls["n"] = 0
            with action_requests():
                assert current_action() is not None
                with pytest.raises(ServerError):
                    await s.request("GET", "/x")
            assert calls["n"] == 1  # an action's: the dispatcher decides when to try again
    assert current_action() is None


async def test_an_action_waits_for_the_budget_at_most_its_bound() -> None:
    clock = FakeClock()
    budget = RateBudget(RateLimit(2, 60.0), clock)
    await budget.acquire(priority=True)
    await budget.acquire(priority=True)
    with pytest.raises(NoRoom) as refused:
        await budget.acquire(priority=True, max_wait=5.0)  # room in 61.2 s: refused at once
    assert refused.value.retry_in == pytest.approx(61.2)
    assert len(budget._starts) == 2 and budget.waited == 0  # nothing recorded

    clock.advance(57.0)  # room in 4.2 s, within the bound: waits, then starts
    async with anyio.create_task_group() as tg:
        started = anyio.Event()

        async def third() -> None:
            await budget.acquire(priority=True, max_wait=5.0)
            started.set()

        tg.start_soon(third)
        await anyio.sleep(0)
        assert not started.is_set()
        clock.advance(4.3)
        with anyio.fail_after(1):
            await started.wait()


async def test_actions_queued_for_the_budget_each_keep_their_own_bound() -> None:
    clock = FakeClock()
    budget = RateBudget(RateLimit(1, 60.0), clock)
    await budget.acquire(priority=True)
    clock.advance(58.0)  # room again in 3.2 s
    outcomes: list[str] = []

    async def action(name: str) -> None:
        try:
            await budget.acquire(priority=True, max_wait=5.0)
            outcomes.append(f"{name} started")
        except NoRoom:
            outcomes.append(f"{name} refused")

    async with anyio.create_task_group() as tg:
        tg.start_soon(action, "first")
        tg.start_soon(action, "second")
        await anyio.sleep(0)
        clock.advance(3.3)
    # the first takes the room; the second, behind it, would wait a whole window: refused
    assert outcomes == ["first started", "second refused"]


async def test_an_action_refused_by_the_budget_sends_nothing() -> None:
    calls = {"n": 0}

    async def ok(request: web.Request) -> web.Response:
        calls["n"] += 1
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/x", ok)
    options = HttpOptions(rate_limit=RateLimit(1, 300.0))
    async with serve_app(app) as url:
        async with UpstreamSession("t", url, options, clock=FakeClock()) as s:
            with action_requests() as scope:
                await s.request("GET", "/x")
                assert scope.sent == 1
            with action_requests() as scope, pytest.raises(BudgetExhausted) as refused:
                await s.request("GET", "/x")
            assert scope.sent == 0 and calls["n"] == 1
            assert refused.value.retry_in == pytest.approx(306.0)
            assert "rate budget spent" in str(refused.value) and refused.value.upstream == "t"
