"""A reload builds every part of the new config before it changes anything running: the service
object in process, against the simulators, with the reload called directly.

- a client that cannot be built refuses the reload whole: the running clients, rules and
  scheduler stay the very same objects and the clients already built for it are closed again;
- a store that cannot be read while the new jobs are prepared refuses it the same way;
- what a good reload must bring: an upstream added by it is opened (its jobs and rules can use
  it), and the loop guard and `[daemon.dispatch]` take the new settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from daemon.clients import pool as pool_module
from daemon.clock import FakeClock
from daemon.config import Settings, load_settings
from daemon.errors import StoreError
from daemon.reload import reload
from daemon.sandbox.orchestra import Sandbox
from daemon.service import Running, Service
from daemon.webhooks.app import LISTENER
from tests.service.sandboxes import service_sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[tuple[Sandbox, Settings]]:
    async with service_sandbox(tmp_path) as (sb, _):
        yield sb, load_settings(sb.config_path)


async def _serving(
    sb: Sandbox, settings: Settings, test: Callable[[Service, Running], Any]
) -> list[dict[str, Any]]:
    """Run the service, call `test(service, running)`, stop; the log lines captured."""
    service = Service(settings, clock=FakeClock(datetime.now(UTC)), config_path=sb.config_path,
                      handle_signals=False)  # fmt: skip
    with capture_logs() as logs, anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(service.serve)
            assert service.running is not None
            await test(service, service.running)
            service.request_shutdown()
    return logs


def _edit(sb: Sandbox, *pairs: tuple[str, str]) -> None:
    text = sb.config_path.read_text()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    sb.config_path.write_text(text)


async def test_a_client_that_cannot_be_built_refuses_the_reload_with_nothing_changed(
    sandbox: tuple[Sandbox, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb, settings = sandbox
    built: list[Any] = []
    real_build = pool_module.build_client

    def build(upstream: Any, *, clock: Any) -> Any:
        if upstream.name == "halo":
            raise OSError(24, "Too many open files")
        client = real_build(upstream, clock=clock)
        built.append(client)
        return client

    async def test(service: Service, run: Running) -> None:
        clients, ruleset, scheduler = dict(run.pool.clients), run.holder.ruleset, run.scheduler
        executors, guard = run.dispatcher.executors, run.dispatcher.guard
        # Blesta (first in the file) is rebuilt before Halo fails; jobs and rules change too.
        _edit(
            sb,
            ("max_concurrency = 8", "max_concurrency = 6"),
            ("[upstreams.halo]\n", '[upstreams.halo]\ntimeout = "20s"\n'),
            ('name = "halo-clients"', 'name = "halo-people"'),
            ('name = "hello"', 'name = "hi"'),
        )
        monkeypatch.setattr(pool_module, "build_client", build)
        assert await reload(service) is False
        assert run.pool.clients == clients  # the very same client objects
        assert run.holder.ruleset is ruleset and run.scheduler is scheduler
        assert run.dispatcher.executors is executors and run.dispatcher.guard is guard
        assert run.settings is settings and service.settings is settings
        (blesta,) = built
        assert blesta.session._session is None  # built for the refused reload, closed again
        assert run.pool.clients["blesta"].session._session is not None  # the old one serves on

    logs = await _serving(sb, settings, test)
    (refused,) = [e for e in logs if e["event"] == "config.reload_refused"]
    assert "upstream 'halo'" in refused["error"] and "Too many open files" in refused["error"]
    assert not [e for e in logs if e["event"] in ("config.loaded", "service.clients_replaced")]


async def test_a_store_that_cannot_be_read_while_preparing_jobs_refuses_the_reload(
    sandbox: tuple[Sandbox, Settings],
) -> None:
    sb, settings = sandbox

    async def test(service: Service, run: Running) -> None:
        scheduler, clients = run.scheduler, dict(run.pool.clients)

        async def unreadable() -> Any:
            raise StoreError("database is locked")

        run.store.last_runs = unreadable  # type: ignore[method-assign]
        _edit(
            sb,
            ('name = "halo-clients"', 'name = "halo-people"'),
            ("max_concurrency = 8", "max_concurrency = 6"),
        )
        assert await reload(service) is False
        assert run.scheduler is scheduler and scheduler is not None
        assert "halo-clients" in {j.name for j in scheduler.jobs}
        assert run.pool.clients == clients and run.settings is settings

    logs = await _serving(sb, settings, test)
    (refused,) = [e for e in logs if e["event"] == "config.reload_refused"]
    assert "database is locked" in refused["error"]


async def test_a_good_reload_opens_an_added_upstream_and_applies_the_guard(
    sandbox: tuple[Sandbox, Settings],
) -> None:
    sb, settings = sandbox
    blesta = sb.config_path.read_text().split("[upstreams.blesta]\n", 1)[1].split("\n\n", 1)[0]

    async def test(service: Service, run: Running) -> None:
        _edit(
            sb,
            (
                "[upstreams.reseller]\n",
                f'[upstreams.blesta2]\nkind = "blesta"\n{blesta}\n\n[upstreams.reseller]\n',
            ),
            ("\n[[sync]]\n", '\n[webhooks.netsapiens.guard]\nmax_inbox_wait = "2h"\n\n[[sync]]\n'),
        )
        assert await reload(service) is True
        assert "blesta2" in run.pool.clients
        assert run.pool.clients["blesta2"].session._session is not None
        assert run.dispatcher.guard.settings.max_inbox_wait == 7200.0

    await _serving(sb, settings, test)


async def test_restart_needed_compares_with_what_runs_and_the_body_limit_applies_at_once(
    sandbox: tuple[Sandbox, Settings],
) -> None:
    """Found by probing: the warning compared with the previous reload's settings, so a second
    reload forgot a listen address still waiting for its restart and reverting it was reported
    backwards; and `max_body_bytes` was reported as needing a restart though it applied."""
    sb, settings = sandbox
    port = settings.http.listen.rpartition(":")[2]

    def needed(logs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return [
            (e["setting"], e["running"], e["configured"])
            for e in logs
            if e["event"] == "service.restart_needed"
        ]

    async def test(service: Service, run: Running) -> None:
        original = sb.config_path.read_text()
        _edit(
            sb,
            (f"127.0.0.1:{port}", "127.0.0.1:1"),
            ("[http]\n", "[http]\nmax_body_bytes = 2000\n"),
        )
        with capture_logs() as logs:
            assert await reload(service) is True
        assert needed(logs) == [("http.listen", f"127.0.0.1:{port}", "127.0.0.1:1")]
        assert run.app is not None and run.app[LISTENER].deps.max_body_bytes == 2000
        with capture_logs() as logs:  # an unrelated reload: the listen change still waits
            assert await reload(service) is True
        assert needed(logs) == [("http.listen", f"127.0.0.1:{port}", "127.0.0.1:1")]
        assert run.address.endswith(f":{port}")
        sb.config_path.write_text(original)  # back to what runs: nothing to say
        with capture_logs() as logs:
            assert await reload(service) is True
        assert needed(logs) == []

    await _serving(sb, settings, test)


async def test_an_upstream_a_reload_removes_leaves_the_metrics(
    sandbox: tuple[Sandbox, Settings],
) -> None:
    """Found by probing: its auth gauge and budget counter stayed in /metrics until a restart
    (an `UpstreamAuthFailing` alert kept firing for an upstream that no longer existed)."""
    sb, settings = sandbox
    original = sb.config_path.read_text()
    halo = original.split("[upstreams.halo]\n", 1)[1].split("\n\n", 1)[0]

    async def test(service: Service, run: Running) -> None:
        _edit(
            sb,
            (
                "[upstreams.reseller]\n",
                f'[upstreams.halo2]\nkind = "halo"\n{halo}\n\n[upstreams.reseller]\n',
            ),
        )
        assert await reload(service) is True
        gauge = b'upstream_auth_healthy{upstream="halo2"}'
        waits = b'rate_budget_wait_seconds_total{upstream="halo2"}'
        body = run.metrics.render()[0]
        assert gauge in body and waits in body
        sb.config_path.write_text(original)
        assert await reload(service) is True
        assert "halo2" not in run.pool.clients
        body = run.metrics.render()[0]
        assert gauge not in body and waits not in body

    await _serving(sb, settings, test)
