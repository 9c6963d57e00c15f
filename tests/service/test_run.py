"""`daemon run` for real: a subprocess against the simulators, with a test-owned NOTIFY_SOCKET.

READY arrives only once the listener answers; WATCHDOG keeps arriving; SIGTERM brings STOPPING
and exit 0; SIGHUP with a valid config reloads and with an invalid one is refused while the
service keeps serving; SIGTERM with work in flight loses nothing — the next start finishes it,
once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from daemon.sandbox.orchestra import OWN_NUMBER, Sandbox
from tests.daemon_proc import TIMEOUT, start_daemon
from tests.localnet import free_port
from tests.service.sandboxes import service_sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[tuple[Sandbox, int]]:
    async with service_sandbox(tmp_path) as found:
        yield found


async def test_ready_watchdog_and_a_clean_stop(
    sandbox: tuple[Sandbox, int], tmp_path: Path
) -> None:
    sb, port = sandbox
    d = await start_daemon(sb.config_path, tmp_path / "notify.sock", port)
    try:
        ready = await d.notify.expect("READY")
        assert "listening on" in ready.get("STATUS", "")
        assert await d.healthz() in (200, 503)  # bound by the time READY was sent
        for _ in range(2):
            await d.notify.expect("WATCHDOG")
        d.proc.send_signal(signal.SIGTERM)
        await d.notify.expect("STOPPING")
        assert await d.wait_exit() == 0
    finally:
        d.notify.close()
        if d.proc.returncode is None:
            d.proc.kill()
    assert d.events("service.started") and d.events("service.stopped")
    (loaded,) = d.events("config.loaded")  # at start, as the catalogue says (found by probing)
    assert loaded["reloaded"] is False and loaded["path"] == str(sb.config_path)
    assert not [e for e in d.log if "Traceback" in json.dumps(e)]


async def test_sighup_reloads_a_valid_config_and_refuses_an_invalid_one(
    sandbox: tuple[Sandbox, int], tmp_path: Path
) -> None:
    sb, port = sandbox
    d = await start_daemon(sb.config_path, tmp_path / "notify.sock", port)
    original = sb.config_path.read_text()
    try:
        await d.notify.expect("READY")
        sb.config_path.write_text(original.replace('name = "halo-clients"', 'name = "halo-people"'))
        d.proc.send_signal(signal.SIGHUP)
        reloading = await d.notify.expect("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        await d.notify.expect("READY")
        async with asyncio.timeout(TIMEOUT):
            while not d.reloads():
                await asyncio.sleep(0.05)
        sb.config_path.write_text(original.replace('every = "1h"', 'every = "soon"', 1))
        d.proc.send_signal(signal.SIGHUP)
        await d.notify.expect("RELOADING")
        await d.notify.expect("READY")
        async with asyncio.timeout(TIMEOUT):
            while not d.events("config.invalid"):
                await asyncio.sleep(0.05)
        assert await d.healthz() in (200, 503)  # still serving, on the old config
        assert d.proc.returncode is None
        d.proc.send_signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
    finally:
        d.notify.close()
        if d.proc.returncode is None:
            d.proc.kill()
    invalid = d.events("config.invalid")[0]
    assert any("every" in str(p) for p in invalid["problems"])  # type: ignore[union-attr]


async def test_sigterm_with_an_action_in_flight_loses_nothing(
    sandbox: tuple[Sandbox, int], tmp_path: Path
) -> None:
    """The ticket request hangs past shutdown_timeout: the event is cut, keeps its lease, and
    the next start releases it, looks for the ticket (the attempt had started) and creates it
    exactly once."""
    sb, port = sandbox
    halo, ns = sb.halo, sb.netsapiens
    d = await start_daemon(sb.config_path, tmp_path / "notify.sock", port)
    try:
        await d.notify.expect("READY")
        async with asyncio.timeout(TIMEOUT):
            while not ns.live_subscriptions("message"):
                await asyncio.sleep(0.05)
        halo.faults.update({"slow_next": 1, "slow_seconds": 60.0, "path_filter": "/api/Tickets"})
        await ns.inbound_sms("15550009999", OWN_NUMBER.lstrip("+"), "no dial tone")
        async with asyncio.timeout(TIMEOUT):
            while not halo.faults.slow_next == 0:
                await asyncio.sleep(0.05)
        d.proc.send_signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
    finally:
        d.notify.close()
        if d.proc.returncode is None:
            d.proc.kill()
    db = sb.directory / "state.db"
    with sqlite3.connect(db) as conn:
        (status,) = conn.execute("SELECT status FROM events").fetchone()
    assert status in ("pending", "failed")  # acknowledged, not finished
    d2 = await start_daemon(sb.config_path, tmp_path / "notify2.sock", port)
    try:
        await d2.notify.expect("READY")
        async with asyncio.timeout(TIMEOUT):
            while True:
                with sqlite3.connect(db) as conn:
                    (status,) = conn.execute("SELECT status FROM events").fetchone()
                if status == "done":
                    break
                await asyncio.sleep(0.05)
        d2.proc.send_signal(signal.SIGTERM)
        assert await d2.wait_exit() == 0
    finally:
        d2.notify.close()
        if d2.proc.returncode is None:
            d2.proc.kill()
    tickets = [t for t in halo.table("Tickets") if str(t.get("summary", "")).startswith("SMS")]
    assert len(tickets) == 1


async def test_an_invalid_config_exits_2_before_ready(tmp_path: Path) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text('[daemon]\nretention = "nope"\n')
    config.chmod(0o600)
    d = await start_daemon(config, tmp_path / "notify.sock", 1)
    try:
        assert await d.wait_exit() == 2
        assert d.notify.seen == []
    finally:
        d.notify.close()


async def test_a_database_a_newer_daemon_wrote_exits_2_untouched(
    sandbox: tuple[Sandbox, int], tmp_path: Path
) -> None:
    # After a downgrade: the units do not restart on exit 2 (RestartPreventExitStatus=2), which
    # no restart could mend; the file is left as it was.
    sb, port = sandbox
    database = sb.directory / "state.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE later (x)")
        conn.execute("PRAGMA user_version = 999")
    before = database.read_bytes()
    d = await start_daemon(sb.config_path, tmp_path / "notify.sock", port)
    try:
        assert await d.wait_exit() == 2
        assert d.notify.seen == []
    finally:
        d.notify.close()
    assert database.read_bytes() == before


async def test_a_second_service_on_the_same_database_exits_1_and_touches_nothing(
    sandbox: tuple[Sandbox, int], tmp_path: Path
) -> None:
    """Found by probing: a second `daemon run` on the file (another port) released the first
    one's leases at its start and sent their actions again — six tickets for three events."""
    sb, port = sandbox
    first = await start_daemon(sb.config_path, tmp_path / "notify.sock", port)
    other_port = free_port()
    other = tmp_path / "other.toml"
    other.write_text(
        sb.config_path.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{other_port}")
    )
    other.chmod(0o600)
    try:
        await first.notify.expect("READY")
        second = await start_daemon(other, tmp_path / "notify2.sock", other_port)
        try:
            assert await second.wait_exit() == 1
            assert second.notify.seen == []
        finally:
            second.notify.close()
        said = " ".join(str(e.get("raw", "")) for e in second.log)
        assert "another `daemon run`" in said and "serves this database" in said
        assert not second.events("dispatch.leases_released")
        assert "DatabaseInUse" in second.events("service.failed")[0]["error"]
        assert not second.events("service.started")
        assert await first.healthz() == 200
        assert await first.stop() == 0
    finally:
        first.notify.close()
        first.kill()
    # Once the first has stopped, the lock is free again.
    again = await start_daemon(other, tmp_path / "notify3.sock", other_port)
    try:
        await again.notify.expect("READY")
        assert await again.stop() == 0
    finally:
        again.notify.close()
        again.kill()


