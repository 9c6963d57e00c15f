"""Issue 14 §2: every run ends — lying totals, endless pages, ignored paging, endless waits."""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.hostile.conftest import Harness
from tests.hostile.servers import Script, clients


@pytest.mark.parametrize("kind", ["blesta", "halo", "billomat"])
async def test_a_huge_total_fails_before_asking(harness: Harness, kind: str) -> None:
    script = Script(rows=clients(45), total=10**9)
    result = await harness.run(kind, script)
    assert result.status == "failed" and result.error_type == "LimitExceeded"
    assert "max_pages" in (result.error or "")
    assert script.requests == [1]  # page 1 told us; nothing more was asked


@pytest.mark.parametrize("kind", ["blesta", "halo", "billomat"])
async def test_never_past_the_predicted_page_plus_one(harness: Harness, kind: str) -> None:
    script = Script(rows=clients(45))  # 3 pages of 20
    result = await harness.run(kind, script)
    assert result.status == "ok" and result.pages == 3
    pages = sorted(set(script.requests))
    assert pages == [1, 2, 3, 4]  # 4: the one that would show growth (1 again: the recount)


@pytest.mark.parametrize("kind", ["blesta", "halo", "billomat", "blesta_reseller"])
async def test_endless_distinct_pages_stop_at_max_pages(harness: Harness, kind: str) -> None:
    script = Script(endless=True, total=None)
    result = await harness.run(kind, script, max_pages=7)
    assert result.status == "failed" and result.error_type == "LimitExceeded"
    assert result.pages <= 7 and max(script.requests) <= 8


async def test_billomat_ignoring_page_without_total_fails(harness: Harness) -> None:
    script = Script(rows=clients(60), total=None, repeat_from=2)
    result = await harness.run("billomat", script)
    assert result.status == "failed" and "ignores paging" in (result.error or "")
    assert len(script.requests) == 2


async def test_max_duration_stops_a_run(harness: Harness) -> None:
    script = Script(endless=True, total=None)
    script.after_page = lambda page: harness.clock.advance(100)  # each page takes 100 s
    result = await harness.run("blesta", script, max_duration="250s")
    assert result.status == "failed" and result.error_type == "LimitExceeded"
    assert "max_duration" in (result.error or "") and result.pages <= 3


def _always_429(retry_after: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response(
            {"message": "slow down", "response": None},
            status=429,
            headers={"Retry-After": retry_after},
        )

    app = web.Application()
    app.router.add_get("/api/{model}/{method}.json", handle)
    return app


async def test_retry_after_just_under_the_cap_is_bounded_per_request(harness: Harness) -> None:
    """An upstream asking for 899 s (the single-wait cap is 900) on every try would stall a job
    for an hour over ten retries; max_retry_wait bounds all of one request's waits."""
    before = len(harness.clock.sleeps)
    result = await harness.run(
        "blesta",
        Script(),
        app=_always_429("299"),
        upstream_extra={"max_retries": 10, "max_retry_wait": "10m"},
    )
    waits = harness.clock.sleeps[before:]
    assert result.status == "failed" and result.error_type == "RateLimited"
    # Two requests (page 1 and the count, sent together), each waiting twice: 598 s of 600.
    assert waits == [299.0] * 4


async def test_a_wait_longer_than_the_budget_fails_fast(harness: Harness) -> None:
    before = len(harness.clock.sleeps)
    result = await harness.run(
        "blesta", Script(), app=_always_429("899"), upstream_extra={"max_retries": 10}
    )
    assert result.status == "failed" and result.error_type == "RateLimited"
    assert sum(harness.clock.sleeps[before:]) == 0
