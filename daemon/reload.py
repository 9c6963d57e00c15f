"""SIGHUP: read the config again and apply what can change without a restart.

The new file is read and validated off the event loop (it may reference secret files); an
invalid one is refused with `config.invalid` and the running config stays, whole. A valid one is
applied in an order that never leaves a half-new state visible to an event:

1. rules: compiled first (a template that does not compile refuses the reload), then swapped in
   one assignment between two events' evaluations;
2. clients: an upstream whose table changed gets a new client; the old one is closed once its
   in-flight requests are done (`ClientPool.replace`); the dispatcher sends through the new ones;
3. jobs: when `[[sync]]` changed, the scheduler stops ticking, lets running syncs finish (up to
   `shutdown_timeout`) and a new scheduler starts, seeded with the last runs from `sync_runs`;
4. the keeper and gap filler restart when the webhook settings or the NetSapiens client changed.

5. the listener: the next requests are checked against the new secrets (`previous_secret`
   accepted for `rotation_grace` from the first load that named it), `allow_from` and proxies.

`[daemon] database` and `[http] listen` (and `max_body_bytes`, fixed in the listening app)
cannot change in a running process: a change is logged as `service.restart_needed` and ignored
until the next start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from daemon.config import Settings, load_settings
from daemon.config.checks import database_problem
from daemon.errors import ConfigError, ConfigProblem
from daemon.logs import add_basic_pair, add_secrets
from daemon.rules.wiring import RulesHolder
from daemon.webhooks.app import reload_listener

if TYPE_CHECKING:
    from daemon.service import Running, Service

log = structlog.get_logger(__name__)


def _load(path: Path) -> Settings:
    settings = load_settings(path)
    problem = database_problem(Path(settings.daemon.database))
    if problem is not None:
        raise ConfigError([ConfigProblem("daemon.database", problem)], source=str(path))
    return settings


async def reload(service: Service) -> bool:
    """Apply the config file again; True when the new config is in force."""
    run = service.running
    if run is None or service.config_path is None:
        log.warning("config.reload_ignored", reason="no config file to reload")
        return False
    service.notifier.reloading()
    path = service.config_path
    try:
        new = await anyio.to_thread.run_sync(_load, path)
        holder = RulesHolder.from_settings(new)  # compile before anything changes
    except ConfigError as exc:
        log.error("config.invalid", path=str(path), problems=[str(p) for p in exc.problems])
        service.notifier.ready(service._status(run))
        return False
    add_secrets(new.secret_values())
    for user, secret in new.secret_pairs():
        add_basic_pair(user, secret)
    _restart_needed(run.settings, new)
    old = run.settings
    run.settings = service.settings = new
    run.holder.ruleset, run.holder.routes = holder.ruleset, holder.routes
    changed = await run.pool.replace(new, service.task_group)
    if changed:
        service.swap_executors(run)
    if [j.model_dump() for j in old.sync] != [j.model_dump() for j in new.sync]:
        await _restart_scheduler(service, run)
    if run.upkeep is not None:
        run.upkeep.settings = new
    _reload_listener(service, run, old)
    ns_changed = new.webhooks != old.webhooks or (
        new.webhooks.netsapiens is not None and new.webhooks.netsapiens.upstream in changed
    )
    if ns_changed:
        await _restart_event_parts(service, run)
    log.info(
        "config.loaded",
        path=str(path),
        upstreams=len(new.upstreams),
        jobs=len(new.sync),
        rules=len(new.rules),
        reloaded=True,
    )
    service.notifier.ready(service._status(run))
    return True


def _restart_needed(old: Settings, new: Settings) -> None:
    for key, before, after in (
        ("daemon.database", str(old.daemon.database), str(new.daemon.database)),
        ("http.listen", old.http.listen, new.http.listen),
        ("http.max_body_bytes", old.http.max_body_bytes, new.http.max_body_bytes),
    ):
        if before != after:
            log.warning("service.restart_needed", key=key, running=before, configured=after)
    if (old.webhooks.netsapiens is None) != (new.webhooks.netsapiens is None):
        log.warning("service.restart_needed", key="webhooks.netsapiens",
                    running="(listener)", configured="(added or removed)")  # fmt: skip


def _reload_listener(service: Service, run: Running, old: Settings) -> None:
    """Swap the listener's secret check, allow list and proxies. The grace of a previous
    secret runs from the first load that named it, so a reload does not extend it."""
    hooks, before = run.settings.webhooks.netsapiens, old.webhooks.netsapiens
    if hooks is None or before is None or run.app is None:
        return
    if hooks.previous_secret is None or hooks.previous_secret != before.previous_secret:
        service.loaded_at = service.clock.now()
    reload_listener(run.app, service.listener_deps(run, loaded_at=service.loaded_at))


async def _restart_scheduler(service: Service, run: Running) -> None:
    scope = run.scopes.pop("scheduler", None)
    if run.scheduler is not None:
        await run.scheduler.shutdown(run.settings.daemon.shutdown_timeout)
    if scope is not None:
        scope.cancel()
    run.scheduler = None
    await service._start_scheduler(run)


async def _restart_event_parts(service: Service, run: Running) -> None:
    for name in ("keeper", "gapfill"):
        scope = run.scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
    run.backfiller = service._backfiller(run)
    run.keeper = service._keeper(run)
    tg = service.task_group
    if run.keeper is not None:
        await tg.start(service._part, "keeper", run.keeper.run)
    if run.backfiller is not None:
        await tg.start(service._part, "gapfill", service._gapfill)
