"""`daemon run-once [JOB ...] [--json]`: run sync jobs now, then exit (arq's burst mode).

Exit 0 when every job succeeded, 1 when any failed (its error is in the summary and the log),
2 for an invalid configuration or an unknown job name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from contextlib import AsyncExitStack
from typing import Any, TextIO

from daemon.clock import SystemClock

ORDER = 15


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "run-once",
        parents=[common],
        help="run sync jobs once, now, then exit",
        description="Run the named sync jobs (all when none are named) once and exit. "
        "Exit 0 if all succeeded, 1 if any failed, 2 for bad configuration.",
    )
    p.add_argument("jobs", nargs="*", metavar="JOB", help="job names from [[sync]] (default all)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--parallel", type=int, default=4, metavar="N", help="upstreams synced at once (default 4)"
    )
    p.set_defaults(handler=handle)


class TtyProgress:
    """One status line, rewritten in place, listing pages and records per running job."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._state: dict[str, str] = {}

    def __call__(self, result: Any) -> None:
        self._state[result.job] = f"{result.job} {result.pages}p/{result.fetched}r"
        line = " · ".join(self._state.values())
        self._stream.write("\r\x1b[K" + line[-200:])
        self._stream.flush()

    def done(self) -> None:
        if self._state:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def handle(args: argparse.Namespace) -> int:
    from daemon.commands.common import load_cli_settings

    settings = load_cli_settings(args.config)
    results = asyncio.run(run_once(settings, args.jobs, parallel=args.parallel, tty=not args.json))
    print_summary(results, as_json=args.json)
    return exit_code(results)


def exit_code(results: list[Any]) -> int:
    return 0 if all(r.status == "ok" for r in results) else 1


async def run_once(
    settings: Any, names: list[str], *, parallel: int = 4, tty: bool = True
) -> list[Any]:
    """Run the named jobs (all when empty) once against `settings`; results in config order."""
    from daemon.clients.factory import open_clients
    from daemon.store import Store
    from daemon.sync.batch import run_jobs, select_jobs
    from daemon.sync.runner import JobRunner
    from daemon.sync.strategies import build_fetcher

    jobs = select_jobs(settings.sync, names)
    clock = SystemClock()
    progress = TtyProgress(sys.stderr) if tty and sys.stderr.isatty() else None
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store.open(settings.daemon.database, clock=clock))
        clients = await open_clients(settings, [j.upstream for j in jobs], clock=clock, stack=stack)
        runner = JobRunner(store, clock=clock, default_region=settings.daemon.default_region)

        def make_fetcher(job: Any) -> Any:
            kind = settings.upstreams[job.upstream].kind
            return build_fetcher(job, clients[job.upstream], kind, now=clock.now())

        try:
            return await run_jobs(
                jobs, runner, make_fetcher, parallel_upstreams=parallel, progress=progress
            )
        finally:
            if progress is not None:
                progress.done()


def print_summary(results: list[Any], *, as_json: bool) -> None:
    if as_json:
        out = [
            {
                "job": r.job,
                "status": r.status,
                "run_id": r.run_id,
                **r.counters(),
                "contacts": r.contacts,
                "duration_s": round(r.duration, 3),
                "error": r.error,
                "error_type": r.error_type,
            }
            for r in results
        ]
        print(json.dumps({"jobs": out, "ok": all(r.status == "ok" for r in results)}, indent=2))
        return
    header = ("job", "status", "pages", "fetched", "ins", "upd", "same", "del", "secs")
    rows = [
        (
            r.job,
            r.status,
            str(r.pages),
            str(r.fetched),
            str(r.inserted),
            str(r.updated),
            str(r.unchanged),
            str(r.deleted),
            f"{r.duration:.2f}",
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in results:
        if r.error:
            print(f"{r.job}: {r.error_type}: {r.error}")
