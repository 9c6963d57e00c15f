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


class Gated:
    """Each run waits on its own gate (`gates[n]` for the n-th start), so a test can hold and
    release runs one at a time; records starts, ends and cancellations."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.starts: list[tuple[str, datetime]] = []
        self.ended: list[str] = []
        self.cancelled: list[str] = []
        self.gates: list[anyio.Event] = []

    async def __call__(self, name: str) -> None:
        self.starts.append((name, self.clock.now()))
        gate = anyio.Event()
        self.gates.append(gate)
        try:
            await gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(name)
            raise
        self.ended.append(name)


async def test_requests_during_a_run_queue_exactly_one_follow_up():
    clock = FakeClock(T0)
    job = Gated(clock)
    sched = Scheduler(
        [ScheduledJob("j", Schedule(every=3600))], job, clock=clock, last_runs={"j": T0}
    )
    with capture_logs() as logs, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(sched.run)
            await settle()
            assert job.starts == []  # not due for an hour
            sched.request_run("j")
            await settle()
            assert len(job.starts) == 1 and sched.running == {"j"}
            for _ in range(3):  # a burst of webhooks while it runs ...
                sched.request_run("j")
            await settle()
            assert len(job.starts) == 1
            assert sched.follow_ups == {"j"}
            clock.advance(5)
            job.gates[0].set()  # ... gives one follow-up, started as the first run ends
            await settle()
            assert job.starts[1] == ("j", T0 + timedelta(seconds=5))
            assert sched.follow_ups == set() and sched.running == {"j"}
            sched.request_run("j")  # a request during the follow-up queues another
            job.gates[1].set()
            await settle()
            assert len(job.starts) == 3
            job.gates[2].set()
            await settle()
            assert len(job.starts) == 3  # nothing asked for a fourth
            assert sched.running == set() and sched.started["j"] == 3
            tg.cancel_scope.cancel()
    assert [e["job"] for e in logs if e["event"] == "sync.follow_up"] == ["j", "j"]


async def test_stop_ticks_lets_running_jobs_finish_and_starts_nothing_new():
    clock = FakeClock(T0)
    job = Gated(clock)
    sched = Scheduler(
        [ScheduledJob("slow", Schedule(every=60)), ScheduledJob("fast", Schedule(every=60))],
        job,
        clock=clock,
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(sched.run)
            await settle()
            assert sorted(n for n, _ in job.starts) == ["fast", "slow"]
            job.gates[[n for n, _ in job.starts].index("fast")].set()
            await settle()
            sched.request_run("slow")  # queued follow-up, dropped by stop_ticks below
            sched.stop_ticks()
            sched.request_run("fast")  # ignored: no new work once stopping
            sched.request_run("slow")
            clock.advance(600)  # ticks would have been due many times over
            await settle()
            assert len(job.starts) == 2
            idle = anyio.Event()

            async def waiter() -> None:
                await sched.wait_idle()
                idle.set()

            tg.start_soon(waiter)
            await settle()
            assert not idle.is_set() and sched.running == {"slow"}
            job.gates[[n for n, _ in job.starts].index("slow")].set()
            await idle.wait()
        # run() returned on its own: no cancel was needed
    assert sorted(job.ended) == ["fast", "slow"] and job.cancelled == []
    assert len(job.starts) == 2


@pytest.mark.parametrize("finishes_in_time", [True, False])
async def test_shutdown_gives_running_jobs_a_grace_period_then_cancels_them(
    finishes_in_time: bool,
):
    clock = FakeClock(T0)
    job = Gated(clock)
    sched = Scheduler([ScheduledJob("j", Schedule(every=60))], job, clock=clock)
    outcome: list[bool] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as outer:
            await outer.start(sched.run)  # run() ends inside outer: shutdown makes it return
            await settle()
            assert len(job.starts) == 1

            async def stop() -> None:
                outcome.append(await sched.shutdown(30))

            outer.start_soon(stop)
            await settle()
            clock.advance(29)
            await settle()
            assert outcome == [] and job.cancelled == []
            if finishes_in_time:
                job.gates[0].set()
            else:
                clock.advance(1)
            await settle()
    assert outcome == [finishes_in_time]
    assert job.cancelled == ([] if finishes_in_time else ["j"])
    assert sched.running == set() and len(job.starts) == 1


@pytest.mark.parametrize("before_loop", [True, False])
async def test_request_run_skips_the_start_jitter(before_loop: bool) -> None:
    """A job due at start waits out its jitter (up to 30 s); a request means now — also when it
    arrives before the job's loop has reached its wait."""
    clock = FakeClock(T0)
    rec = Recorder(clock)
    sched = Scheduler(
        [ScheduledJob("j", Schedule(every=900, jitter=30))],
        rec,
        clock=clock,
        rng=random.Random(1),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        if not before_loop:
            await settle()
        sched.request_run("j")
        await settle()
        assert rec.starts == [("j", T0)]
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("step", [-1, 1], ids=["back a day", "forward a day"])
async def test_a_wall_clock_step_neither_stalls_nor_repeats_a_60s_job(step: int) -> None:
    """Found by probing: stepped back a day, the next tick was planned from a start now a day
    in the future, and the job waited the day out. Either way it keeps its minute."""
    clock = FakeClock(T0)
    starts: list[datetime] = []

    async def run_job(name: str) -> None:
        starts.append(clock.now())

    sched = Scheduler([ScheduledJob("j", Schedule(every=60))], run_job, clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        await settle()
        assert len(starts) == 1  # never run: runs now
        clock.advance(30)
        await settle()
        clock.set_wall(clock.now() + step * timedelta(days=1))  # NTP steps the clock
        for _ in range(10):  # ten minutes of monotonic time
            clock.advance(60)
            await settle()
        tg.cancel_scope.cancel()
    assert 10 <= len(starts) <= 12  # about once a minute, as before the step


async def test_a_last_run_recorded_by_a_fast_clock_does_not_stall_the_first_run() -> None:
    """Found by probing: the last run was recorded while the clock ran 6 h fast (then NTP set it
    right), and after a restart a 5-minute job waited the 6 h out before its first run."""
    clock = FakeClock(T0)
    starts: list[datetime] = []

    async def run_job(name: str) -> None:
        starts.append(clock.now())

    last = {"j": T0 + timedelta(hours=6)}  # sync_runs.started_at written by the fast clock
    sched = Scheduler(
        [ScheduledJob("j", Schedule(every=300))], run_job, clock=clock, last_runs=last
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        await settle()
        for _ in range(30):  # 30 minutes
            clock.advance(60)
            await settle()
        tg.cancel_scope.cancel()
    assert 5 <= len(starts) <= 7  # every 5 minutes from the restart on
