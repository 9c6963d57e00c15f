"""Incremental jobs (Halo assets, `lastupdatefromdate`): the stored cursor never passes a
record the walk did not read, whatever the upstream does while it is walked.

A record updated while the walk is between pages moves to the end of the `order=lastupdate`
list and shifts an unread record onto a page already read; an upstream may ignore `order` and
fail a page. Either way, had the cursor advanced, every later run would ask only for records
newer than it and the record would never be fetched."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.hostile.conftest import Harness
from tests.hostile.servers import _json


def ts(n: int) -> str:
    return f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}"


class Assets:
    def __init__(self, n: int):
        self.rows: list[dict[str, Any]] = [
            {"id": i, "name": f"asset {i}", "lastupdate": ts(i)} for i in range(1, n + 1)
        ]
        self.after_page: Any = None
        self.queries: list[dict[str, str]] = []

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            return _json({"access_token": "tok-abcdefgh12345", "expires_in": 3600})

        async def listing(request: web.Request) -> web.Response:
            q = request.query
            self.queries.append(dict(q))
            rows = list(self.rows)
            since = q.get("lastupdatefromdate")
            if since:
                rows = [r for r in rows if r["lastupdate"] >= since]
            if q.get("order"):
                rows.sort(key=lambda r: r[q["order"]])
            size, n = int(q.get("page_size", 50)), int(q.get("page_no", 1))
            body = {"record_count": len(rows), "assets": rows[(n - 1) * size : n * size]}
            if self.after_page:
                self.after_page(n)
            return _json(body)

        app = web.Application()
        app.router.add_post("/auth/token", token)
        app.router.add_get("/api/{resource}", listing)
        return app


async def test_a_record_shifted_by_an_update_mid_walk_is_fetched_later(harness: Harness) -> None:
    assets = Assets(45)

    def update_asset_5_after_page_1(page: int) -> None:
        if page == 1 and assets.rows[4]["lastupdate"] == ts(5):
            assets.rows[4] = {**assets.rows[4], "name": "asset 5 (edited)", "lastupdate": ts(500)}
            assets.after_page = None

    assets.after_page = update_asset_5_after_page_1
    kw = dict(resource="assets", mode="incremental", cursor_field="lastupdate")
    first = await harness.run("halo", None, app=assets.app(), **kw)  # type: ignore[arg-type]
    assert first.status == "ok", first.error
    for _ in range(3):  # later runs: nothing changes upstream any more
        r = await harness.run("halo", None, app=assets.app(), **kw)  # type: ignore[arg-type]
        assert r.status == "ok", r.error
    live = {int(i) for i in await harness.live_ids()}
    missing = sorted(set(range(1, 46)) - live)
    assert not missing, f"records never synced: {missing} (upstream has all 45)"


async def test_unordered_answer_and_a_failed_page_lose_nothing(harness: Harness) -> None:
    assets = Assets(45)
    fail_page_2 = [True]
    base = assets.app()

    async def listing(request: web.Request) -> web.StreamResponse:
        if request.query.get("page_no") == "2" and fail_page_2[0]:
            return _json({"message": "boom"}, 500)
        # ignore `order`: newest first
        q = {k: v for k, v in request.query.items() if k != "order"}
        since = q.get("lastupdatefromdate")
        rows = sorted(
            (r for r in assets.rows if not since or r["lastupdate"] >= since),
            key=lambda r: r["lastupdate"],
            reverse=True,
        )
        size, n = int(q.get("page_size", 50)), int(q.get("page_no", 1))
        return _json({"record_count": len(rows), "assets": rows[(n - 1) * size : n * size]})

    def app() -> web.Application:
        a = web.Application()
        a.router.add_post(
            "/auth/token", next(r for r in base.router.routes() if r.method == "POST").handler
        )
        a.router.add_get("/api/{resource}", listing)
        return a

    kw = dict(resource="assets", mode="incremental", cursor_field="lastupdate")
    first = await harness.run("halo", None, app=app(), **kw)  # type: ignore[arg-type]
    assert first.status == "failed"  # page 2 failed: fine, the next run should heal it
    fail_page_2[0] = False
    for _ in range(2):
        r = await harness.run("halo", None, app=app(), **kw)  # type: ignore[arg-type]
        assert r.status == "ok", r.error
    live = {int(i) for i in await harness.live_ids()}
    missing = sorted(set(range(1, 46)) - live)
    assert not missing, f"{len(missing)} records never synced: {missing[:5]}..."
