"""The service in process: supervision restarts a failing part while the others keep serving;
the watchdog is withheld while the dispatcher is wedged; SIGTERM during a sync records it
`cancelled` and exits cleanly."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import anyio
import pytest
from structlog.testing import capture_logs

from daemon.clock import FakeClock, SystemClock
from daemon.config import Settings, load_settings
from daemon.sandbox.orchestra import Sandbox
from daemon.service import Service
from daemon.store import Store
from daemon.systemd import Notifier
from tests.service.sandboxes import service_sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[tuple[Sandbox, Settings]]:
    async with service_sandbox(tmp_path) as (sb, _):
        yield sb, load_settings(sb.config_path)


async def _get(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status


async def test_a_part_that_raises_is_restarted_and_the_others_keep_serving(
    sandbox: tuple[Sandbox, Settings],
) -> None:
    sb, settings = sandbox
    clock = FakeClock(datetime.now(UTC))
    service = Service(settings, clock=clock, config_path=sb.config_path, handle_signals=False)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            address = await tg.start(service.serve)
            run = service.running
            assert run is not None and run.keeper is not None
            calls = {"n": 0}
            original = run.keeper.sync_once

            async def flaky() -> object:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("keeper bug")
                return await original()

            run.keeper.sync_once = flaky  # type: ignore[method-assign]
            run.scopes["keeper"].cancel()  # restart it onto the flaky method
            await service.task_group.start(service._part, "keeper", run.keeper.run)
            with anyio.fail_after(10):
                while not any(e["event"] == "service.part_failed" for e in logs):
                    await anyio.sleep(0.01)
            assert await _get(f"http://{address}/healthz") in (200, 503)  # still serving
            clock.advance(5)  # the restart delay passes
            with anyio.fail_after(10):
                while calls["n"] < 2:
                    await anyio.sleep(0.01)
            service.request_shutdown()
    failed = next(e for e in logs if e["event"] == "service.part_failed")
    assert failed["part"] == "keeper" and "keeper bug" in failed["error"]
    assert any(e["event"] == "service.part_restarted" for e in logs)


async def test_the_watchdog_is_withheld_while_the_dispatcher_is_wedged(
    sandbox: tuple[Sandbox, Settings], tmp_path: Path
) -> None:
    sb, settings = sandbox
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    clock = FakeClock(datetime.now(UTC))
    notifier = Notifier.from_env(
        {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000"}, clock=clock
    )

    def drain() -> list[str]:
        seen = []
        while True:
            try:
                seen.append(sock.recv(4096).decode())
            except BlockingIOError:
                return seen

    service = Service(settings, clock=clock, config_path=sb.config_path, notifier=notifier,
                      handle_signals=False)  # fmt: skip
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(service.serve)
            run = service.running
            assert run is not None
            assert any("READY=1" in m for m in drain())
            clock.advance(10)
            await anyio.sleep(0.05)
            assert any("WATCHDOG=1" in m for m in drain())
            run.dispatcher.heartbeat -= 3600  # wedged: its loop has not turned for an hour
            run.dispatcher.fresh = lambda max_age: False  # type: ignore[method-assign]
            clock.advance(10)
            await anyio.sleep(0.05)
            assert not any("WATCHDOG=1" in m for m in drain())
            service.request_shutdown()
        assert any("STOPPING=1" in m for m in drain())
    finally:
        sock.close()
        notifier.close()


async def test_a_shutdown_during_a_sync_records_it_cancelled(
    sandbox: tuple[Sandbox, Settings],
) -> None:
    sb, settings = sandbox
    sb.states["blesta"].faults.update({"latency": 0.5})  # every Blesta page takes half a second
    service = Service(settings, clock=SystemClock(), config_path=sb.config_path,
                      handle_signals=False)  # fmt: skip
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(service.serve)
            run = service.running
            assert run is not None and run.scheduler is not None
            run.scheduler.request_run("blesta-clients")  # now, not after its start jitter
            while "blesta-clients" not in run.scheduler.running:
                await anyio.sleep(0.02)
            service.request_shutdown()
    with sqlite3.connect(settings.daemon.database) as conn:
        rows = conn.execute("SELECT status FROM sync_runs WHERE job = 'blesta-clients'").fetchall()
    assert ("cancelled",) in rows or ("ok",) in rows
    assert ("running",) not in rows


async def test_an_ipv6_listen_address_is_reported_with_brackets(tmp_path: Path) -> None:
    """Found by probing: `::1:46323` was logged and sent to systemd, which reads as an
    address without a port. A URL needs `[::1]:46323`."""
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[daemon]\ndatabase = "{tmp_path / "state.db"}"\n[http]\nlisten = "[::1]:0"\n'
    )
    config.chmod(0o600)
    service = Service(load_settings(config), clock=SystemClock(), config_path=config,
                      handle_signals=False)  # fmt: skip
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            address = await tg.start(service.serve)
            assert address.startswith("[::1]:") and int(address.rpartition(":")[2]) > 0
            assert await _get(f"http://{address}/healthz") in (200, 503)
            service.request_shutdown()


async def test_a_sync_cut_short_by_the_last_stop_runs_at_the_start(
    sandbox: tuple[Sandbox, Settings],
) -> None:
    """Found by probing: the schedule counted from the last run whatever its end, so a job
    cancelled by a stop (a deploy, a reload) waited a whole interval — a day for a daily one."""
    sb, settings = sandbox
    clock = FakeClock(datetime.now(UTC))
    async with Store.open(settings.daemon.database, clock=clock) as store:
        cut = await store.start_run("blesta-clients")
        await store.finish_run(cut, "cancelled", error="cancelled")
        done = await store.start_run("halo-tickets")
        await store.finish_run(done, "ok")
    service = Service(settings, clock=clock, config_path=sb.config_path, handle_signals=False)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(service.serve)
            run = service.running
            assert run is not None and run.scheduler is not None
            due = run.scheduler.next_run
            assert due["blesta-clients"] <= clock.now()  # at once, not 15 minutes on
            assert due["halo-tickets"] > clock.now()  # its interval, as before
            service.request_shutdown()
