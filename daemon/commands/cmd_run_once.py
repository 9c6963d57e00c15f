"""`daemon run-once [JOB ...] [--json]`: run sync jobs now, then exit (arq's burst mode).

Exit 0 when every job succeeded, 1 when any failed (its error is in the summary and the log)
or the database cannot be used (unreadable, from a newer daemon), 2 for an invalid
configuration, an unknown job name or a bad `--parallel`, 130/143 when SIGINT/SIGTERM stopped it
(running jobs are recorded `cancelled`, and the summary is printed all the same).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from daemon.clock import SystemClock
from daemon.commands.common import bounded_int
from daemon.logs import redact_text

if TYPE_CHECKING:
    from daemon.config import Settings
    from daemon.sync.runner import RunResult

log = structlog.get_logger(__name__)

ORDER = 15


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "run-once",
        parents=[common],
        help="run sync jobs once, now, then exit",
        description="Run the named sync jobs (all when none are named) once and exit. "
        "Exit 0 if all succeeded, 1 if any failed, 2 for bad configuration, "
        "130/143 when interrupted by SIGINT/SIGTERM (runs recorded cancelled).",
    )
    p.add_argument("jobs", nargs="*", metavar="JOB", help="job names from [[sync]] (default all)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--parallel",
        type=bounded_int(1),
        default=4,
        metavar="N",
        help="upstreams synced at once, 1 or more (default 4)",
    )
    # A batch that has closed everything when it returns: skip the interpreter's teardown. A
    # failure before any job ran is, with --json, the summary's shape with no jobs (cli.py).
    p.set_defaults(handler=handle, exit_now=True, json_failure={"jobs": [], "ok": False})


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
    settings = _start(args.config, args.jobs)
    try:
        return _handle(args, settings)
    finally:
        gc.unfreeze()  # ordinary objects again (matters only to a caller in the same process)


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from daemon.commands.common import check_database

    check_database(Path(settings.daemon.database), must_exist=False)
    signalled: list[int] = []

    async def main() -> list[Any]:
        import anyio

        scope = anyio.CancelScope()
        loop = asyncio.get_running_loop()

        def stop(signum: int) -> None:
            signalled.append(signum)
            scope.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await run_once(
                settings, args.jobs, parallel=args.parallel, tty=not args.json, cancel_scope=scope
            )
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    # A DaemonError here (the store could not be opened, or the like: no job ran) is reported
    # by cli.py, with --json as {"jobs": [], "ok": false, "error": ...}.
    results = asyncio.run(main())
    print_summary(results, as_json=args.json)
    if signalled:
        return 128 + signalled[0]  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    return exit_code(results)


def _start(config: str | None, names: list[str]) -> Settings:
    """Load the config and import everything the run will use, with the garbage collector
    paused: start-up allocates hundreds of thousands of objects (the config models, aiohttp)
    and none of them is garbage, so collecting while importing is wasted time — a tenth of
    the imports (issue 18: start-up is most of a small sync). What start-up made is then
    frozen, so the collections during the sync do not walk it again."""
    gc.disable()
    try:
        from daemon.clients.factory import client_class
        from daemon.commands.common import load_cli_settings
        from daemon.sync.batch import select_jobs

        settings = load_cli_settings(config)
        jobs = select_jobs(settings.sync, names)  # an unknown job name is exit 2, before work
        for kind in sorted({settings.upstreams[j.upstream].kind for j in jobs}):
            client_class(kind)  # the job's client module, and aiohttp with it
    finally:
        gc.enable()
    gc.freeze()  # `handle` unfreezes when the run is over
    return settings


def exit_code(results: list[Any]) -> int:
    return 0 if all(r.status == "ok" for r in results) else 1


async def run_once(
    settings: Settings,
    names: list[str],
    *,
    parallel: int = 4,
    tty: bool = True,
    cancel_scope: Any = None,
) -> list[RunResult]:
    """Run the named jobs (all when empty) once against `settings`; results in config order.
    The service's own wiring in burst mode (`daemon.sync.batch.burst`)."""
    from daemon.sync.batch import burst

    progress = TtyProgress(sys.stderr) if tty and sys.stderr.isatty() else None
    try:
        return await burst(
            settings,
            names,
            clock=SystemClock(),
            parallel=parallel,
            progress=progress,
            cancel_scope=cancel_scope,
        )
    finally:
        if progress is not None:
            progress.done()


def summary_rows(results: list[Any]) -> list[dict[str, Any]]:
    """One JSON-ready dict per job result (the `--json` summary's `jobs`)."""
    return [
        {
            "job": r.job,
            "status": r.status,
            "run_id": r.run_id,
            **r.counters(),
            "contacts": r.contacts,
            "duration_s": round(r.duration, 3),
            "error": r.error,
            "error_type": r.error_type,
            "incomplete": r.incomplete,
        }
        for r in results
    ]


def print_summary(results: list[Any], *, as_json: bool) -> None:
    if as_json:
        ok = all(r.status == "ok" for r in results)
        print(redact_text(json.dumps({"jobs": summary_rows(results), "ok": ok}, indent=2)))
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
            print(redact_text(f"{r.job}: {r.error_type}: {r.error}"))
        elif r.incomplete:
            print(f"{r.job}: incomplete, nothing tombstoned: {r.incomplete}")
