"""`daemon run`: one function builds the whole daemon, supervises it, and shuts it down cleanly.

The composition root (STYLE §1–3, after uvicorn's `Server.serve` and APScheduler 4's
`AsyncScheduler`): everything — store, clients, listener, scheduler, dispatcher, keeper, gap
filler, upkeep, watchdog — is built here from the settings, handed its collaborators, entered on
one `AsyncExitStack` and run in one anyio task group. Each part is started with `tg.start`, so
"ready" (systemd's READY=1) means the database is open and migrated, the listener is bound and
every part has said it is running.

Shutdown (SIGTERM/SIGINT): stop taking new work — no new sync ticks, no new event claims — give
running syncs and in-flight events `shutdown_timeout` to finish (syncs still running are then
cancelled and recorded `cancelled`; events keep their lease and are released at the next start),
then stop the parts. The listener is closed *last*: while the rest drains it keeps acknowledging
deliveries into the inbox, because the PBX's redelivery schedule is unknown and a 503 could lose
an event. A second SIGINT forces an immediate stop. SIGHUP reloads (`daemon.reload`).

`run-once` is the same wiring in burst mode (`daemon.sync.batch.burst`): the
store and the jobs' clients, jobs only, then exit — kept in the sync package so that `run-once`
does not import the listener, the rules and the rest of the service.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskGroup, TaskStatus

from daemon.clients.netsapiens import NetsapiensClient
from daemon.clients.pool import ClientPool
from daemon.clock import Clock
from daemon.config import Settings
from daemon.errors import StoreError
from daemon.health import Health, healthz_route
from daemon.logs import redact_text
from daemon.metrics import Metrics, metrics_route
from daemon.rules.dispatcher import Dispatcher
from daemon.rules.names_check import NAMES_CHECK, names_check
from daemon.rules.wiring import RulesHolder, build_dispatcher
from daemon.store import Store
from daemon.store.service_lock import service_lock
from daemon.supervise import Fatal, supervise
from daemon.sync.runner import JobRunner, RunResult
from daemon.sync.schedule import Schedule
from daemon.sync.scheduler import ScheduledJob, Scheduler
from daemon.sync.strategies import build_fetcher
from daemon.systemd import Notifier, watchdog_loop
from daemon.upkeep import Upkeep
from daemon.webhooks.access import listener_runner
from daemon.webhooks.app import deps_from_settings, make_app
from daemon.webhooks.event import SOURCE
from daemon.webhooks.gapfill import Backfiller, should_backfill
from daemon.webhooks.keeper import SubscriptionKeeper

log = structlog.get_logger(__name__)

WATCHDOG_MAX_AGE = 45.0  # heartbeats older than this withhold WATCHDOG=1 (WatchdogSec=60s)
GAP_CHECK_EVERY = 600.0  # how often the gap filler looks for unusual silence
GAP_SILENCE = timedelta(minutes=30)


def scheduled_jobs(settings: Settings) -> list[ScheduledJob]:
    return [
        ScheduledJob(j.name, Schedule(every=j.every, cron=j.cron, jitter=j.jitter))
        for j in settings.sync
    ]


@dataclass
class Running:
    """The parts of a running service, for reload, health and tests."""

    settings: Settings
    store: Store
    pool: ClientPool
    metrics: Metrics
    holder: RulesHolder
    dispatcher: Dispatcher
    runner: JobRunner
    scheduler: Scheduler | None = None
    keeper: SubscriptionKeeper | None = None
    backfiller: Backfiller | None = None
    app: web.Application | None = None
    upkeep: Upkeep | None = None
    address: str = ""
    scopes: dict[str, anyio.CancelScope] = field(default_factory=dict)
    # What the process started with: the settings only a restart applies are compared with
    # these, not with the previous reload's (which did not apply them either).
    started_with: Settings | None = None

    def __post_init__(self) -> None:
        if self.started_with is None:
            self.started_with = self.settings


class Service:
    """Build with the settings, then `await serve()` (or `tg.start(service.serve)`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        handle_signals: bool = True,
    ):
        self.settings = settings
        self.clock = clock
        self.config_path = config_path
        self.notifier = notifier or Notifier.from_env({}, clock=clock)
        self.handle_signals = handle_signals
        self.loaded_at = clock.now()
        self.running: Running | None = None
        self._stop = anyio.Event()
        self._force = anyio.Event()
        self._reload_requested = anyio.Event()
        self._tg: TaskGroup | None = None

    # -- control ------------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    # -- the service ------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until shutdown; `task_status.started(address)` once READY."""
        s, clock = self.settings, self.clock
        async with AsyncExitStack() as stack:
            stack.enter_context(service_lock(s.daemon.database))
            store = await stack.enter_async_context(Store.open(s.daemon.database, clock=clock))
            stale = await store.mark_stale_runs_failed()
            if stale:
                log.warning("sync.stale_runs_failed", runs=stale)
            metrics = Metrics()
            pool = ClientPool(clock=clock, configure=metrics.attach_client,
                              forget=metrics.forget_client,
                              grace=s.daemon.shutdown_timeout)  # fmt: skip
            stack.push_async_callback(pool.aclose)
            await pool.open(s)
            holder = RulesHolder.from_settings(s)
            dispatcher = build_dispatcher(s, store, pool.clients, clock=clock, holder=holder)
            runner = JobRunner(store, clock=clock, default_region=s.daemon.default_region)
            run = self.running = Running(s, store, pool, metrics, holder, dispatcher, runner)
            run.backfiller, run.keeper = self.event_parts(run)
            health = Health.from_running(run, clock=clock)
            upkeep = run.upkeep = Upkeep(
                store, clock=clock, settings=s, metrics=metrics, health=health
            )
            site_runner = await self._listen(run, health, stack)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._watch_writer, store)
                await tg.start(self._part, "dispatcher", dispatcher.run)
                await tg.start(self._part, NAMES_CHECK, names_check(s, dispatcher.executors, clock))
                await tg.start(self._part, "upkeep", upkeep.run)
                if run.keeper is not None:
                    await tg.start(self._part, "keeper", run.keeper.run)
                if run.backfiller is not None:
                    await tg.start(self._part, "gapfill", self._gapfill)
                await self._start_scheduler(run)
                await tg.start(self._part, "watchdog", self._watchdog)
                if self.handle_signals:
                    await tg.start(self._signals)  # installed before READY: a SIGHUP is ours
                tg.start_soon(self._reloads)
                self.notifier.ready(self._status(run))
                log.info(
                    "service.started",
                    listen=run.address,
                    database=str(s.daemon.database),
                    jobs=len(s.sync),
                    rules=len(s.rules),
                )
                task_status.started(run.address)
                await self._stop.wait()
                await self._drain(run)
                tg.cancel_scope.cancel()
            del site_runner  # closed by the exit stack: the listener is the last part to stop

    async def _part(self, name: str, fn: Any, *, task_status: TaskStatus[None]) -> None:
        """A supervised part in its own cancel scope (so a reload can restart it)."""
        assert self.running is not None
        with anyio.CancelScope() as scope:
            self.running.scopes[name] = scope
            await supervise(name, fn, clock=self.clock, task_status=task_status)

    async def _listen(self, run: Running, health: Health, stack: AsyncExitStack) -> web.AppRunner:
        s = run.settings
        if s.webhooks.netsapiens is not None:
            app = make_app(self.listener_deps(run, loaded_at=self.loaded_at))
        else:
            app = web.Application()
        run.app = app
        app.add_routes([healthz_route(health), metrics_route(run.metrics)])
        site_runner = listener_runner(app, shutdown_timeout=1.0)
        await site_runner.setup()
        stack.push_async_callback(site_runner.cleanup)
        site = web.TCPSite(site_runner, s.http.host, s.http.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise Fatal(f"cannot listen on {s.http.listen}: {exc.strerror or exc}") from exc
        sockets = getattr(site._server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else s.http.port
        host = s.http.host
        run.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return site_runner

    async def _watch_writer(self, store: Store) -> None:
        """The store's writer is the one part that cannot be restarted in process: when it dies
        the service exits non-zero and systemd starts a fresh one."""
        try:
            await store.wait_writer()
        except StoreError as exc:
            log.critical("service.writer_dead", error=str(exc))
            raise Fatal(f"the database writer stopped: {exc}") from exc
        if not self._stop.is_set():
            raise Fatal("the database writer stopped")

    async def _watchdog(self, *, task_status: TaskStatus[None]) -> None:
        run = self.running
        assert run is not None

        def healthy() -> bool:
            return run.store.writer_fresh(WATCHDOG_MAX_AGE) and run.dispatcher.fresh(
                WATCHDOG_MAX_AGE
            )

        await watchdog_loop(self.notifier, clock=self.clock, healthy=healthy,
                            task_status=task_status)  # fmt: skip

    # -- sync ---------------------------------------------------------------------------------

    async def _start_scheduler(
        self, run: Running, *, known_runs: dict[str, datetime | None] | None = None
    ) -> None:
        """Start a scheduler for the configured jobs, seeded with their last runs. A reload
        passes the last runs it read while preparing (`known_runs`): used if the store cannot
        be read now, so a reload never ends without a scheduler."""
        if not run.settings.sync:
            return
        last: dict[str, datetime | None]
        try:
            last = await run.store.schedule_seeds()
        except StoreError:
            if known_runs is None:
                raise
            last = dict(known_runs)
        run.scheduler = Scheduler(
            scheduled_jobs(run.settings), self._run_job, clock=self.clock, last_runs=last
        )
        assert self._tg is not None
        await self._tg.start(self._part, "scheduler", run.scheduler.run)

    async def _run_job(self, name: str) -> RunResult:
        run = self.running
        assert run is not None
        job = next(j for j in run.settings.sync if j.name == name)
        kind = run.settings.upstreams[job.upstream].kind
        try:
            fetcher = build_fetcher(job, run.pool.get(job.upstream), kind, now=self.clock.now())
        except Exception as exc:
            result = await run.runner.record_failure(job, exc)
        else:
            result = await run.runner.run(job, fetcher)
        run.metrics.sync_finished(job.name, result.status, result.counters(), result.duration)
        return result

    # -- events -------------------------------------------------------------------------------

    @staticmethod
    def _ns_client(settings: Settings, clients: Mapping[str, object]) -> NetsapiensClient | None:
        hooks = settings.webhooks.netsapiens
        if hooks is None:
            return None
        client = clients.get(hooks.upstream)
        return client if isinstance(client, NetsapiensClient) else None

    def event_parts(
        self,
        run: Running,
        settings: Settings | None = None,
        clients: Mapping[str, object] | None = None,
    ) -> tuple[Backfiller | None, SubscriptionKeeper | None]:
        """The gap filler and subscription keeper for `settings` and `clients` (default: the
        running ones) — built, not started, so a reload builds them before it changes anything."""
        settings = settings if settings is not None else run.settings
        client = self._ns_client(settings, clients if clients is not None else run.pool.clients)
        hooks = settings.webhooks.netsapiens
        if hooks is None or client is None:
            return None, None
        backfiller = None
        if hooks.backfill:
            backfiller = Backfiller(
                client,
                run.store,
                clock=self.clock,
                default_region=settings.daemon.default_region,
                domain=hooks.domain,
                include_cdrs="cdr" in hooks.subscribe,
                on_events=run.dispatcher.wake,
            )
        on_gap = backfiller.backfill if backfiller is not None else None
        keeper = SubscriptionKeeper.from_settings(
            client, run.store, hooks, clock=self.clock, on_gap=on_gap
        )
        return backfiller, keeper

    async def _gapfill(self, *, task_status: TaskStatus[None]) -> None:
        """After a start (downtime), and whenever the inbox is unusually silent, pull what the
        webhooks may have missed. A failure is logged; the next look retries the window."""
        run = self.running
        assert run is not None and run.backfiller is not None
        task_status.started()
        first = True
        while True:
            last = await run.store.last_event_time(SOURCE, "")
            if first or should_backfill(self.clock.now(), last, GAP_SILENCE):
                try:
                    await run.backfiller.backfill()
                except Exception as exc:  # the backfiller logged what it read and where
                    log.warning("backfill.failed", error=f"{type(exc).__name__}: {exc}")
            first = False
            await self.clock.sleep(GAP_CHECK_EVERY)

    # -- signals, reload, shutdown ------------------------------------------------------------

    async def _signals(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            task_status.started()
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    self.request_reload()
                else:
                    log.info("service.signal", signal=signal.Signals(signum).name)
                    self.request_shutdown()

    async def _reloads(self) -> None:
        from daemon.reload import reload

        while True:
            await self._reload_requested.wait()
            self._reload_requested = anyio.Event()
            if self._stop.is_set():
                return
            try:
                await reload(self)
            except Exception as exc:  # a reload never stops the service (README, "The service")
                log.exception(
                    "config.reload_failed", error=redact_text(f"{type(exc).__name__}: {exc}")
                )

    async def _drain(self, run: Running) -> None:
        timeout = run.settings.daemon.shutdown_timeout
        self.notifier.stopping()
        log.info("service.stopping", timeout_s=timeout)
        started = self.clock.monotonic()
        async with anyio.create_task_group() as tg:
            force_scope = tg.cancel_scope

            async def forced() -> None:
                await self._force.wait()
                log.warning("service.forced_stop")
                force_scope.cancel()

            tg.start_soon(forced)
            async with anyio.create_task_group() as work:
                if run.scheduler is not None:
                    work.start_soon(run.scheduler.shutdown, timeout)
                work.start_soon(run.dispatcher.drain, timeout)
            force_scope.cancel()
        log.info("service.stopped", duration_s=round(self.clock.monotonic() - started, 3))

    def _status(self, run: Running) -> str:
        return (
            f"listening on {run.address}; {len(run.settings.sync)} jobs, "
            f"{len(run.settings.rules)} rules"
        )

    def listener_deps(
        self, run: Running, *, loaded_at: datetime, settings: Settings | None = None
    ) -> Any:
        return deps_from_settings(
            settings if settings is not None else run.settings,
            inbox=run.store,
            clock=self.clock,
            on_events=run.dispatcher.wake,
            loaded_at=loaded_at,
            on_outcome=run.metrics.webhook,
        )

    @property
    def task_group(self) -> TaskGroup:
        assert self._tg is not None
        return self._tg

    def now(self) -> datetime:
        return self.clock.now()
