"""Runs sync jobs on their schedules without overlap, catching up once after downtime.

Modelled on Home Assistant's DataUpdateCoordinator: each job's next tick is planned only from
its last start, a start is jittered so jobs sharing a schedule do not stampede one upstream, and
only transitions are logged. A tick that finds the job still running is skipped (and logged as
`sync.skipped`), so a slow upstream can never pile up concurrent runs of one job.
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
        self._wake: dict[str, anyio.Event] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for job in self.jobs:
                now = self._clock.now()
                self.next_run[job.name] = first_due(
                    job.schedule, self._last_runs.get(job.name), now
                )
                tg.start_soon(self._loop, job, tg, name=f"schedule:{job.name}")
            task_status.started()

    async def _loop(self, job: ScheduledJob, tg: TaskGroup) -> None:
        while True:
            due = self.next_run[job.name]
            jitter = self._rng.uniform(0, job.schedule.jitter) if job.schedule.jitter else 0.0
            wait = (due - self._clock.now()).total_seconds() + jitter
            if wait > 0:
                await self._wait(job.name, wait)
                if self.next_run[job.name] < due:  # woken early by request_run
                    due = self.next_run[job.name]
            started = self._clock.now()
            if job.name in self.running:
                self.skipped[job.name] += 1
                log.warning("sync.skipped", job=job.name, reason="previous run still running")
            else:
                self.running.add(job.name)
                self.started[job.name] += 1
                tg.start_soon(self._guarded, job.name, name=f"sync:{job.name}")
            self.next_run[job.name] = next_due(job.schedule, due, started)

    async def _guarded(self, name: str) -> None:
        """Run one job; its failure is the job's (logged by the runner), never the scheduler's."""
        try:
            await self._run_job(name)
        except Exception:  # supervision boundary: one job must not stop the others
            log.exception("sync.crashed", job=name)
        finally:
            self.running.discard(name)

    def request_run(self, name: str) -> None:
        """Run `name` as soon as possible; debounced (a running job is not doubled)."""
        if name not in self.next_run:
            raise KeyError(name)
        now = self._clock.now()
        if self.next_run[name] > now:
            self.next_run[name] = now
            if name in self._wake:
                self._wake[name].set()

    async def _wait(self, name: str, seconds: float) -> None:
        """Sleep on the clock, or less if `request_run` wakes this job."""
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
