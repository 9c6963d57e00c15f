"""`/healthz`: is the daemon doing its job? 200 or 503, with a JSON body of named checks.

Checks (docs/monitoring.md has the operator's view):

* `database` — the store can still take writes that will be there after a restart: the writer
  task runs; the file at `store.path` is the one opened at start (same device and inode: a
  deleted or renamed file keeps "working" through the open handle, and every write after that
  is lost at the next start); the file and its directory are writable and the file system is
  not read-only; and a write probe (an upsert of the `guard_state` row `healthz`) commits
  through the writer within `probe_timeout`.
* `upstream:<name>` — each upstream's credentials: `static` (a key or Basic pair; nothing to
  go wrong until a request says so), `ok`, or `failing` with the last error (never a secret).
* `job:<name>` — each sync job's last success against its schedule (`job_freshness`).
* `breaker` — the loop guard's breaker; open is not ok (auto-replies are paused).
* `dead_letters` — dead events and dead actions; any is not ok until replayed or pruned.

The result is cached for `cache_ttl` seconds and concurrent requests share one run, so polling
costs at most one probe write (one small commit) per `cache_ttl`. Counts come from the cache
upkeep fills (`CountsCache`) while it is fresh; otherwise one count query refills it.

A 503 means "someone should look", not "cannot take webhooks": do not point a load balancer's
liveness check at it (systemd's watchdog restarts a stuck process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog
from aiohttp import web

from daemon.clients.auth import TokenAuth
from daemon.clock import Clock
from daemon.config import Settings
from daemon.errors import StoreError
from daemon.logs import redact_text
from daemon.rules.guard import BreakerState
from daemon.store import SyncState
from daemon.store.filecheck import file_problems, identity
from daemon.sync.freshness import GRACE, JobFreshness, job_freshness
from daemon.sync.schedule import Schedule

log = structlog.get_logger(__name__)

__all__ = [
    "AuthState",
    "CountsCache",
    "Health",
    "HealthReport",
    "JobFreshness",
    "RunningParts",
    "StoreCounts",
    "auth_state",
    "healthz_route",
    "job_freshness",
]

CACHE_TTL = 1.0
PROBE_TIMEOUT = 5.0  # real seconds for the write probe (and each read) to answer
COUNTS_MAX_AGE = 120.0  # older upkeep counts are refreshed by a query of our own
PROBE_NAME = "healthz"  # the guard_state row the write probe upserts


class HealthStore(Protocol):
    """What the checks need of `daemon.store.Store`."""

    path: Path

    @property
    def healthy(self) -> bool: ...

    @property
    def writer_error(self) -> StoreError | None: ...

    async def set_guard_state(self, name: str, value: str) -> None: ...

    async def get_sync_state(self, job: str) -> SyncState | None: ...

    async def count_events_by_status(self) -> dict[str, int]: ...

    async def count_actions_by_status(self) -> dict[str, int]: ...


class AuthState(Protocol):
    """An OAuth upstream's token state (`daemon.clients.auth.TokenAuth`)."""

    @property
    def healthy(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


class BreakerSource(Protocol):
    """The loop guard (`daemon.rules.guard.LoopGuard`)."""

    async def breaker(self) -> BreakerState: ...


class _Session(Protocol):
    @property
    def auth(self) -> object: ...


class _Client(Protocol):
    @property
    def session(self) -> _Session: ...


class _Pool(Protocol):
    @property
    def clients(self) -> Mapping[str, _Client]: ...


class _Dispatcher(Protocol):
    @property
    def guard(self) -> BreakerSource: ...


class RunningParts(Protocol):
    """What `Health.from_running` reads of the service's `Running` (daemon.service)."""

    @property
    def store(self) -> HealthStore: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def pool(self) -> _Pool: ...

    @property
    def dispatcher(self) -> _Dispatcher: ...


class _CurrentGuard:
    """The dispatcher's loop guard, looked up at each check."""

    def __init__(self, run: RunningParts):
        self.run = run

    async def breaker(self) -> BreakerState:
        return await self.run.dispatcher.guard.breaker()


def auth_state(auth: object) -> AuthState | None:
    """What to hand `Health` for an upstream session's `auth`: the `TokenAuth` itself, or None
    for static credentials (reported as `static`)."""
    return auth if isinstance(auth, TokenAuth) else None


# -- counts shared with upkeep ---------------------------------------------------------------


@dataclass(frozen=True)
class StoreCounts:
    events: Mapping[str, int]
    actions: Mapping[str, int]
    taken_at: float  # the clock's monotonic time


class CountsCache:
    """Events and actions by status, counted by upkeep (or by `Health` when upkeep's are old)."""

    def __init__(self) -> None:
        self.latest: StoreCounts | None = None

    def put(self, events: Mapping[str, int], actions: Mapping[str, int], *, at: float) -> None:
        self.latest = StoreCounts(dict(events), dict(actions), at)

    def fresh(self, now: float, max_age: float) -> StoreCounts | None:
        latest = self.latest
        if latest is None or now - latest.taken_at > max_age:
            return None
        return latest


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    checks: dict[str, dict[str, Any]]
    checked_at: datetime
    failing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked_at": self.checked_at.isoformat(),
            "failing": self.failing,
            "checks": self.checks,
        }


