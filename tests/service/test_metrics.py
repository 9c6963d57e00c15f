"""`/metrics`: every family parses from the text a scrape gets, on the service's own registry;
the session and token hooks fire on real requests to a small aiohttp app on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from daemon.clients.auth import StaticHeaders, TokenAuth
from daemon.clients.http import HttpOptions, UpstreamSession
from daemon.clients.ratelimit import RateBudget, RateLimit
from daemon.clock import FakeClock
from daemon.errors import ServerError, UpstreamTimeout
from daemon.metrics import MAX_LABEL_VALUES, OTHER, Metrics, metrics_route
from daemon.sandbox.server import serve_app
from tests.webhooks.listener_fixtures import SECRET, batch, message, running_hook, serve_listener

P = "integration_daemon_"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name of each sample → {sorted labels: value}, parsed as Prometheus would."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: Mapping[str, Mapping[Any, float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


# -- the families ---------------------------------------------------------------------------------


def test_every_family_parses_with_its_values() -> None:
    m = Metrics()
    m.webhook("accepted")
    m.webhook("accepted")
    m.webhook("bad secret")
    m.sync_finished(
        "blesta-clients",
        "ok",
        {"pages": 3, "fetched": 60, "inserted": 3, "updated": 1, "unchanged": 56, "deleted": 0},
        0.84,
    )
    m.sync_finished("halo-tickets", "failed", {"fetched": 5}, 2.0)
    m.upstream_response("halo", 200)
    m.upstream_response("halo", 503)
    m.upstream_response("halo", None)
    m.token_refreshed("halo")
    m.set_counts({"pending": 2, "dead": 1}, {"sent": 7, "dead": 0})
    m.set_breaker(True)
    m.set_jobs({"blesta-clients": (T0, False), "halo-tickets": (None, True)})
    m.set_database_size(4096, 1024)
    m.pruned({"events": 10, "actions": 0, "sync_runs": 2})
    m.upkeep_failed("prune")

    s = scrape(m)
    assert value(s, P + "webhook_requests_total", outcome="accepted") == 2
    assert value(s, P + "webhook_requests_total", outcome="bad secret") == 1
    assert value(s, P + "sync_runs_total", job="blesta-clients", status="ok") == 1
    assert value(s, P + "sync_runs_total", job="halo-tickets", status="failed") == 1
    assert value(s, P + "sync_records_total", job="blesta-clients", kind="fetched") == 60
    assert value(s, P + "sync_records_total", job="blesta-clients", kind="unchanged") == 56
    assert (("job", "blesta-clients"), ("kind", "pages")) not in s[P + "sync_records_total"]
    assert value(s, P + "sync_duration_seconds_count", job="blesta-clients") == 1
    assert value(s, P + "sync_duration_seconds_sum", job="blesta-clients") == pytest.approx(0.84)
    assert value(s, P + "sync_duration_seconds_bucket", job="blesta-clients", le="1.0") == 1
    assert value(s, P + "upstream_requests_total", upstream="halo", code="200") == 1
    assert value(s, P + "upstream_requests_total", upstream="halo", code="503") == 1
    assert value(s, P + "upstream_requests_total", upstream="halo", code="error") == 1
    assert value(s, P + "token_refreshes_total", upstream="halo") == 1
    assert value(s, P + "events", status="dead") == 1
    assert value(s, P + "events", status="pending") == 2
    assert value(s, P + "actions", status="sent") == 7
    assert value(s, P + "breaker_open") == 1
    assert value(s, P + "sync_last_success_timestamp_seconds", job="blesta-clients") == (
        T0.timestamp()
    )
    assert (("job", "halo-tickets"),) not in s[P + "sync_last_success_timestamp_seconds"]
    assert value(s, P + "sync_stale", job="halo-tickets") == 1
    assert value(s, P + "database_size_bytes", file="wal") == 1024
    assert value(s, P + "pruned_rows_total", table="events") == 10
    assert value(s, P + "upkeep_failures_total", step="prune") == 1
    assert value(s, P + "build_info", version=prometheus_version_label(s)) == 1
    assert "process_resident_memory_bytes" in s or "python_info" in s


def prometheus_version_label(s: Mapping[str, Mapping[Any, float]]) -> str:
    [labels] = s[P + "build_info"]
    return dict(labels)["version"]


def test_families_are_present_before_anything_happened() -> None:
    """Help and type lines for every family from the start, so dashboards and rules resolve."""
    body, _ = Metrics(process_metrics=False).render()
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {
        P + "webhook_requests",
        P + "sync_runs",
        P + "sync_records",
        P + "sync_duration_seconds",
        P + "sync_last_success_timestamp_seconds",
        P + "sync_stale",
        P + "upstream_requests",
        P + "token_refreshes",
        P + "events",
        P + "actions",
        P + "breaker_open",
        P + "database_size_bytes",
        P + "pruned_rows",
        P + "upkeep_failures",
        P + "rate_budget_wait_seconds",
        P + "upstream_auth_healthy",
        P + "build_info",
    } <= names
    accepted = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples
                if s.name == P + "webhook_requests_total"]  # fmt: skip
    assert [(s.labels, s.value) for s in accepted] == [({"outcome": "accepted"}, 0.0)]


def test_each_metrics_has_its_own_registry_and_never_the_global_one() -> None:
    a, b = Metrics(), Metrics()
    a.webhook("accepted")
    assert value(scrape(a), P + "webhook_requests_total", outcome="accepted") == 1
    assert value(scrape(b), P + "webhook_requests_total", outcome="accepted") == 0
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert P not in global_text


def test_a_job_removed_by_a_reload_stops_being_reported() -> None:
    m = Metrics(process_metrics=False)
    m.set_jobs({"old": (T0, True), "kept": (T0, False)})
    m.set_jobs({"kept": (T0, False)})
    assert list(scrape(m)[P + "sync_stale"]) == [(("job", "kept"),)]


def test_label_values_are_bounded() -> None:
    m = Metrics(process_metrics=False)
    for i in range(150):
        m.webhook(f"reason {i}")
    outcomes = {dict(k)["outcome"] for k in scrape(m)[P + "webhook_requests_total"]}
    assert len(outcomes) == 101 and "other" in outcomes  # 100 distinct values, then "other"
    m.upstream_response("x", 999)
    assert value(scrape(m), P + "upstream_requests_total", upstream="x", code="other") == 1


async def test_rate_budget_waits_are_read_at_scrape_time() -> None:
    clock = FakeClock(T0, autojump=True)
    budget = RateBudget(RateLimit(1, 10.0), clock, margin=0.0)
    m = Metrics(process_metrics=False)
    m.watch_budget("halo", budget)
    assert value(scrape(m), P + "rate_budget_wait_seconds_total", upstream="halo") == 0
    await budget.acquire()
    await budget.acquire()  # waits the rest of the window
    assert value(scrape(m), P + "rate_budget_wait_seconds_total", upstream="halo") == 10.0
    # A reload's new client brings a new budget, at 0: the counter carries on, never back
    # (found by probing: it fell to 0).
    fresh = RateBudget(RateLimit(1, 10.0), clock, margin=0.0)
    m.watch_budget("halo", fresh)
    assert value(scrape(m), P + "rate_budget_wait_seconds_total", upstream="halo") == 10.0
    await fresh.acquire()
    await fresh.acquire()
    assert value(scrape(m), P + "rate_budget_wait_seconds_total", upstream="halo") == 20.0
    m.watch_budget("halo", None)  # the rate limit taken off: what was waited stays counted
    assert value(scrape(m), P + "rate_budget_wait_seconds_total", upstream="halo") == 20.0
    m.forget_client("halo")  # the upstream removed: its series go
    assert P + "rate_budget_wait_seconds_total" not in scrape(m)


def test_every_label_is_capped_code_included() -> None:
    """Found by probing: the `code` of upstream requests was not capped (500 values)."""
    m = Metrics(process_metrics=False)
    for status in range(100, 600):
        m.upstream_response("halo", status)
    codes = {dict(k)["code"] for k in scrape(m)[P + "upstream_requests_total"]}
    assert len(codes) <= MAX_LABEL_VALUES + 1 and OTHER in codes


async def test_metrics_route_serves_the_text_format() -> None:
    m = Metrics(process_metrics=False)
    m.webhook("accepted")
    app = web.Application()
    app.add_routes([metrics_route(m)])
    async with serve_listener(app) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == m.render()[1]
            text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [sample] = families[P + "webhook_requests"].samples
    assert sample.value == 1


# -- hooks on real requests ---------------------------------------------------------------------


@dataclass
class Upstream:
    """/ok answers 200; /flaky 503 until `fail` runs out; /token issues tokens; /data wants one."""

    fail: int = 0
    tokens: int = 0

    def app(self) -> web.Application:
        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        async def flaky(request: web.Request) -> web.Response:
            if self.fail > 0:
                self.fail -= 1
                return web.json_response({"error": "busy"}, status=503)
            return web.json_response({"ok": True})

        async def token(request: web.Request) -> web.Response:
            self.tokens += 1
            return web.json_response({"access_token": f"tok-{self.tokens}", "expires_in": 3600})

        async def data(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer tok-{self.tokens}":
                return web.json_response({"error": "invalid_token"}, status=401)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/ok", ok)
        app.router.add_get("/flaky", flaky)
        app.router.add_post("/token", token)
        app.router.add_get("/data", data)
        return app


class DemoAuth(TokenAuth):
    async def obtain(self, session: UpstreamSession) -> Mapping[str, Any]:
        payload: Mapping[str, Any] = (await session.request("POST", "token", use_auth=False)).json()
        return payload


@dataclass
class Client:
    session: UpstreamSession


def make_session(url: str, clock: FakeClock, auth: Any = None, **opts: Any) -> UpstreamSession:
    options = HttpOptions(**{"timeout": 5.0, "max_retries": 2, **opts})
    return UpstreamSession("halo", url, options, clock=clock, auth=auth)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    state = Upstream()
    async with serve_app(state.app()) as url:
        yield state, url


async def test_on_response_sees_every_attempt(upstream: tuple[Upstream, str]) -> None:
    state, url = upstream
    clock = FakeClock(T0, autojump=True)
    m = Metrics(process_metrics=False)
    async with make_session(url, clock, auth=StaticHeaders({"X-Key": "k"})) as session:
        m.attach_client("halo", Client(session))
        await session.request("GET", "ok")
        state.fail = 2
        await session.request("GET", "flaky")  # 503, 503, then 200
        state.fail = 5
        with pytest.raises(ServerError):
            await session.request("GET", "flaky")  # three attempts, all 503
    s = scrape(m)
    assert value(s, P + "upstream_requests_total", upstream="halo", code="200") == 2
    assert value(s, P + "upstream_requests_total", upstream="halo", code="503") == 5
    assert P + "upstream_auth_healthy" not in s  # static credentials: no token state to export


async def test_on_response_none_when_no_answer_came() -> None:
    clock = FakeClock(T0, autojump=True)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    seen: list[tuple[str, int | None]] = []
    async with make_session(f"http://127.0.0.1:{port}", clock, max_retries=1) as session:
        session.on_response = lambda name, status: seen.append((name, status))
        with pytest.raises(Exception) as info:
            await session.request("GET", "ok")
    assert info.type.__name__ in ("ConnectError", "NetworkError")
    assert seen == [("halo", None), ("halo", None)]


async def test_on_response_none_on_a_timeout() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/slow", slow)
    seen: list[int | None] = []
    async with serve_app(app) as url:
        session = make_session(url, FakeClock(T0, autojump=True), timeout=0.05, max_retries=0)
        async with session:
            session.on_response = lambda name, status: seen.append(status)
            with pytest.raises(UpstreamTimeout):
                await session.request("GET", "slow")
    assert seen == [None]


async def test_an_observer_that_raises_never_fails_the_request(
    upstream: tuple[Upstream, str],
) -> None:
    _, url = upstream

    def broken(name: str, status: int | None) -> None:
        raise RuntimeError("bug in an observer")

    async with make_session(url, FakeClock(T0)) as session:
        session.on_response = broken
        with capture_logs() as logs:
            assert (await session.request("GET", "ok")).status == 200
            assert (await session.request("GET", "ok")).status == 200
    failures = [e for e in logs if e["event"] == "http.observer_failed"]
    assert len(failures) == 1  # once per session, not once per request
    assert failures[0]["upstream"] == "halo" and "bug in an observer" in failures[0]["error"]


async def test_token_refreshes_are_counted_and_auth_state_exported(
    upstream: tuple[Upstream, str],
) -> None:
    state, url = upstream
    clock = FakeClock(T0)
    m = Metrics(process_metrics=False)
    auth = DemoAuth()
    async with make_session(url, clock, auth=auth) as session:
        m.attach_client("halo", Client(session))
        await session.request("GET", "data")  # first token
        await session.request("GET", "data")  # reuses it
        clock.advance(4000)  # past expiry
        await session.request("GET", "data")  # second token
    s = scrape(m)
    assert state.tokens == 2
    assert value(s, P + "token_refreshes_total", upstream="halo") == 2
    # the token requests are HTTP attempts too
    assert value(s, P + "upstream_requests_total", upstream="halo", code="200") == 5
    assert value(s, P + "upstream_auth_healthy", upstream="halo") == 1
    auth.healthy = False
    assert value(scrape(m), P + "upstream_auth_healthy", upstream="halo") == 0


async def test_a_refresh_observer_that_raises_never_fails_the_refresh(
    upstream: tuple[Upstream, str],
) -> None:
    auth = DemoAuth()

    def broken(name: str) -> None:
        raise RuntimeError("bug")

    auth.on_refresh = broken
    async with make_session(upstream[1], FakeClock(T0), auth=auth) as session:
        with capture_logs() as logs:
            assert (await session.request("GET", "data")).status == 200
    assert auth.healthy and auth.refreshes == 1
    assert [e["event"] for e in logs if e["event"].startswith("auth.")] == [
        "auth.token_refreshed",
        "auth.observer_failed",
    ]


async def test_webhook_outcomes_through_the_real_listener(tmp_path: Any) -> None:
    m = Metrics(process_metrics=False)
    async with running_hook(tmp_path, on_outcome=m.webhook) as hook:
        async with aiohttp.ClientSession() as http:
            async with http.post(hook.path(), data=batch(message("m-1"))) as resp:
                assert resp.status == 200
            async with http.post(hook.path(secret="wrong-" + SECRET), data=b"[]") as resp:
                assert resp.status == 404
            async with http.post(hook.path(), data=b"not json") as resp:
                assert resp.status == 400
    s = scrape(m)
    assert value(s, P + "webhook_requests_total", outcome="accepted") == 1
    assert value(s, P + "webhook_requests_total", outcome="bad secret") == 1
    assert sum(s[P + "webhook_requests_total"].values()) == 3
