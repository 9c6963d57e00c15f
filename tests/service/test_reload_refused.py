"""SIGHUP with a config the running service cannot use: refused whole, the service keeps
running on the old config — serving webhooks, handling events and syncing — and a later good
reload still applies.

A real `daemon run` subprocess against the simulators. The realistic case: the new file takes
the Blesta key from an environment variable whose bytes are not UTF-8 (an `EnvironmentFile=`
written in Latin-1). Neither the log redactor nor HTTP Basic can encode such a key; the loader
refuses it by key path (`config.invalid`). Before that check existed it passed validation and
the reload failed while building its parts, which stopped the service; a failure at that stage
is now `config.reload_refused` (tests/service/test_reload_build.py builds one in process).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.sandbox.orchestra import OWN_NUMBER, Sandbox
from tests.daemon_proc import TIMEOUT, Daemon, start_daemon
from tests.service.sandboxes import service_sandbox

LATIN1_VAR = "TEST_BLESTA_KEY_LATIN1"
STRANGER = "15550009999"  # no synced record: a message from it becomes a Halo ticket


async def _start(config: Path, notify_path: Path, port: int) -> Daemon:
    # The bytes b"s3cr\xe9t" (Latin-1, not UTF-8), as os.environ would hold them.
    latin1 = {LATIN1_VAR: "s3cr\udce9t"}
    return await start_daemon(config, notify_path, port, watchdog=False, extra_env=latin1)


def _runs(db: Path, job: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM sync_runs WHERE job = ? AND status = 'ok'", (job,)
        ).fetchone()
    return int(n)


def _fast_jobs(text: str) -> str:
    credit = 'resource = "getcredit"\nevery = "1h"'
    clients = 'resource = "clients"\nevery = "15m"'
    assert credit in text and clients in text
    text = text.replace(credit, 'resource = "getcredit"\nevery = "1s"')
    return text.replace(clients, clients + '\njitter = "0s"', 1)  # Blesta's: at once


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[tuple[Sandbox, int]]:
    async with service_sandbox(tmp_path, _fast_jobs) as found:
        yield found


async def test_a_reload_the_service_cannot_use_is_refused_and_the_service_carries_on(
    sandbox: tuple[Sandbox, int], tmp_path: Path
) -> None:
    sb, port = sandbox
    db = sb.directory / "state.db"
    original = sb.config_path.read_text()
    blesta_key = f'key = "{sb.states["blesta"].users["sync"]}"'
    assert blesta_key in original
    unbuildable = original.replace(blesta_key, f'key = "${{{LATIN1_VAR}}}"').replace(
        'name = "halo-clients"', 'name = "halo-people"'
    )
    d = await _start(sb.config_path, tmp_path / "notify.sock", port)
    try:
        await d.notify.expect("READY")
        async with asyncio.timeout(TIMEOUT):
            while not sb.netsapiens.live_subscriptions("message"):
                await asyncio.sleep(0.05)

        sb.config_path.write_text(unbuildable)
        d.proc.send_signal(signal.SIGHUP)
        await d.notify.expect("RELOADING")
        await d.notify.expect("READY")  # systemd's reload ends: refused, not hung
        refused = await d.wait_for("config.invalid")
        assert "upstreams.blesta.key" in str(refused["problems"])
        assert "not UTF-8" in str(refused["problems"])
        assert d.proc.returncode is None
        assert d.reloads() == []
        assert not d.events("service.clients_replaced")

        # Still serving, handling events and syncing — on the old config.
        assert await d.healthz() in (200, 503)
        before = _runs(db, "reseller-credit")
        await sb.netsapiens.inbound_sms(STRANGER, OWN_NUMBER.lstrip("+"), "no dial tone")
        async with asyncio.timeout(TIMEOUT):
            while not [t for t in sb.halo.table("Tickets") if "no dial tone" in str(t)]:
                await asyncio.sleep(0.05)
            while _runs(db, "reseller-credit") < before + 2:
                await asyncio.sleep(0.05)
            while _runs(db, "blesta-clients") < 1:  # the old Blesta client still works
                await asyncio.sleep(0.05)
        with sqlite3.connect(db) as conn:
            jobs = {j for (j,) in conn.execute("SELECT DISTINCT job FROM sync_runs")}
        assert "halo-people" not in jobs  # nothing of the refused file was applied

        # A good file afterwards is applied as usual.
        sb.config_path.write_text(original.replace('name = "halo-clients"', 'name = "halo-people"'))
        d.proc.send_signal(signal.SIGHUP)
        await d.notify.expect("RELOADING")
        await d.notify.expect("READY")
        async with asyncio.timeout(TIMEOUT):
            while not d.reloads():
                await asyncio.sleep(0.05)
        d.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await d.proc.wait() == 0
    finally:
        d.notify.close()
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
    assert not [e for e in d.log if "Traceback" in json.dumps(e)]