def _report(checks: dict[str, dict[str, Any]], now: datetime) -> HealthReport:
    failing = [name for name, check in checks.items() if not check.get("ok")]
    return HealthReport(not failing, checks, now, failing)


# -- the checks ------------------------------------------------------------------------------

LastSuccess = Callable[[str], Awaitable[datetime | None]]
Upstreams = Mapping[str, AuthState | None]
Jobs = Mapping[str, Schedule]


class Health:
    """Runs the checks; the service builds one after the store is open (`from_running`) and
    serves it with `healthz_route(health)`.

    `upstreams` and `jobs` are each a mapping or a function returning the current one, read at
    every check, so a reload that replaces clients or jobs is seen without rebuilding.
    """

    def __init__(
        self,
        store: HealthStore,
        *,
        clock: Clock,
        upstreams: Upstreams | Callable[[], Upstreams] | None = None,
        jobs: Jobs | Callable[[], Jobs] | None = None,
        guard: BreakerSource | None = None,
        counts: CountsCache | None = None,
        last_success: LastSuccess | None = None,
        grace: float = GRACE,
        cache_ttl: float = CACHE_TTL,
        probe_timeout: float = PROBE_TIMEOUT,
        counts_max_age: float = COUNTS_MAX_AGE,
    ):
        self.store = store
        self.clock = clock
        self._upstreams = upstreams or {}
        self._jobs = jobs or {}
        self._guard = guard
        self.counts = counts if counts is not None else CountsCache()
        self._last_success = last_success
        self.grace = grace
        self.cache_ttl = cache_ttl
        self.probe_timeout = probe_timeout
        self.counts_max_age = counts_max_age
        self.started_at = clock.now()
        self.identity = identity(store.path)  # the file as opened; a later one is another
        self._lock = asyncio.Lock()
        self._cached: tuple[float, HealthReport] | None = None
        self._failing: list[str] = []

    @classmethod
    def from_running(cls, run: RunningParts, *, clock: Clock, **options: Any) -> Health:
        """The service's Health: the store, every open client's auth, the configured jobs'
        schedules and the dispatcher's loop guard, all read from `run` at each check (so a
        reload's new clients and jobs are seen). `options` go to the constructor."""

        def upstreams() -> Upstreams:
            return {name: auth_state(c.session.auth) for name, c in run.pool.clients.items()}

        def jobs() -> Jobs:
            return {
                j.name: Schedule(every=j.every, cron=j.cron, jitter=j.jitter)
                for j in run.settings.sync
            }

        return cls(
            run.store,
            clock=clock,
            upstreams=upstreams,
            jobs=jobs,
            guard=_CurrentGuard(run),
            **options,
        )

    # -- what is checked now -------------------------------------------------------------------

    def current_upstreams(self) -> Upstreams:
        return self._upstreams() if callable(self._upstreams) else self._upstreams

    def current_jobs(self) -> Jobs:
        return self._jobs() if callable(self._jobs) else self._jobs

    def current_guard(self) -> BreakerSource | None:
        return self._guard

    async def last_success(self, job: str) -> datetime | None:
        """When the job's last successful run started (`sync_state.last_success_at`)."""
        if self._last_success is not None:
            return await self._last_success(job)
        state = await self.store.get_sync_state(job)
        return None if state is None else state.last_success_at

    def freshness(
        self, schedule: Schedule, last_success: datetime | None, now: datetime
    ) -> JobFreshness:
        return job_freshness(
            schedule, last_success, started_at=self.started_at, now=now, grace=self.grace
        )

    # -- running the checks --------------------------------------------------------------------

    async def check(self) -> HealthReport:
        """Run every check (or return the result of one run less than `cache_ttl` ago)."""
        async with self._lock:
            if self._cached is not None:
                at, report = self._cached
                if self.clock.monotonic() - at < self.cache_ttl:
                    return report
            report = await self._run()
            self._cached = (self.clock.monotonic(), report)
            self._log_transition(report)
            return report

    async def _run(self) -> HealthReport:
        now = self.clock.now()
        # The database check bounds its own probe, so a slow writer is named as such.
        checks: dict[str, dict[str, Any]] = {"database": await self._bounded(self._database, 0)}
        for name, auth in sorted(self.current_upstreams().items()):
            checks[f"upstream:{name}"] = _upstream(auth)
        limit = self.probe_timeout
        for job, schedule in sorted(self.current_jobs().items()):
            checks[f"job:{job}"] = await self._bounded(self._job, limit, job, schedule, now)
        guard = self.current_guard()
        if guard is not None:
            checks["breaker"] = await self._bounded(self._breaker, limit, guard)
        checks["dead_letters"] = await self._bounded(self._dead_letters, limit)
        return _report(checks, now)

    async def _bounded(
        self, fn: Callable[..., Awaitable[dict[str, Any]]], limit: float, *args: Any
    ) -> dict[str, Any]:
        """One check, bounded by `limit` real seconds (0: not bounded here); its failure is
        that check's, never the request's."""
        try:
            with anyio.fail_after(limit or None):
                return await fn(*args)
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {limit:g}s"}
        except Exception as exc:  # a supervision boundary: report it, do not 500
            return {"ok": False, "error": _error_text(exc)}

    async def _database(self) -> dict[str, Any]:
        store = self.store
        problems = file_problems(store.path, self.identity)
        if not store.healthy:
            err = store.writer_error
            problems.insert(0, str(err) if err is not None else "the store is closed")
        else:
            try:
                with anyio.fail_after(self.probe_timeout):
                    await store.set_guard_state(PROBE_NAME, self.clock.now().isoformat())
            except TimeoutError:
                problems.append(f"write probe: no commit within {self.probe_timeout:g}s")
            except StoreError as exc:
                problems.append(f"write probe failed: {_error_text(exc)}")
        detail: dict[str, Any] = {"ok": not problems, "path": str(store.path)}
        if problems:
            detail["errors"] = problems
        return detail

    async def _job(self, job: str, schedule: Schedule, now: datetime) -> dict[str, Any]:
        last = await self.last_success(job)
        fresh = self.freshness(schedule, last, now)
        return {
            "ok": fresh.ok,
            "state": fresh.state,
            "schedule": schedule.describe(),
            "last_success": last.isoformat() if last is not None else None,
            "stale_at": fresh.stale_at.isoformat(),
        }

    async def _breaker(self, guard: BreakerSource) -> dict[str, Any]:
        state = await guard.breaker()
        if not state.open:
            return {"ok": True, "open": False}
        return {
            "ok": False,
            "open": True,
            "until": state.until.isoformat() if state.until is not None else None,
            "reason": state.reason,
        }

    async def _dead_letters(self) -> dict[str, Any]:
        counts = self.counts.fresh(self.clock.monotonic(), self.counts_max_age)
        if counts is None:
            events = await self.store.count_events_by_status()
            actions = await self.store.count_actions_by_status()
            self.counts.put(events, actions, at=self.clock.monotonic())
            counts = self.counts.latest
            assert counts is not None
        dead_events = int(counts.events.get("dead", 0))
        dead_actions = int(counts.actions.get("dead", 0))
        detail: dict[str, Any] = {
            "ok": dead_events == 0 and dead_actions == 0,
            "events": dead_events,
            "actions": dead_actions,
        }
        if not detail["ok"]:
            detail["hint"] = "daemon events list --status dead; daemon events replay --dead"
        return detail

    def _log_transition(self, report: HealthReport) -> None:
        if report.failing == self._failing:
            return
        if report.failing:
            log.warning("health.degraded", failing=report.failing, was=self._failing)
        else:
            log.info("health.recovered", was=self._failing)
        self._failing = list(report.failing)


def _upstream(auth: AuthState | None) -> dict[str, Any]:
    if auth is None:
        return {"ok": True, "auth": "static"}
    if auth.healthy:
        return {"ok": True, "auth": "ok"}
    return {"ok": False, "auth": "failing", "error": redact_text(auth.last_error or "unknown")}


def _error_text(exc: BaseException) -> str:
    return redact_text(str(exc) or type(exc).__name__)


def healthz_route(health: Health, path: str = "/healthz") -> web.RouteDef:
    """`GET /healthz` (and HEAD): 200 when every check passes, else 503; the body is
    `HealthReport.as_dict()`. Add it to the listener app: `app.add_routes([...])`."""

    async def healthz(request: web.Request) -> web.Response:
        try:
            report = await health.check()
        except Exception:  # a bug in a check must answer 503, not a 500 with a traceback
            log.exception("health.check_crashed")
            return web.json_response(
                {"ok": False, "error": "the health check itself failed; see the log"},
                status=503,
                headers={"Cache-Control": "no-store"},
            )
        return web.json_response(
            report.as_dict(),
            status=200 if report.ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    return web.get(path, healthz)
