"""Runs sync jobs on their schedules without overlap, catching up once after downtime.

Modelled on Home Assistant's DataUpdateCoordinator: each job's next tick is planned only from
its last start, a start is jittered so jobs sharing a schedule do not stampede one upstream, and
only transitions are logged. A tick that finds the job still running is skipped (and logged as
`sync.skipped`), so a slow upstream can never pile up concurrent runs of one job.

`request_run(name)` (a webhook said something changed) is debounced like the coordinator's
`async_request_refresh`: while the job is idle it starts now; while it runs, exactly one
follow-up run is queued however many requests arrive, and starts as soon as the running one
ends, so a change that happened mid-run is never missed.

Shutdown: `stop_ticks()` stops new starts (ticks, requests, queued follow-ups) and lets running
jobs finish; `wait_idle()` waits for them; `shutdown(timeout)` does both and then cancels what is
still running, which ends `run()`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from daemon.clock import Clock
from daemon.sync.schedule import Schedule, first_due, next_due

log = structlog.get_logger(__name__)

RunJob = Callable[[str], Awaitable[object]]


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    schedule: Schedule


class Scheduler:
    """Drives `run_job(name)` for each job; `run()` lives until its task group is cancelled."""

    def __init__(
        self,
        jobs: Sequence[ScheduledJob],
        run_job: RunJob,
        *,
        clock: Clock,
        last_runs: Mapping[str, datetime | None] | None = None,
        rng: random.Random | None = None,
    ):
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique")
        self.jobs = list(jobs)
        self._run_job = run_job
        self._clock = clock
        self._last_runs = dict(last_runs or {})
        self._rng = rng or random.Random()
        self.running: set[str] = set()
        self.skipped: dict[str, int] = {j.name: 0 for j in jobs}
        self.started: dict[str, int] = {j.name: 0 for j in jobs}
        self.next_run: dict[str, datetime] = {}
        self.follow_ups: set[str] = set()  # running jobs with one more run queued
        self.ticking = True
        self._wake: dict[str, anyio.Event] = {}
        self._requested: set[str] = set()  # request_run asked for a run: skip the wait
        self._run_ended = anyio.Event()
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick every job until cancelled, or until `stop_ticks()` and the last run's end."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for job in self.jobs:
                now = self._clock.now()
                self.next_run[job.name] = first_due(
                    job.schedule, self._last_runs.get(job.name), now
                )
                tg.start_soon(self._loop, job, tg, name=f"schedule:{job.name}")
            task_status.started()

    async def _loop(self, job: ScheduledJob, tg: TaskGroup) -> None:
        while self.ticking:
            due = self.next_run[job.name]
            jitter = self._rng.uniform(0, job.schedule.jitter) if job.schedule.jitter else 0.0
            wait = (due - self._clock.now()).total_seconds() + jitter
            if wait > 0 and job.name not in self._requested:
                await self._wait(job.name, wait)
                if not self.ticking:
                    return
                if self.next_run[job.name] < due:  # woken early by request_run
                    due = self.next_run[job.name]
            self._requested.discard(job.name)
            started = self._clock.now()
            if job.name in self.running:
                self.skipped[job.name] += 1
                log.warning("sync.skipped", job=job.name, reason="previous run still running")
            else:
                self.running.add(job.name)
                tg.start_soon(self._guarded, job.name, name=f"sync:{job.name}")
            self.next_run[job.name] = next_due(job.schedule, due, started)

    async def _guarded(self, name: str) -> None:
        """Run the job, then its queued follow-up if one was requested meanwhile; a failure is
        the job's (logged by the runner), never the scheduler's."""
        try:
            while True:
                self.follow_ups.discard(name)  # requests from now on want another run
                self.started[name] += 1
                try:
                    await self._run_job(name)
                except Exception:  # supervision boundary: one job must not stop the others
                    log.exception("sync.crashed", job=name)
                if name not in self.follow_ups or not self.ticking:
                    break
                log.info("sync.follow_up", job=name, reason="run requested while running")
        finally:
            self.follow_ups.discard(name)
            self.running.discard(name)
            ended, self._run_ended = self._run_ended, anyio.Event()
            ended.set()

    def request_run(self, name: str) -> None:
        """Run `name` as soon as possible, debounced: an idle job starts now; a running job gets
        exactly one follow-up run, however many requests arrive before it ends. Ignored once
        `stop_ticks()` was called."""
        if name not in self.next_run:
            raise KeyError(name)
        if not self.ticking:
            return
        if name in self.running:
            self.follow_ups.add(name)
            return
        # "Now" means now: not after the start jitter of a job that is due anyway, and not
        # lost when the job's loop has not reached its wait yet.
        self.next_run[name] = min(self.next_run[name], self._clock.now())
        self._requested.add(name)
        if name in self._wake:
            self._wake[name].set()

    def stop_ticks(self) -> None:
        """Start nothing new (no ticks, requests or follow-ups); running jobs go on to their
        end. `run()` returns once they have."""
        self.ticking = False
        for wake in self._wake.values():
            wake.set()

    async def wait_idle(self) -> None:
        """Wait until no job is running (a queued follow-up counts as still running)."""
        while self.running:
            await self._run_ended.wait()

    async def shutdown(self, grace: float) -> bool:
        """`stop_ticks()`, give running jobs `grace` seconds of the clock to finish, then
        cancel the rest (their runs are recorded `cancelled`). True when all finished in time."""
        self.stop_ticks()
        finished = False
        async with anyio.create_task_group() as tg:

            async def idle() -> None:
                nonlocal finished
                await self.wait_idle()
                finished = True
                tg.cancel_scope.cancel()

            async def deadline() -> None:
                await self._clock.sleep(grace)
                tg.cancel_scope.cancel()

            tg.start_soon(idle)
            tg.start_soon(deadline)
        if not finished:
            log.warning("sync.shutdown_cancelled", jobs=sorted(self.running), grace=grace)
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
        return finished

    async def _wait(self, name: str, seconds: float) -> None:
        """Sleep on the clock, or less if `request_run` (or `stop_ticks`) wakes this job."""
        if not self.ticking:
            return
        wake = self._wake[name] = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self._clock.sleep(seconds)
                tg.cancel_scope.cancel()

            async def waker() -> None:
                await wake.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            tg.start_soon(waker)
