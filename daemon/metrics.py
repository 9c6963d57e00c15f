"""`/metrics`: the service's Prometheus metrics, on a registry of its own (no globals).

`Metrics` owns one `prometheus_client.CollectorRegistry`; nothing here touches the library's
global `REGISTRY`, so two services in one process (tests) never share a counter. The service
builds one `Metrics` and hands its methods to the parts that observe something:

* `attach_client(name, client)` — `ClientPool(configure=...)`: sets the two hooks below and
  watches the client's rate budget and token state;
* `webhook(outcome)` — the listener's `ListenerDeps.on_outcome`, once per request;
* `sync_finished(job, status, counters, duration)` — after each sync run (`RunResult`);
* `upstream_response(upstream, status)` — `UpstreamSession.on_response`, once per HTTP attempt;
* `token_refreshed(upstream)` — `TokenAuth.on_refresh`, once per new token;
* `watch_budget(upstream, budget)` / `watch_auth(upstream, auth)` — read at scrape time, from
  memory (a rate budget's `waited`, a token's `healthy`);
* `set_counts`, `set_breaker`, `set_jobs`, `set_database_size`, `pruned`, `upkeep_failed` —
  from `daemon.upkeep`, which reads the database on its own schedule. A scrape never runs a
  query: `/metrics` may be scraped every few seconds by more than one Prometheus.

Every family is named `integration_daemon_*` and documented in docs/monitoring.md. Label values
come from the configuration (job and upstream names) or from fixed sets in the code (webhook
outcomes, record kinds, statuses); `_bounded` still caps each label at `MAX_LABEL_VALUES`
distinct values, so a bug cannot grow a series per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from daemon import __version__
from daemon.clients.auth import TokenAuth
from daemon.clients.http import UpstreamSession

__all__ = ["RECORD_KINDS", "AuthView", "BudgetView", "Metrics", "metrics_route"]

PREFIX = "integration_daemon"
RECORD_KINDS = ("fetched", "inserted", "updated", "unchanged", "deleted")
MAX_LABEL_VALUES = 100
OTHER = "other"
# Sync runs take from under a second (a small Reseller list) to hours (a 100k-record first run).
SYNC_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


class BudgetView(Protocol):
    """What the scrape reads of a `daemon.clients.ratelimit.RateBudget`: memory only."""

    @property
    def waited(self) -> float: ...


class AuthView(Protocol):
    """What the scrape reads of a `daemon.clients.auth.TokenAuth`: memory only."""

    @property
    def healthy(self) -> bool: ...


class HasSession(Protocol):
    """An upstream client (`daemon.clients.http.UpstreamClient`)."""

    @property
    def session(self) -> UpstreamSession: ...


class _Watched:
    """A collector over in-memory objects registered by name, read at scrape time."""

    def __init__(self) -> None:
        self.budgets: dict[str, BudgetView] = {}
        self.auths: dict[str, AuthView] = {}
        # Seconds waited by the budgets a reload replaced: a new client's budget starts at 0,
        # and the counter must not go backwards within the process (found by probing).
        self.carried: dict[str, float] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[Metric]:
        waits = CounterMetricFamily(
            f"{PREFIX}_rate_budget_wait_seconds",
            "Seconds requests waited for an upstream's rate budget before they were sent.",
            labels=["upstream"],
        )
        for name in sorted(self.budgets.keys() | self.carried.keys()):
            budget = self.budgets.get(name)
            waited = float(budget.waited) if budget is not None else 0.0
            waits.add_metric([name], waited + self.carried.get(name, 0.0))
        auth = GaugeMetricFamily(
            f"{PREFIX}_upstream_auth_healthy",
            "1 while an OAuth upstream's last token grant succeeded (or none was needed yet), "
            "0 after a refused grant.",
            labels=["upstream"],
        )
        for name, state in sorted(self.auths.items()):
            auth.add_metric([name], 1.0 if state.healthy else 0.0)
        return [waits, auth]


class Metrics:
    """The service's metrics. `render()` gives the `/metrics` body and its content type.

    `process_metrics` adds the standard `process_*` (CPU, memory, open files) and `python_*`
    families, registered on this registry, not the global one.
    """

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._seen: dict[str, set[str]] = {}
        r = self.registry
        self._build = Gauge(
            f"{PREFIX}_build_info", "Always 1; the daemon's version.", ["version"], registry=r
        )
        self._build.labels(__version__).set(1)
        self._webhooks = Counter(
            f"{PREFIX}_webhook_requests",
            "Webhook requests by outcome: accepted, or the rejection reason.",
            ["outcome"],
            registry=r,
        )
        # Present at 0 from the start, so rate() and alerts work before the first delivery.
        self._webhooks.labels(self._bounded("outcome", "accepted"))
        self._runs = Counter(
            f"{PREFIX}_sync_runs", "Finished sync runs by job and status.", ["job", "status"],
            registry=r,
        )  # fmt: skip
        self._records = Counter(
            f"{PREFIX}_sync_records",
            "Records of finished sync runs by job and kind "
            "(fetched, inserted, updated, unchanged, deleted).",
            ["job", "kind"],
            registry=r,
        )
        self._durations = Histogram(
            f"{PREFIX}_sync_duration_seconds",
            "Duration of finished sync runs by job.",
            ["job"],
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self._last_success = Gauge(
            f"{PREFIX}_sync_last_success_timestamp_seconds",
            "Start time (Unix seconds) of each job's last successful run.",
            ["job"],
            registry=r,
        )
        self._stale = Gauge(
            f"{PREFIX}_sync_stale",
            "1 when a job's last success is older than its schedule allows (as /healthz says).",
            ["job"],
            registry=r,
        )
        self._upstream = Counter(
            f"{PREFIX}_upstream_requests",
            "HTTP attempts to upstreams (retries and token requests included) by status code; "
            'code="error" when no answer came (connection error, timeout).',
            ["upstream", "code"],
            registry=r,
        )
        self._refreshes = Counter(
            f"{PREFIX}_token_refreshes",
            "OAuth tokens obtained, by upstream.",
            ["upstream"],
            registry=r,
        )
        self._events = Gauge(
            f"{PREFIX}_events", "Inbox events by status (refreshed by upkeep).", ["status"],
            registry=r,
        )  # fmt: skip
        self._actions = Gauge(
            f"{PREFIX}_actions", "Actions by status (refreshed by upkeep).", ["status"],
            registry=r,
        )  # fmt: skip
        self._breaker = Gauge(
            f"{PREFIX}_breaker_open",
            "1 while the loop guard's breaker pauses all auto-replies.",
            registry=r,
        )
        self._db_size = Gauge(
            f"{PREFIX}_database_size_bytes",
            'Size of the database file (file="db") and of its write-ahead log (file="wal").',
            ["file"],
            registry=r,
        )
        self._pruned = Counter(
            f"{PREFIX}_pruned_rows",
            "Rows deleted by retention pruning, by table.",
            ["table"],
            registry=r,
        )
        self._upkeep_failures = Counter(
            f"{PREFIX}_upkeep_failures",
            "Failed upkeep steps (refresh, checkpoint, prune, optimize).",
            ["step"],
            registry=r,
        )
        self._watched = _Watched()
        r.register(self._watched)

    # -- observations ------------------------------------------------------------------------

    def webhook(self, outcome: str) -> None:
        """One webhook request ended with `outcome` (`accepted` or a rejection reason)."""
        self._webhooks.labels(self._bounded("outcome", outcome)).inc()

    def sync_finished(
        self, job: str, status: str, counters: Mapping[str, int], duration: float
    ) -> None:
        """A sync run ended (`RunResult.status`, `RunResult.counters()`, `.duration`)."""
        job = self._bounded("job", job)
        self._runs.labels(job, self._bounded("status", status)).inc()
        for kind in RECORD_KINDS:
            count = counters.get(kind, 0)
            if count > 0:
                self._records.labels(job, kind).inc(count)
        if duration >= 0:
            self._durations.labels(job).observe(duration)

    def upstream_response(self, upstream: str, status: int | None) -> None:
        """One HTTP attempt to `upstream` ended: its status code, None when no answer came."""
        if status is None:
            code = "error"
        elif 100 <= status <= 599:
            code = str(status)
        else:
            code = OTHER
        self._upstream.labels(
            self._bounded("upstream", upstream), self._bounded("code", code)
        ).inc()

    def token_refreshed(self, upstream: str) -> None:
        self._refreshes.labels(self._bounded("upstream", upstream)).inc()

    def attach_client(self, name: str, client: HasSession) -> None:
        """Observe one upstream client (`ClientPool(configure=metrics.attach_client)`): its
        HTTP attempts, its token refreshes, its rate budget's waits and its auth state. A
        client built again by a reload is attached again and replaces the old one here."""
        session = client.session
        session.on_response = self.upstream_response
        auth = session.auth
        if isinstance(auth, TokenAuth):
            auth.on_refresh = self.token_refreshed
            self.watch_auth(name, auth)
        else:
            self.watch_auth(name, None)
        self.watch_budget(name, session.budget)

    def watch_budget(self, upstream: str, budget: BudgetView | None) -> None:
        """Export `budget.waited` for `upstream` at each scrape; None forgets the budget (a
        reload that removed it). What a replaced budget had waited is carried on."""
        old = self._watched.budgets.pop(upstream, None)
        if old is not None and old is not budget:
            carried = self._watched.carried
            carried[upstream] = carried.get(upstream, 0.0) + float(old.waited)
        if budget is not None:
            self._watched.budgets[upstream] = budget

    def forget_client(self, name: str) -> None:
        """An upstream a reload removed: its series go (found by probing: its auth gauge kept
        an alert firing for an upstream that no longer existed, and held its client alive)."""
        self._watched.budgets.pop(name, None)
        self._watched.auths.pop(name, None)
        self._watched.carried.pop(name, None)

    def watch_auth(self, upstream: str, auth: AuthView | None) -> None:
        """Export `auth.healthy` for an OAuth upstream at each scrape; None forgets it."""
        if auth is None:
            self._watched.auths.pop(upstream, None)
        else:
            self._watched.auths[upstream] = auth

    # -- state set by upkeep -----------------------------------------------------------------

    def set_counts(self, events: Mapping[str, int], actions: Mapping[str, int]) -> None:
        """Events and actions by status, as counted by upkeep."""
        for status, n in events.items():
            self._events.labels(self._bounded("event_status", status)).set(n)
        for status, n in actions.items():
            self._actions.labels(self._bounded("action_status", status)).set(n)

    def set_breaker(self, is_open: bool) -> None:
        self._breaker.set(1 if is_open else 0)

    def set_jobs(self, jobs: Mapping[str, tuple[datetime | None, bool]]) -> None:
        """Each configured job's (last success, stale?): replaces the previous set, so a job a
        reload removed stops being reported. A job that never succeeded has no timestamp."""
        self._last_success.clear()
        self._stale.clear()
        for job, (last_success, stale) in jobs.items():
            name = self._bounded("job", job)
            if last_success is not None:
                self._last_success.labels(name).set(last_success.timestamp())
            self._stale.labels(name).set(1 if stale else 0)

    def set_database_size(self, db_bytes: int, wal_bytes: int) -> None:
        self._db_size.labels("db").set(db_bytes)
        self._db_size.labels("wal").set(wal_bytes)

    def pruned(self, counts: Mapping[str, int]) -> None:
        for table, n in counts.items():
            if n > 0:
                self._pruned.labels(self._bounded("table", table)).inc(n)

    def upkeep_failed(self, step: str) -> None:
        self._upkeep_failures.labels(self._bounded("step", step)).inc()

    # -- exposition --------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The `/metrics` body in Prometheus text format, and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _bounded(self, label: str, value: str) -> str:
        """`value`, or `other` once `label` has had MAX_LABEL_VALUES distinct values."""
        seen = self._seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= MAX_LABEL_VALUES:
            return OTHER
        seen.add(value)
        return value


def metrics_route(metrics: Metrics, path: str = "/metrics") -> web.RouteDef:
    """`GET /metrics`: `metrics.render()`. Add it to the listener app beside `/healthz`."""

    async def handle_metrics(request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    return web.get(path, handle_metrics)