async def test_a_taken_port_exits_1(sandbox: tuple[Sandbox, int], tmp_path: Path) -> None:
    sb, port = sandbox
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        d = await start_daemon(sb.config_path, tmp_path / "notify.sock", port)
        try:
            assert await d.wait_exit() == 1
        finally:
            d.notify.close()
    # The journal's JSON says why, not only the plain stderr line (found by probing).
    (failed,) = d.events("service.failed")
    assert failed["level"] == "critical" and "cannot listen" in failed["error"]


@pytest.fixture
def refused_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A config for running `daemon run`'s handler in this process and having it stop at once:
    the store refuses this SQLite (its minimum raised past any release), inside the service.
    The handler freezes the heap (`gc.freeze()`, process-wide); it is given back afterwards."""
    import gc

    import daemon.store.db

    monkeypatch.setattr(daemon.store.db, "MIN_SQLITE", (999, 0, 0))
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[daemon]\ndatabase = "{tmp_path / "state.db"}"\n[http]\nlisten = "127.0.0.1:0"\n'
    )
    config.chmod(0o600)
    try:
        yield config
    finally:
        gc.unfreeze()


def test_a_store_this_version_cannot_use_found_at_start_exits_2(
    refused_at_open: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The other way to a DatabaseMismatch: inside the service, when the store opens (SQLite
    # older than the store needs — or a newer daemon migrating the file between the start's
    # check and the open). Not restartable either, so exit 2 as well.
    from daemon.cli import main

    assert main(["run", "--config", str(refused_at_open)]) == 2
    assert "is too old: the store needs 999.0.0" in capsys.readouterr().err


def test_the_service_process_takes_its_start_up_heap_out_of_full_collections(
    refused_at_open: Path,
) -> None:
    # `daemon run` freezes what start-up built before it serves, so a full collection does not
    # walk the modules and config and stop the loop for tens of milliseconds. Seen from inside
    # the process, after the service stopped at once.
    import gc

    from daemon.cli import main

    assert gc.get_freeze_count() == 0
    assert main(["run", "--config", str(refused_at_open)]) == 2
    assert gc.get_freeze_count() > 10_000  # the modules alone are tens of thousands
