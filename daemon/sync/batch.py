"""Run a set of jobs now: different upstreams in parallel (bounded), one upstream's jobs in turn.

Used by `daemon run-once` (`burst`: the service's store and clients, jobs only, then exit).
Jobs of one upstream run one after another so they share, rather than fight over, that
upstream's connection limit and rate budget; distinct upstreams overlap.

Nothing one job does stops another: the runner turns every exception into that job's `failed`
result, a fetcher that cannot even be built is recorded the same way, and a cancellation (Ctrl-C,
SIGTERM) still returns a result for every job — `cancelled` for those cut short or never started
— so the caller can always print its summary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from daemon.clients.pool import ClientPool
from daemon.clock import Clock
from daemon.config.models import SyncJob
from daemon.errors import ConfigError
from daemon.store import Store
from daemon.sync.fetch import Fetcher
from daemon.sync.runner import JobRunner, Progress, RunResult
from daemon.sync.strategies import build_fetcher

if TYPE_CHECKING:
    from daemon.config import Settings

log = structlog.get_logger(__name__)

FetcherFactory = Callable[[SyncJob], Fetcher]


async def run_jobs(
    jobs: Sequence[SyncJob],
    runner: JobRunner,
    make_fetcher: FetcherFactory,
    *,
    parallel_upstreams: int = 4,
    progress: Progress | None = None,
    cancel_scope: anyio.CancelScope | None = None,
) -> list[RunResult]:
    """Run every job once; results in the order of `jobs`. A failed job never stops the rest.

    Cancelling `cancel_scope` stops the batch: running jobs are recorded `cancelled`, and jobs
    that never started are reported `cancelled` too (with no run row).
    """
    by_upstream: dict[str, list[SyncJob]] = {}
    for job in jobs:
        by_upstream.setdefault(job.upstream, []).append(job)
    results: dict[str, RunResult] = {}
    limiter = anyio.CapacityLimiter(max(1, parallel_upstreams))

    async def lane(lane_jobs: list[SyncJob]) -> None:
        async with limiter:
            for job in lane_jobs:
                try:
                    fetcher = make_fetcher(job)
                except Exception as exc:
                    results[job.name] = await runner.record_failure(job, exc)
                    continue
                results[job.name] = result = RunResult(job.name)
                await runner.run(job, fetcher, progress=progress, result=result)

    with cancel_scope or anyio.CancelScope():
        async with anyio.create_task_group() as tg:
            for lane_jobs in by_upstream.values():
                tg.start_soon(lane, lane_jobs)
    return [
        results.get(job.name) or RunResult(job.name, status="cancelled", error="not started")
        for job in jobs
    ]


def select_jobs(all_jobs: Sequence[SyncJob], names: Sequence[str]) -> list[SyncJob]:
    """The named jobs in config order (all when none named); unknown names are an error."""
    if not names:
        return list(all_jobs)
    known: Mapping[str, SyncJob] = {j.name: j for j in all_jobs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown job(s): {', '.join(unknown)}; configured: {', '.join(known) or 'none'}"
        )
    wanted = set(names)
    return [j for j in all_jobs if j.name in wanted]


async def burst(
    settings: Settings,
    names: Sequence[str],
    *,
    clock: Clock,
    parallel: int = 4,
    progress: Progress | None = None,
    cancel_scope: anyio.CancelScope | None = None,
) -> list[RunResult]:
    """`run-once`: the service's wiring with jobs only — run the named jobs (all when empty)
    once and return their results in config order. Runs a crashed process left `running` are
    marked failed first (a live service's are left alone).

    It lives here rather than in `daemon.service` so that `run-once` imports the store, the
    clients it opens and the sync engine, and not the listener, rules, metrics and the rest of
    the service (start-up is most of a small sync's time)."""
    jobs = select_jobs(settings.sync, list(names))
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store.open(settings.daemon.database, clock=clock))
        stale = await store.mark_stale_runs_failed()
        if stale:
            log.warning("sync.stale_runs_failed", runs=stale)
        pool = ClientPool(clock=clock)
        stack.push_async_callback(pool.aclose)
        await pool.open(settings, [j.upstream for j in jobs])
        runner = JobRunner(store, clock=clock, default_region=settings.daemon.default_region)

        def make_fetcher(job: Any) -> Fetcher:
            kind = settings.upstreams[job.upstream].kind
            return build_fetcher(job, pool.get(job.upstream), kind, now=clock.now())

        return await run_jobs(
            jobs,
            runner,
            make_fetcher,
            parallel_upstreams=parallel,
            progress=progress,
            cancel_scope=cancel_scope,
        )
