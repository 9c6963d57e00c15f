"""`daemon run`: the service — listener, scheduler, dispatcher, keeper, until SIGTERM/SIGINT.

Exit codes (and what systemd does with them, see systemd/integration-daemon.service):
0 after a clean stop; 2 for an invalid configuration, found before anything starts and before
READY (`RestartPreventExitStatus=2`: systemd does not restart into the same mistake); 1 for a
fault the process cannot recover from (the database unusable, the listen port taken, the
database writer dead) — systemd restarts it.

Logs go to stdout, one JSON object per line off a terminal (journald keeps them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ORDER = 10


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "run",
        parents=[common],
        help="run the service until SIGTERM/SIGINT (SIGHUP reloads the config)",
        description="Run the service: webhook listener, sync scheduler, event dispatcher, "
        "subscription keeper, gap filler and upkeep, until SIGTERM or SIGINT (a second "
        "SIGINT forces it); SIGHUP reloads the config. Exit 0 after a clean stop, 1 for an "
        "unrecoverable fault, 2 for an invalid configuration or a database this version cannot "
        "use (written by a newer one).",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import asyncio

    from daemon.clock import SystemClock
    from daemon.commands.common import check_database, register_secrets
    from daemon.config import load_settings, resolve_config_path
    from daemon.errors import DaemonError
    from daemon.logs import configure_logging
    from daemon.reload import log_loaded
    from daemon.service import Service
    from daemon.supervise import Fatal
    from daemon.systemd import Notifier

    path = resolve_config_path(args.config)
    settings = load_settings(path)
    # Before READY and before anything touches the file: a path that is no SQLite file of ours,
    # or a database a newer daemon wrote, is exit 2 (systemd does not restart it); a file it
    # cannot read, exit 1.
    check_database(Path(settings.daemon.database), must_exist=False)
    register_secrets(settings)
    configure_logging(settings.daemon.log_level, settings.daemon.log_format, stream=sys.stdout)
    log_loaded(path, settings, reloaded=False)
    clock = SystemClock()
    notifier = Notifier.from_env(clock=clock)
    service = Service(settings, clock=clock, config_path=path, notifier=notifier)
    _settle_heap()
    try:
        asyncio.run(service.serve())
    except BaseException as exc:
        # A fault the service gave up on (`Fatal`) is exit 1. Anything else goes to the command
        # line, which answers it as for every command: a DatabaseMismatch from opening the
        # store (a newer daemon migrated the file meanwhile, SQLite too old) with exit 2.
        import structlog

        from daemon.logs import redact_text

        fatal = _find(exc, Fatal)
        known = fatal or (exc if isinstance(exc, DaemonError) else None)
        if known is not None:  # the journal's JSON gets the reason too, not only stderr
            structlog.get_logger("daemon.service").critical(
                "service.failed", error=redact_text(f"{type(known).__name__}: {known}")
            )
        if fatal is None:
            raise
        print(redact_text(f"error: {fatal}"), file=sys.stderr)
        return 1
    finally:
        notifier.close()
    return 0


def _settle_heap() -> None:
    """Take what start-up built (about 60,000 objects: the modules, the config, phone-number
    metadata) out of the garbage collector's full collections, which otherwise walk all of it
    and stop the event loop for 20-40 ms each time — a webhook or an SMS reply waiting behind
    one. Start-up's garbage is collected first, so what is frozen is what lives anyway (the
    config a reload later replaces stays, once: a few kilobytes). Only here, in the service's
    own process: `gc.freeze()` is process-wide, and tests run the service in theirs."""
    import gc

    gc.collect()
    gc.freeze()


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`kind` in `exc` or, for a task group's ExceptionGroup, among its leaves."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None
