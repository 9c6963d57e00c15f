"""SIGHUP: read the config again and apply what can change without a restart.

The new file is read and validated off the event loop (it may reference secret files); an
invalid one is refused with `config.invalid` and the running config stays, whole.

A valid one is then *built* before anything running changes: the rules compiled, every new or
changed upstream's client built and opened, the dispatcher's executors and loop guard, the jobs'
schedules (with their last runs read), the listener's secrets and networks, the keeper and gap
filler. Anything that raises there — a client that cannot be built from a secret, a store that
cannot be read, any surprise — refuses the reload with `config.reload_refused` and its reason:
the clients already opened for it are closed again and the service runs on as it was.

Only then is it applied, in an order that never leaves a half-new state visible to an event:

1. rules: swapped in one assignment between two events' evaluations;
2. clients: the new ones swapped in (`ClientPool.commit`), the old ones closed once their
   in-flight requests are done; the dispatcher sends through the new ones, under the new loop
   guard and `[daemon.dispatch]` settings;
3. jobs: when `[[sync]]` changed, the scheduler stops ticking, lets running syncs finish (up to
   `shutdown_timeout`) and a new scheduler starts, seeded with the last runs from `sync_runs`;
4. the listener: the next requests are checked against the new secrets (`previous_secret`
   accepted for `rotation_grace` from the first load that named it), `allow_from` and proxies;
5. the keeper and gap filler restart when the webhook settings or the NetSapiens client changed.

`[daemon] database` and `[http] listen`, and adding or removing `[webhooks.netsapiens]` (the
listener's route), cannot change in a running process: a value other than the one the process
started with is logged as `service.restart_needed` (at every reload until the restart) and
ignored until the next start. `max_body_bytes` applies to the next webhook request. The service
itself never stops on a reload: should applying fail after all, `Service._reloads` logs
`config.reload_failed` and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from daemon.clients.pool import PoolChange
from daemon.config import Settings, load_settings
from daemon.config.checks import database_problem
from daemon.errors import ConfigError, ConfigProblem, DaemonError
from daemon.logs import add_basic_pair, add_secrets, redact_text
from daemon.rules.dispatcher import Executors
from daemon.rules.guard import LoopGuard
from daemon.rules.names_check import NAMES_CHECK, names_check
from daemon.rules.wiring import RulesHolder, executors, loop_guard
from daemon.sync.schedule import first_due
from daemon.sync.scheduler import Scheduler
from daemon.webhooks.app import ListenerDeps, reload_listener
from daemon.webhooks.gapfill import Backfiller
from daemon.webhooks.keeper import SubscriptionKeeper

if TYPE_CHECKING:
    from daemon.service import Running, Service

log = structlog.get_logger(__name__)


def _load(path: Path) -> Settings:
    settings = load_settings(path)
    problem = database_problem(Path(settings.daemon.database))
    if problem is not None:
        raise ConfigError([ConfigProblem("daemon.database", problem)], source=str(path))
    return settings


@dataclass
class _Staged:
    """Everything a reload will swap in, built while the old config still runs."""

    settings: Settings
    holder: RulesHolder
    clients: PoolChange
    executors: Executors
    guard: LoopGuard
    jobs_changed: bool
    last_runs: dict[str, datetime | None]
    listener: ListenerDeps | None  # None: the listener keeps what it has
    loaded_at: datetime
    event_parts: tuple[Backfiller | None, SubscriptionKeeper | None] | None  # None: unchanged


async def reload(service: Service) -> bool:
    """Apply the config file again; True when the new config is in force."""
    run = service.running
    if run is None or service.config_path is None:
        log.warning("config.reload_ignored", reason="no config file to reload")
        return False
    service.notifier.reloading()
    try:
        applied = await _reload(service, run, service.config_path)
    except Exception:
        service.notifier.ready(service._status(run))  # systemd's reload must end either way
        raise
    service.notifier.ready(service._status(run))
    return applied


async def _reload(service: Service, run: Running, path: Path) -> bool:
    try:
        new = await anyio.to_thread.run_sync(_load, path)
    except ConfigError as exc:
        log.error("config.invalid", path=str(path), problems=[str(p) for p in exc.problems])
        return False
    try:
        _redact(new)  # known to the redactor first: a refusal's reason may quote a new secret
        staged = await _build(service, run, new)
    except ConfigError as exc:  # e.g. rules that do not compile
        log.error("config.invalid", path=str(path), problems=[str(p) for p in exc.problems])
        return False
    except Exception as exc:
        log.error(
            "config.reload_refused",
            path=str(path),
            error=redact_text(f"{type(exc).__name__}: {exc}"),
        )
        return False
    await _apply(service, run, staged)
    log_loaded(path, new, reloaded=True)
    return True


def log_loaded(path: Path, settings: Settings, *, reloaded: bool) -> None:
    """`config.loaded`: at start and after each applied reload."""
    log.info(
        "config.loaded",
        path=str(path),
        upstreams=len(settings.upstreams),
        jobs=len(settings.sync),
        rules=len(settings.rules),
        reloaded=reloaded,
    )


def _redact(new: Settings) -> None:
    """Teach the log redactor the new secrets (a secret it cannot take refuses the reload)."""
    try:
        add_secrets(new.secret_values())
        for user, secret in new.secret_pairs():
            add_basic_pair(user, secret)
    except Exception as exc:
        raise DaemonError(
            f"a secret cannot be registered with the log redactor: {type(exc).__name__}: {exc}"
        ) from exc


async def _build(service: Service, run: Running, new: Settings) -> _Staged:
    """Every part the new config needs, built and checked; nothing running is touched. What
    this opened is closed again when it raises."""
    old = run.settings
    holder = RulesHolder.from_settings(new)  # compile before anything changes
    change = await run.pool.prepare(new, open_new=True)
    try:
        clients = run.pool.clients_after(change)
        execs = executors(new, clients, run.store)
        guard = loop_guard(new, run.store, clock=service.clock)
        jobs_changed = [j.model_dump() for j in old.sync] != [j.model_dump() for j in new.sync]
        last_runs: dict[str, datetime | None] = {}
        if jobs_changed and new.sync:
            from daemon.service import scheduled_jobs

            jobs = scheduled_jobs(new)
            last_runs = await run.store.schedule_seeds()
            Scheduler(jobs, service._run_job, clock=service.clock, last_runs=last_runs)
            now = service.clock.now()
            for job in jobs:  # what the new scheduler's start computes, computed here first
                first_due(job.schedule, last_runs.get(job.name), now)
        hooks, before = new.webhooks.netsapiens, old.webhooks.netsapiens
        loaded_at = service.loaded_at
        listener = None
        if hooks is not None and before is not None and run.app is not None:
            if hooks.previous_secret is None or hooks.previous_secret != before.previous_secret:
                loaded_at = service.clock.now()
            listener = service.listener_deps(run, loaded_at=loaded_at, settings=new)
        ns_changed = new.webhooks != old.webhooks or (
            hooks is not None and hooks.upstream in change.names
        )
        parts = service.event_parts(run, new, clients) if ns_changed else None
    except BaseException:
        await run.pool.discard(change)
        raise
    return _Staged(
        new, holder, change, execs, guard, jobs_changed, last_runs, listener, loaded_at, parts
    )


async def _apply(service: Service, run: Running, staged: _Staged) -> None:
    """Swap the built parts in (see the module docstring for the order)."""
    new = staged.settings
    assert run.started_with is not None
    _restart_needed(run.started_with, new)
    run.settings = service.settings = new
    run.holder.ruleset, run.holder.routes = staged.holder.ruleset, staged.holder.routes
    run.pool.commit(staged.clients, service.task_group)
    dispatcher = run.dispatcher
    dispatcher.executors = staged.executors
    dispatcher.guard = staged.guard
    dispatcher.settings = new.daemon.dispatch
    dispatcher.region = new.daemon.default_region
    if staged.jobs_changed:
        await _restart_scheduler(service, run, staged.last_runs)
    if run.upkeep is not None:
        run.upkeep.settings = new
    if staged.listener is not None and run.app is not None:
        service.loaded_at = staged.loaded_at
        reload_listener(run.app, staged.listener)
    if staged.event_parts is not None:
        await _restart_event_parts(service, run, staged.event_parts)
    # New rules or new Halo clients: their ticket names are checked again (the executors are
    # new, so their names are loaded afresh anyway).
    scope = run.scopes.pop(NAMES_CHECK, None)
    if scope is not None:
        scope.cancel()
    await service.task_group.start(
        service._part, NAMES_CHECK, names_check(new, staged.executors, service.clock)
    )


def _restart_needed(running: Settings, new: Settings) -> None:
    """Log each setting of `new` that differs from what the process runs with (`running`: its
    start's settings) and only a restart applies."""
    for setting, before, after in (
        ("daemon.database", str(running.daemon.database), str(new.daemon.database)),
        ("http.listen", running.http.listen, new.http.listen),
        (
            "webhooks.netsapiens",
            "(none)" if running.webhooks.netsapiens is None else "(configured)",
            "(none)" if new.webhooks.netsapiens is None else "(configured)",
        ),
    ):
        if before != after:
            log.warning("service.restart_needed", setting=setting, running=before, configured=after)


async def _restart_scheduler(
    service: Service, run: Running, known_runs: dict[str, datetime | None]
) -> None:
    scope = run.scopes.pop("scheduler", None)
    if run.scheduler is not None:
        await run.scheduler.shutdown(run.settings.daemon.shutdown_timeout)
    if scope is not None:
        scope.cancel()
    run.scheduler = None
    await service._start_scheduler(run, known_runs=known_runs)


async def _restart_event_parts(
    service: Service,
    run: Running,
    parts: tuple[Backfiller | None, SubscriptionKeeper | None],
) -> None:
    for name in ("keeper", "gapfill"):
        scope = run.scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
    run.backfiller, run.keeper = parts
    tg = service.task_group
    if run.keeper is not None:
        await tg.start(service._part, "keeper", run.keeper.run)
    if run.backfiller is not None:
        await tg.start(service._part, "gapfill", service._gapfill)
