"""The job runner end to end: Blesta and Reseller simulators into a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from daemon.clients.blesta import BlestaClient
from daemon.clients.blesta_reseller import ResellerClient
from daemon.clock import FakeClock
from daemon.config import SyncJob
from daemon.sandbox.blesta_sim import BlestaState
from daemon.sandbox.blesta_sim import make_app as make_blesta_app
from daemon.sandbox.reseller_sim import BASE_PATH as RESELLER_PATH
from daemon.sandbox.reseller_sim import ResellerState
from daemon.sandbox.reseller_sim import make_app as make_reseller_app
from daemon.sandbox.server import serve_app
from daemon.store import Store
from daemon.sync.runner import JobRunner, RunResult
from daemon.sync.strategies import build_fetcher
from tests.clients.blesta_fixtures import (
    BLESTA_KEY,
    BLESTA_USER,
    RESELLER_PASSWORD,
    RESELLER_USER,
    fast_options,
)


def job(**kw: Any) -> SyncJob:
    """A real `[[sync]]` model, so a renamed config field breaks these tests."""
    values: dict[str, Any] = {
        "name": "blesta-clients",
        "table": "blesta_clients",
        "upstream": "blesta",
        "resource": "clients",
        "every": "15m",
    }
    values.update(kw)
    return SyncJob.model_validate({k: v for k, v in values.items() if v is not None})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(autojump=True)


@pytest.fixture
def state() -> BlestaState:
    return BlestaState.demo(clients=45, seed=11)


@pytest.fixture
async def blesta(state: BlestaState, clock: FakeClock) -> AsyncIterator[BlestaClient]:
    async with serve_app(make_blesta_app(state)) as url:
        client = BlestaClient.create(
            url + "/api", BLESTA_USER, BLESTA_KEY, clock=clock, options=fast_options()
        )
        async with client:
            yield client


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "state.db", clock=clock) as s:
        yield s


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


async def run(
    store: Store, clock: FakeClock, j: SyncJob, client: Any, kind: str = "blesta"
) -> RunResult:
    runner = JobRunner(store, clock=clock, default_region="US")
    clock.advance(60)  # each run starts later than the last one's writes
    return await runner.run(j, build_fetcher(j, client, kind, now=clock.now()))


async def test_full_sync_then_unchanged_resync_rewrites_nothing(store, blesta, clock, tmp_path):
    with capture_logs() as logs:
        first = await run(store, clock, job(), blesta)
    assert first.status == "ok"
    assert (first.pages, first.fetched, first.inserted) == (3, 45, 45)  # page size 20, learned
    db = tmp_path / "state.db"
    before = rows(db, "SELECT id, updated_at, hash FROM blesta_clients ORDER BY id")
    second = await run(store, clock, job(), blesta)
    assert (second.inserted, second.updated, second.unchanged, second.deleted) == (0, 0, 45, 0)
    assert rows(db, "SELECT id, updated_at, hash FROM blesta_clients ORDER BY id") == before
    runs = rows(db, "SELECT job, status, fetched, inserted, unchanged FROM sync_runs ORDER BY id")
    assert runs == [("blesta-clients", "ok", 45, 45, 0), ("blesta-clients", "ok", 45, 0, 45)]
    events = [e["event"] for e in logs]
    assert "sync.started" in events and "sync.finished" in events
    finished = next(e for e in logs if e["event"] == "sync.finished")
    assert finished["fetched"] == 45 and finished["job"] == "blesta-clients"


async def test_tombstone_after_two_complete_runs_and_resurrection(
    store, blesta, state, clock, tmp_path
):
    await run(store, clock, job(), blesta)
    gone = state.clients.pop(7)
    first_miss = await run(store, clock, job(), blesta)
    assert (first_miss.deleted, first_miss.missing) == (0, 1)  # marked, not yet deleted
    db = tmp_path / "state.db"
    assert rows(
        db,
        f"SELECT deleted_at IS NULL, missed_at IS NOT NULL FROM blesta_clients "
        f"WHERE id = '{gone['id']}'",
    ) == [(1, 1)]
    result = await run(store, clock, job(), blesta)
    assert result.deleted == 1
    assert rows(
        db, f"SELECT deleted_at IS NOT NULL FROM blesta_clients WHERE id = '{gone['id']}'"
    ) == [(1,)]
    state.clients.insert(7, gone)
    back = await run(store, clock, job(), blesta)
    assert (back.updated, back.deleted) == (1, 0)
    assert rows(db, f"SELECT deleted_at FROM blesta_clients WHERE id = '{gone['id']}'") == [(None,)]


async def test_a_stop_during_the_tombstone_pass_is_recorded_with_what_it_deleted(
    store, blesta, state, clock, tmp_path
):
    """Found by probing: a run cancelled while its tombstone pass waited for the writer was
    recorded `cancelled` with nothing deleted, yet the pass committed (the writer runs a
    queued job to its end). The pass now finishes, and the record says what it did."""
    await run(store, clock, job(), blesta)
    gone = state.clients.pop(7)
    await run(store, clock, job(), blesta)  # the first miss marks it
    runner = JobRunner(store, clock=clock, default_region="US")
    clock.advance(60)
    real_write = store.write
    with anyio.CancelScope() as stop:  # the service's stop: its task group's scope

        def write(fn: Any, **kw: Any) -> Any:  # the stop arrives as the pass is handed over
            if "mark_tombstones" in getattr(fn, "__qualname__", ""):
                stop.cancel()
            return real_write(fn, **kw)

        store.write = write  # type: ignore[method-assign]
        await runner.run(job(), build_fetcher(job(), blesta, "blesta", now=clock.now()))
    store.write = real_write  # type: ignore[method-assign]
    assert stop.cancelled_caught
    db = tmp_path / "state.db"
    last = rows(db, "SELECT status, deleted FROM sync_runs ORDER BY id DESC LIMIT 1")
    assert last == [("cancelled", 1)]
    assert rows(
        db, f"SELECT deleted_at IS NOT NULL FROM blesta_clients WHERE id = '{gone['id']}'"
    ) == [(1,)]


async def test_failed_run_deletes_nothing_and_is_recorded(store, blesta, state, clock, tmp_path):
    await run(store, clock, job(), blesta)
    state.clients.pop(0)
    state.fail_pages = {3}  # the last page answers an error every time
    with capture_logs() as logs:
        result = await run(store, clock, job(), blesta)
    assert result.status == "failed" and result.error_type == "ServerError"
    db = tmp_path / "state.db"
    assert rows(db, "SELECT count(*) FROM blesta_clients WHERE deleted_at IS NOT NULL") == [(0,)]
    last = rows(db, "SELECT status, error FROM sync_runs ORDER BY id DESC LIMIT 1")[0]
    assert last[0] == "failed" and last[1]
    failed = [e for e in logs if e["event"] == "sync.failed"]
    assert len(failed) == 1 and failed[0]["job"] == "blesta-clients"
    assert failed[0]["status"] == 500 and failed[0]["upstream"] == blesta.name
    state.fail_pages = set()
    healed = await run(store, clock, job(), blesta)
    assert healed.status == "ok" and (healed.deleted, healed.missing) == (0, 1)
    confirmed = await run(store, clock, job(), blesta)
    assert confirmed.deleted == 1


async def test_incremental_cursor_advances_only_after_a_complete_walk(store, blesta, state, clock):
    """A failed page keeps the old mark: the pages before it are written, but a mark past them
    could pass records the failed page held (an upstream that ignores the order asked for)."""
    j = job(
        name="blesta-tx", table="blesta_tx", mode="incremental", cursor_field="id_code", params={}
    )
    state.fail_pages = {3}
    failed = await run(store, clock, j, blesta)
    assert failed.status == "failed" and failed.pages == 2
    st = await store.get_sync_state("blesta-tx")
    assert st is None or st.cursor is None
    state.fail_pages = set()
    ok = await run(store, clock, j, blesta)
    assert ok.status == "ok" and ok.deleted == 0 and ok.incomplete is None  # never tombstones
    st2 = await store.get_sync_state("blesta-tx")
    committed = rows(Path(store.path), "SELECT data FROM blesta_tx")
    highest = max(json.loads(d)["id_code"] for (d,) in committed)
    assert st2 is not None and st2.cursor == highest and st2.last_success_at is not None


async def test_contacts_index_from_phone_fields(store, blesta, state, clock):
    result = await run(store, clock, job(phone_fields=["phone"]), blesta)
    assert result.status == "ok" and result.contacts > 0
    client = next(c for c in state.clients if c.get("phone"))
    from daemon.phones import to_e164

    phone = to_e164(client["phone"], "US")
    assert phone is not None
    contact = await store.lookup_contact(phone)
    assert contact is not None and contact.table == "blesta_clients"
    assert contact.data["id"] == client["id"]


async def test_report_series_one_period_per_month(store, blesta, clock, tmp_path):
    j = job(
        name="blesta-revenue",
        table="blesta_revenue",
        resource=None,
        report="package_revenue",
        months="2025-01..2025-03",
    )
    result = await run(store, clock, j, blesta)
    assert result.status == "ok" and result.pages == 3
    periods = rows(tmp_path / "state.db", "SELECT DISTINCT period FROM blesta_revenue ORDER BY 1")
    assert periods == [("2025-01",), ("2025-02",), ("2025-03",)]
    again = await run(store, clock, j, blesta)
    assert again.unchanged == result.fetched and again.deleted == 0


async def test_a_report_job_tombstones_only_the_months_it_read(store, blesta, clock, tmp_path):
    """Without `months` a report job reads the current month only; at the month change the
    previous month's rows were all 'missing' and tombstoned on the second February run,
    though the job never asked about January again."""
    j = job(name="blesta-revenue", table="blesta_revenue", resource=None, report="package_revenue")
    clock.advance(30 * 86400)  # January 2025
    january = await run(store, clock, j, blesta)
    assert january.status == "ok" and january.fetched > 0, january.error
    clock.advance(20 * 86400)  # February: only 2025-02 is read
    for _ in range(2):
        result = await run(store, clock, j, blesta)
        assert result.status == "ok" and result.deleted == 0, result.error
    dead = rows(
        tmp_path / "state.db", "SELECT COUNT(*) FROM blesta_revenue WHERE deleted_at IS NOT NULL"
    )
    assert dead == [(0,)]
    live = rows(tmp_path / "state.db", "SELECT DISTINCT period FROM blesta_revenue ORDER BY 1")
    assert live == [("2025-01",), ("2025-02",)]


async def test_append_mode_keeps_existing_rows(store, blesta, state, clock, tmp_path):
    j = job(name="blesta-log", table="blesta_log", mode="append")
    await run(store, clock, j, blesta)
    state.clients[0]["email"] = "changed@example.com"
    state.clients.pop(1)
    result = await run(store, clock, j, blesta)
    assert (result.updated, result.deleted) == (0, 0)
    data = rows(
        tmp_path / "state.db", f"SELECT data FROM blesta_log WHERE id = '{state.clients[0]['id']}'"
    )
    assert json.loads(data[0][0])["email"] != "changed@example.com"


@pytest.mark.parametrize(
    "resource",
    ["getcredit", "getpackages", "getpackagepricing", "search", "credit", "licenses"],
)
async def test_reseller_resources(store, clock, resource):
    state = ResellerState.demo(licenses=30, seed=3)
    async with serve_app(make_reseller_app(state)) as url:
        client = ResellerClient.create(
            url + RESELLER_PATH,
            RESELLER_USER,
            RESELLER_PASSWORD,
            clock=clock,
            options=fast_options(),
        )
        async with client:
            j = job(
                name=f"reseller-{resource}",
                table=f"reseller_{resource}",
                upstream="reseller",
                resource=resource,
            )
            result = await run(store, clock, j, client, kind="blesta_reseller")
    assert result.status == "ok", result.error
    assert result.fetched > 0
    if resource in ("search", "licenses"):
        assert result.fetched == 30 and result.pages == 2  # 25 + 5


async def test_cancelled_run_is_recorded_and_deletes_nothing(store, blesta, state, clock, tmp_path):
    import anyio

    await run(store, clock, job(), blesta)
    state.clients.pop(0)
    reached = anyio.Event()
    release = anyio.Event()

    def pause(name: str, page: int) -> None:
        if page == 2:
            reached.set()

    state.after_page = pause
    runner = JobRunner(store, clock=clock, default_region="US")
    clock.advance(60)
    j = job()
    async with anyio.create_task_group() as tg:

        async def go() -> None:
            await runner.run(j, build_fetcher(j, blesta, "blesta", now=clock.now()))
            release.set()

        tg.start_soon(go)
        with anyio.fail_after(10):
            await reached.wait()
        tg.cancel_scope.cancel()  # shutdown while pages are in flight
    assert not release.is_set()
    db = tmp_path / "state.db"
    last = rows(db, "SELECT status, error FROM sync_runs ORDER BY id DESC LIMIT 1")[0]
    assert last == ("cancelled", "cancelled")
    assert rows(db, "SELECT count(*) FROM blesta_clients WHERE deleted_at IS NOT NULL") == [(0,)]
