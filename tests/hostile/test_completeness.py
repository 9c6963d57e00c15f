"""Issue 14 §1: a full run tombstones only records that are provably gone.

Each test first syncs the honest list, then lets the upstream lie in one way and checks that
nothing live was tombstoned and the run says why (failed, or ok but `incomplete`).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.hostile.conftest import Harness
from tests.hostile.servers import Script, blesta_app, clients

PAGED = ["blesta", "halo", "billomat"]


async def _baseline(harness: Harness, kind: str, script: Script) -> None:
    first = await harness.run(kind, script)
    assert first.status == "ok" and first.incomplete is None, first.error
    assert len(await harness.live_ids()) == len(script.rows)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("blesta", {"response": None}),
        ("blesta", {"response": False}),
        ("blesta", {"response": {"error": "no"}}),
        ("blesta", {}),
        ("halo", {"error": "invalid_request", "error_description": "bad filter"}),
        ("halo", {}),
        ("halo", None),
        ("billomat", {"errors": {"error": "Maximum number of requests reached"}}),
        ("billomat", {}),
        ("blesta_reseller", {"response": None}),
    ],
)
async def test_a_200_that_is_not_a_list_fails_the_job(
    harness: Harness, kind: str, body: Any
) -> None:
    script = Script(rows=clients(45))
    await _baseline(harness, kind, script)
    script.bodies[1] = body
    result = await harness.run(kind, script)
    assert result.status == "failed"
    assert result.error_type in ("MalformedResponse", "ValidationError"), result.error
    assert await harness.tombstoned() == 0
    assert len(await harness.live_ids()) == 45


@pytest.mark.parametrize("kind", PAGED)
async def test_an_empty_page_2_is_incomplete(harness: Harness, kind: str) -> None:
    script = Script(rows=clients(45))
    await _baseline(harness, kind, script)
    script.bodies[2] = {
        "blesta": {"response": []},
        "halo": {"tickets": [], "record_count": 45},
        "billomat": {"clients": {"@page": "2", "@per_page": "20", "@total": "45"}},
    }[kind]
    for _ in range(2):  # twice: a miss could otherwise become a tombstone on the second run
        with capture_logs() as logs:
            result = await harness.run(kind, script)
        assert result.status == "ok" and result.incomplete and "empty" in result.incomplete
        assert any(e["event"] == "sync.incomplete" for e in logs)
    assert await harness.tombstoned() == 0


@pytest.mark.parametrize("kind", ["halo", "billomat"])
async def test_a_total_the_api_promises_but_leaves_out_is_incomplete(
    harness: Harness, kind: str
) -> None:
    """Without the total its envelope always carries, an empty page 3 would look like the end
    of the list: the walk still reads what it can, but vouches for nothing."""
    script = Script(rows=clients(60))
    await _baseline(harness, kind, script)
    script.total = None
    script.bodies[3] = {
        "halo": {"tickets": []},
        "billomat": {"clients": {"@page": "3", "@per_page": "20"}},
    }[kind]
    for _ in range(2):
        result = await harness.run(kind, script)
        assert result.status == "ok", result.error
        assert result.incomplete and result.incomplete.startswith("no total"), result.incomplete
    assert await harness.tombstoned() == 0
    assert len(await harness.live_ids()) == 60


async def test_a_failed_blesta_count_is_incomplete_not_the_end(harness: Harness) -> None:
    """getListCount answering 503 is not "this list has no count" (a 404 is): with an empty
    page 3 the walk would otherwise end there and tombstone the rest."""
    script = Script(rows=clients(60))
    await _baseline(harness, "blesta", script)
    script.bodies[3] = {"response": []}
    failing = blesta_app(script)

    async def count_down(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.match_info.get("method") == "getListCount":
            return web.json_response({"message": "db timeout", "response": None}, status=503)
        return await handler(request)  # type: ignore[no-any-return]

    failing.middlewares.append(web.middleware(count_down))
    for _ in range(2):
        result = await harness.run("blesta", script, app=failing)
        assert result.status == "ok", result.error
        assert result.incomplete and "getListCount failed" in result.incomplete
    assert await harness.tombstoned() == 0


async def test_a_blesta_list_without_a_count_still_ends_at_a_short_page(
    harness: Harness,
) -> None:
    """A 404 from the count method means the list has none: a short page is its end, and a
    record gone from it is tombstoned after two complete runs."""
    script = Script(rows=clients(45))
    script.total = None  # the hostile app answers getListCount with Blesta's 404
    await _baseline(harness, "blesta", script)
    script.rows = script.rows[:-1]
    for _ in range(2):
        result = await harness.run("blesta", script)
        assert result.status == "ok" and result.incomplete is None, result.incomplete
    assert await harness.tombstoned() == 1


@pytest.mark.parametrize("count", [float("inf"), 45.5, -1, True, "many"])
async def test_a_halo_total_that_is_no_count_fails_typed(harness: Harness, count: Any) -> None:
    script = Script(rows=clients(45))
    await _baseline(harness, "halo", script)
    script.bodies[1] = {"tickets": script.page(1), "record_count": count}
    result = await harness.run("halo", script)
    assert result.status == "failed" and result.error_type == "MalformedResponse", result.error
    assert await harness.tombstoned() == 0


@pytest.mark.parametrize("kind", [*PAGED, "blesta_reseller"])
async def test_a_failed_page_fails_the_job(harness: Harness, kind: str) -> None:
    script = Script(rows=clients(60))
    await _baseline(harness, kind, script)
    script.statuses[2] = 500
    result = await harness.run(kind, script)
    assert result.status == "failed" and result.error_type == "ServerError"
    assert await harness.tombstoned() == 0


@pytest.mark.parametrize("kind", [*PAGED, "blesta_reseller"])
async def test_a_repeated_page_fails_the_job(harness: Harness, kind: str) -> None:
    script = Script(rows=clients(60))
    await _baseline(harness, kind, script)
    script.repeat_from = 2
    result = await harness.run(kind, script)
    assert result.status == "failed" and result.error_type == "MalformedResponse"
    assert "ignores paging" in (result.error or "")
    assert await harness.tombstoned() == 0


@pytest.mark.parametrize("kind", PAGED)
async def test_a_total_smaller_than_the_list_is_incomplete(harness: Harness, kind: str) -> None:
    script = Script(rows=clients(45))
    await _baseline(harness, kind, script)
    script.rows = script.rows[:30]  # 15 deleted upstream...
    script.total = 20  # ...but the total lies lower still
    for _ in range(2):
        result = await harness.run(kind, script)
        assert result.status == "ok" and result.incomplete, result
    assert await harness.tombstoned() == 0
    assert len(await harness.live_ids()) == 45


async def test_halo_endpoint_ignoring_paging_fails(harness: Harness) -> None:
    script = Script(rows=clients(45), repeat_from=2)
    result = await harness.run("halo", script, resource="crm_notes")
    assert result.status == "failed" and "repeats page 1" in (result.error or "")


@pytest.mark.parametrize("kind", ["blesta", "halo"])
async def test_offset_shift_never_tombstones_a_live_record(harness: Harness, kind: str) -> None:
    """A client deleted (and another added) while the walk is between pages shifts a live row
    from page 2 onto page 1: the walk misses it though the totals agree. The live row must not
    be tombstoned, and the deleted one must be, once it is really gone."""
    script = Script(rows=clients(45))
    await _baseline(harness, kind, script)
    deleted, shifted = script.rows[4]["id"], script.rows[20]["id"]

    def churn(page: int) -> None:
        if page == 1 and any(r["id"] == deleted for r in script.rows):
            script.rows.pop(4)  # deleted upstream after page 1 was served...
            script.rows.extend(clients(1, start=900))  # ...and one created: the total stays 45

    script.after_page = churn
    shifted_run = await harness.run(kind, script)
    script.after_page = None
    assert shifted_run.status == "ok" and shifted_run.incomplete is None  # totals agreed...
    mark = await harness.store.fetchone('SELECT missed_at FROM "hostile" WHERE id = ?', (shifted,))
    assert mark is not None and mark["missed_at"] is not None  # ...yet the live row was missed
    for _ in range(3):
        await harness.run(kind, script)
    live = await harness.live_ids()
    assert shifted in live  # never tombstoned
    assert deleted not in live  # tombstoned after two complete runs missed it
    assert await harness.tombstoned() == 1


@pytest.mark.parametrize("kind", PAGED)
async def test_an_empty_answer_is_refused_past_the_fraction(harness: Harness, kind: str) -> None:
    script = Script(rows=clients(40))
    await _baseline(harness, kind, script)
    script.rows = []
    for _ in range(2):
        with capture_logs() as logs:
            result = await harness.run(kind, script)
        assert result.status == "failed" and result.error_type == "TombstonesRefused"
        assert "40 of 40" in (result.error or "")
        refused = [e for e in logs if e["event"] == "sync.tombstones_refused"]
        assert refused and refused[0]["missing"] == 40
    assert await harness.tombstoned() == 0 and len(await harness.live_ids()) == 40


async def test_the_fraction_is_per_job(harness: Harness) -> None:
    script = Script(rows=clients(40))
    await _baseline(harness, "blesta", script)
    script.rows = script.rows[:10]
    for _ in range(2):
        result = await harness.run("blesta", script, max_tombstone_fraction=0.9)
        assert result.status == "ok"
    assert await harness.tombstoned() == 30
