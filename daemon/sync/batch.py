"""Run a set of jobs now: different upstreams in parallel (bounded), one upstream's jobs in turn.

Used by `daemon run-once`. Jobs of one upstream run one after another so they share, rather than
fight over, that upstream's connection limit and rate budget; distinct upstreams overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from daemon.sync.fetch import Fetcher
from daemon.sync.runner import JobRunner, Progress, RunResult

FetcherFactory = Callable[[Any], Fetcher]


async def run_jobs(
    jobs: Sequence[Any],
    runner: JobRunner,
    make_fetcher: FetcherFactory,
    *,
    parallel_upstreams: int = 4,
    progress: Progress | None = None,
) -> list[RunResult]:
    """Run every job once; results in the order of `jobs`. A failed job never stops the rest."""
    by_upstream: dict[str, list[Any]] = {}
    for job in jobs:
        by_upstream.setdefault(job.upstream, []).append(job)
    results: dict[str, RunResult] = {}
    limiter = anyio.CapacityLimiter(max(1, parallel_upstreams))

    async def lane(lane_jobs: list[Any]) -> None:
        async with limiter:
            for job in lane_jobs:
                results[job.name] = await runner.run(job, make_fetcher(job), progress=progress)

    async with anyio.create_task_group() as tg:
        for lane_jobs in by_upstream.values():
            tg.start_soon(lane, lane_jobs)
    return [results[job.name] for job in jobs]


def select_jobs(all_jobs: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """The named jobs in config order (all when none named); unknown names are an error."""
    from daemon.errors import ConfigError

    if not names:
        return list(all_jobs)
    known: Mapping[str, Any] = {j.name: j for j in all_jobs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown job(s): {', '.join(unknown)}; configured: {', '.join(known) or 'none'}"
        )
    wanted = set(names)
    return [j for j in all_jobs if j.name in wanted]
