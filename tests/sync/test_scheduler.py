"""The scheduler against a FakeClock: no overlap, skip logging, catch-up once, request_run."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from structlog.testing import capture_logs

from daemon.clock import FakeClock
from daemon.sync.schedule import Schedule
from daemon.sync.scheduler import ScheduledJob, Scheduler

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


async def settle() -> None:
    """Let every ready task run (no time passes on the fake clock)."""
    for _ in range(20):
        await anyio.sleep(0)


class Recorder:
    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.starts: list[tuple[str, datetime]] = []
        self.block: dict[str, anyio.Event] = {}

    async def __call__(self, name: str) -> None:
        self.starts.append((name, self.clock.now()))
        if name in self.block:
            await self.block[name].wait()


async def test_runs_on_interval_and_never_overlaps():
    clock = FakeClock(T0)
    rec = Recorder(clock)
    rec.block["slow"] = anyio.Event()
    sched = Scheduler(
        [ScheduledJob("slow", Schedule(every=60)), ScheduledJob("fast", Schedule(every=60))],
        rec,
        clock=clock,
        last_runs={"slow": T0 - timedelta(seconds=30), "fast": T0 - timedelta(seconds=30)},
    )
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(sched.run)
            await settle()
            assert rec.starts == []  # both pending: due at T0+30s
            clock.advance(30)
            await settle()
            assert sorted(n for n, _ in rec.starts) == ["fast", "slow"]
            for _ in range(3):  # slow is still running for three more ticks
                clock.advance(60)
                await settle()
            rec.block["slow"].set()
            await settle()
            clock.advance(60)
            await settle()
            tg.cancel_scope.cancel()
    assert sched.started["fast"] == 5
    assert sched.started["slow"] == 2
    assert sched.skipped["slow"] == 3
    skipped = [e for e in logs if e["event"] == "sync.skipped"]
    assert len(skipped) == 3 and all(e["job"] == "slow" for e in skipped)


async def test_overdue_job_runs_once_after_downtime():
    clock = FakeClock(T0)
    rec = Recorder(clock)
    sched = Scheduler(
        [ScheduledJob("j", Schedule(every=300))],
        rec,
        clock=clock,
        last_runs={"j": T0 - timedelta(days=2)},  # ~576 missed ticks
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        await settle()
        assert rec.starts == [("j", T0)]
        clock.advance(299)
        await settle()
        assert len(rec.starts) == 1
        clock.advance(1)
        await settle()
        assert rec.starts[-1] == ("j", T0 + timedelta(seconds=300))
        tg.cancel_scope.cancel()


async def test_jitter_delays_start_within_bound():
    clock = FakeClock(T0)
    rec = Recorder(clock)
    sched = Scheduler(
        [ScheduledJob("j", Schedule(every=600, jitter=30))],
        rec,
        clock=clock,
        rng=random.Random(7),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        await settle()  # the job loop is asleep on its jittered start
        assert rec.starts == []
        clock.advance(31)
        await settle()
        tg.cancel_scope.cancel()
    assert len(rec.starts) == 1
    assert T0 < rec.starts[0][1] <= T0 + timedelta(seconds=31)


async def test_request_run_wakes_sleeping_job_and_failures_do_not_stop_it():
    clock = FakeClock(T0)
    calls: list[datetime] = []

    async def failing(name: str) -> None:
        calls.append(clock.now())
        raise RuntimeError("boom")

    sched = Scheduler(
        [ScheduledJob("j", Schedule(cron="0 3 * * *"))],
        failing,
        clock=clock,
        last_runs={"j": T0},
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        await settle()
        assert calls == []
        sched.request_run("j")
        await settle()
        assert calls == [T0]
        assert sched.running == set()
        with pytest.raises(KeyError):
            sched.request_run("nope")
        tg.cancel_scope.cancel()
