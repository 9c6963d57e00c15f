"""Upkeep on a FakeClock over a real SQLite file: gauges and the health cache refreshed, history
pruned (never inside the gap filler's look-back), the WAL truncated once past its threshold, and
a failing step logged without stopping the loop."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from daemon.clock import FakeClock
from daemon.config import Settings
from daemon.config.dispatch import LoopGuardSettings
from daemon.config.load import parse_settings
from daemon.errors import StoreError
from daemon.health import Health
from daemon.metrics import Metrics
from daemon.rules.guard import BREAKER, LoopGuard
from daemon.store import Store, to_db
from daemon.sync.schedule import Schedule
from daemon.upkeep import MIN_RETENTION, Upkeep

T0 = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)
DAY = 86400.0
P = "integration_daemon_"


def settings(tmp_path: Path, retention: str = "10d") -> Settings:
    return parse_settings(
        {"daemon": {"retention": retention}}, env={}, credentials_dir=None, base_dir=tmp_path
    )


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }


async def add_events(
    store: Store, n: int, status: str, when: datetime, prefix: str, size: int = 10
) -> None:
    payload = json.dumps({"text": "x" * size})

    async def fn(conn: aiosqlite.Connection) -> None:
        await conn.executemany(
            "INSERT INTO events (source, kind, dedupe_key, received_at, payload, status) "
            "VALUES ('netsapiens', 'message.received', ?, ?, ?, ?)",
            ((f"{prefix}{i}", to_db(when), payload, status) for i in range(n)),
        )

    await store.write(fn)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "state.db", clock=clock) as s:
        yield s


def upkeep(store: Any, clock: FakeClock, tmp_path: Path, **kw: Any) -> Upkeep:
    kw.setdefault("metrics", Metrics(process_metrics=False))
    kw.setdefault("settings", settings(tmp_path))
    return Upkeep(store, clock=clock, **kw)


# -- refresh --------------------------------------------------------------------------------------


async def test_refresh_sets_the_gauges_and_the_cache_health_reads(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await add_events(store, 3, "pending", T0, "p")
    await add_events(store, 2, "dead", T0, "d")
    await store.set_sync_state("fresh-job", last_success_at=T0)
    await store.set_sync_state("stale-job", last_success_at=T0 - timedelta(days=1))
    guard = LoopGuard(LoopGuardSettings(), store, clock=clock)
    await store.set_guard_state(
        BREAKER, json.dumps({"open_until": to_db(T0 + timedelta(minutes=15)), "reason": "test"})
    )
    jobs = {"fresh-job": Schedule(every=900.0), "stale-job": Schedule(every=900.0)}
    health = Health(store, clock=clock, jobs=jobs, guard=guard)
    metrics = Metrics(process_metrics=False)
    u = upkeep(store, clock, tmp_path, metrics=metrics, health=health)
    assert u.counts is health.counts
    clock.advance(360)  # past the stale job's catch-up grace (5 min); the fresh one is fine
    await u.refresh()

    s = samples(metrics)
    assert s[(P + "events", (("status", "dead"),))] == 2
    assert s[(P + "events", (("status", "pending"),))] == 3
    assert s[(P + "actions", (("status", "dead"),))] == 0
    assert s[(P + "database_size_bytes", (("file", "db"),))] > 0
    assert s[(P + "sync_stale", (("job", "fresh-job"),))] == 0
    assert s[(P + "sync_stale", (("job", "stale-job"),))] == 1
    assert s[(P + "sync_last_success_timestamp_seconds", (("job", "fresh-job"),))] == (
        T0.timestamp()
    )
    assert s[(P + "breaker_open", ())] == 1
    cached = health.counts.fresh(clock.monotonic(), health.counts_max_age)
    assert cached is not None and cached.events["dead"] == 2
    report = await health.check()  # dead letters from upkeep's counts, no query of its own
    assert report.checks["dead_letters"]["events"] == 2


# -- prune ----------------------------------------------------------------------------------------


async def test_prune_deletes_history_past_retention_and_logs_it(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await add_events(store, 5, "done", T0, "old")
    await add_events(store, 2, "pending", T0, "open")  # unfinished work is never pruned
    clock.advance(11 * DAY)
    await add_events(store, 3, "done", clock.now(), "new")
    metrics = Metrics(process_metrics=False)
    u = upkeep(store, clock, tmp_path, metrics=metrics)
    with capture_logs() as logs:
        counts = await u.prune()
    assert counts == {"actions": 0, "events": 5, "sync_runs": 0}
    assert (await store.count_events_by_status())["done"] == 3
    [line] = [e for e in logs if e["event"] == "store.pruned"]
    assert line["events"] == 5 and line["log_level"] == "info"
    assert line["older_than"] == (clock.now() - timedelta(days=10)).isoformat()
    assert samples(metrics)[(P + "pruned_rows_total", (("table", "events"),))] == 5


async def test_retention_shorter_than_the_gap_lookback_is_raised_to_it(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await add_events(store, 4, "done", T0, "two-days")
    await add_events(store, 1, "done", T0 - timedelta(days=7), "nine-days")
    clock.advance(2 * DAY)
    u = upkeep(store, clock, tmp_path, settings=settings(tmp_path, "1h"))
    with capture_logs() as logs:
        first = await u.prune()
        second = await u.prune()
    # kept: a backfill may still read those two-day-old messages, and must find their keys
    assert first["events"] == 1 and second["events"] == 0
    assert u.horizon() == MIN_RETENTION == 8 * DAY
    clamped = [e for e in logs if e["event"] == "upkeep.retention_clamped"]
    assert len(clamped) == 1 and clamped[0]["retention_s"] == 3600.0


# -- checkpoint -----------------------------------------------------------------------------------


async def test_wal_past_the_threshold_is_truncated(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    u = upkeep(store, clock, tmp_path, wal_truncate_bytes=256 * 1024)
    await add_events(store, 10, "done", T0, "small")
    result = await u.checkpoint()
    assert result.mode == "PASSIVE" and result.busy == 0
    assert 0 < result.wal_after <= 256 * 1024  # below the threshold: the file is reused

    await add_events(store, 300, "done", T0, "big", size=4000)  # ~1.2 MB of WAL
    before = u.wal_path.stat().st_size
    assert before > 256 * 1024
    with capture_logs() as logs:
        result = await u.checkpoint()
    assert result.mode == "TRUNCATE" and result.busy == 0
    assert result.wal_before == before and result.wal_after == 0
    assert u.wal_path.stat().st_size == 0
    [line] = [e for e in logs if e["event"] == "store.checkpointed"]
    assert line["mode"] == "TRUNCATE" and line["log_level"] == "info"
    assert (await store.count_events_by_status())["done"] == 310  # nothing lost


async def test_a_reader_on_an_old_snapshot_blocks_the_truncation(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    u = upkeep(store, clock, tmp_path, wal_truncate_bytes=64 * 1024)
    await add_events(store, 10, "done", T0, "first")
    reader = sqlite3.connect(store.path, isolation_level=None)  # say, a BI tool
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM events").fetchone()  # holds this snapshot
        await add_events(store, 100, "done", T0, "later", size=4000)
        with capture_logs() as logs:
            result = await u.checkpoint()
        assert result.mode == "PASSIVE" and result.checkpointed < result.frames
        assert [e["event"] for e in logs if e["event"].startswith("store.checkpoint")] == [
            "store.checkpoint_blocked",
            "store.checkpointed",
        ]
    finally:
        reader.close()
    assert (await u.checkpoint()).mode == "TRUNCATE"  # the reader is gone


# -- the loop -------------------------------------------------------------------------------------


class Recording(Upkeep):
    """Upkeep that notes which steps ran."""

    ran: list[str]

    async def refresh(self) -> None:
        self.ran.append("refresh")
        await super().refresh()

    async def prune(self) -> dict[str, int]:
        self.ran.append("prune")
        return await super().prune()

    async def optimize(self) -> None:
        self.ran.append("optimize")
        await super().optimize()

    async def checkpoint(self) -> Any:
        self.ran.append("checkpoint")
        return await super().checkpoint()


async def test_the_loop_runs_each_step_on_its_period(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    metrics = Metrics(process_metrics=False)
    u = Recording(store, clock=clock, metrics=metrics, settings=settings(tmp_path))
    u.ran = ran = []
    await add_events(store, 2, "done", T0, "old")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(u.run)
            await u.wait_turns(1)
            assert ran == ["refresh"]  # at once; the rest later
            assert samples(metrics)[(P + "events", (("status", "done"),))] == 2

            clock.advance(11 * DAY)  # a long pause: everything is due, each runs once
            await u.wait_turns(2)
            assert ran[1:] == ["refresh", "prune", "optimize", "checkpoint"]
            assert (await store.count_events_by_status())["done"] == 0

            ran.clear()
            clock.advance(60)
            await u.wait_turns(3)
            assert ran == ["refresh"]
            clock.advance(240)
            await u.wait_turns(4)
            assert ran == ["refresh", "refresh", "checkpoint"]
            tg.cancel_scope.cancel()


class Flaky:
    """A store whose prune fails while `broken`; `healthy` says whether the writer lives."""

    def __init__(self, store: Store):
        self.store = store
        self.path = store.path
        self.healthy = True
        self.broken = True

    async def prune(self, older_than: datetime) -> dict[str, int]:
        if self.broken:
            raise StoreError("database write failed: disk I/O error")
        return await self.store.prune(older_than)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_a_failing_step_is_logged_once_and_the_others_go_on(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    flaky = Flaky(store)
    metrics = Metrics(process_metrics=False)
    u = upkeep(flaky, clock, tmp_path, metrics=metrics)
    with capture_logs() as logs:
        assert await u.run_once() == {
            "refresh": True,
            "prune": False,
            "optimize": True,
            "checkpoint": True,
        }
        await u.run_once()
        flaky.broken = False
        assert all((await u.run_once()).values())
    upkeep_lines = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("upkeep")]
    assert upkeep_lines == [
        ("upkeep.failed", "warning"),
        ("upkeep.failed", "debug"),
        ("upkeep.recovered", "info"),
    ]
    assert samples(metrics)[(P + "upkeep_failures_total", (("step", "prune"),))] == 2


async def test_a_dead_writer_is_not_upkeeps_to_survive(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    flaky = Flaky(store)
    flaky.healthy = False  # the writer died: the service must see it, not a log line
    u = upkeep(flaky, clock, tmp_path)
    with pytest.raises(StoreError):
        await u.prune()
    with pytest.raises(StoreError):
        await u.run_once()
