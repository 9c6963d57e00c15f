"""`/healthz` through a real aiohttp app on loopback, over a real SQLite file: 200 when all is
well; 503 naming the failing check when the database file is deleted, renamed, replaced or made
read-only, when a job is stale, the breaker open, an upstream's grant refused, or dead letters
exist. Job freshness is a pure function, tested as a table."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from daemon.clock import FakeClock
from daemon.config.dispatch import LoopGuardSettings
from daemon.health import (
    PROBE_NAME,
    CountsCache,
    Health,
    healthz_route,
    job_freshness,
)
from daemon.logs import add_secrets, clear_secrets
from daemon.rules.guard import BREAKER, LoopGuard
from daemon.store import NewEvent, Store, to_db
from daemon.sync.schedule import Schedule
from tests.webhooks.listener_fixtures import serve_listener

T0 = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)  # a Tuesday
MIN = 60.0
HOUR = 3600.0


@dataclass
class FakeAuth:
    healthy: bool = True
    last_error: str | None = None


@dataclass
class Served:
    url: str
    store: Store
    clock: FakeClock
    health: Health
    auth: FakeAuth
    http: aiohttp.ClientSession

    async def get(self) -> tuple[int, dict[str, Any]]:
        self.clock.advance(2)  # past the 1 s result cache: every call runs the checks
        async with self.http.get(self.url + "/healthz") as resp:
            return resp.status, await resp.json()


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    yield directory / "state.db"
    for p in (directory, *directory.iterdir()):  # undo a test's chmod, for the cleanup
        os.chmod(p, 0o700)


@pytest.fixture
async def served(db_path: Path) -> AsyncIterator[Served]:
    clock = FakeClock(T0)
    auth = FakeAuth()
    async with Store.open(db_path, clock=clock) as store:
        guard = LoopGuard(LoopGuardSettings(), store, clock=clock)
        health = Health(
            store,
            clock=clock,
            upstreams={"blesta": None, "halo": auth},
            jobs={"blesta-clients": Schedule(every=15 * MIN, jitter=30.0)},
            guard=guard,
        )
        app = web.Application()
        app.add_routes([healthz_route(health)])
        async with serve_listener(app) as url, aiohttp.ClientSession() as http:
            yield Served(url, store, clock, health, auth, http)


async def test_all_well_is_200_with_every_check(served: Served) -> None:
    await served.store.set_sync_state("blesta-clients", last_success_at=T0)
    status, body = await served.get()
    assert status == 200, body
    assert body["ok"] is True and body["failing"] == []
    checks = body["checks"]
    assert set(checks) == {
        "database",
        "upstream:blesta",
        "upstream:halo",
        "job:blesta-clients",
        "breaker",
        "dead_letters",
    }
    assert all(c["ok"] for c in checks.values())
    assert checks["database"]["path"] == str(served.store.path)
    assert checks["upstream:blesta"]["auth"] == "static"
    assert checks["upstream:halo"]["auth"] == "ok"
    job = checks["job:blesta-clients"]
    assert job["state"] == "ok" and job["schedule"] == "every 900s"
    assert job["last_success"] == T0.isoformat()
    assert checks["breaker"] == {"ok": True, "open": False}
    assert checks["dead_letters"] == {"ok": True, "events": 0, "actions": 0}
    # the write probe went through the writer and committed
    assert await served.store.get_guard_state(PROBE_NAME) is not None


async def failing(served: Served) -> tuple[list[str], dict[str, Any]]:
    status, body = await served.get()
    assert status == 503, body
    assert body["ok"] is False
    return body["failing"], body["checks"]


async def test_deleted_database_file_is_503(served: Served) -> None:
    assert (await served.get())[0] == 200
    os.unlink(served.store.path)
    names, checks = await failing(served)
    assert names == ["database"]
    assert "gone" in checks["database"]["errors"][0]


async def test_renamed_database_file_is_503(served: Served) -> None:
    path = served.store.path
    path.rename(path.with_name("moved.db"))
    names, checks = await failing(served)
    assert names == ["database"] and "gone" in checks["database"]["errors"][0]


async def test_replaced_database_file_is_503(served: Served) -> None:
    path = served.store.path
    path.rename(path.with_name("old.db"))
    path.write_bytes(b"")  # another file at the same path
    os.chmod(path, 0o600)
    names, checks = await failing(served)
    assert names == ["database"] and "replaced" in checks["database"]["errors"][0]


async def test_read_only_database_file_and_directory_is_503(served: Served) -> None:
    path = served.store.path
    os.chmod(path, 0o444)
    names, checks = await failing(served)
    assert names == ["database"]
    assert any("database file" in e and "0444" in e for e in checks["database"]["errors"])
    os.chmod(path, 0o600)
    assert (await served.get())[0] == 200
    os.chmod(path.parent, 0o555)
    try:
        names, checks = await failing(served)
    finally:
        os.chmod(path.parent, 0o700)  # so the store can remove its -wal at close
    assert names == ["database"]
    assert any("database directory" in e for e in checks["database"]["errors"])


async def test_read_only_file_system_is_503(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.statvfs

    def read_only(path: Any) -> Any:
        result = real(path)
        fields = list(result)
        fields[8] |= os.ST_RDONLY  # f_flag
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", read_only)
    names, checks = await failing(served)
    assert names == ["database"]
    assert "read-only file system" in checks["database"]["errors"][0]


async def test_a_closed_store_is_503(served: Served) -> None:
    await served.store.close()
    names, checks = await failing(served)
    assert "database" in names
    assert checks["database"]["errors"][0] == "the store is closed"


async def test_a_write_probe_that_never_commits_is_503(db_path: Path) -> None:
    clock = FakeClock(T0)
    async with Store.open(db_path, clock=clock) as store:

        class StuckWriter:
            path = store.path
            healthy = True
            writer_error = None

            async def set_guard_state(self, name: str, value: str) -> None:
                await anyio.Event().wait()  # a writer stuck behind something

            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

        health = Health(StuckWriter(), clock=clock, probe_timeout=0.05)
        report = await health.check()
    assert report.failing == ["database"]
    assert report.checks["database"]["errors"] == ["write probe: no commit within 0.05s"]


async def test_stale_job_is_503(served: Served) -> None:
    await served.store.set_sync_state("blesta-clients", last_success_at=T0)
    # two ticks (30 min) + jitter (30 s) + grace (5 min) after the last success
    served.clock.advance(35 * MIN + 30 - 2)
    assert (await served.get())[0] == 200
    served.clock.advance(1)
    names, checks = await failing(served)
    assert names == ["job:blesta-clients"]
    assert checks["job:blesta-clients"]["state"] == "stale"
    assert checks["job:blesta-clients"]["stale_at"] == (T0 + timedelta(seconds=2130)).isoformat()


async def test_a_job_that_never_succeeded_is_pending_until_overdue(served: Served) -> None:
    status, body = await served.get()
    assert status == 200
    assert body["checks"]["job:blesta-clients"]["state"] == "pending"
    served.clock.advance(36 * MIN)
    names, _ = await failing(served)
    assert names == ["job:blesta-clients"]


async def test_open_breaker_is_503(served: Served) -> None:
    until = T0 + timedelta(minutes=15)
    reason = "61 auto-replies in 300s (limit 60)"
    await served.store.set_guard_state(
        BREAKER, json.dumps({"open_until": to_db(until), "reason": reason})
    )
    names, checks = await failing(served)
    assert "breaker" in names
    assert checks["breaker"] == {
        "ok": False,
        "open": True,
        "until": until.isoformat(),
        "reason": reason,
    }
    served.clock.advance(15 * MIN)  # the pause is over: the breaker closes by itself
    _, body = await served.get()
    assert body["checks"]["breaker"]["ok"] is True


async def test_dead_letters_are_503(served: Served) -> None:
    await served.store.set_sync_state("blesta-clients", last_success_at=T0)
    [event] = await served.store.insert_events(
        [NewEvent("netsapiens", "message.received", "k1", "{}", T0)]
    )
    await served.store.set_event_status(event.id, "dead", error="gave up")
    names, checks = await failing(served)
    assert names == ["dead_letters"]
    assert checks["dead_letters"]["events"] == 1 and checks["dead_letters"]["actions"] == 0
    assert "events replay --dead" in checks["dead_letters"]["hint"]

    action_id, _ = await served.store.create_action(event.id, "balance", "sms_reply", "a1", "{}")
    await served.store.set_action_status(action_id, "dead", error="gave up")
    await served.store.set_event_status(event.id, "done")
    served.health.counts = CountsCache()  # forget the counts taken above
    names, checks = await failing(served)
    assert checks["dead_letters"]["events"] == 0 and checks["dead_letters"]["actions"] == 1


async def test_dead_letters_reuse_fresh_counts_from_upkeep(served: Served) -> None:
    await served.store.set_sync_state("blesta-clients", last_success_at=T0)
    [event] = await served.store.insert_events(
        [NewEvent("netsapiens", "message.received", "k1", "{}", T0)]
    )
    await served.store.set_event_status(event.id, "dead")
    # upkeep counted just before the event died: Health believes it while it is fresh
    served.health.counts.put({"dead": 0}, {"dead": 0}, at=served.clock.monotonic() + 2)
    assert (await served.get())[0] == 200
    served.clock.advance(served.health.counts_max_age)
    names, _ = await failing(served)  # too old: counted again
    assert names == ["dead_letters"]


async def test_refused_grant_is_503_and_the_error_never_shows_a_secret(served: Served) -> None:
    await served.store.set_sync_state("blesta-clients", last_success_at=T0)
    add_secrets(["client-secret-0123456789"])
    try:
        served.auth.healthy = False
        served.auth.last_error = "halo: grant refused for client-secret-0123456789 (HTTP 400)"
        names, checks = await failing(served)
    finally:
        clear_secrets()
    assert names == ["upstream:halo"]
    assert checks["upstream:halo"]["auth"] == "failing"
    assert "grant refused" in checks["upstream:halo"]["error"]
    assert "client-secret-0123456789" not in json.dumps(checks)


async def test_the_result_is_cached_for_a_second(served: Served) -> None:
    health, store, clock = served.health, served.store, served.clock
    first = await health.check()
    probed = await store.get_guard_state(PROBE_NAME)
    clock.advance(0.5)
    assert await health.check() is first
    assert await store.get_guard_state(PROBE_NAME) == probed  # no second probe
    clock.advance(0.6)
    assert await health.check() is not first


async def test_transitions_are_logged_once_each_way(served: Served) -> None:
    await served.store.set_sync_state("blesta-clients", last_success_at=T0)
    with capture_logs() as logs:
        await served.get()
        served.auth.healthy = False
        await served.get()
        await served.get()
        served.auth.healthy = True
        await served.get()
    events = [(e["event"], e.get("failing")) for e in logs if e["event"].startswith("health.")]
    assert events == [("health.degraded", ["upstream:halo"]), ("health.recovered", None)]


async def test_from_running_reads_the_current_clients_and_jobs(db_path: Path) -> None:
    clock = FakeClock(T0)
    async with Store.open(db_path, clock=clock) as store:
        job = SimpleNamespace(name="halo-tickets", every=300.0, cron=None, jitter=0.0)
        static = SimpleNamespace(auth=object())  # not a TokenAuth: reported "static"
        run = SimpleNamespace(
            store=store,
            settings=SimpleNamespace(sync=[job]),
            pool=SimpleNamespace(clients={"blesta": SimpleNamespace(session=static)}),
            dispatcher=SimpleNamespace(guard=LoopGuard(LoopGuardSettings(), store, clock=clock)),
        )
        health = Health.from_running(run, clock=clock)
        report = await health.check()
        assert set(report.checks) == {
            "database",
            "upstream:blesta",
            "job:halo-tickets",
            "breaker",
            "dead_letters",
        }
        run.settings = SimpleNamespace(sync=[])  # a reload removed the job
        clock.advance(2)
        assert "job:halo-tickets" not in (await health.check()).checks


# -- job freshness, as a table ----------------------------------------------------------------

EVERY_15 = Schedule(every=15 * MIN, jitter=30.0)
WEEKDAYS_9 = Schedule(cron="0 9 * * 1-5")
FRI_9 = datetime(2025, 3, 7, 9, 0, tzinfo=UTC)
TUE_9 = datetime(2025, 3, 11, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "last", "started", "now", "state"),
    [
        # every 15m: stale after 2 × 15m + 30 s jitter + 5m grace
        (EVERY_15, T0, T0, T0 + timedelta(minutes=35), "ok"),
        (EVERY_15, T0, T0, T0 + timedelta(minutes=35, seconds=30), "ok"),
        (EVERY_15, T0, T0, T0 + timedelta(minutes=35, seconds=31), "stale"),
        # never succeeded: pending, counted from the service's start
        (EVERY_15, None, T0, T0, "pending"),
        (EVERY_15, None, T0, T0 + timedelta(minutes=35), "pending"),
        (EVERY_15, None, T0, T0 + timedelta(minutes=36), "stale"),
        # overdue at start (the service was down): the catch-up run gets jitter + grace
        (EVERY_15, T0 - timedelta(days=2), T0, T0 + timedelta(minutes=5), "ok"),
        (EVERY_15, T0 - timedelta(days=2), T0, T0 + timedelta(minutes=6), "stale"),
        # a weekday cron: Friday's success holds over the weekend and Monday's one miss
        (WEEKDAYS_9, FRI_9, FRI_9, datetime(2025, 3, 10, 12, 0, tzinfo=UTC), "ok"),
        (WEEKDAYS_9, FRI_9, FRI_9, TUE_9 + timedelta(minutes=5), "ok"),
        (WEEKDAYS_9, FRI_9, FRI_9, TUE_9 + timedelta(minutes=5, seconds=1), "stale"),
    ],
)
def test_job_freshness(
    schedule: Schedule, last: datetime | None, started: datetime, now: datetime, state: str
) -> None:
    assert job_freshness(schedule, last, started_at=started, now=now).state == state
