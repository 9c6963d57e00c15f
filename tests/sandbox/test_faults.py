"""Seeded fault ratios beside the `*_next` counters, set directly or over `/__sim__/faults`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from daemon.sandbox.faults import Faults, SimStats, fault_middleware
from daemon.sandbox.server import serve_app


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def stats() -> SimStats:
    return SimStats()


@pytest.fixture
async def url(faults: Faults, stats: SimStats) -> AsyncIterator[str]:
    app = web.Application(middlewares=[fault_middleware(faults, stats)])
    app.router.add_get("/thing", ok)
    async with serve_app(app) as root:
        yield root


async def outcomes(url: str, n: int) -> list[int | None]:
    """Status of `n` sequential requests (None: the connection was dropped)."""
    got: list[int | None] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            try:
                async with http.get(f"{url}/thing") as resp:
                    got.append(resp.status)
            except aiohttp.ClientError:
                got.append(None)
    return got


async def test_fail_ratio_is_seeded_and_repeatable(faults: Faults, url: str) -> None:
    faults.update({"fail_ratio": 0.3, "fail_status": 502, "seed": 42})
    first = await outcomes(url, 200)
    faults.update({"seed": 42})  # the same seed replays the same sequence
    second = await outcomes(url, 200)
    assert first == second
    assert set(first) == {200, 502}
    assert 40 <= first.count(502) <= 80  # 30% of 200, give or take
    faults.update({"seed": 7})
    assert await outcomes(url, 200) != first


async def test_counters_still_come_first(faults: Faults, stats: SimStats, url: str) -> None:
    faults.update({"fail_next": 2, "fail_status": 500, "fail_ratio": 0.0})
    assert await outcomes(url, 3) == [500, 500, 200]
    faults.update({"fail_ratio": 1.0})
    assert await outcomes(url, 2) == [500, 500]
    assert stats.faults_injected["500"] == 4


async def test_drop_and_slow_ratios(faults: Faults, stats: SimStats, url: str) -> None:
    faults.update({"drop_ratio": 0.5, "seed": 3})
    got = await outcomes(url, 40)
    assert None in got and 200 in got
    # aiohttp retries an idempotent request once on a reused connection that was dropped
    assert stats.faults_injected["drop"] >= got.count(None)
    faults.update({"drop_ratio": 0.0, "slow_ratio": 1.0, "slow_seconds": 0.0})
    assert await outcomes(url, 3) == [200, 200, 200]
    assert stats.faults_injected["slow"] == 3


async def test_ratios_over_http(faults: Faults, url: str) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"fail_ratio": 0.25, "drop_ratio": 0.1, "slow_ratio": 0.5, "seed": 9}
        async with http.post(f"{url}/__sim__/faults", json=body) as resp:
            assert resp.status == 200
            assert {k: (await resp.json())[k] for k in body} == body
        for bad in ({"fail_ratio": 1.5}, {"drop_ratio": "half"}, {"slow_ratio": True}):
            async with http.post(f"{url}/__sim__/faults", json=bad) as resp:
                assert resp.status == 400
        async with http.post(f"{url}/__sim__/faults", json={"fail_next": 1}) as resp:
            assert (await resp.json())["fail_next"] == 1  # the counters are unchanged
    assert (faults.fail_ratio, faults.drop_ratio, faults.seed) == (0.25, 0.1, 9)


def test_bad_values_change_nothing() -> None:
    faults = Faults(fail_ratio=0.5)
    with pytest.raises(ValueError, match="fail_ratio"):
        faults.update({"drop_ratio": 0.2, "fail_ratio": -0.1})
    assert (faults.fail_ratio, faults.drop_ratio) == (0.5, 0.0)
    with pytest.raises(ValueError):
        Faults(slow_ratio=2)
